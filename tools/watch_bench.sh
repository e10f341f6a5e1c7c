#!/usr/bin/env bash
# Frames/s and CPU cost `resnet watch` sustains per source kind, on this machine.
#
#   cargo build --release -p resnet-cli     # or RESNET_BIN=path/to/resnet
#   tools/watch_bench.sh [SECONDS] > benches/results/<date>-<cpu>/watch.txt
#
# Each case runs the release binary for SECONDS (default 20) on synthetic weights (they time
# the same as the real ones) against a source on 127.0.0.1 served by ffmpeg at 25 frames/s
# (640x480 test pattern), then reads the watcher's own counters (its exit line on stderr) and
# its CPU time (/proc/PID/stat utime+stime, including its threads; the camera's ffmpeg is not
# counted, the decoding ffmpeg of the ffmpeg: source is counted separately).
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-20}
bin=${RESNET_BIN:-target/release/resnet}
work=$(mktemp -d)
trap 'rm -rf "$work"; kill $(jobs -p) 2>/dev/null || true' EXIT
"$bin" -q weights synth --seed 0 --out "$work/synth.safetensors"
tick=$(getconf CLK_TCK)
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

camera() { # FORMAT CODEC URL: a live 25 fps camera served once by ffmpeg
  ffmpeg -nostdin -hide_banner -loglevel error -re -f lavfi -i testsrc2=size=640x480:rate=25 \
    -t $((secs + 30)) -c:v "$2" -q:v 5 -f "$1" -listen 1 ${4:+-content_type "$4"} "$3" &
}

cpu_of() { # PID -> CPU seconds (user+system)
  awk -v t="$tick" '{print ($14+$15)/t}' "/proc/$1/stat" 2>/dev/null || echo 0
}

run_case() { # NAME ARGS...
  local name=$1; shift
  "$bin" watch --weights "$work/synth.safetensors" "$@" > "$work/events" 2> "$work/err" &
  local pid=$!
  sleep "$secs"
  local cpu; cpu=$(cpu_of $pid)
  local kids=0
  for k in $(pgrep -P $pid || true); do kids=$(echo "$kids + $(cpu_of "$k")" | bc -l); done
  kill -INT $pid; wait $pid || true
  local line; line=$(grep ' received, ' "$work/err" | tail -1 | sed 's/^note: //')
  local n; n=$(wc -l < "$work/events")
  printf '%-34s %6.2f ev/s  watcher CPU %5.1f%%  ffmpeg decoder CPU %5.1f%%  | %s\n' "$name" \
    "$(echo "$n / $secs" | bc -l)" "$(echo "100 * $cpu / $secs" | bc -l)" \
    "$(echo "100 * $kids / $secs" | bc -l)" "$line"
}

echo "# resnet watch throughput, $(date -u +%F), $(lscpu | sed -n 's/^Model name: *//p') (model $(lscpu | sed -n 's/^Model: *//p')), $(nproc) CPUs"
echo "# load at start: $(uptime | sed 's/.*load average/load average/')"
echo "# ${secs} s per case, backend native, synthetic weights, camera: ffmpeg testsrc2 640x480 25 fps"

u=http://127.0.0.1:$(port)/cam; camera mpjpeg mjpeg "$u" "multipart/x-mixed-replace;boundary=ffmpeg"; sleep 1
run_case "MJPEG --fps 0 (all it can)" --fps 0 "mj=$u"
u=http://127.0.0.1:$(port)/cam; camera mpjpeg mjpeg "$u" "multipart/x-mixed-replace;boundary=ffmpeg"; sleep 1
run_case "MJPEG --fps 2" --fps 2 "mj=$u"
u=http://127.0.0.1:$(port)/cam; camera mpegts mpeg2video "$u"; sleep 1
run_case "ffmpeg (MPEG-TS) --fps 0" --fps 0 "ts=ffmpeg:$u"
u=http://127.0.0.1:$(port)/cam; camera mpegts mpeg2video "$u"; sleep 1
run_case "ffmpeg (MPEG-TS) --fps 2" --fps 2 "ts=ffmpeg:$u"

# A still scene under --motion: frames are decoded and compared, none classified after the first.
ffmpeg -nostdin -hide_banner -loglevel error -y -f lavfi -i color=c=gray:size=640x480:rate=25 -t 5 \
  -q:v 5 "$work/still.mjpeg"
u=http://127.0.0.1:$(port)/cam
ffmpeg -nostdin -hide_banner -loglevel error -re -stream_loop -1 -i "$work/still.mjpeg" -c:v copy \
  -t $((secs + 30)) -f mpjpeg -listen 1 -content_type "multipart/x-mixed-replace;boundary=ffmpeg" "$u" &
sleep 1
run_case "MJPEG still scene --fps 0 --motion 0.02" --fps 0 --motion 0.02 "still=$u"

# A folder: 200 JPEGs copied in at once; files/s from the first to the last event.
mkdir -p "$work/in"
"$bin" watch --weights "$work/synth.safetensors" "$work/in" > "$work/events" 2> "$work/err" &
pid=$!
until grep -q 'watching for new files' "$work/err"; do sleep 0.1; done
src=testdata/images/coffee_progressive.jpg
t0=$(date +%s.%N)
for i in $(seq -w 1 200); do cp "$src" "$work/in/$i.jpg"; done
until [ "$(wc -l < "$work/events")" -ge 200 ]; do sleep 0.1; done
t1=$(date +%s.%N)
cpu=$(cpu_of $pid)
kill -INT $pid; wait $pid || true
printf '%-34s %6.2f files/s  (200 copies of %s in %.1f s, watcher CPU %.1f s)\n' "folder, 200 files at once" \
  "$(echo "200 / ($t1 - $t0)" | bc -l)" "$src" "$(echo "$t1 - $t0" | bc -l)" "$cpu"
echo "# load at end: $(uptime | sed 's/.*load average/load average/')"
