#!/usr/bin/env bash
# Runs the whole Rust test suite against another Claude Code CLI release, installed from the
# npm registry into a scratch directory (the pin in package.json is left as it is):
#   scripts/check-cli.sh 2.1.332
# If it passes, moving the pin is `npm install --save-exact @anthropic-ai/claude-code@VERSION`.
set -euo pipefail
version="${1:?usage: scripts/check-cli.sh VERSION}"
cd "$(dirname "$0")/.."
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
npm install --prefix "$scratch" --no-audit --no-fund --no-save \
  "@anthropic-ai/claude-code@$version" >/dev/null
cli="$scratch/node_modules/.bin/claude"
echo "checking the suite against $("$cli" --version)"
# The tests run this CLI instead of the pinned one (the first-run test keeps the pinned one:
# it runs the README's command, which installs from the lock file).
CLAUDE_GATEWAY_TEST_CLI="$cli" cargo test --workspace
