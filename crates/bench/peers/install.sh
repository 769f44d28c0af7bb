#!/usr/bin/env bash
# Installs the peers `gateway-bench peers` compares the gateway with, into DIR (default
# target/peers), each made to run the pinned Claude Code CLI:
#   ccproxy-api 0.2.10 (PyPI; its Claude SDK plugin, which runs the CLI through
#     claude-agent-sdk) in DIR/venv. The SDK runs the copy of the CLI bundled with it; that copy
#     is replaced by a link to the pinned CLI, so both peers run the very binary the gateway does.
#   claude-max-api-proxy 1.0.0 (npm) in DIR/cmap.
# Not part of the test command: only the benchmark needs them.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../../.." && pwd)
DIR=${1:-$ROOT/target/peers}
CLAUDE=${CLAUDE_BIN:-$ROOT/node_modules/.bin/claude}
mkdir -p "$DIR/bin"
ln -sf "$(readlink -f "$CLAUDE")" "$DIR/bin/claude"

python3 -m venv "$DIR/venv"
"$DIR/venv/bin/pip" install --quiet 'ccproxy-api[plugins-claude]==0.2.10'
bundled=$("$DIR/venv/bin/python" -c 'import claude_agent_sdk, os; print(os.path.join(os.path.dirname(claude_agent_sdk.__file__), "_bundled", "claude"))')
rm -f "$bundled"
ln -s "$DIR/bin/claude" "$bundled"

mkdir -p "$DIR/cmap"
(cd "$DIR/cmap" && [ -f package.json ] || npm init -y >/dev/null)
(cd "$DIR/cmap" && npm install --silent --no-audit --no-fund claude-max-api-proxy@1.0.0)
echo "peers installed in $DIR"
