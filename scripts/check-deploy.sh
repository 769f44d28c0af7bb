#!/usr/bin/env bash
# Checks the container recipe without Docker (no engine runs here): lints the Dockerfile with
# hadolint, then performs the image's steps on this machine (release build, `npm ci --omit=dev`
# of the pinned CLI, the runtime packages) and runs the result as the image would, as the
# non-root uid 10001, sandbox included, in demo mode, on loopback.
set -euo pipefail
cd "$(dirname "$0")/.."

.venv/bin/hadolint Dockerfile

cargo build --release --locked -p claude-gateway

stage=$(mktemp -d)
trap 'kill "$gw" 2>/dev/null || true; ${SUDO:-} rm -rf "$stage"' EXIT
cp package.json package-lock.json "$stage/"
(cd "$stage" && npm ci --omit=dev --no-audit --no-fund >/dev/null && node_modules/.bin/claude --version)
chmod 0711 "$stage/node_modules/@anthropic-ai/claude-code/bin/claude.exe"
for pkg in bubblewrap util-linux ca-certificates python3; do
  command -v dpkg >/dev/null && dpkg -s "$pkg" >/dev/null 2>&1 || { echo "runtime package $pkg missing"; exit 1; }
done

# The image's user, data dir and environment. Becoming uid 10001 takes root: sudo when the
# tests run as another user.
if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
chmod 755 "$stage"
mkdir -p "$stage/data" && $SUDO chown -R 10001:10001 "$stage/data"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
$SUDO setpriv --reuid=10001 --regid=10001 --clear-groups \
  env -i PATH=/usr/local/bin:/usr/bin:/bin PORT="$port" \
  CLAUDE_GATEWAY_DATA_DIR="$stage/data" CLAUDE_GATEWAY_CLAUDE_BIN="$stage/node_modules/.bin/claude" \
  target/release/claude-gateway serve --demo >"$stage/out.log" 2>"$stage/err.log" &
gw=$!
for _ in $(seq 1 100); do
  curl -sf "http://127.0.0.1:$port/ready" >"$stage/ready.json" 2>/dev/null && break
  sleep 0.2
done
grep -q '"sandbox":"bubblewrap"' "$stage/ready.json" || { cat "$stage/err.log"; echo "not ready"; exit 1; }
# The execute-only CLI is used as it is: no copy in the data dir.
[ ! -e "$stage/data/sandbox-cli" ] || { echo "the gateway copied a CLI it cannot read"; exit 1; }
reply=$(curl -sf "http://127.0.0.1:$port/v1/messages" -H 'authorization: Bearer sk-ant-oat01-deploycheck' \
  -d '{"model":"sonnet","max_tokens":50,"messages":[{"role":"user","content":"deploy check"}]}')
echo "$reply" | grep -q 'You said: deploy check' || { echo "$reply"; cat "$stage/err.log"; exit 1; }
kill -TERM "$gw"
wait "$gw"
echo "deploy check: hadolint clean; image steps built; runs as uid 10001 with its sandbox"
