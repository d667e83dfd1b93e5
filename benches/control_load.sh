#!/usr/bin/env bash
# Command-to-result latency of dialerd's Redis control channel under a fixed
# rate of originates, placed against a SIPp UAS, through pub/sub and through
# the command stream; CPU of dialerd and redis-server per command; events
# published per second.
#
# One redis-server (127.0.0.1, a free port, no persistence), one SIPp UAS
# (benches/sipp/call_uas.xml, as sipp_calls.sh's UAC part: 180, 200 with SDP,
# ACK, BYE answered 200) and one release `dialerd run` with instance id
# "bench" and one account "bench" whose registrar is the SIPp UAS. That
# scenario does not answer REGISTER, so the account is `required = false`
# (readiness does not wait for it) and stays unregistered: dialerd sends an
# account's calls to its resolved registrar whether or not it is registered.
# Limits above the load (5,000 concurrent, 2,000 calls/s), destination dedup
# off (every `to` is unique anyway), RTP ports 10000-30000, log level warn.
#
# For each mode (MODES, default "pubsub stream"), benches/examples/control_load.rs
# sends RATE originates a second for SECS seconds (each call ends after
# max_duration_secs = 1) and prints a JSON result: latency from the send to
# the result (pub/sub: a private reply_to channel; stream: XADD to
# <p>:bench:cmdq, result read from <p>:events:stream and matched by id),
# errors by code, the events seen on <p>:events per second, and the CPU
# (utime + stime from /proc/PID/stat, per process) of dialerd, redis-server,
# SIPp and itself from just before the first send until every placed call
# has ended, per command, and how long their threads waited for a CPU
# meanwhile (/proc/PID/task/*/schedstat). Between the modes it waits until
# dialerd has no live call. Printed too: the machine's busy and steal time
# (/proc/stat), Redis commands per originate (INFO commandstats, all
# clients), dialerd's counters that moved (refusals, drops, end causes), its
# control channel's state from /status and its warnings.
#
# Bounded: RATE x SECS commands per mode; control_load waits at most 10 s for
# results and 20 s more for the calls' ends; SIPp under a global -timeout;
# every process is stopped on exit. Everything on 127.0.0.1. Nothing is
# pinned unless PIN=1.
#
#   benches/control_load.sh                      # RATE=1000 SECS=20 MODES="pubsub stream"
#   RATE=500 SECS=5 MODES=stream benches/control_load.sh
#   PIN=1 ...                                    # dialerd on CPU 1, the rest on CPU 0
#   KEEP=DIR ...                                 # keep logs, config, metrics in DIR
#   NO_BUILD=1 ...                               # measure the binaries already built
set -euo pipefail
cd "$(dirname "$0")/.."

rate=${RATE:-1000}
secs=${SECS:-20}
modes=${MODES:-"pubsub stream"}
# PIN=1: dialerd on CPU 1, everything else (redis-server, SIPp, control_load)
# on CPU 0, as sipp_calls.sh places responder and load generator.
on_gen=
on_dialerd=
if [ "${PIN:-0}" = 1 ]; then
  on_gen="taskset -c 0"
  on_dialerd="taskset -c 1"
