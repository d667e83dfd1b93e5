#!/usr/bin/env bash
# Installs the local peers dialerd's tests and quick start use, if missing:
# redis-server (Debian redis-server) and SIPp (Debian sip-tester).
set -euo pipefail

need=()
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
command -v sipp >/dev/null 2>&1 || need+=(sip-tester)

if ((${#need[@]})); then
  echo "setup: installing ${need[*]}" >&2
  sudo=()
  [ "$(id -u)" -eq 0 ] || sudo=(sudo)
  "${sudo[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

for bin in redis-server sipp cargo; do
  command -v "$bin" >/dev/null 2>&1 || { echo "setup: $bin is still missing" >&2; exit 1; }
done
