#!/usr/bin/env bash
# Runs every check and test of dialerd: installs missing peers and tools,
# then the deployment files (scripts/check-manifests.sh), formatting, clippy,
# the unit and integration tests (real redis-server, SIPp and TLS peers on
# loopback), and a bounded fuzzing run (FUZZ_SECONDS per target, default 60;
# 0 skips it).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh
scripts/check-manifests.sh
cargo fmt --all -- --check
cargo clippy --locked --all-targets -- -D warnings
if [ "${FUZZ_SECONDS:-60}" != 0 ]; then
  scripts/fuzz.sh
fi
# Last, so that the test runner's summary closes the output.
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --locked --no-fail-fast
else
  cargo test --locked --no-fail-fast
fi
