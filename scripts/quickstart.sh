#!/usr/bin/env bash
# Quick start on this machine: starts local peers on loopback (redis-server on
# 6390, a SIPp stand-in PBX on 5070 that answers OPTIONS) and runs dialerd in
# the foreground with the `local` profile until Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh
cargo build --locked --bin dialerd
run_dir=$(mktemp -d -t dialerd-quickstart-XXXXXX)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$run_dir"
}
trap cleanup EXIT

redis-server --port 6390 --bind 127.0.0.1 --save "" --appendonly no \
  --dir "$run_dir" --logfile "$run_dir/redis.log" &
pids+=($!)
sipp -sf tests/sipp/options_uas.xml -i 127.0.0.1 -p 5070 -nostdin \
  >"$run_dir/sipp.log" 2>&1 &
pids+=($!)

cat >&2 <<TXT
quickstart: redis-server on 127.0.0.1:6390, SIPp PBX stand-in on 127.0.0.1:5070 (udp)
quickstart: dialerd status on http://127.0.0.1:8080 — try:
  curl -s 127.0.0.1:8080/status; curl -s 127.0.0.1:8080/readyz; curl -s 127.0.0.1:8080/metrics
quickstart: stop with Ctrl-C
TXT
target/debug/dialerd run --profile local "$@" &
pids+=($!)
wait "${pids[-1]}"
