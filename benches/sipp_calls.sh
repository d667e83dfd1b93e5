#!/usr/bin/env bash
# SIPp call load over UDP against dialerd and, in the same run, the SIPp-to-SIPp
# ceiling; then dialerd placing calls; then dialerd's memory per held call.
#
#   uas   dialerd as UAS: a SIPp UAC (benches/sipp/call_uac.xml: INVITE with SDP,
#         100/180 optional, 200, ACK, HOLD_MS pause, BYE, 200) against
#         `dialerd run` with [calls] inbound = "answer";
#   sipp  the same SIPp UAC against a SIPp UAS (benches/sipp/call_uas.xml: 180,
#         200 with SDP, ACK, BYE answered 200): the reference;
#   uac   dialerd as UAC: benches/examples/call_load.rs (one dialerd SIP core
#         placing RATE calls/s for SECS s, each hung up HOLD_MS after its
#         answer) against the SIPp UAS;
#   mem   resident memory (VmRSS) of `dialerd run` idle and with N
#         signalling-only calls held at once (SIPp UAC with a long pause), per
#         call; then the same for the SIPp UAS, for reference.
#
# For each rate: SECS seconds of calls, each held HOLD_MS. A rate is held when
# every call succeeded (for SIPp and, for dialerd, no call ended with another
# cause than "normal" in dialerd_calls_ended_total), the last call was started
# at most 10 % later than planned and the whole run took at most 10 % longer
# than SECS + HOLD_MS (+2 s). CPU is each process's own utime + stime from
# /proc/PID/stat over its run, divided by the calls attempted; the load
# generator runs on CPU 0, the responder on CPU 1 (taskset), everything on
# loopback, SIPp with 4 MiB socket buffers. Also printed: datagrams the kernel
# dropped on the responder's socket (/proc/net/udp, that socket only; dialerd's
# own counters cannot see them), dialerd's end causes and drop counters, and
# the kinds of errors SIPp logged. Bounded: RATES x SECS calls per part, each
# SIPp run under a global -timeout, call_load under its own drain deadline.
#
# KEEP=DIR keeps the logs, SIPp statistics and error files of the run in DIR.
#
#   benches/sipp_calls.sh                                  # all parts, defaults
#   RATES="1000 5000" SECS=20 HOLD_MS=1000 benches/sipp_calls.sh
#   PARTS="mem" MEM_CALLS="1000 10000" benches/sipp_calls.sh
#   NO_BUILD=1 ...                     # measure the binaries already built
set -euo pipefail
cd "$(dirname "$0")/.."

rates=${RATES:-"1000 2000 5000 10000"}
secs=${SECS:-30}
hold_ms=${HOLD_MS:-1000}
parts=${PARTS:-"uas sipp uac mem"}
mem_calls=${MEM_CALLS:-"1000 10000"}
mem_rate=${MEM_RATE:-1000}
# How long every call of the memory part stays up after the last one is set
# up: longer than 64 x T1 = 32 s, so the INVITE transactions (kept 32 s after
# the 2xx, RFC 6026) are gone when the held figure is taken.
mem_settle_s=${MEM_SETTLE_S:-36}
tick=$(getconf CLK_TCK)
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; [ -n "${KEEP:-}" ] && cp -r "$work" "$KEEP"; rm -rf "$work"' EXIT

if [ "${NO_BUILD:-0}" != 1 ]; then
  cargo build --release --locked --quiet
  CARGO_TARGET_DIR="$PWD/benches/target" cargo build --manifest-path benches/Cargo.toml --release \
    --locked --quiet --example call_load
fi
# Copies: a rebuild during the run must not change what is measured.
cp target/release/dialerd "$work/dialerd"
cp benches/target/release/examples/call_load "$work/call_load"
dialerd=$work/dialerd

echo "# $(date -u +%FT%TZ) $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- src || echo '+uncommitted src')" \
  "$(sipp -v 2>&1 | grep -o 'SIPp v[^ ]*' | head -1) nproc=$(nproc) load=$(cut -d' ' -f1-3 /proc/loadavg)"
