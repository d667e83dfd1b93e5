#!/usr/bin/env bash
# Runs every check and test of dialerd: installs missing peers, then
# formatting, clippy, and the unit and integration tests (real redis-server
# and SIPp on loopback).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh
cargo fmt --all -- --check
cargo clippy --locked --all-targets -- -D warnings
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --locked --no-fail-fast
else
  cargo test --locked --no-fail-fast
fi
