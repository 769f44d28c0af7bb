#!/usr/bin/env bash
# Sets up and runs every test: formatting, lints, Rust unit and integration tests (the real
# pinned CLI against fake-anthropic), and the official SDK tests.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --tests

cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings
cargo build --locked --workspace --bins
cargo test --locked --workspace
.venv/bin/python -m pytest -q tests/sdk
scripts/check-deploy.sh
