#!/usr/bin/env bash
# RTP relay under N bridged G.711 calls on loopback: relay CPU per relayed
# packet, packets per second, percent of one core, added latency (p50, p99)
# and memory per call, for dialerd's media relay and, in the same run, two
# baselines: rtpengine (Debian package, userspace forwarding, set up over its
# ng protocol) and a naive tokio relay (one task and socket per leg, one recv
# and one send per packet).
#
# For each N in CALLS and each relay in RELAYS, one after the other, a fresh
# relay process and a fresh load generator (benches/examples/rtp_load.rs):
#   direct     no relay: the generator's side A sends straight to side B and
#              back; the loopback and generator cost that "added latency" is
#              measured against;
#   dialerd    benches/examples/dialerd_relay.rs: dialerd::media with one
#              shard thread, legs opened, specified (PCMU/0, 20 ms) and
#              connected through the library API, as the SIP core does;
#   dialerd_amd  as dialerd, with answering-machine detection on leg A of
#              every call (held undecided: both stages on every frame);
#              compare with dialerd under RTP_LOAD_PAYLOAD=tone (the
#              generator's payload a 1 kHz tone, not silence);
#   naive      benches/examples/naive_relay.rs: tokio current-thread runtime;
#   rtpengine  rtpengine --table=-1 (no kernel forwarding) --num-threads=1,
#              ng listener on 127.0.0.1, RTP ports RTPENGINE_PORTS; calls set
#              up by benches/rtpengine_ng.py (offer with A's SDP, answer with
#              B's).
# Per call the generator sends a 172-byte RTP packet every 20 ms from each
# side (2N streams, phases spread over the 20 ms, send time stamped in the
# payload), WARMUP s not counted, then SECS s measured. Relay CPU is its
# utime + stime (/proc/PID/stat) over the measured window, read by the
# generator at the window's edges, per packet the generator received from
# it (packets/s per core = 1 / that); memory per call is the relay's VmRSS at
# the end of the window minus its VmRSS before the calls were set up (after
# its start), over N (kernel socket memory is not in it). Latency is receive
# time - send stamp, in the generator (one clock); added latency = a relay's
# figure - the direct run's of the same N. The generator busy-polls its
# sockets on one core; "generator busy" is the part of the window it spent
# sending and receiving (near 100 %, or sends late by more than 1 ms: the
# generator is the limit).
#
# With PIN=1 (default) every relay runs on CPU 1 and the generator (and
# rtpengine_ng.py) on CPU 0. Bounded: the generator waits at most 120 s for
# the calls to be set up and runs under `timeout`; every process started
# here is killed on exit. Everything on 127.0.0.1. Prints one Markdown table
# (and the details of each run).
#
#   benches/relay_load.sh                       # CALLS="100 500 1000 1500" WARMUP=3 SECS=10
#   CALLS=1000 RELAYS="direct dialerd" benches/relay_load.sh
#   KEEP=DIR ...                                # keep logs and raw JSON results in DIR
#   NO_BUILD=1 ...                              # measure the binaries already built
#   QUIET_WAIT=SECS ...                         # before each run, wait at most this long (300) for
#                                               # the machine to be < 10 % busy over 2 s
#   SETTLE=SECS ...                             # pause after each run (5), while the kernel frees
#                                               # the sockets it closed
#   RETRIES=N ...                               # a run disturbed by other work (the relay waited
#                                               # for its CPU > 3 % of the window, or the generator
#                                               # was held up > 1 ms more than 50 times) is done
#                                               # again, at most N (2) times, else kept and marked
set -euo pipefail
cd "$(dirname "$0")/.."

calls_list=${CALLS:-"100 500 1000 1500"}
relays=${RELAYS:-"direct dialerd naive rtpengine"}
warmup=${WARMUP:-3}
secs=${SECS:-10}
# dialerd_relay and naive_relay bind BASE_PORT + 4c (+ 2): below the
# ephemeral ports (the generator's), as is rtpengine's range.
base_port=${BASE_PORT:-20000}
rtpengine_ports=${RTPENGINE_PORTS:-"20000 31999"}
on_gen=
on_relay=
if [ "${PIN:-1}" = 1 ]; then
  on_gen="taskset -c 0"
  on_relay="taskset -c 1"
