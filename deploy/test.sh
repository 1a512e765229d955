#!/usr/bin/env bash
# Sets up this machine and runs the whole test suite: formatting, lints, unit and end-to-end
# tests, the deploy tests and the fuzz targets. Needs root (the end-to-end tests create real
# sandboxes). Every part runs even when an earlier one fails, and every failure is listed at
# the end; the exit status is non-zero if any part failed.
#
# Strict mode (RUNNER_TEST_STRICT=1): a test whose need is missing here (root, /dev/kvm, the
# guest kernel, ...) fails with the reason instead of being reported as ignored (testkit/).
set -uo pipefail
cd "$(dirname "$0")/.."
export RUNNER_TEST_STRICT=1

passed=()
failed=()
part() {
  local name="$1"
  shift
  echo
  echo "=== test.sh: $name"
  local start=$SECONDS
  "$@"
  local rc=$?
  if [ "$rc" -eq 0 ]; then
    passed+=("$name")
    echo "=== test.sh: ok: $name ($((SECONDS - start))s)"
  else
    failed+=("$name (exit $rc)")
    echo "=== test.sh: FAILED: $name (exit $rc, $((SECONDS - start))s)"
  fi
}

part "setup" ./deploy/setup.sh
part "cargo fmt" cargo fmt --all -- --check
part "cargo fmt (fuzz)" cargo fmt --manifest-path fuzz/Cargo.toml -- --check
part "cargo clippy" cargo clippy --workspace --all-targets -- -D warnings
# --no-fail-fast: a failing test binary must not hide the ones after it.
part "cargo test" cargo test --workspace --no-fail-fast
part "deploy tests" ./deploy/tests/deploy.sh
part "fuzz" ./deploy/fuzz.sh

echo
echo "=== test.sh: summary"
for p in "${passed[@]}"; do echo "  ok      $p"; done
for f in "${failed[@]}"; do echo "  FAILED  $f"; done
echo "test.sh: ${#passed[@]} passed, ${#failed[@]} failed"
[ "${#failed[@]}" -eq 0 ]