echo "# RATES=\"$rates\" SECS=$secs HOLD_MS=$hold_ms PARTS=\"$parts\" MEM_CALLS=\"$mem_calls\" MEM_RATE=$mem_rate"

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
free_port() { python3 -c 'import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
free_tcp_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Waits (at most $2 s) until FILE ($1) has a line matching $3.
wait_line() {
  local file=$1 limit=$2 pattern=$3 i=0
  while ! grep -q "$pattern" "$file" 2>/dev/null; do
    sleep 0.1
    i=$((i + 1))
    [ "$i" -lt $((limit * 10)) ] || return 1
  done
}

# The settings dialerd runs with in every part: no Redis, warnings only, no
# call limit below the load (limits.calls_per_second limits outbound calls),
# media ports for rate x hold calls (10000..65000: 27,500 pairs), and calls
# without RTP never ended for it (the calls here carry no media, so
# media_timeout must not end them; dialerd still sends silence to the UAS).
dialerd_env() {
  export DIALERD__REDIS__ENABLED=false DIALERD__LOG__LEVEL=warn \
    DIALERD__LIMITS__MAX_CONCURRENT_CALLS=100000 DIALERD__LIMITS__CALLS_PER_SECOND=1000000 \
    DIALERD__MEDIA__RTP_PORT_RANGE__START=10000 DIALERD__MEDIA__RTP_PORT_RANGE__END=65000 \
    DIALERD__MEDIA__INACTIVITY_TIMEOUT_SECS=86400
}

# Starts a responder as a job of this shell (so the EXIT trap stops it);
# sets $pid (and $http_port for dialerd).
pid=
http_port=
start_dialerd() {
  local port=$1 name=$2
  http_port=$(free_tcp_port)
  (
    dialerd_env
    DIALERD__SIP__UDP_LISTEN="127.0.0.1:$port" DIALERD__HTTP__BIND="127.0.0.1:$http_port" \
      DIALERD__CALLS__INBOUND=answer \
      exec taskset -c 1 "$dialerd" run --profile local --profile-dir sip-profiles
  ) >"$work/$name.log" 2>&1 &
  pid=$!
}

# SIPp keeps ended calls 33 s (its default -deadcall_wait), so a late
# retransmission (a BYE whose 200 was lost) is absorbed, not taken for a new,
# failed call.
start_sipp_uas() {
  local port=$1 name=$2
  taskset -c 1 sipp -sf benches/sipp/call_uas.xml -i 127.0.0.1 -p "$port" -buff_size 4194304 \
    -nostdin -trace_stat -stf "$work/$name.csv" -fd 1 -trace_err \
    -error_file "$work/$name-errors.log" >"$work/$name.log" 2>&1 &
  pid=$!
}

# Datagrams the kernel dropped on the UDP socket bound to 127.0.0.1:PORT (its
# receive buffer was full): the last column of /proc/net/udp, that socket only.
udp_drops() {
  awk -v port="$(printf ':%04X' "$1")" '$2 ~ port"$" {print $NF; found=1} END {if (!found) print 0}' /proc/net/udp | head -1
}

# The kinds of events in a SIPp error file, counted.
sipp_errors() {
  [ -s "$1" ] || return 0
  grep -a -o '[0-9]\{10\}\.[0-9]\{6\}: [A-Za-z][A-Za-z ]\{0,40\}' "$1" | cut -d' ' -f2- |
    sed 's/ *[0-9]*$//' | grep -v '^Maximum number of open sockets' | sort | uniq -c | sort -rn | head -4 | awk '{$1=$1; print}' | paste -sd';' -
}

metrics() { curl -s --max-time 5 "http://127.0.0.1:$http_port/metrics" >"$1" || true; }

# Waits (at most $1 s) until dialerd's call table is empty.
wait_no_calls() {
  local i=0
  while [ "$i" -lt "$1" ]; do
    metrics "$work/m.txt"
    if ! grep -E '^dialerd_calls\{' "$work/m.txt" | awk '{s += $2} END {exit !(s == 0)}'; then
      sleep 1
      i=$((i + 1))
    else
      return 0
    fi
  done
  return 1
}

results=$work/results.txt

# One SIPp UAC run of RATE calls/s for SECS s against the responder PID on PORT.
uac_load() {
  local name=$1 pid=$2 port=$3 rate=$4
  local total=$((rate * secs)) status=0 before after gbefore gafter start end gpid
  local limit=$((rate * (hold_ms / 1000 + 5) + 1000)) drops_before drops_after
  [ "$name" = dialerd ] && metrics "$work/before.txt"
  drops_before=$(udp_drops "$port")
  before=$(cpu_ticks "$pid")
  start=$(date +%s.%N)
  taskset -c 0 sipp "127.0.0.1:$port" -sf benches/sipp/call_uac.xml -i 127.0.0.1 -p "$(free_port)" \
    -r "$rate" -rp 1000 -m "$total" -l "$limit" -d "$hold_ms" -buff_size 4194304 -nostdin \
    -timeout "$((secs * 3 + 60))" -trace_stat -stf "$work/stat-$name-$rate.csv" -fd 1 \
    -trace_err -error_file "$work/uac-$name-$rate-errors.log" >"$work/uac-$name-$rate.log" 2>&1 &
  gpid=$!
  gbefore=$(cpu_ticks "$gpid" 2>/dev/null || echo 0)
  # The generator's CPU, read while it still exists.
  while kill -0 "$gpid" 2>/dev/null; do
    gafter=$(cpu_ticks "$gpid" 2>/dev/null || echo "${gafter:-0}")
    sleep 0.2
  done
  wait "$gpid" || status=$?
  end=$(date +%s.%N)
  after=$(cpu_ticks "$pid")
  drops_after=$(udp_drops "$port")
  local counters=""
  if [ "$name" = dialerd ]; then
    # A call whose ACK and BYE were lost ends 64 x T1 after its 200 (ack_timeout),
    # and its own BYE may take 64 x T1 more.
    wait_no_calls 80 || echo "  (dialerd still has live calls 80 s after the load)"
    metrics "$work/after.txt"
    counters="$work/before.txt $work/after.txt"
  fi
  python3 - "$name" "$rate" "$total" "$status" "$start" "$end" "$before" "$after" "$gbefore" \
    "${gafter:-0}" "$tick" "$secs" "$hold_ms" "$work/stat-$name-$rate.csv" \
    "$((drops_after - drops_before))" "$(sipp_errors "$work/uac-$name-$rate-errors.log")" \
    $counters <<'PY' | tee -a "$results"
import sys
(name, rate, total, status, start, end, before, after, gbefore, gafter, tick, secs, hold,
 csv, kdrops, errors) = sys.argv[1:17]
rate, total, secs, tick = int(rate), int(total), int(secs), int(tick)
rows = [l.rstrip("\n").split(";") for l in open(csv)]
head, rows = rows[0], rows[1:]
col = {h: i for i, h in enumerate(head)}
def epoch(field):
    return float(field.split("\t")[-1])
t0 = epoch(rows[0][col["StartTime"]])
last = rows[-1]
ok = int(last[col["SuccessfulCall(C)"]])
failed = int(last[col["FailedCall(C)"]])
created = int(last[col["OutgoingCall(C)"]])
retrans = int(last[col["Retransmissions(C)"]])
# When the last call was created (1 s resolution of the periodic rows).
created_at = next((epoch(r[col["CurrentTime"]]) - t0 for r in rows
                   if int(r[col["OutgoingCall(C)"]]) >= total), None)
took = float(end) - float(start)
cpu_us = (int(after) - int(before)) * 1e6 / tick
gen_s = (int(gafter) - int(gbefore)) / tick
hold_s = int(hold) / 1000
# Held: every call succeeded, the last one started on time and the run did
# not drag on (a slow responder makes SIPp retransmit and wait).
held = status == "0" and ok == total and failed == 0 and created_at is not None \
    and created_at <= secs * 1.1 + 1 and took <= secs * 1.1 + hold_s + 2
extra = ""
abnormal = 0
if len(sys.argv) > 18:
    def counters(path):
        out = {}
        for line in open(path):
            for metric in ("dialerd_calls_ended_total", "dialerd_sip_dropped_total",
                           "dialerd_media_bind_failed_total", "dialerd_media_commands_dropped_total"):
                if line.startswith(metric + "{") or line.startswith(metric + " "):
                    key, value = line.rsplit(" ", 1)
                    out[key] = float(value)
        return out
    b, a = counters(sys.argv[17]), counters(sys.argv[18])
    delta = {k: a[k] - b.get(k, 0) for k in a if a[k] - b.get(k, 0) > 0}
    abnormal = sum(v for k, v in delta.items()
                   if k.startswith("dialerd_calls_ended_total") and 'cause="normal"' not in k)
    # A call dialerd ended abnormally failed, whatever SIPp counted.
    held = held and abnormal == 0
    extra = "  dialerd: " + (", ".join(f"{k.replace('dialerd_', '').replace('_total', '')}={v:.0f}"
                                       for k, v in sorted(delta.items()))
                             or "no counters moved")
created_txt = f"{created_at:.0f} s" if created_at is not None else "never"
print(f"UAS {name:7} rate {rate:6}/s  attempted {created:7} ok {ok:7} failed {failed:6}  "
      f"last call started at {created_txt}, run {took:5.1f} s  retrans {retrans}  exit {status}  "
      f"{'HELD' if held else 'not held'}  responder CPU {cpu_us / total:6.1f} us/call  "
      f"SIPp UAC CPU {gen_s * 1e6 / total:6.1f} us/call ({gen_s / took * 100:3.0f} % of CPU 0)"
      f"  responder socket drops {kdrops}{extra}")
if errors:
    print(f"    SIPp UAC errors: {errors}")
PY
}

if [[ " $parts " == *" uas "* ]]; then
  echo "# part uas, load average $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$results"
  port=$(free_port)
  start_dialerd "$port" dialerd-uas
  sleep 2
  for rate in $rates; do
    uac_load dialerd "$pid" "$port" "$rate" || true
  done
  warnings=$(grep -c -E ' (WARN|ERROR) ' "$work/dialerd-uas.log" || true)
  echo "  dialerd log: $warnings warnings/errors; first ones:"
  grep -E ' (WARN|ERROR) ' "$work/dialerd-uas.log" | head -5 | sed 's/^/    /' || true
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
fi

if [[ " $parts " == *" sipp "* ]]; then
  echo "# part sipp, load average $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$results"
  port=$(free_port)
  start_sipp_uas "$port" sipp-uas-ref
  sleep 1
  for rate in $rates; do
    uac_load sipp "$pid" "$port" "$rate" || true
    sleep 2
  done
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
fi

if [[ " $parts " == *" uac "* ]]; then
  echo "# part uac, load average $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$results"
  for rate in $rates; do
    port=$(free_port)
    start_sipp_uas "$port" "sipp-uas-$rate"
    uas=$pid
    sleep 1
    out=$work/call_load-$rate.txt
    (
      dialerd_env
      DIALERD__SIP__UDP_LISTEN=127.0.0.1:0 exec taskset -c 0 "$work/call_load" \
        "sip:bench@127.0.0.1:$port" "$rate" "$secs" "$hold_ms"
    ) >"$out" 2>&1 &
    gen=$!
    if ! wait_line "$out" 30 '^READY'; then
      echo "UAC dialerd rate $rate: call_load did not start"; cat "$out"
      kill "$gen" "$uas" 2>/dev/null || true
      continue
    fi
    gbefore=$(cpu_ticks "$gen")
    before=$(cpu_ticks "$uas")
    own_port=$(awk '/^READY/ {print $2}' "$out")
    own_drops=$(udp_drops "$own_port")
    uas_drops=$(udp_drops "$port")
    if ! wait_line "$out" $((secs * 2 + hold_ms / 1000 + 90)) '^RESULT'; then
      echo "UAC dialerd rate $rate: no result in time"; tail -5 "$out"
    fi
    gafter=$(cpu_ticks "$gen" 2>/dev/null || echo "$gbefore")
    after=$(cpu_ticks "$uas")
    own_drops=$(($(udp_drops "$own_port") - own_drops))
    uas_drops=$(($(udp_drops "$port") - uas_drops))
    kill "$gen" 2>/dev/null || true
    wait "$gen" 2>/dev/null || true
    sleep 1
    kill "$uas" 2>/dev/null || true
    wait "$uas" 2>/dev/null || true
    python3 - "$rate" "$secs" "$tick" "$gbefore" "$gafter" "$before" "$after" "$out" \
      "$work/sipp-uas-$rate.csv" "$own_drops" "$uas_drops" "$(sipp_errors "$work/sipp-uas-$rate-errors.log")" \
      <<'PY' | tee -a "$results"
import json, sys
rate, secs, tick, gb, ga, b, a = map(int, sys.argv[1:8])
out, csv, own_drops, uas_drops, errors = sys.argv[8:13]
lines = [l for l in open(out) if l.startswith("RESULT ")]
if not lines:
    print(f"UAC dialerd rate {rate}: no RESULT"); sys.exit()
r = json.loads(lines[-1][7:])
rows = [l.rstrip("\n").split(";") for l in open(csv)]
col = {h: i for i, h in enumerate(rows[0])}
uas_ok = int(rows[-1][col["SuccessfulCall(C)"]]) if len(rows) > 1 else -1
uas_failed = int(rows[-1][col["FailedCall(C)"]]) if len(rows) > 1 else -1
total = r["attempted"]
held = r["failed"] == 0 and r["last_placed_secs"] <= secs * 1.1 \
    and r["total_secs"] <= secs * 1.1 + r["hold_ms"] / 1000 + 2
warnings = [l.strip() for l in open(out) if " WARN " in l or " ERROR " in l]
metrics = {}
for l in open(out):
    if l.startswith("METRIC "):
        key, value = l[7:].rsplit(" ", 1)
        if float(value) > 0 and ("dropped" in key or "calls_ended" in key or "failed" in key):
            metrics[key.replace("dialerd_", "").replace("_total", "")] = int(float(value))
abnormal = sum(v for k, v in metrics.items() if k.startswith("calls_ended") and 'cause="normal"' not in k)
held = held and abnormal == 0
print(f"UAC dialerd rate {rate:6}/s  attempted {total:7} ok {r['succeeded']:7} failed {r['failed']:6}"
      f"  last INVITE at {r['last_placed_secs']:.1f} s, run {r['total_secs']:.1f} s"
      f"  {'HELD' if held else 'not held'}  dialerd (generator) CPU {(ga - gb) * 1e6 / tick / total:6.1f} us/call"
      f" (self-measured {r['cpu_ticks_load'] * 1e6 / tick / total:6.1f})"
      f"  SIPp UAS CPU {(a - b) * 1e6 / tick / total:6.1f} us/call (UAS ok {uas_ok} failed {uas_failed})"
      f"  setup ms p50 {r['setup_ms_p50']} p99 {r['setup_ms_p99']} max {r['setup_ms_max']}"
      f"  failures {r['failures']} lost {r['events_lost']} place_errors {r['place_errors']}"
      f"  {len(warnings)} log warnings  socket drops: dialerd {own_drops}, SIPp UAS {uas_drops}"
      f"  dialerd: {', '.join(f'{k}={v}' for k, v in sorted(metrics.items()))}")
if errors:
    print(f"    SIPp UAS errors: {errors}")
for w in warnings[:5]:
    print("    " + w)
PY
  done
fi

if [[ " $parts " == *" mem "* ]]; then
  echo "# part mem, load average $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$results"
  for n in $mem_calls; do
    # dialerd, then a SIPp UAS holding the same calls, for reference.
    for responder in dialerd sipp; do
      port=$(free_port)
      if [ "$responder" = dialerd ]; then
        start_dialerd "$port" "dialerd-mem-$n"
      else
        start_sipp_uas "$port" "sipp-uas-mem-$n"
      fi
      sleep 3
      idle=$(rss_kb "$pid")
      setup_s=$(((n + mem_rate - 1) / mem_rate))
      hold=$(((setup_s + mem_settle_s + 4) * 1000))
      taskset -c 0 sipp "127.0.0.1:$port" -sf benches/sipp/call_uac.xml -i 127.0.0.1 -p "$(free_port)" \
        -r "$mem_rate" -rp 1000 -m "$n" -l "$((n + 10))" -d "$hold" -buff_size 4194304 -nostdin \
        -timeout "$((setup_s * 2 + hold / 1000 + 120))" -trace_stat -stf "$work/stat-mem-$responder-$n.csv" \
        -fd 1 >"$work/uac-mem-$responder-$n.log" 2>&1 &
      gen=$!
      sleep $((setup_s + 1))
      peak=$(rss_kb "$pid")
      sleep "$mem_settle_s"
      held_kb=$(rss_kb "$pid")
      live=n/a
      if [ "$responder" = dialerd ]; then
        metrics "$work/mem-held-$n.txt"
        live=$(awk '/^dialerd_calls\{state="answered"\}/ {print $2}' "$work/mem-held-$n.txt")
      fi
      status=0
      wait "$gen" || status=$?
      [ "$responder" = dialerd ] && { wait_no_calls 60 || true; }
      after=$(rss_kb "$pid")
      ok=$(tail -1 "$work/stat-mem-$responder-$n.csv" | python3 -c '
import sys; print(sys.stdin.read().split(";")[15])')
      kill "$pid" 2>/dev/null || true
      wait "$pid" 2>/dev/null || true
      python3 - "$responder" "$n" "$idle" "$peak" "$held_kb" "$after" "${live:-?}" "$status" "$ok" \
        "$setup_s" "$mem_settle_s" <<'PY' | tee -a "$results"
import sys
responder = sys.argv[1]
n, idle, peak, held, after = map(int, sys.argv[2:7])
live, status, ok, setup_s, settle = sys.argv[7:12]
print(f"MEM {responder:7} {n:6} calls  VmRSS idle {idle / 1024:6.1f} MiB,"
      f" all set up (+{int(setup_s) + 1} s) {peak / 1024:6.1f} MiB = {(peak - idle) * 1024 / n:6.0f} B/call,"
      f" held {settle} s later {held / 1024:6.1f} MiB = {(held - idle) * 1024 / n:6.0f} B/call"
      f" (dialerd's live answered calls then: {live}), after all ended {after / 1024:6.1f} MiB;"
      f" SIPp UAC exit {status}, {ok} calls ok")
PY
    done
  done
fi

echo
echo "# summary"
cat "$results"
