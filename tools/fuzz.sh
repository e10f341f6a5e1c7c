#!/usr/bin/env bash
# Runs every fuzz target for a bounded time (default 60 s each) with memory and time limits.
#
#   cargo install cargo-fuzz        # once
#   tools/fuzz.sh [SECONDS] [TARGET...]
#
# cargo-fuzz needs nightly compiler flags; on a stable toolchain RUSTC_BOOTSTRAP=1 enables them.
# FUZZ_SANITIZER=none (default: address) builds without AddressSanitizer, about twice as fast.
#
# Inputs: fuzz/seeds/<target>/ (committed starting points), fuzz/regressions/<target>/ (inputs
# that once failed), and fuzz/corpus/<target>/ (what the fuzzer finds; git-ignored, reused).
# A failing input is saved by libFuzzer under fuzz/artifacts/<target>/ and copied into
# fuzz/regressions/<target>/, where `cargo test` replays it (fuzz/tests/regressions.rs); rename
# it after the bug, fix the bug, commit both. The script exits non-zero when any target failed.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-60}
shift || true
targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=(decode_image safetensors pth labels http mjpeg)
export RUSTC_BOOTSTRAP=1
sanitizer=${FUZZ_SANITIZER:-address}

status=0
for t in "${targets[@]}"; do
  echo "== fuzz $t for ${secs}s"
  mkdir -p "fuzz/corpus/$t" "fuzz/regressions/$t" "fuzz/artifacts/$t"
  before=$(ls "fuzz/artifacts/$t" | sort)
  # -rss_limit_mb / -malloc_limit_mb: a single input may not use more than 2 GiB in all or
  # allocate more than 1 GiB at once; -timeout: no input may take more than 10 s.
  if ! cargo fuzz run --features libfuzzer -s "$sanitizer" "$t" "fuzz/corpus/$t" "fuzz/seeds/$t" \
      "fuzz/regressions/$t" -- -max_total_time="$secs" -rss_limit_mb=2048 -malloc_limit_mb=1024 \
      -timeout=10 -max_len=262144 -print_final_stats=1 2>&1 | tail -n 25; then
    status=1
  fi
  for f in $(comm -13 <(echo "$before") <(ls "fuzz/artifacts/$t" | sort)); do
    cp "fuzz/artifacts/$t/$f" "fuzz/regressions/$t/$f"
    echo "!! $t failed on an input, saved as fuzz/regressions/$t/$f"
    status=1
  done
done
exit $status