fi
work=$(mktemp -d)
relay_pid=
gen_pid=
stop_run() {
  set +e
  for pid in $gen_pid $relay_pid; do
    kill "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
  done
  gen_pid=
  relay_pid=
  set -e
}
cleanup() {
  local pids
  set +e
  stop_run
  pids=$(jobs -p)
  [ -n "$pids" ] && kill $pids 2>/dev/null
  [ -n "$pids" ] && wait $pids 2>/dev/null
  [ -n "${KEEP:-}" ] && cp -r "$work" "$KEEP"
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# 2 sockets per call in the generator, up to 4 in a relay.
ulimit -n "$(ulimit -Hn)"

if [ "${NO_BUILD:-0}" != 1 ]; then
  (cd benches && CARGO_TARGET_DIR="$PWD/target" cargo build --release --locked --quiet \
    --example rtp_load --example dialerd_relay --example naive_relay)
fi
# Copies: a rebuild during the run must not change what is measured.
for b in rtp_load dialerd_relay naive_relay; do
  cp "benches/target/release/examples/$b" "$work/$b"
done

echo "# $(date -u +%FT%TZ) $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- src || echo '+uncommitted src')" \
  "$(rtpengine --version 2>&1 | sed -n 's/^Version: /rtpengine /p')" \
  "nproc=$(nproc) $(grep -m1 'model name' /proc/cpuinfo | sed 's/.*: //') load=$(cut -d' ' -f1-3 /proc/loadavg)"
echo "# CALLS=\"$calls_list\" RELAYS=\"$relays\" WARMUP=$warmup SECS=$secs PIN=${PIN:-1}"

free_port() { python3 -c 'import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

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

# Waits (at most QUIET_WAIT s, default 300) until both CPUs together were
# less than 10 % busy over 2 s (this machine is shared: another build or
# test would be measured with the relay), and says how busy they were.
wait_quiet() {
  local limit=${QUIET_WAIT:-300} t=0 a b busy
  while :; do
    read -ra a < <(head -1 /proc/stat)
    sleep 2
    read -ra b < <(head -1 /proc/stat)
    busy=$(python3 -c 'import sys; a = list(map(int, sys.argv[1].split()[1:9])); b = list(map(int, sys.argv[2].split()[1:9]))
d = [y - x for x, y in zip(a, b)]; print(round(100 * (sum(d) - d[3] - d[4]) / max(sum(d), 1)))' "${a[*]}" "${b[*]}")
    if [ "$busy" -lt 10 ] || [ "$t" -ge "$limit" ]; then
      echo "  (machine $busy % busy before the run, after waiting $t s)"
      return
    fi
    t=$((t + 2))
  done
}

results=$work/results.jsonl
: >"$results"
# One relay at one N: the generator's RESULT, tagged, appended to $results.
run_one() {
  local relay=$1 calls=$2 dir=$work/$1-$2 ng_port
  # A new directory: a retry must not find the last attempt's files.
  rm -rf "$dir"
  mkdir -p "$dir"
  local gen_args=(--calls "$calls" --addrs "$dir/addrs" --warmup "$warmup" --secs "$secs")
  local cpu_pids=
  case $relay in
    direct)
      gen_args+=(--direct)
      ;;
    dialerd | naive | dialerd_amd)
      local binary=$relay amd=
      if [ "$relay" = dialerd_amd ]; then binary=dialerd amd=1; fi
      DIALERD_AMD=$amd $on_relay "$work/${binary}_relay" --calls "$calls" --base-port "$base_port" --addrs "$dir/addrs" \
        --ports "$dir/ports" >"$dir/relay.log" 2>&1 &
      relay_pid=$!
      wait_for 10 grep -q READY "$dir/relay.log" || { echo "$relay did not start"; cat "$dir/relay.log"; return 1; }
      gen_args+=(--relay "$dir/ports")
      cpu_pids="relay=$relay_pid"
      ;;
    rtpengine)
      ng_port=$(free_port)
      $on_relay rtpengine --config-file=none --foreground --log-stderr --log-level=4 --table=-1 \
        --interface=127.0.0.1 --listen-ng="127.0.0.1:$ng_port" --port-min="${rtpengine_ports% *}" \
        --port-max="${rtpengine_ports#* }" --num-threads=1 --timeout=600 >"$dir/relay.log" 2>&1 &
      relay_pid=$!
      wait_for 10 python3 benches/rtpengine_ng.py "127.0.0.1:$ng_port" ping \
        || { echo "rtpengine did not start"; cat "$dir/relay.log"; return 1; }
      gen_args+=(--relay "$dir/ports")
      cpu_pids="relay=$relay_pid"
      ;;
    *)
      echo "unknown relay $relay"
      return 1
      ;;
  esac
  CPU_PIDS="$cpu_pids" $on_gen timeout $((warmup + secs + 150)) "$work/rtp_load" "${gen_args[@]}" \
    >"$dir/gen.log" 2>&1 &
  gen_pid=$!
  if [ "$relay" = rtpengine ]; then
    wait_for 30 test -e "$dir/addrs" || { echo "no generator addresses"; cat "$dir/gen.log"; return 1; }
    $on_gen timeout 120 python3 benches/rtpengine_ng.py "127.0.0.1:$ng_port" "$dir/addrs" "$dir/ports" \
      >"$dir/ng.log" 2>&1 || { echo "rtpengine setup failed"; cat "$dir/ng.log"; return 1; }
  fi
  local status=0
  wait "$gen_pid" || status=$?
  gen_pid=
  if ! grep -q '^RESULT ' "$dir/gen.log"; then
    echo "$relay $calls: no result (exit $status)"
    tail -5 "$dir/gen.log" "$dir/relay.log" 2>/dev/null || true
    stop_run
    return 0
  fi
  # The relay still running at the end is part of the result.
  local alive=true
  if [ -n "$relay_pid" ] && ! kill -0 "$relay_pid" 2>/dev/null; then
    alive=false
  fi
  stop_run
  sed -n 's/^RESULT //p' "$dir/gen.log" | python3 -c '
