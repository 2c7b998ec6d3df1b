#!/usr/bin/env bash
# Installs what the test suite needs when it is missing: Debian packages
# (chromium for the browser tests; redis-server and nginx for the cluster
# tests; systemd-analyze for the service unit) and the npm packages in package-lock.json. Safe to run repeatedly.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
command -v nginx >/dev/null 2>&1 || need+=(nginx-light)
command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd) # verifies deploy/systemd/tether.service

if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ] && ! command -v sudo >/dev/null 2>&1; then
    echo "test-deps: missing ${need[*]} and not root: install them with apt-get" >&2
    exit 1
  fi
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
  echo "test-deps: installing ${need[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# npm ci only when node_modules was not installed from this lock file.
want=$(sha256sum package-lock.json | cut -d' ' -f1)
if [ "$(cat node_modules/.tether-lock 2>/dev/null)" != "$want" ]; then
  npm ci --no-audit --no-fund --loglevel=error
  echo "$want" > node_modules/.tether-lock
fi
