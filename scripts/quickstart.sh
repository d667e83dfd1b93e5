#!/usr/bin/env bash
# Quick start on this machine: starts local peers on loopback (redis-server on
# 6390, a SIPp registrar on 5070 that challenges with digest auth) and runs
# dialerd in the foreground with the `local` profile and the quick start's
# account (scripts/quickstart.toml) until Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh
cargo build --locked --bin dialerd
run_dir=$(mktemp -d -t dialerd-quickstart-XXXXXX)
peers=()
cleanup() {
  for pid in "${peers[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$run_dir"
}
trap cleanup EXIT

redis-server --port 6390 --bind 127.0.0.1 --save "" --appendonly no \
  --dir "$run_dir" --logfile "$run_dir/redis.log" &
peers+=($!)
sipp -sf tests/sipp/registrar_auth.xml -key expires 60 -deadcall_wait 0 -i 127.0.0.1 -p 5070 -nostdin \
  >"$run_dir/sipp.log" 2>&1 &
peers+=($!)

cat >&2 <<TXT
quickstart: redis-server on 127.0.0.1:6390, SIPp registrar on 127.0.0.1:5070 (udp, digest auth)
quickstart: dialerd registers account local-1001 there; status on http://127.0.0.1:8080 — try:
  curl -s 127.0.0.1:8080/status; curl -s 127.0.0.1:8080/readyz; curl -s 127.0.0.1:8080/metrics
  target/debug/dialerd probe sip:127.0.0.1:5060
  target/debug/dialerd ctl --config scripts/quickstart.toml --profile local status
quickstart: stop with Ctrl-C
TXT
target/debug/dialerd run --config scripts/quickstart.toml --profile local "$@" &
dialerd=$!
# Ctrl-C reaches dialerd directly (same process group); a TERM sent to this
# script is passed on once. Either way dialerd gets exactly one signal and
# shuts down gracefully (unREGISTER included) before the peers stop.
trap '' INT
trap 'kill -TERM "$dialerd" 2>/dev/null || true' TERM
status=0
while kill -0 "$dialerd" 2>/dev/null; do
  wait "$dialerd" && status=0 || status=$?
done
exit "$status"
