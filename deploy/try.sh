#!/usr/bin/env bash
# Sets up this machine, builds the runner, shows the plan of the example pipeline and runs it
# for real (each step in a throwaway container on the host's own root, so no registry needed).
# Needs root: the sandbox uses namespaces, overlayfs and cgroups.
set -euo pipefail
cd "$(dirname "$0")/.."
./deploy/setup.sh
cargo build --release -p runner
./target/x86_64-unknown-linux-musl/release/runner exec --dry-run examples/hello.yml
# A throwaway data dir, so trying it leaves nothing behind.
data=$(mktemp -d)
trap 'rm -rf "$data"' EXIT
./target/x86_64-unknown-linux-musl/release/runner --data-dir "$data" exec examples/hello.yml
