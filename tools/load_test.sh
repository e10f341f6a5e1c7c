#!/usr/bin/env bash
# Load test of `resnet serve` on loopback: starts a release server on synthetic weights (speed does
# not depend on the values), waits until ready, runs resnet-server's `load` example against it,
# prints the figures (requests/s, latency percentiles, errors, server peak RSS) and stops it with
# SIGTERM. Bounded: --seconds (default 20) and --max-requests.
#
#   tools/load_test.sh [--connections 16] [--seconds 20] [-- SERVER FLAGS...]
#   tools/load_test.sh --connections 16 --seconds 20 -- --max-batch 8 --batch-wait-ms 2
#
# Uses $CARGO_TARGET_DIR when set; RESNET_BIN_DIR=DIR uses already built `resnet` and `load`
# binaries from DIR instead of building; RESNET_WEIGHTS=FILE times another weights file.
set -euo pipefail
cd "$(dirname "$0")/.."

load_args=()
server_args=()
while [[ $# -gt 0 ]]; do
  if [[ $1 == "--" ]]; then shift; server_args=("$@"); break; fi
  load_args+=("$1"); shift
done

if [[ -n ${RESNET_BIN_DIR:-} ]]; then
  resnet=$RESNET_BIN_DIR/resnet
  load=$RESNET_BIN_DIR/load
else
  cargo build --release -q -p resnet-cli -p resnet-server --example load
  target=${CARGO_TARGET_DIR:-target}/release
  resnet=$target/resnet
  load=$target/examples/load
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

weights=${RESNET_WEIGHTS:-$tmp/synth.safetensors}
[[ -f $weights ]] || "$resnet" weights synth --seed 0 --out "$weights" >/dev/null

port=$(( 20000 + RANDOM % 20000 ))
"$resnet" serve --weights "$weights" --addr "127.0.0.1:$port" --quiet "${server_args[@]}" 2>"$tmp/server.log" &
server=$!
trap 'kill -TERM $server 2>/dev/null || true; rm -rf "$tmp"' EXIT
for _ in $(seq 1 600); do
  if curl -sf "http://127.0.0.1:$port/readyz" >/dev/null 2>&1; then break; fi
  if ! kill -0 $server 2>/dev/null; then cat "$tmp/server.log" >&2; exit 1; fi
  sleep 0.1
done

echo "server: resnet serve ${server_args[*]:-(defaults)}"
status=0
"$load" --addr "127.0.0.1:$port" --pid "$server" "${load_args[@]}" || status=$?
curl -s "http://127.0.0.1:$port/metrics" | grep -E '^resnet_batch_size_(sum|count) ' || true
kill -TERM $server
wait $server || true
exit $status
