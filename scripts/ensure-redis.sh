#!/usr/bin/env bash
# The tests start real redis-server processes; install Debian's package when it is missing.
set -euo pipefail
if command -v redis-server >/dev/null 2>&1 && command -v redis-cli >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  echo "redis-server not found: installing Debian's redis-server" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
  # Debian's package may start a system service; our tests never use it (they pick free ports).
  exit 0
fi
cat >&2 <<'MSG'
redis-server is missing and cannot be installed automatically (not root or no apt-get).
Install it (Debian/Ubuntu: sudo apt-get install redis-server; macOS: brew install redis),
or run a Docker engine (the fixtures then use testcontainers), or set REDIS_URL for the
tests that only need a shared server.
MSG
exit 1
