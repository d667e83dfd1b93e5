#!/usr/bin/env bash
# dialerd's AI-agent media bridge under N streams on loopback: dialerd's CPU
# (percent of one core, per stream, per message) and the latency each way,
# RTP -> WebSocket and WebSocket -> RTP, with loss.
#
# For each N in STREAMS, a fresh bridge and a fresh load, one after the other:
#   dialerd_agent  benches/examples/dialerd_agent.rs: dialerd::media with one
#                  shard thread; per stream a phone leg (open, spec PCMU/0
#                  20 ms sendrecv, latch_any) and an agent leg (open_agent:
#                  ws://127.0.0.1:PORT/ws, Twilio Media Streams), connected,
#                  as the SIP core's attach_agent does; no SIP;
#   agent_load     benches/examples/agent_load.rs: one process playing both
#                  the N phones (UDP, a 172-byte RTP packet every 20 ms, send
#                  stamp in the payload) and the N agents (a minimal WebSocket
#                  server; a 160-byte `media` message every 20 ms per stream,
#                  its own stamp in the payload).
# RTP -> WS latency: the agent's arrival time - the phone's stamp. WS -> RTP
# latency: the phone's arrival time - the agent's stamp; it includes dialerd's
# playout pacing (60 ms start threshold, frames at the stream's own 20 ms
# deadlines), a constant per stream, so "jitter added" is also given: per
# stream, latency - the stream's minimum over the window. dialerd's CPU is
# its utime + stime (/proc/PID/stat, all threads) over the window, read by
# the load at the window's edges.
#
# With PIN=1 (default) dialerd_agent runs on CPU 1, agent_load on CPU 0.
# Bounded: the load waits at most 120 s for the streams to start and runs
# under `timeout`; every process started here is killed on exit. Everything
# on 127.0.0.1. Prints one Markdown table and the details of each run.
#
#   benches/agent_load.sh                       # STREAMS="100 500" WARMUP=3 SECS=10
#   KEEP=DIR ...                                # keep logs and raw JSON results in DIR
#   NO_BUILD=1 ...                              # measure the binaries already built
#   QUIET_WAIT=SECS ...                         # before each run, wait at most this long (300) for
#                                               # the machine to be < 10 % busy over 2 s
#   SETTLE=SECS ...                             # pause after each run (5)
#   RETRIES=N ...                               # a run disturbed by other work (dialerd waited for
#                                               # its CPU > 3 % of the window, the load was held up
#                                               # > 1 ms more than 50 times or had < 95 % of its CPU)
#                                               # is done again, at most N (2) times, else kept and marked
set -euo pipefail
cd "$(dirname "$0")/.."

streams_list=${STREAMS:-"100 500"}
warmup=${WARMUP:-3}
secs=${SECS:-10}
base_port=${BASE_PORT:-20000}
on_gen=
on_bridge=
if [ "${PIN:-1}" = 1 ]; then
  on_gen="taskset -c 0"
  on_bridge="taskset -c 1"
