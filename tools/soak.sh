#!/usr/bin/env bash
# Soak test of `resnet serve` on loopback, bounded: 10 minutes (or SECONDS, at most 600) of good
# requests mixed with bad ones (every 5th request of a connection is a JPEG cut in half, which
# must get 400) at moderate concurrency (8 connections). Reports requests, errors by status,
# p99 latency per minute, and the server's RSS every 10 s (first, last, peak): memory growth
# should stay under 10%. Stops by itself.
#
#   tools/soak.sh [SECONDS] [-- SERVER FLAGS...]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-600}
[[ $# -gt 0 ]] && shift
exec tools/load_test.sh --connections 8 --seconds "$secs" --bad-every 5 "$@"
