#!/usr/bin/env bash
# VM executor benchmark: a one-step `true` job with isolation vm against a bare QEMU boot of
# the same kernel and initramfs that powers off as soon as init runs, side by side (hyperfine,
# medians), then the per-phase breakdown and the warm-pool start latency.
# Usage: deploy/bench/vm.sh [RUNS]   (needs deploy/setup.sh done; root)
set -euo pipefail
cd "$(dirname "$0")/../.."
runs="${1:-10}"

cargo build -q --release -p guest-agent --target x86_64-unknown-linux-musl
cargo build -q --release -p executors --example vm_bench
export RUNNER_VM_AGENT="$PWD/target/x86_64-unknown-linux-musl/release/guest-agent"
bench=target/x86_64-unknown-linux-musl/release/examples/vm_bench
dir=$(mktemp -d /tmp/vm-bench.XXXXXX)
trap 'rm -rf "$dir"' EXIT

# Build the initramfs and root disk once, outside the timings (both are cached per digest).
"$bench" "$dir" once
"$bench" "$dir" bare-args > "$dir/bare.args"
qemu=$(command -v qemu-system-x86_64)

echo "== one-step \`true\` job (isolation vm) vs bare QEMU boot+poweroff, $runs runs each"
hyperfine -N --warmup 1 --runs "$runs" --export-markdown "$dir/hf.md" --export-json "$dir/hf.json" \
  -n "vm step (true)" "$bench $dir once" \
  -n "bare qemu boot" "xargs -d '\n' -a $dir/bare.args $qemu"
cat "$dir/hf.md"
grep -o '"median": [0-9.]*' "$dir/hf.json" | paste -sd' ' | sed 's/^/hyperfine medians (s), vm step then bare boot: /'

# hyperfine runs all of one command, then all of the other; on a shared, noisy machine the load
# drifts between the two halves. So also alternate them, run by run, and compare medians.
echo "== alternating runs (wall ms: vm step, bare boot)"
: > "$dir/alt.txt"
for _ in $(seq "$runs"); do
  t0=$(date +%s%N); "$bench" "$dir" once; t1=$(date +%s%N)
  xargs -d '\n' -a "$dir/bare.args" "$qemu" 2>/dev/null; t2=$(date +%s%N)
  echo "$(( (t1 - t0) / 1000000 )) $(( (t2 - t1) / 1000000 ))" >> "$dir/alt.txt"
done
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
vm_med=$(cut -d' ' -f1 "$dir/alt.txt" | median)
bare_med=$(cut -d' ' -f2 "$dir/alt.txt" | median)
echo "median vm step ${vm_med} ms, bare boot ${bare_med} ms, ratio $(awk "BEGIN {printf \"%.2f\", $vm_med / $bare_med}")"

echo "== breakdown"
"$bench" "$dir" breakdown "$runs"
echo "== warm pool"
"$bench" "$dir" warm "$runs"
echo "(load average during the run: $(cut -d' ' -f1-3 /proc/loadavg))"