fi
work=$(mktemp -d)
bridge_pid=
gen_pid=
stop_run() {
  set +e
  for pid in $gen_pid $bridge_pid; do
    kill "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
  done
  gen_pid=
  bridge_pid=
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

# 1 socket and 1 connection per stream in the load, 2 sockets + 1 connection in dialerd.
ulimit -n "$(ulimit -Hn)"

if [ "${NO_BUILD:-0}" != 1 ]; then
  (cd benches && CARGO_TARGET_DIR="$PWD/target" timeout 1800 cargo build --release --locked --quiet \
    --example agent_load --example dialerd_agent)
fi
# Copies: a rebuild during the run must not change what is measured.
for b in agent_load dialerd_agent; do
  cp "benches/target/release/examples/$b" "$work/$b"
done

echo "# $(date -u +%FT%TZ) $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- src || echo '+uncommitted src')" \
  "nproc=$(nproc) $(grep -m1 'model name' /proc/cpuinfo | sed 's/.*: //') load=$(cut -d' ' -f1-3 /proc/loadavg)"
echo "# STREAMS=\"$streams_list\" WARMUP=$warmup SECS=$secs PIN=${PIN:-1}"

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
# less than 10 % busy over 2 s, and says how busy they were.
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
run_one() {
  local n=$1 dir=$work/agent-$1
  rm -rf "$dir"
  mkdir -p "$dir"
  $on_bridge "$work/dialerd_agent" --streams "$n" --base-port "$base_port" --addrs "$dir/addrs" \
    --ports "$dir/ports" >"$dir/bridge.log" 2>&1 &
  bridge_pid=$!
  wait_for 10 grep -q READY "$dir/bridge.log" || { echo "dialerd_agent did not start"; cat "$dir/bridge.log"; return 1; }
  CPU_PIDS="dialerd=$bridge_pid" $on_gen timeout $((warmup + secs + 150)) "$work/agent_load" \
    --streams "$n" --addrs "$dir/addrs" --ports "$dir/ports" --warmup "$warmup" --secs "$secs" \
    >"$dir/gen.log" 2>&1 &
  gen_pid=$!
  local status=0
  wait "$gen_pid" || status=$?
  gen_pid=
  if ! grep -q '^RESULT ' "$dir/gen.log"; then
    echo "$n streams: no result (exit $status)"
    tail -5 "$dir/gen.log" "$dir/bridge.log" 2>/dev/null || true
    stop_run
    return 0
  fi
  # The bridge prints its legs' totals once the load is done.
  wait_for 10 grep -q '^STATS ' "$dir/bridge.log" || true
  local alive=true
  kill -0 "$bridge_pid" 2>/dev/null || alive=false
  stop_run
  python3 - "$dir" "$alive" >>"$results" <<'PY'
import json, sys
d, alive = sys.argv[1], sys.argv[2] == "true"
r = json.loads(next(l for l in open(f"{d}/gen.log") if l.startswith("RESULT "))[7:])
lines = open(f"{d}/bridge.log").read().splitlines()
# Reports before the load's end (after it, its connections close).
end = next((i for i, l in enumerate(lines) if l.startswith("STATS ")), len(lines))
def last(prefix, upto=len(lines)):
    found = [l[len(prefix):] for l in lines[:upto] if l.startswith(prefix)]
    return json.loads(found[-1]) if found else None
r["bridge_alive"] = alive
r["bridge_counts"] = last("COUNTS ", end)
r["bridge_stats"] = last("STATS ")
r["bridge_events"] = [json.loads(l[6:]) for l in lines[:end] if l.startswith("EVENT ")]
r["bridge_log_problems"] = [l[:200] for l in lines if any(w in l.lower() for w in ("error", "warn", "panic"))][:5]
print(json.dumps(r))
PY
}

# Whether the last result was disturbed by other work on the machine (this
# machine is shared): dialerd waited for its CPU more than 3 % of the window,
# the load's thread was held up for more than 1 ms more than 50 times, or it
# had less than 95 % of its CPU (it never sleeps; its softirq time counted).
# Prints why.
disturbed() {
  tail -1 "$results" | python3 -c '
import json, sys
r = json.loads(sys.stdin.read())
why = []
wait = (r["cpu"].get("dialerd") or {}).get("runqueue_wait_ms", 0)
if wait > 30 * r["window_s"]:
    why.append(f"dialerd waited {wait} ms for its CPU")
stalls = r["generator_stalls_over_1ms"]
if stalls > 50:
    why.append(f"the load was held up {stalls} times")
# Its own CPU time, and the softirq time (loopback delivery) on its CPU.
gen = (r["cpu"].get("agent_load") or {}).get("core_percent", 100) + r["cpus"].get("cpu0", {}).get("softirq_percent", 0)
if gen < 95:
    why.append(f"the load had {gen:.1f} % of its CPU")
print("; ".join(why))
sys.exit(0 if why else 1)'
}

for n in $streams_list; do
  attempt=0
  while :; do
    attempt=$((attempt + 1))
    echo "# $n streams, load average $(cut -d' ' -f1-3 /proc/loadavg)"
    wait_quiet
    lines=$(wc -l <"$results")
    run_one "$n" || { stop_run; echo "  ($n streams failed)"; }
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

python3 - "$results" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
def t(x):
    if x is None:
        return "—"
    return f"{x / 1000:,.1f} ms" if abs(x) >= 10000 else f"{x:,.0f} µs"
print()
print("| streams | messages/s RTP→WS | messages/s WS→RTP | dialerd CPU, % of one core | CPU per stream, % of a core "
      "| CPU per message | RTP→WS p50 / p99 / p99.9 | WS→RTP p50 / p99 | WS→RTP jitter added p50 / p99 "
      "| lost RTP→WS | lost WS→RTP | generator busy |")
print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
for r in rows:
    up, down, cpu = r["rtp_to_ws"], r["ws_to_rtp"], r["cpu"].get("dialerd", {})
    ul, dl, dj = up["latency"], down["latency"], down["jitter_added"]
    name = f"{r['streams']:,}" + ("" if r.get("bridge_alive", True) else " (died)")
    gen = r["cpu"].get("agent_load", {}).get("core_percent", 100) + r["cpus"].get("cpu0", {}).get("softirq_percent", 0)
    if cpu.get("runqueue_wait_ms", 0) > 30 * r["window_s"] or r["generator_stalls_over_1ms"] > 50 or gen < 95:
        name += " (disturbed)"
    print(f"| {name} | {up['per_s']:,.0f} | {down['per_s']:,.0f} | {cpu.get('core_percent', 0):.1f} % "
          f"| {cpu.get('per_stream_core_percent', 0):.3f} % | {cpu.get('us_per_message', 0):.2f} µs "
          f"| {t(ul['p50_us'])} / {t(ul['p99_us'])} / {t(ul['p999_us'])} "
          f"| {t(dl['p50_us'])} / {t(dl['p99_us'])} | {t(dj['p50_us'])} / {t(dj['p99_us'])} "
          f"| {up['lost']:,} / {up['sent']:,} | {down['lost']:,} / {down['sent']:,} "
          f"| {r['generator_busy_percent']:.0f} % |")
print()
print("Details per run:")
for r in rows:
    up, down, cpu, conn = r["rtp_to_ws"], r["ws_to_rtp"], r["cpu"].get("dialerd", {}), r["connections"]
    gen = r["cpu"].get("agent_load", {})
    rss = cpu.get("rss_kb", {})
    cpus = ", ".join(f"{k} {v['busy_percent']} % (softirq {v['softirq_percent']} %)" for k, v in r["cpus"].items())
    print(f"- {r['streams']} streams (setup {r['setup_s']} s, window {r['window_s']} s):")
    print(f"  - RTP→WS: sent {up['sent']:,} (expected {r['expected_each_way']:,}), received {up['received']:,}, "
          f"latency {up['latency']}, misrouted {up['misrouted']}, bad {up['bad']}, odd size {up['odd_size']}, "
          f"relay silence fill {up['silence_in_window']} in the window ({up['silence']} in all), "
          f"phone sends late > 1 ms {up['late_over_1ms']} (max {up['late_max_us']} µs), send errors {up['send_errors']}")
    print(f"  - WS→RTP: sent {down['sent']:,}, received {down['received']:,}, latency {down['latency']}, "
          f"jitter added {down['jitter_added']}, per-stream minimum {down['stream_minimum']}, "
          f"jitter added against the agents' scheduled send times {down['jitter_added_vs_schedule']}, "
          f"cadence lateness (frames toward the phone against their stream's 20 ms grid) {down['cadence_lateness']}, "
          f"silence frames (underruns) in window {down['silence_in_window']} of {down['rtp_arrived_in_window']:,} "
          f"frames, seq gaps {down['seq_gaps']}, reordered {down['reordered']}, misrouted {down['misrouted']}, "
          f"agent sends late > 1 ms {down['late_over_1ms']} (max {down['late_max_us']} µs), not ready "
          f"{down['not_ready']}, writes queued {down['writes_queued']} (max {down['write_queue_max_bytes']} B)")
    print(f"  - dialerd: {cpu.get('cpu_s')} s CPU, schedstat {cpu.get('schedstat_cpu_s')} s "
          f"({cpu.get('schedstat_us_per_message')} µs/message), sleeps {cpu.get('sleeps_per_message')}/message, "
          f"run-queue wait {cpu.get('runqueue_wait_ms')} ms, RSS {rss.get('before_setup')} → {rss.get('after_setup')} "
          f"→ {rss.get('end')} kB; messages in window both ways {r['messages_in_window_both_ways']:,}")
    print(f"  - connections: {conn}; generator CPU {gen.get('core_percent')} %, busy {r['generator_busy_percent']} %, "
          f"stalls > 1 ms {r['generator_stalls_over_1ms']} (max {r['generator_stall_max_us']} µs)")
    print(f"  - bridge: counts {r['bridge_counts']}, leg totals {r['bridge_stats']}, "
          f"{len(r['bridge_events'])} reports before the end (other than started and latched) {r['bridge_events'][:3]}, log problems {r['bridge_log_problems']}")
    print(f"  - net errors {r['net_errors'] or 'none'}; CPUs: {cpus}")
PY