import json, sys
r = json.loads(sys.stdin.read())
r["relay"], r["relay_alive"] = sys.argv[1], sys.argv[2] == "true"
print(json.dumps(r))' "$relay" "$alive" >>"$results"
  local problems
  if [ -f "$dir/relay.log" ]; then
    problems=$(grep -ciE 'error|warn|panic' "$dir/relay.log" || true)
    [ "$problems" = 0 ] || { echo "$relay $calls: $problems warning/error lines in its log, first:"
      grep -iE 'error|warn|panic' "$dir/relay.log" | head -3 | cut -c1-200 | sed 's/^/    /'; }
  fi
}

# Whether the last result was disturbed by other work on the machine: the
# relay waited for its CPU more than 3 % of the window, or the generator's
# thread was held up for more than 1 ms more than 50 times (printed why).
disturbed() {
  tail -1 "$results" | python3 -c '
import json, sys
r = json.loads(sys.stdin.read())
wait = (r["cpu"].get("relay") or {}).get("runqueue_wait_ms", 0)
why = []
if wait > 30 * r["window_s"]:
    why.append(f"the relay waited {wait} ms for its CPU")
stalls = r["generator_stalls_over_1ms"]
if stalls > 50:
    why.append(f"the generator was held up {stalls} times")
print("; ".join(why))
sys.exit(0 if why else 1)'
}

for calls in $calls_list; do
  for relay in $relays; do
    attempt=0
    while :; do
      attempt=$((attempt + 1))
      echo "# $relay, $calls calls, load average $(cut -d' ' -f1-3 /proc/loadavg)"
      wait_quiet
      lines=$(wc -l <"$results")
      run_one "$relay" "$calls" || { stop_run; echo "  ($relay at $calls calls failed)"; }
      # The kernel frees the thousands of sockets just closed (RCU) for a while.
      sleep "${SETTLE:-5}"
      [ "$(wc -l <"$results")" -gt "$lines" ] || break
      why=$(disturbed) || break
      if [ "$attempt" -gt "${RETRIES:-2}" ]; then
        echo "  (disturbed: $why; kept)"
        break
      fi
      echo "  (disturbed: $why; again)"
      sed -i '$d' "$results"
    done
  done
done

python3 - "$results" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
direct = {r["calls"]: r for r in rows if r["relay"] == "direct"}
def us(x, sign=""):
    if x is None:
        return "—"
    return f"{x / 1000:{sign},.1f} ms" if abs(x) >= 10000 else f"{x:{sign},.1f} µs"
