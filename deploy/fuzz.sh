#!/usr/bin/env bash
# Runs each fuzz target (fuzz/fuzz_targets/) for a bounded time with libFuzzer and
# AddressSanitizer, from its seed corpus (fuzz/seeds/<target>, made by fuzz/make_seeds.py).
# Any crash, panic, leak or failed assertion fails the run; the input that did it is kept in
# fuzz/artifacts/<target>/ and the run's log in fuzz/artifacts/<target>.log (reproduce: `RUSTC_BOOTSTRAP=1 cargo fuzz run --target
# x86_64-unknown-linux-gnu <target> <file>` in fuzz/).
#
#   deploy/fuzz.sh [TARGET...]       FUZZ_SECONDS=45 per target by default
#
# cargo-fuzz needs nightly features: RUSTC_BOOTSTRAP=1 lets the stable toolchain accept them.
# Fuzz builds target glibc (ASan does not support musl, which .cargo/config.toml makes the
# default). The unpack target runs as root, as the runner does (see its doc comment).
set -uo pipefail
cd "$(dirname "$0")/../fuzz"
seconds="${FUZZ_SECONDS:-45}"
if [ "$#" -gt 0 ]; then targets=("$@"); else targets=(pipeline unpack protocol); fi
triple=x86_64-unknown-linux-gnu
export RUSTC_BOOTSTRAP=1

command -v cargo-fuzz >/dev/null || { echo "fuzz: cargo-fuzz not installed (deploy/setup.sh installs it)" >&2; exit 1; }
cargo fuzz build --target "$triple" || { echo "fuzz: FAIL: building the fuzz targets" >&2; exit 1; }

work="$(mktemp -d /tmp/runner-fuzz.XXXXXX)"
trap 'rm -rf "$work"' EXIT
failed=()
for t in "${targets[@]}"; do
  mkdir -p "$work/$t" "artifacts/$t"
  # New inputs go to the throwaway corpus in $work; the committed seeds are only read.
  extra=()
  [ "$t" = unpack ] && extra+=(-max_len=16384)
  echo "fuzz: $t for ${seconds}s"
  if cargo fuzz run --target "$triple" "$t" "$work/$t" "seeds/$t" -- \
    -max_total_time="$seconds" -timeout=20 -rss_limit_mb=2048 -print_final_stats=1 \
    -artifact_prefix="artifacts/$t/" "${extra[@]}" >"artifacts/$t.log" 2>&1; then
    stat() { grep -o "stat::$1: *[0-9]*" "artifacts/$t.log" | grep -o '[0-9]*$'; }
    # How much was tried: a loaded machine runs fewer inputs in the same time.
    echo "fuzz: ok: $t ($(stat number_of_executed_units) runs, $(stat average_exec_per_sec)/s, slowest input $(stat slowest_unit_time_sec) s; log: fuzz/artifacts/$t.log)"
  else
    tail -60 "artifacts/$t.log" >&2
    echo "fuzz: FAIL: $t (input kept in fuzz/artifacts/$t/)" >&2
    failed+=("$t")
  fi
done
if [ "${#failed[@]}" -gt 0 ]; then
  echo "fuzz: failed: ${failed[*]}" >&2
  exit 1
fi
