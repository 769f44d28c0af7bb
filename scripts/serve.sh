#!/usr/bin/env bash
# Sets up and runs the gateway: `scripts/serve.sh --demo` for a full round trip through the
# real CLI with no subscription, or `scripts/serve.sh` (with ANTHROPIC_BASE_URL etc.) for real.
# Extra arguments go to `claude-gateway serve`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --release -p claude-gateway
exec target/release/claude-gateway serve --log-format text "$@"
