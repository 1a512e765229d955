#!/usr/bin/env bash
# Sets up this machine and runs the whole test suite: formatting, lints, unit and end-to-end
# tests. Needs root (the end-to-end tests create real sandboxes).
set -euo pipefail
cd "$(dirname "$0")/.."
./deploy/setup.sh

cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace -- --include-ignored
./deploy/tests/deploy.sh
