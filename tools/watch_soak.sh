#!/usr/bin/env bash
# Memory of a long `resnet watch` run: one MJPEG camera (ffmpeg's 640x480 test pattern at 25
# frames/s on 127.0.0.1), sampled at --fps FPS, for SECONDS; the watcher's RSS (VmRSS of
# /proc/PID/status) every 15 s, then the first, last and peak figures and the frames classified.
#
#   cargo build --release -p resnet-cli     # or RESNET_BIN=path/to/resnet
#   tools/watch_soak.sh [SECONDS] [FPS] > benches/results/<date>-<cpu>/watch-soak.txt
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-1200}
fps=${2:-5}
bin=${RESNET_BIN:-target/release/resnet}
work=$(mktemp -d)
trap 'rm -rf "$work"; kill $(jobs -p) 2>/dev/null || true' EXIT
"$bin" -q weights synth --seed 0 --out "$work/synth.safetensors"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
url=http://127.0.0.1:$port/cam
ffmpeg -nostdin -hide_banner -loglevel error -re -f lavfi -i testsrc2=size=640x480:rate=25 \
  -t $((secs + 30)) -c:v mjpeg -q:v 5 -f mpjpeg -listen 1 \
  -content_type "multipart/x-mixed-replace;boundary=ffmpeg" "$url" &
sleep 1
"$bin" watch --weights "$work/synth.safetensors" --fps "$fps" "cam=$url" >"$work/events" 2>"$work/err" &
pid=$!
echo "# resnet watch memory, $(date -u +%FT%TZ), $(lscpu | sed -n 's/^Model name: *//p') (model $(lscpu | sed -n 's/^Model: *//p')), $(nproc) CPUs"
echo "# one MJPEG camera 640x480 25 fps, --fps $fps, $secs s, backend native, synthetic weights"
echo "# seconds  rss_kb  events"
start=$SECONDS
rss=()
while ((SECONDS - start < secs)); do
  sleep 15
  kb=$(awk '/^VmRSS/ {print $2}' "/proc/$pid/status")
  rss+=("$kb")
  echo "$((SECONDS - start)) $kb $(wc -l <"$work/events")"
done
kill -INT "$pid"
wait "$pid" || true
grep ' received, ' "$work/err" | tail -1 | sed 's/^note: /# /'
printf '%s\n' "${rss[@]}" | awk 'NR == 1 {f = $1} {l = $1; if ($1 > p) p = $1}
  END {printf "# rss first %d kB, last %d kB, peak %d kB, last/first %.3f\n", f, l, p, l / f}'
