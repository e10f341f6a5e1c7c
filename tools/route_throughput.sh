#!/usr/bin/env bash
# Requests/s of each route of `resnet serve` at N concurrent clients, measured with wrk (Debian
# package `wrk`) against a release server on 127.0.0.1 with synthetic weights (they time as the
# real ones do). One wrk run per route, each after a short warm-up; the raw wrk output and one
# JSON line per route go to OUT_DIR, a table to stdout. Bounded: SECONDS per route.
#
#   cargo build --release -p resnet-cli          # or RESNET_BIN=path/to/resnet
#   tools/route_throughput.sh [--connections 16] [--seconds 10] [--out DIR] [-- SERVER FLAGS...]
#
# With 16 clients on a 2-core machine this measures the server's queueing and dynamic batching
# (requests wait for a batch slot; the forward pass uses both cores), not 16 parallel inferences.
set -euo pipefail
cd "$(dirname "$0")/.."

connections=16
seconds=10
out=""
server_args=()
while [[ $# -gt 0 ]]; do
  case $1 in
    --connections) connections=$2; shift 2 ;;
    --seconds) seconds=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --) shift; server_args=("$@"); break ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
command -v wrk >/dev/null || { echo "wrk is missing: apt-get install wrk" >&2; exit 2; }
bin=${RESNET_BIN:-${CARGO_TARGET_DIR:-target}/release/resnet}
[[ -x $bin ]] || { echo "$bin is missing: cargo build --release -p resnet-cli" >&2; exit 2; }

work=$(mktemp -d)
server=""
cleanup() {
  [[ -n $server ]] && kill -TERM "$server" 2>/dev/null && wait "$server" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT
out=${out:-$work/out}
mkdir -p "$out"

image=testdata/images/coffee_progressive.jpg   # 600x400 progressive JPEG, 54 KB
"$bin" -q weights synth --seed 0 --out "$work/synth.safetensors"
"$bin" -q preprocess "$image" --out "$work/input.npy"

# Request bodies, built once.
boundary=wrkboundary7MA4YWxkTrZu0gW
python3 - "$work" "$image" "$boundary" <<'PY'
import base64, json, struct, sys
work, image, b = sys.argv[1], sys.argv[2], sys.argv[3]
img = open(image, "rb").read()
def multipart(fields):
    out = b""
    for field, data in fields:
        out += (f"--{b}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"img.jpg\"\r\n"
                "Content-Type: image/jpeg\r\n\r\n").encode() + data + b"\r\n"
    return out + f"--{b}--\r\n".encode()
open(f"{work}/file.multipart", "wb").write(multipart([("file", img)]))
open(f"{work}/image.multipart", "wb").write(multipart([("image", img)]))
open(f"{work}/batch4.multipart", "wb").write(multipart([("file", img)] * 4))
# The .npy written by `resnet preprocess`: a little-endian f32 [3, 224, 224] after its header.
raw = open(f"{work}/input.npy", "rb").read()
header_len = struct.unpack("<H", raw[8:10])[0]
data = raw[10 + header_len:]
assert len(data) == 3 * 224 * 224 * 4, f"unexpected .npy payload of {len(data)} bytes"
floats = struct.unpack(f"<{3 * 224 * 224}f", data)
fp32 = {"inputs": [{"name": "input", "shape": [1, 3, 224, 224], "datatype": "FP32",
                    "data": [float(f"{v:.7g}") for v in floats]}],
        "outputs": [{"name": "probabilities", "parameters": {"classification": 5}}]}
json.dump(fp32, open(f"{work}/fp32.json", "w"))
bytes_req = {"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES",
                         "data": [base64.b64encode(img).decode()]}],
             "outputs": [{"name": "probabilities", "parameters": {"classification": 5}}]}
json.dump(bytes_req, open(f"{work}/bytes.json", "w"))
# The binary tensor extension, as tritonclient sends it by default: the JSON header, then the
# BYTES element (4-byte little-endian length + the file); the header's length in a request header.
header = json.dumps({"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES",
                                 "parameters": {"binary_data_size": 4 + len(img)}}],
                     "outputs": [{"name": "probabilities",
                                  "parameters": {"classification": 5}}]}).encode()
open(f"{work}/bytes.binary", "wb").write(header + struct.pack("<I", len(img)) + img)
open(f"{work}/bytes.binary.header", "w").write(f"Inference-Header-Content-Length: {len(header)}")
PY

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$bin" serve --weights "$work/synth.safetensors" --addr "127.0.0.1:$port" --quiet \
  --queue 256 "${server_args[@]}" 2>"$work/server.log" &
