#!/usr/bin/env bash
# Bounded fuzzing of the SIP parser, of bytes into the transaction layer and
# into the endpoint, of the SDP parser and offer/answer, and of control
# commands into the control core, and of datagrams, timers and commands into
# the media relay, with
# cargo-fuzz (libFuzzer). FUZZ_SECONDS per target (default 60). Installs
# cargo-fuzz if missing. Uses no sanitizer, so it runs on stable Rust; panics,
# hangs (-timeout) and memory blow-ups (-rss_limit_mb) are failures.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${FUZZ_SECONDS:-60}
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz: installing cargo-fuzz" >&2
  cargo install --locked cargo-fuzz@0.13.2
fi

# The fuzz crate's lock file is committed and must be current: fail rather
# than let cargo rewrite it.
cargo metadata --locked --format-version 1 --manifest-path fuzz/Cargo.toml >/dev/null

# Seed corpora from the RFC 4475 vectors and the benchmark messages.
for target in parse_message transaction endpoint sdp control relay agent; do
  mkdir -p "fuzz/corpus/$target"
done
cp tests/data/rfc4475/*.dat benches/data/*.sip fuzz/corpus/parse_message/
cp fuzz/seeds/transaction/*.bin fuzz/corpus/transaction/
cp fuzz/seeds/transaction/*.bin fuzz/corpus/endpoint/
cp fuzz/seeds/sdp/* fuzz/corpus/sdp/
cp fuzz/seeds/control/* fuzz/corpus/control/
cp fuzz/seeds/relay/* fuzz/corpus/relay/
cp fuzz/seeds/agent/* fuzz/corpus/agent/

for target in parse_message transaction endpoint sdp control relay agent; do
  echo "fuzz: $target for ${seconds}s" >&2
  log="fuzz/$target.log"
  status=0
  cargo fuzz run --sanitizer none "$target" "fuzz/corpus/$target" -- \
    -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -max_len=8192 -print_final_stats=1 \
    >"$log" 2>&1 || status=$?
  grep -aE '^(Done [0-9]+ runs|stat::number_of_executed_units|stat::peak_rss_mb)' "$log" || true
  if [ "$status" -ne 0 ]; then
    grep -aE 'panicked|ERROR|SUMMARY|Test unit written|failure' "$log" | head -20 >&2 || true
    echo "fuzz: $target failed (exit $status); input saved under fuzz/artifacts/$target" >&2
    exit 1
  fi
done
