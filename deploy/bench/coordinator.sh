#!/usr/bin/env bash
# Coordinator and agent benchmarks, on loopback, release build.
#  1. protocol level (cargo bench): log ingest MB/s, PATCH -> follower latency, jobs/s with 50
#     runners long-polling;
#  2. end to end with a real agent and real steps (`image: host` containers): log throughput
#     from a step printing as fast as it can to the stored log, and line-to-screen latency
#     from a step's `echo` to the line appearing in `runner logs -f`.
# Needs root (container sandboxes). Usage: deploy/bench/coordinator.sh
set -euo pipefail
cd "$(dirname "$0")/../.."

if [ "${SKIP_PROTOCOL:-}" != 1 ]; then
  echo "== protocol level: cargo bench -p runner --bench coordinator"
  cargo bench -q -p runner --bench coordinator 2>/dev/null
fi

cargo build -q --release -p runner
R="$PWD/target/x86_64-unknown-linux-musl/release/runner"
work=$(mktemp -d)
cleanup() { kill "${agent:-}" "${server:-}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
export RUNNER_DATA_DIR="$work/coord" RUST_LOG=warn
"$R" serve --listen 127.0.0.1:0 >"$work/serve.out" 2>&1 & server=$!
for _ in $(seq 100); do [ -s "$work/coord/coordinator/coordinator-url" ] && break; sleep 0.05; done
url=$(cat "$work/coord/coordinator/coordinator-url")
token=$("$R" token create)
A=("$R" --data-dir "$work/agent" --config "$work/agent.toml")
"${A[@]}" register --url "$url" --token "$token" --name bench >/dev/null
"${A[@]}" run --poll-wait 5 >"$work/agent.out" 2>&1 & agent=$!

mkdir -p "$work/src"
job_json() { "$R" runs show "$1" --json; }
wait_done() {
  while :; do
    state=$(job_json "$1" | python3 -c 'import json,sys; print(json.load(sys.stdin)["state"])')
    [ "$state" != running ] && break
    sleep 0.05
  done
}

echo "== end to end: line-to-screen latency (step echo -> runner logs -f)"
cat >"$work/src/.runner.yml" <<'YAML'
name: latency
jobs:
  tick:
    steps:
      - name: tick
        image: host
        # The pause lets `runner logs -f` (started right after submit) connect first: lines
        # printed before anyone watches arrive as a backlog and would measure CLI start-up.
        run: sleep 2; for i in $(seq 1 300); do echo "ts $(date +%s%N)"; sleep 0.02; done
YAML
run=$("$R" submit "$work/src/.runner.yml" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
"$R" logs "$run/tick" -f | python3 -c '
import sys, time
lat = []
for line in sys.stdin:
    parts = line.split()
    if len(parts) >= 2 and parts[-2] == "ts" and parts[-1].isdigit():
        lat.append((time.time_ns() - int(parts[-1])) / 1e6)
slow = [(i, round(x)) for i, x in enumerate(lat) if x > 100]
if slow:
    print(f"lines slower than 100 ms (index, ms): {slow}")
lat.sort()
if not lat:
    sys.exit("no timestamped lines seen")
p = lambda q: lat[min(len(lat) - 1, int(round((len(lat) - 1) * q)))]
print(f"{len(lat)} lines: p50 {p(0.5):.1f} ms, p99 {p(0.99):.1f} ms, max {lat[-1]:.1f} ms")
'

if [ "${SKIP_THROUGHPUT:-}" != 1 ]; then
echo "== end to end: log throughput (a step writing 256 MiB of 100-byte lines)"
cat >"$work/src/.runner.yml" <<'YAML'
name: throughput
jobs:
  flood:
    steps:
      - name: flood
        image: host
        run: head -c 268435456 /dev/zero | tr '\0' 'x' | fold -w 99
YAML
for round in 1 2 3; do
  t0=$(date +%s.%N)
  run=$("$R" submit "$work/src/.runner.yml" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
  wait_done "$run"
  t1=$(date +%s.%N)
  job_json "$run" | python3 -c "
import json,sys
v=json.load(sys.stdin); j=v['jobs'][0]; step=j['steps'][0]['duration_ms']/1000; total=$t1-$t0
print(f\"round $round: {v['state']}, {j['log_size']/1e6:.0f} MB stored in {total:.2f} s from submit to run end = {j['log_size']/1e6/total:.0f} MB/s; the step ran {step:.2f} s in its sandbox, upload and report finished {total-step:.2f} s later\")"
done
t0=$(date +%s.%N)
sh -c "head -c 268435456 /dev/zero | tr '\0' 'x' | fold -w 99" >/dev/null
t1=$(date +%s.%N)
python3 -c "print(f'baseline: the same command on the host to /dev/null: {268435456/1e6/($t1-$t0):.0f} MB/s ({$t1-$t0:.2f} s)')"
if "$R" --data-dir "$work/agent" exec "$work/src/.runner.yml" >/dev/null 2>"$work/exec.err"; then
  t2=$(date +%s.%N)
  python3 -c "print(f'baseline: runner exec of the same pipeline to /dev/null: {268435456/1e6/($t2-$t1):.0f} MB/s')"
else
  echo "baseline: runner exec not available in this build: $(head -1 "$work/exec.err")"
fi
fi
