#!/usr/bin/env bash
# Install Debian packages a benchmark needs (h2load from nghttp2-client), when root.
set -euo pipefail
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
  exit 0
fi
echo "missing: $* (install them with your package manager, e.g. sudo apt-get install $*)" >&2
exit 1
