#!/usr/bin/env bash
# Sets up this machine, builds the runner and runs the example pipeline.
set -euo pipefail
cd "$(dirname "$0")/.."
./deploy/setup.sh
cargo build --release -p runner
./target/release/runner exec --dry-run examples/hello.yml
