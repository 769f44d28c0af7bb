#!/usr/bin/env bash
# Installs what the gateway and its tests need on a fresh Debian machine with Rust, Node.js
# and Python: system packages (only when missing), the pinned Claude Code CLI (npm ci) and the
# Python SDK test environment. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v npm >/dev/null 2>&1 || need_apt+=(nodejs npm)
command -v python3 >/dev/null 2>&1 || need_apt+=(python3)
# Debian ships python3 without its venv module; the SDK tests need it.
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need_apt+=(python3-venv)
# The sandbox every CLI run lives in.
command -v bwrap >/dev/null 2>&1 || need_apt+=(bubblewrap)
command -v prlimit >/dev/null 2>&1 || need_apt+=(util-linux)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}"
fi

# The pinned CLI; skipped when node_modules was installed from this very lock file.
lock_sum=$(sha256sum package-lock.json | cut -d' ' -f1)
if [ "$(cat node_modules/.installed-from 2>/dev/null)" != "$lock_sum" ] \
   || [ ! -x node_modules/.bin/claude ]; then
  npm ci --no-audit --no-fund
  echo "$lock_sum" > node_modules/.installed-from
fi
node_modules/.bin/claude --version

if [ "${1:-}" = "--tests" ]; then
  # Headless Chromium for the documentation page test; curl and setpriv for the deploy check;
  # a Redis server for the shared-state tests (each test starts its own on a loopback port).
  need_apt=()
  command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
  command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
  command -v curl >/dev/null 2>&1 || need_apt+=(curl)
  command -v setpriv >/dev/null 2>&1 || need_apt+=(util-linux)
  if [ ${#need_apt[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}"
  fi
  # Real MCP servers for the MCP tests, in their own npm prefix (mounted at /opt/mcp).
  mcp_sum=$(sha256sum tests/mcp-servers/package-lock.json | cut -d' ' -f1)
  if [ "$(cat tests/mcp-servers/node_modules/.installed-from 2>/dev/null)" != "$mcp_sum" ]; then
    npm ci --prefix tests/mcp-servers --no-audit --no-fund
    echo "$mcp_sum" > tests/mcp-servers/node_modules/.installed-from
  fi
  if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
  fi
  .venv/bin/pip install -q --disable-pip-version-check -r tests/sdk/requirements.txt
fi
