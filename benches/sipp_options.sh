#!/usr/bin/env bash
# A SIPp OPTIONS load over UDP against dialerd and, in the same run, against
# a SIPp UAS answering OPTIONS: for each rate, SECS seconds of load; a rate is
# held when every OPTIONS got its 200 and the load took at most 10 % longer
# than planned. Prints, per responder and rate, the outcome and the
# responder's CPU per OPTIONS from /proc/PID/stat (utime + stime).
#
# The load generator runs on CPU 0, the responder on CPU 1 (taskset), all on
# loopback. Bounded: RATES x SECS per responder.
#
#   benches/sipp_options.sh                      # rates 10k..60k/s, 30 s each
#   RATES="20000 40000" SECS=10 benches/sipp_options.sh
set -euo pipefail
cd "$(dirname "$0")/.."

rates=${RATES:-"10000 20000 30000 40000 50000 60000"}
secs=${SECS:-30}
tick=$(getconf CLK_TCK)
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT

cargo build --release --locked --quiet
dialerd=target/release/dialerd

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

free_port() { python3 -c 'import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

start_dialerd() {
  local port=$1
  cat >"$work/dialerd.toml" <<TOML
[log]
level = "warn"
TOML
  DIALERD__SIP__UDP_LISTEN="127.0.0.1:$port" DIALERD__HTTP__BIND="127.0.0.1:$(free_port)" \
    DIALERD__REDIS__ENABLED=false \
    taskset -c 1 "$dialerd" run --config "$work/dialerd.toml" --profile local \
    --profile-dir sip-profiles >"$work/dialerd.log" 2>&1 &
  echo $!
}

start_sipp_uas() {
  local port=$1
  taskset -c 1 sipp -sf tests/sipp/options_uas.xml -i 127.0.0.1 -p "$port" -buff_size 4194304 \
    -nostdin -deadcall_wait 0 >"$work/uas.log" 2>&1 &
  echo $!
}

load() {
  local name=$1 pid=$2 port=$3 rate=$4
  local total=$((rate * secs))
  local before after start end status
  before=$(cpu_ticks "$pid")
  start=$(date +%s.%N)
  status=0
  taskset -c 0 sipp "127.0.0.1:$port" -sf tests/sipp/options_uac.xml -i 127.0.0.1 -p "$(free_port)" \
    -r "$rate" -rp 1000 -m "$total" -buff_size 4194304 -nostdin -timeout "$((secs * 3 + 30))" \
    -trace_stat -stf "$work/stat-$name-$rate.csv" -fd 1 >/dev/null 2>&1 || status=$?
  end=$(date +%s.%N)
  after=$(cpu_ticks "$pid")
  local failed ok
  ok=$(tail -1 "$work/stat-$name-$rate.csv" | awk -F';' '{print $16}')
  failed=$(tail -1 "$work/stat-$name-$rate.csv" | awk -F';' '{print $18}')
  python3 - "$name" "$rate" "$total" "$status" "$start" "$end" "$before" "$after" "$tick" "$secs" "${failed:-?}" "${ok:-?}" <<'PY'
import sys
name, rate, total, status, start, end, before, after, tick, secs, failed, ok = sys.argv[1:]
took = float(end) - float(start)
cpu_us = (int(after) - int(before)) * 1e6 / int(tick)
per = cpu_us / int(total)
held = status == "0" and took <= float(secs) * 1.1
print(f"{name:8} rate {int(rate):6}/s  {int(total):7} OPTIONS in {took:5.1f} s  "
      f"exit {status} answered {ok} failed {failed}  {'HELD' if held else 'not held'}  "
      f"responder CPU {per:5.2f} us/OPTIONS")
PY
  [ "$status" = 0 ]
}

for responder in dialerd sipp; do
  port=$(free_port)
  if [ "$responder" = dialerd ]; then pid=$(start_dialerd "$port"); else pid=$(start_sipp_uas "$port"); fi
  sleep 2
  for rate in $rates; do
    if ! load "$responder" "$pid" "$port" "$rate"; then
      break
    fi
  done
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
done
