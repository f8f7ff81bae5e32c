#!/bin/sh
# Prepares a bare Debian 12 system for `make demo` / `make test`: installs
# make (which `make deps` cannot install for itself), then runs `make deps`.
set -eu
cd "$(dirname "$0")/.."
SUDO=""
[ "$(id -u)" = 0 ] || SUDO=sudo
if ! command -v make >/dev/null 2>&1; then
  $SUDO apt-get update
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y make
fi
make deps
