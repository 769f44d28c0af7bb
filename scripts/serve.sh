#!/usr/bin/env bash
# Sets up and runs the gateway: `scripts/serve.sh --demo` for a full round trip through the
# real CLI with no subscription, or `scripts/serve.sh` (with ANTHROPIC_BASE_URL etc.) for real.
# Extra arguments go to `claude-gateway serve`. Once the gateway listens, prints where, which
# upstream it uses, and a first request to paste into another shell.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh

bin="${CARGO_TARGET_DIR:-target}/release/claude-gateway"
# Build when a source is newer than the binary (cargo would find the same; this also serves a
# copy of the repository that comes with its binary but without cargo's records).
if [ ! -x "$bin" ] || [ -n "$(find crates Cargo.toml Cargo.lock -newer "$bin" \
     -not -path '*/target/*' -print -quit)" ]; then
  cargo build --release -p claude-gateway
fi

# Reads the gateway's stdout: passes every line on, and after the two start-up lines
# ("claude-gateway listening on URL", "claude-gateway upstream demo|real URL") prints how to
# try it.
announce() {
  local line url="" kind upstream
  while IFS= read -r line; do
    printf '%s\n' "$line"
    case "$line" in
      "claude-gateway listening on "*)
        url=${line#claude-gateway listening on }
        # A wildcard address is reachable from here through loopback.
        url=${url/\/\/0.0.0.0:/\/\/127.0.0.1:}
        url=${url/\/\/\[::\]:/\/\/[::1]:}
        ;;
      "claude-gateway upstream "*)
        read -r kind upstream <<<"${line#claude-gateway upstream }"
        echo
        if [ "$kind" = demo ]; then
          echo "Ready: $url (upstream: demo, the built-in fake at $upstream; any sk-ant-oat01-… token works)"
          auth="-H 'authorization: Bearer sk-ant-oat01-demo'"
        else
          echo "Ready: $url (upstream: real, $upstream; each request brings its own credential)"
          auth="-H \"x-api-key: \$ANTHROPIC_API_KEY\""
        fi
        echo "Try it from another shell:"
        echo "  curl -s $url/v1/messages $auth \\"
        echo "    -d '{\"model\":\"sonnet\",\"max_tokens\":200,\"messages\":[{\"role\":\"user\",\"content\":\"Hello\"}]}'"
        echo
        ;;
    esac
  done
}

# exec keeps the gateway at this script's process id, so signals reach it directly.
exec "$bin" serve --log-format text "$@" > >(announce)