def added(r, key):
    d = direct.get(r["calls"])
    if r["relay"] == "direct" or d is None or r[key] is None or d[key] is None:
        return "—"
    return us(r[key] - d[key], "+")
print()
print("| calls | relay | relayed packets/s | relay CPU / packet | packets/s per core | % of one core "
      "| p50 (added) | p99 (added) | p99.9 | max | lost / sent | memory / call | generator busy |")
print("| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
for r in rows:
    cpu = r["cpu"].get("relay")
    lost = f"{r['lost']:,} / {r['packets_sent']:,}"
    if cpu:
        rss = cpu["rss_kb"]
        mem = "—"
        if rss["before_setup"] is not None and rss["end"] is not None:
            mem = f"{(rss['end'] - rss['before_setup']) * 1024 / r['calls']:,.0f} B"
        per_core = f"{1e6 / cpu['us_per_packet']:,.0f}" if cpu["us_per_packet"] else "—"
        cpu_cells = f"{cpu['us_per_packet']:.2f} µs | {per_core} | {cpu['core_percent']:.1f} %"
    else:
        mem = "—"
        cpu_cells = "— | — | —"
    name = r["relay"] + ("" if r.get("relay_alive", True) else " (died)")
    wait = (r["cpu"].get("relay") or {}).get("runqueue_wait_ms", 0)
    if wait > 30 * r["window_s"] or r["generator_stalls_over_1ms"] > 50:
        name += " (disturbed)"
    print(f"| {r['calls']:,} | {name} | {r['relayed_pps']:,.0f} | {cpu_cells} "
          f"| {us(r['p50_us'])} ({added(r, 'p50_us')}) | {us(r['p99_us'])} ({added(r, 'p99_us')}) "
          f"| {us(r['p999_us'])} | {us(r['max_us'])} | {lost} | {mem} | {r['generator_busy_percent']:.0f} % |")
print()
print("Details per run (schedstat: on-CPU time of the relay's threads, /proc/PID/task/*/schedstat; "
      "sleeps: the relay's voluntary context switches; late: sends more than 1 ms behind schedule; "
      "foreign: packets not from the generator, e.g. a relay's silence, in the window; "
      "CPU busy per core from /proc/stat):")
for r in rows:
    cpu = r["cpu"].get("relay") or {}
    rss = cpu.get("rss_kb", {})
    cpus = ", ".join(f"{k} {v['busy_percent']} % (softirq {v['softirq_percent']} %, steal {v['steal_percent']} %)"
                     for k, v in r["cpus"].items())
    setup_mem = "—"
    if rss.get("before_setup") is not None and rss.get("after_setup") is not None:
        setup_mem = f"{(rss['after_setup'] - rss['before_setup']) * 1024 / r['calls']:,.0f} B/call"
    print(f"- {r['relay']} {r['calls']}: sent {r['packets_sent']:,} of {r['packets_expected']:,} scheduled, "
          f"received {r['packets_received']:,}, seq gaps {r['seq_gaps']}, reordered {r['reordered']}, "
          f"misrouted {r['misrouted']}, foreign {r['foreign_in_window']} ({r['foreign']} in all), "
          f"send errors {r['send_errors']}, "
          f"late {r['send_late_over_1ms']} (max {r['send_late_max_us']} µs), generator stalls over 1 ms "
          f"{r['generator_stalls_over_1ms']} (max {r['generator_stall_max_us']} µs), mean {r['mean_us']} µs, "
          f"p90 {r['p90_us']} µs; relay schedstat {cpu.get('schedstat_us_per_packet', '—')} µs/packet, "
          f"sleeps {cpu.get('sleeps_per_packet', '—')}/packet, "
          f"run-queue wait {cpu.get('runqueue_wait_ms', '—')} ms; RSS {rss.get('before_setup', '—')} → "
          f"{rss.get('after_setup', '—')} (set up: {setup_mem}) → {rss.get('end', '—')} kB; "
          f"UDP errors {r['udp_errors'] or 'none'}; CPUs: {cpus}; setup {r['setup_s']} s; "
          f"packets over 1 ms by second: {r['over_1ms_by_second']}")
PY