fi
work=$(mktemp -d)
dialerd_pid=
cleanup() {
  local pids
  set +e
  # dialerd first, so that it stops while Redis is still there.
  if [ -n "$dialerd_pid" ]; then
    kill "$dialerd_pid" 2>/dev/null
    wait "$dialerd_pid" 2>/dev/null
  fi
  pids=$(jobs -p)
  [ -n "$pids" ] && kill $pids 2>/dev/null
  [ -n "$pids" ] && wait $pids 2>/dev/null
  [ -n "${KEEP:-}" ] && cp -r "$work" "$KEEP"
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if [ "${NO_BUILD:-0}" != 1 ]; then
  cargo build --release --locked --quiet
  CARGO_TARGET_DIR="$PWD/benches/target" cargo build --manifest-path benches/Cargo.toml --release \
    --locked --quiet --example control_load
fi
# Copies: a rebuild during the run must not change what is measured.
cp target/release/dialerd "$work/dialerd"
cp benches/target/release/examples/control_load "$work/control_load"

echo "# $(date -u +%FT%TZ) $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- src || echo '+uncommitted src')" \
  "$(redis-server --version | grep -o 'v=[^ ]*' | sed 's/v=/redis /')" \
  "$(sipp -v 2>&1 | grep -o 'SIPp v[^ ]*' | head -1) nproc=$(nproc) load=$(cut -d' ' -f1-3 /proc/loadavg)"
echo "# RATE=$rate SECS=$secs MODES=\"$modes\" PIN=${PIN:-0}"

free_port() { python3 -c 'import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
free_tcp_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
metrics() { curl -s --max-time 5 "http://127.0.0.1:$http_port/metrics" >"$1" || true; }

# Waits (at most $1 s) until the command $2... succeeds.
wait_for() {
  local limit=$1 i=0
  shift
  until "$@" >/dev/null 2>&1; do
    sleep 0.1
    i=$((i + 1))
    [ "$i" -lt $((limit * 10)) ] || return 1
  done
}

# Waits (at most $1 s) until dialerd's call table is empty.
wait_no_calls() {
  local i=0
  while [ "$i" -lt "$1" ]; do
    metrics "$work/m.txt"
    if grep -E '^dialerd_calls\{' "$work/m.txt" | awk '{s += $2} END {exit !(s == 0)}'; then
      return 0
    fi
    sleep 1
    i=$((i + 1))
  done
  return 1
}

redis_port=$(free_tcp_port)
$on_gen redis-server --bind 127.0.0.1 --port "$redis_port" --save '' --appendonly no --protected-mode yes \
  --dir "$work" --logfile "$work/redis.log" &
redis_pid=$!
wait_for 10 redis-cli -p "$redis_port" ping || { echo "redis-server did not start"; cat "$work/redis.log"; exit 1; }

sipp_port=$(free_port)
$on_gen sipp -sf benches/sipp/call_uas.xml -i 127.0.0.1 -p "$sipp_port" -buff_size 4194304 -nostdin \
  -timeout "$(((secs + 60) * 4 + 120))" -trace_stat -stf "$work/sipp-uas.csv" -fd 1 -trace_err \
  -error_file "$work/sipp-uas-errors.log" >"$work/sipp-uas.log" 2>&1 &
sipp_pid=$!

sip_port=$(free_port)
http_port=$(free_tcp_port)
cat >"$work/dialerd.toml" <<EOF
[instance]
id = "bench"

[instance.public_address]
source = "static"
address = "127.0.0.1"

[log]
level = "warn"

[sip]
udp_listen = ["127.0.0.1:$sip_port"]
allowed_peers = ["127.0.0.0/8"]

[http]
bind = "127.0.0.1:$http_port"

[redis]
enabled = true
url = "redis://127.0.0.1:$redis_port"

[shutdown]
deadline_secs = 10

[limits]
max_concurrent_calls = 5000
calls_per_second = 2000

[calls]
destination_window_secs = 0

[media]
# Below the ephemeral ports (32768-60999 here), which other sockets take.
rtp_port_range = { start = 10000, end = 30000 }
# These calls carry no RTP (not enforced yet; keeps the bench valid once it is).
inactivity_timeout_secs = 86400

[[accounts]]
name = "bench"
registrar = "sip:127.0.0.1:$sipp_port"
username = "bench"
transport = "udp"
required = false
EOF
$on_dialerd "$work/dialerd" run --config "$work/dialerd.toml" >"$work/dialerd.log" 2>&1 &
dialerd_pid=$!
if ! wait_for 20 curl -sf --max-time 1 "http://127.0.0.1:$http_port/readyz"; then
  echo "dialerd not ready in 20 s"; tail -20 "$work/dialerd.log"; exit 1
fi
sleep 1

results=$work/results.txt
for mode in $modes; do
  wait_no_calls 60 || echo "  (dialerd still has live calls after 60 s)"
  echo "# mode $mode, load average $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$results"
  metrics "$work/before-$mode.txt"
  redis-cli -p "$redis_port" info commandstats >"$work/redis-before-$mode.txt"
  head -1 /proc/stat >"$work/stat-before-$mode.txt"
  out=$work/control_load-$mode.txt
  status=0
  CPU_PIDS="dialerd=$dialerd_pid redis-server=$redis_pid sipp=$sipp_pid" \
    $on_gen timeout $((secs * 2 + 90)) "$work/control_load" "$mode" "redis://127.0.0.1:$redis_port" dialer bench bench \
    "127.0.0.1:$sipp_port" "$rate" "$secs" >"$out" 2>&1 &
  # In the background and waited for, so that a signal stops the run at once.
  wait $! || status=$?
  head -1 /proc/stat >"$work/stat-after-$mode.txt"
  wait_no_calls 30 || echo "  (dialerd still has live calls 30 s after the load)"
  metrics "$work/after-$mode.txt"
  curl -s --max-time 5 "http://127.0.0.1:$http_port/status" >"$work/status-$mode.json" || true
  redis-cli -p "$redis_port" info commandstats >"$work/redis-after-$mode.txt"
  python3 - "$mode" "$status" "$out" "$work/before-$mode.txt" "$work/after-$mode.txt" "$work/status-$mode.json" \
    "$work/redis-before-$mode.txt" "$work/redis-after-$mode.txt" "$work/stat-before-$mode.txt" \
    "$work/stat-after-$mode.txt" <<'PY' | tee -a "$results"
import json, re, sys
mode, status, out, before, after, status_file, rbefore, rafter, sbefore, safter = sys.argv[1:11]
lines = [l for l in open(out) if l.startswith("RESULT ")]
if not lines:
    print(f"{mode}: no RESULT (exit {status})")
    print("".join(open(out).readlines()[-10:]))
    sys.exit()
r = json.loads(lines[-1][7:])
lat = r["latency_ms"]
cpu = {k: v["us_per_command"] for k, v in r["cpu"].items()}
print(f"{mode:6} commands {r['count']} ok {r['ok']} errors {r['errors'] or 'none'} no_result {r['no_result']}"
      f"  latency ms p50 {lat['p50']} p90 {lat['p90']} p99 {lat['p99']} p99.9 {lat['p999']} max {lat['max']}"
      f"  achieved {r['achieved_rate']}/s  events {r['events_per_sec']}/s"
      f"  CPU us/command: " + ", ".join(f"{k} {v}" for k, v in cpu.items()))
if r.get("events_channel_latency_ms"):
    c = r["events_channel_latency_ms"]
    print(f"       the same results on <p>:events: p50 {c['p50']} p99 {c['p99']} max {c['max']} ms")
print(f"       p99 by second of the load (ms): {r['latency_p99_by_second_ms']}")
# Machine-wide over the run (both CPUs): busy, and stolen by the hypervisor.
sb = [int(x) for x in open(sbefore).read().split()[1:]]
sa = [int(x) for x in open(safter).read().split()[1:]]
d = [a - b for a, b in zip(sa, sb)]
whole = sum(d[:8]) or 1
print(f"       machine over the run: {100 * (whole - d[3] - d[4]) / whole:.0f} % busy"
      f" (of which softirq {100 * d[6] / whole:.0f} %), steal {100 * d[7] / whole:.1f} %")
print(f"       waited for a CPU over the {r['calls_done_secs']} s (schedstat, all threads): "
      + ", ".join(f"{k} {v['runqueue_wait_ms']} ms" for k, v in r["cpu"].items()))
print(f"       calls placed {r['calls_placed']} ended {r['calls_ended']} {r['calls_ended_by_cause']};"
      f" results done at {r['results_done_secs']} s, calls done at {r['calls_done_secs']} s;"
      f" events {r['events_total']} {r['events_by_type']}; seq gaps {r['seq_gaps']} repeats {r['seq_repeats']};"
      f" events.dropped {r['events_dropped']}; send errors {r['send_errors']} unheard {r['unheard']}"
      f" read errors {r['read_errors']}")
def counters(path):
    out = {}
    for line in open(path):
        if line.startswith("#") or " " not in line:
            continue
        key, value = line.rsplit(" ", 1)
        if any(w in key for w in ("dropped", "refused", "failed", "calls_ended", "command", "control", "redis",
                                  "timeout", "retrans", "events")):
            try:
                out[key] = float(value)
            except ValueError:
                pass
    return out
b, a = counters(before), counters(after)
moved = {k: a[k] - b.get(k, 0) for k in a if a[k] != b.get(k, 0)}
try:
    channel = json.load(open(status_file)).get("redis") or {}
except (OSError, ValueError):
    channel = {}
print("       dialerd control channel since start (/status): " + ", ".join(
    f"{k} {channel.get(k)}" for k in ("connected", "reconnects", "commands_ok", "commands_failed",
                                       "commands_dropped", "events_dropped", "backlog", "last_error")))
def commandstats(path):
    out = {}
    for line in open(path):
        m = re.match(r"cmdstat_([a-z|]+):calls=(\d+),usec=(\d+)", line.strip())
        if m:
            out[m.group(1)] = (int(m.group(2)), int(m.group(3)))
    return out
rb, ra = commandstats(rbefore), commandstats(rafter)
rd = {k: (c - rb.get(k, (0, 0))[0], u - rb.get(k, (0, 0))[1]) for k, (c, u) in ra.items()}
rd = sorted(((k, c, u) for k, (c, u) in rd.items() if c > 0), key=lambda x: -x[1])
n = r["count"]
print(f"       redis commands per originate (calls, then server usec per originate): "
      + ", ".join(f"{k} {c / n:.2f} ({u / n:.1f})" for k, c, u in rd)
      + f"; total {sum(c for _, c, _ in rd) / n:.2f} ({sum(u for _, _, u in rd) / n:.1f} us)")
print("       dialerd counters moved: " + (", ".join(f"{k.replace('dialerd_', '')}={v:g}" for k, v in sorted(moved.items()))
                                           or "none"))
PY
done

warnings=$(grep -c -E 'WARN|ERROR' "$work/dialerd.log" || true)
echo "dialerd log: $warnings warnings/errors; first ones:"
grep -E 'WARN|ERROR' "$work/dialerd.log" | head -5 | cut -c1-300 | sed 's/^/    /' || true
python3 - "$work/sipp-uas.csv" <<'PY' || true
import sys
rows = [l.rstrip("\n").split(";") for l in open(sys.argv[1])]
col = {h: i for i, h in enumerate(rows[0])}
last = rows[-1]
print(f"SIPp UAS: calls {last[col['IncomingCall(C)']]} ok {last[col['SuccessfulCall(C)']]}"
      f" failed {last[col['FailedCall(C)']]} retransmissions {last[col['Retransmissions(C)']]}")
PY

echo
echo "# summary"
cat "$results"