server=$!
for _ in $(seq 1 600); do
  curl -sf "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && break
  kill -0 "$server" 2>/dev/null || { cat "$work/server.log" >&2; exit 1; }
  sleep 0.1
done

mp="multipart/form-data; boundary=$boundary"
binary_header=$(cat "$work/bytes.binary.header")
# name | method | path | body file | content type | extra header
routes=(
  "classify|POST|/v1/classify|file.multipart|$mp|"
  "classify_batch_4|POST|/v1/classify/batch|batch4.multipart|$mp|"
  "predict|POST|/predict|file.multipart|$mp|"
  "vision_scene|POST|/v1/vision/scene|image.multipart|$mp|"
  "cam|POST|/v1/cam|file.multipart|$mp|"
  "kserve_infer_fp32_json|POST|/v2/models/resnet18/infer|fp32.json|application/json|"
  "kserve_infer_bytes_json|POST|/v2/models/resnet18/infer|bytes.json|application/json|"
  "kserve_infer_bytes_binary|POST|/v2/models/resnet18/infer|bytes.binary|application/octet-stream|$binary_header"
  "trace|POST|/v1/trace|file.multipart|$mp|"
  "healthz|GET|/healthz|||"
  "readyz|GET|/readyz|||"
  "metrics|GET|/metrics|||"
  "model|GET|/v1/model|||"
  "history|GET|/v1/history|||"
  "openapi|GET|/openapi.json|||"
  "page|GET|/|||"
  "explore|GET|/explore|||"
  "kserve_metadata|GET|/v2/models/resnet18|||"
  "kserve_ready|GET|/v2/health/ready|||"
)
{
  echo "# $(date -u +%Y-%m-%dT%H:%M:%SZ) tools/route_throughput.sh --connections $connections --seconds $seconds -- ${server_args[*]:-}"
  echo "# server: resnet serve --queue 256 ${server_args[*]:-(defaults: --max-batch 8 --batch-wait-ms 2)}; image $image"
  echo "# cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores; load before: $(cut -d' ' -f1-3 /proc/loadavg)"
} | tee "$out/summary.txt"
printf '%-26s %10s %9s %9s %9s %8s\n' route "req/s" "p50 ms" "p99 ms" requests errors | tee -a "$out/summary.txt"
for r in "${routes[@]}"; do
  IFS='|' read -r name method path body ctype header <<<"$r"
  export WRK_METHOD=$method WRK_CONTENT_TYPE=$ctype WRK_BODY=${body:+$work/$body} WRK_HEADER=$header
  url="http://127.0.0.1:$port$path"
  wrk -t2 -c"$connections" -d2s --timeout 30s -s tools/wrk/request.lua "$url" >/dev/null  # warm-up
  # The warm-up's unfinished requests are still queued in the server: let them drain first.
  for _ in $(seq 1 600); do
    depth=$(curl -s "http://127.0.0.1:$port/metrics" | awk '$1 == "resnet_queue_depth" {print $2}')
    [[ ${depth:-0} == 0 ]] && break
    sleep 0.1
  done
  wrk -t2 -c"$connections" -d"${seconds}s" --timeout 30s --latency -s tools/wrk/request.lua "$url" \
    >"$out/$name.wrk.txt"
  json=$(grep '^{"requests"' "$out/$name.wrk.txt")
  echo "{\"route\": \"$name\", \"method\": \"$method\", \"path\": \"$path\", \"connections\": $connections, \"result\": $json}" >>"$out/results.jsonl"
  python3 - "$name" "$json" <<'PY' | tee -a "$out/summary.txt"
import json, sys
r = json.loads(sys.argv[2])
errors = r["non_2xx_3xx"] + r["connect_errors"] + r["read_errors"] + r["write_errors"] + r["timeouts"]
print(f'{sys.argv[1]:<26} {r["requests_per_s"]:>10.1f} {r["latency_ms"]["p50"]:>9.1f} {r["latency_ms"]["p99"]:>9.1f} {r["requests"]:>9} {errors:>8}')
PY
done
echo "# load after: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$out/summary.txt"
curl -s "http://127.0.0.1:$port/metrics" | grep -E '^resnet_(batch_size_(sum|count)|http_requests_total)' >"$out/metrics.txt" || true
