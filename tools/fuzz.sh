#!/usr/bin/env bash
# Runs every fuzz target for a bounded time (default 60 s each) with memory and time limits.
#
#   cargo install cargo-fuzz        # once
#   tools/fuzz.sh [SECONDS] [TARGET...]
#
# cargo-fuzz needs nightly compiler flags; on a stable toolchain RUSTC_BOOTSTRAP=1 enables them.
# FUZZ_SANITIZER=none (default: address) builds without AddressSanitizer, about twice as fast.
# FUZZ_JOBS (default: the number of CPUs, at most 2) targets run at once, each on one core:
# the targets are built first in one cargo call, so the parallel runs only execute binaries.
#
# Inputs: fuzz/seeds/<target>/ (committed starting points), fuzz/regressions/<target>/ (inputs
# that once failed), and fuzz/corpus/<target>/ (what the fuzzer finds; git-ignored, reused).
# A failing input is saved by libFuzzer under fuzz/artifacts/<target>/ and copied into
# fuzz/regressions/<target>/, where `cargo test` replays it (fuzz/tests/regressions.rs); rename
# it after the bug, fix the bug, commit both. Each run's summary (coverage, executions, CPU
# time) is printed, and its whole output kept in fuzz/logs/<target>.log. The script exits
# non-zero when any target failed.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-60}
shift || true
targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=(decode_image safetensors pth labels http kserve mjpeg plan)
export RUSTC_BOOTSTRAP=1
sanitizer=${FUZZ_SANITIZER:-address}
jobs=${FUZZ_JOBS:-$(nproc)}
((jobs > 2)) && jobs=2
((jobs < 1)) && jobs=1

echo "== fuzz: building ${#targets[@]} targets (sanitizer: $sanitizer)"
cargo fuzz build --features libfuzzer -s "$sanitizer"

mkdir -p fuzz/logs
run_target() {
  local t=$1
  mkdir -p "fuzz/corpus/$t" "fuzz/regressions/$t" "fuzz/artifacts/$t"
  # -rss_limit_mb / -malloc_limit_mb: a single input may not use more than 2 GiB in all or
  # allocate more than 1 GiB at once; -timeout: no input may take more than 10 s.
  # The CPU time is what counts towards a target's fuzzing hours (a niced run on a busy
  # machine gets less CPU than wall time): bash's `time` reports it on the log's last line.
  local TIMEFORMAT="fuzz $t: %U s user CPU, %S s system CPU, %R s wall"
  { time cargo fuzz run --features libfuzzer -s "$sanitizer" "$t" "fuzz/corpus/$t" \
    "fuzz/seeds/$t" "fuzz/regressions/$t" -- -max_total_time="$secs" -rss_limit_mb=2048 \
    -malloc_limit_mb=1024 -timeout=10 -max_len=262144 -print_final_stats=1 ; } \
    >"fuzz/logs/$t.log" 2>&1
}

status=0
declare -A pids before
i=0
while ((i < ${#targets[@]})); do
  batch=("${targets[@]:i:jobs}")
  for t in "${batch[@]}"; do
    echo "== fuzz $t for ${secs}s"
    mkdir -p "fuzz/artifacts/$t"
    before[$t]=$(ls "fuzz/artifacts/$t" | sort)
    run_target "$t" &
    pids[$t]=$!
  done
  for t in "${batch[@]}"; do
    echo "-- $t (fuzz/logs/$t.log):"
    if wait "${pids[$t]}"; then
      # Coverage, corpus, executions and CPU time; the whole log stays in fuzz/logs/.
      grep -E '#[0-9]+[[:space:]]+DONE|stat::(number_of_executed_units|average_exec_per_sec|peak_rss_mb)|^fuzz ' \
        "fuzz/logs/$t.log" || tail -n 5 "fuzz/logs/$t.log"
    else
      status=1
      echo "!! $t failed"
      tail -n 40 "fuzz/logs/$t.log"
    fi
    for f in $(comm -13 <(echo "${before[$t]}") <(ls "fuzz/artifacts/$t" | sort)); do
      cp "fuzz/artifacts/$t/$f" "fuzz/regressions/$t/$f"
      echo "!! $t failed on an input, saved as fuzz/regressions/$t/$f"
      status=1
    done
  done
  i=$((i + jobs))
done
exit $status
