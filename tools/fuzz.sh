#!/usr/bin/env bash
# Runs every fuzz target for a bounded time (default 60 s each) with memory and time limits.
#
#   cargo install cargo-fuzz        # once
#   tools/fuzz.sh [SECONDS] [TARGET...]
#
# cargo-fuzz needs nightly compiler flags; on a stable toolchain RUSTC_BOOTSTRAP=1 enables them.
# Seeds come from the repository's test data (copied into fuzz/corpus/<target>, git-ignored).
# A crash is saved by libFuzzer under fuzz/artifacts/<target>/ and the script exits non-zero:
# copy the input into resnet-core/tests/data/fuzz/ and add a named regression test for it.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-60}
shift || true
targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=(decode_image safetensors pth labels)
export RUSTC_BOOTSTRAP=1

corpus() { mkdir -p "fuzz/corpus/$1"; echo "fuzz/corpus/$1"; }
for f in testdata/images/*.* testdata/images/bad/*; do
  case "$f" in *.md) ;; *) cp -n "$f" "$(corpus decode_image)/" ;; esac
done
cp -n resnet-core/tests/data/pth/*.pth "$(corpus pth)/"
printf 'tench\ngoldfish\n' > "$(corpus labels)/lines.txt"
printf '["tench", "goldfish"]' > "$(corpus labels)/array.json"
# A tiny valid safetensors file: 8-byte little-endian header length, JSON header, data.
python3 - "$(corpus safetensors)/tiny.safetensors" <<'PY'
import json, struct, sys
header = json.dumps({"fc.bias": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                     "__metadata__": {"format": "pt"}}).encode()
header += b" " * (-len(header) % 8)
open(sys.argv[1], "wb").write(struct.pack("<Q", len(header)) + header + struct.pack("<2f", 1.5, -2.0))
PY

status=0
for t in "${targets[@]}"; do
  echo "== fuzz $t for ${secs}s"
  # -rss_limit_mb / -malloc_limit_mb: a single input may not use more than 2 GiB in all or
  # allocate more than 1 GiB at once; -timeout: no input may take more than 10 s.
  if ! cargo fuzz run "$t" "fuzz/corpus/$t" -- -max_total_time="$secs" -rss_limit_mb=2048 \
      -malloc_limit_mb=1024 -timeout=10 -max_len=262144 -print_final_stats=1 2>&1 | tail -n 25; then
    status=1
  fi
done
exit $status
