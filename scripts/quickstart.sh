#!/usr/bin/env bash
# Quick start on this machine: starts local peers on loopback (redis-server on
# 6390; a SIPp "PBX" on 5070 that registers account 1001 with digest auth and
# answers the calls placed through it) and runs dialerd in the foreground with
# the `local` profile and the quick start's account (scripts/quickstart.toml),
# which answers inbound calls, until Ctrl-C.
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

# The peers run in sessions of their own, so Ctrl-C reaches dialerd alone:
# dialerd unregisters from a registrar that is still there, and the peers
# stop after it (cleanup).
setsid redis-server --port 6390 --bind 127.0.0.1 --save "" --appendonly no \
  --dir "$run_dir" --logfile "$run_dir/redis.log" &
peers+=($!)
# -rtp_echo: the PBX's phone sends back the RTP it gets (media port 26000).
setsid sipp -sf tests/sipp/quickstart_pbx.xml -key expires 60 -deadcall_wait 0 -i 127.0.0.1 -p 5070 -nostdin \
  -mi 127.0.0.1 -mp 26000 -rtp_echo >"$run_dir/sipp.log" 2>&1 &
peers+=($!)

cat >&2 <<TXT
quickstart: redis-server on 127.0.0.1:6390; a SIPp PBX on 127.0.0.1:5070 (udp, digest auth) that registers
quickstart: account local-1001 and answers calls; dialerd listens on 127.0.0.1:5060 and answers calls to 1001.
In another terminal:
  # place a call through the PBX (registers, INVITE with digest, 2 s of a 440 Hz tone echoed back, BYE);
  # prints the outcome and the call's RTP totals as JSON
  target/debug/dialerd call --config scripts/quickstart.toml --profile local --account local-1001 \\
    sip:service@127.0.0.1:5070 --hold-secs 2 --tone 440
  # take a call: SIPp calls dialerd, dialerd answers, SIPp hangs up
  sipp -sf tests/sipp/uac_call.xml -key callee 1001 -m 1 -nostdin -p 5090 127.0.0.1:5060 >/dev/null \\
    && curl -s 127.0.0.1:8080/metrics | grep calls_ended
  curl -s 127.0.0.1:8080/status; curl -s 127.0.0.1:8080/readyz
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
