#!/usr/bin/env bash
# One-step `true` through our container runtime against bwrap, unshare+chroot, runc, crun, podman
# and docker, on the same busybox rootfs, side by side with hyperfine. Prints medians and ratios.
#
# "runner-exec" is the whole product: `runner exec` of a one-step `true` pipeline on the same
# rootfs (imported into the runner's image store): plan, run dir, workspace, sandbox, summary.
# Its runtime dir (run locks, sandbox records, mount points) is on tmpfs, as /run/runner is on
# systemd hosts; "runner-exec-runtime-on-disk" puts it in the data dir instead (this VM's /run
# is on its ext4 disk).
# "ours" is `container-step` (executors/src/bin): one process that builds a ContainerExecutor,
# runs one step (`sh -e -c true` in a fresh sandbox: namespaces, overlay root with a fresh
# upper dir, /proc, /dev, /sys, /tmp, workspace bind, cgroup, caps, seccomp) and removes it.
#
# Usage (as root): deploy/bench/container.sh   RUNS=40 WARMUP=5 AB_ROUNDS=60 by default
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
RUNS=${RUNS:-40}
WARMUP=${WARMUP:-5}
WORK=$(mktemp -d /tmp/runner-bench.XXXXXX)
# The recommended state dir lives on tmpfs (like runc's /run/runc); /dev/shm is tmpfs everywhere.
STATE_TMPFS=$(mktemp -d /dev/shm/runner-bench-state.XXXXXX)
RUNTIME_TMPFS=$(mktemp -d /dev/shm/runner-bench-run.XXXXXX)
DOCKERD_PID=""

cleanup() {
  set +e
  command -v podman >/dev/null && podman rmi -f localhost/runner-bench-busybox >/dev/null 2>&1
  if command -v docker >/dev/null && docker info >/dev/null 2>&1; then
    docker rmi -f runner-bench-busybox >/dev/null 2>&1
  fi
  if [ -n "$DOCKERD_PID" ]; then
    kill "$DOCKERD_PID" 2>/dev/null
    wait "$DOCKERD_PID" 2>/dev/null
  fi
  rm -rf "$WORK" "$STATE_TMPFS" "$RUNTIME_TMPFS"
}
trap cleanup EXIT

if [ "$(id -u)" != 0 ]; then
  echo "bench: run as root (every runtime here needs it)" >&2
  exit 1
fi

echo "bench: installing peers from Debian's packages" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get install -y -qq -o DPkg::Lock::Timeout=600 \
  runc crun podman docker.io bubblewrap hyperfine busybox-static util-linux python3 >/dev/null

echo "bench: building container-step and runner (dist profile)" >&2
# The dist profile: what deploy/install.sh installs (release + LTO; takes a while to build).
(cd "$ROOT" && cargo build --profile dist -q -p executors --bin container-step && cargo build --profile dist -q -p runner)
# Run copies, as deploy/install.sh installs them: a binary the linker just wrote sits in the
# page cache in small pieces and costs ~1.3 ms more per start (page faults) than the same
# file copied, which is what an installed binary (and every peer, from dpkg) is.
mkdir -p "$WORK/bin"
install -m 0755 "$ROOT/target/x86_64-unknown-linux-musl/dist/container-step" "$ROOT/target/x86_64-unknown-linux-musl/dist/runner" "$WORK/bin/"
STEP="$WORK/bin/container-step"
RUNNER="$WORK/bin/runner"

# The busybox rootfs every runtime uses: static busybox plus its applet links.
BUNDLE="$WORK/bundle"
ROOTFS="$BUNDLE/rootfs"
mkdir -p "$ROOTFS"/{bin,sbin,usr/bin,usr/sbin,etc,tmp,proc,sys,dev,root} "$WORK/ws" "$WORK/state"
cp /bin/busybox "$ROOTFS/bin/busybox"
for applet in $(/bin/busybox --list-full); do
  [ -e "$ROOTFS/$applet" ] || ln -s /bin/busybox "$ROOTFS/$applet"
done
echo "root:x:0:0:root:/root:/bin/sh" >"$ROOTFS/etc/passwd"

# OCI bundle for runc and crun: the default spec, running /bin/true without a terminal.
(cd "$BUNDLE" && runc spec && sed -i -e 's/"terminal": true/"terminal": false/' \
  -e 's/^\(\s*\)"sh"$/\1"\/bin\/true"/' config.json)
grep -q '"/bin/true"' "$BUNDLE/config.json" || { echo "bench: could not edit config.json" >&2; exit 1; }

# podman and docker get the same tree as an imported image.
tar -C "$ROOTFS" -c . | podman import -q - localhost/runner-bench-busybox >/dev/null
if ! docker info >/dev/null 2>&1; then
  dockerd --bridge=none --iptables=false --ip6tables=false >"$WORK/dockerd.log" 2>&1 &
  DOCKERD_PID=$!
  for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 0.5; done
fi
tar -C "$ROOTFS" -c . | docker import - runner-bench-busybox >/dev/null

# runner exec gets the same tree through its own image store (a `docker save` style archive).
podman save -q -o "$WORK/busybox.tar" localhost/runner-bench-busybox
"$RUNNER" --data-dir "$WORK/data" image import "$WORK/busybox.tar" --tag localhost/runner-bench-busybox:latest >/dev/null
mkdir -p "$WORK/src"
cat >"$WORK/src/.runner.yml" <<'YML'
name: bench
jobs:
  one:
    steps:
      - name: noop
        image: localhost/runner-bench-busybox:latest
        run: "true"
YML

# The same job with ten steps: what each step after the first costs inside `runner exec`.
mkdir -p "$WORK/src10"
{
  printf 'name: bench\njobs:\n  one:\n    steps:\n'
  for i in $(seq 10); do
    printf '      - name: noop%s\n        image: localhost/runner-bench-busybox:latest\n        run: "true"\n' "$i"
  done
} >"$WORK/src10/.runner.yml"
EXEC="$RUNNER --runtime-dir $RUNTIME_TMPFS --data-dir $WORK/data exec $WORK/src/.runner.yml --workspace $WORK/src"
EXEC10="$RUNNER --runtime-dir $RUNTIME_TMPFS --data-dir $WORK/data exec $WORK/src10/.runner.yml --workspace $WORK/src10"
EXEC_DISK="$RUNNER --runtime-dir $WORK/run --data-dir $WORK/data exec $WORK/src/.runner.yml --workspace $WORK/src"
OURS="$STEP --state $STATE_TMPFS --workspace $WORK/ws --rootfs $ROOTFS -- true"
OURS_DISK="$STEP --state $WORK/state --workspace $WORK/ws --rootfs $ROOTFS -- true"
# A runner is a long-lived process: 20 steps in one process, reported per step.
REPEAT=20
OURS_LOOP="$STEP --state $STATE_TMPFS --workspace $WORK/ws --rootfs $ROOTFS --repeat $REPEAT -- true"
BWRAP="bwrap --unshare-all --ro-bind $ROOTFS / --proc /proc --dev /dev --tmpfs /tmp /bin/true"
UNSHARE="unshare --mount --pid --fork --net --uts --ipc chroot $ROOTFS /bin/true"
RUNC="runc run --bundle $BUNDLE runner-bench-runc"
CRUN="crun run --bundle $BUNDLE runner-bench-crun"
# No CAP_SYS_RESOURCE on some hosts: keep podman's rlimits at or below ours. Debian's podman
# defaults to crun, which refuses hybrid cgroup hosts; runc works everywhere.
PODMAN="podman run --rm --network none --ulimit nofile=1024:1024 --ulimit nproc=4096:4096 --runtime runc localhost/runner-bench-busybox /bin/true"
DOCKER="docker run --rm --network none runner-bench-busybox /bin/true"

hf() {
  hyperfine -N --warmup "$WARMUP" --runs "$RUNS" --style basic "$@"
}

# Setting up wrote hundreds of MB (binaries, images): let writeback finish first, or the first
# command measured pays for it.
sync
sleep 2

echo "bench: run 1 (all but crun)" >&2
hf --export-json "$WORK/run1.json" \
  -n runner-exec -n runner-exec-runtime-on-disk -n runner-exec-10-steps -n ours \
  -n ours-state-on-disk -n ours-in-process-x$REPEAT -n bwrap -n unshare-chroot -n runc -n podman \
  -n docker \
  "$EXEC" "$EXEC_DISK" "$EXEC10" "$OURS" "$OURS_DISK" "$OURS_LOOP" "$BWRAP" "$UNSHARE" "$RUNC" \
  "$PODMAN" "$DOCKER" >&2

# crun 1.8 refuses hosts whose cgroup v2 tree has any controller while v1 is mounted (hybrid).
# There it runs in a private mount namespace without the v2 tree, with bwrap as the yardstick.
CRUN_NOTE=""
if [ -d /sys/fs/cgroup/unified ] && grep -q . /sys/fs/cgroup/unified/cgroup.controllers 2>/dev/null; then
  CRUN_NOTE="crun: run 2, in a mount namespace without the hybrid v2 tree; ratio via bwrap"
  echo "bench: run 2 (crun, hybrid-cgroup workaround)" >&2
  unshare -m --propagation private sh -c "umount -l /sys/fs/cgroup/unified && \
    hyperfine -N --warmup $WARMUP --runs $RUNS --style basic --export-json $WORK/run2.json \
      -n bwrap -n crun '$BWRAP' '$CRUN'" >&2
else
  hf --export-json "$WORK/run2.json" -n bwrap -n crun "$BWRAP" "$CRUN" >&2
fi

python3 - "$WORK/run1.json" "$WORK/run2.json" "$CRUN_NOTE" "$REPEAT" <<'PY'
import json, statistics, sys
run1 = {r["command"]: r for r in json.load(open(sys.argv[1]))["results"]}
run2 = {r["command"]: r for r in json.load(open(sys.argv[2]))["results"]}
med = lambda r: statistics.median(r["times"]) * 1000
cpu = lambda r: (r["user"] + r["system"]) * 1000  # hyperfine exports CPU times as means
repeat = int(sys.argv[4])
rows = {name: med(r) for name, r in run1.items()}
cpus = {name: cpu(r) for name, r in run1.items()}
loop = f"ours-in-process-x{repeat}"
rows[f"ours-in-process (per step)"] = rows.pop(loop) / repeat
cpus[f"ours-in-process (per step)"] = cpus.pop(loop) / repeat
# Each step after the first of a ten-step `runner exec` job.
ten = rows.pop("runner-exec-10-steps")
cpus.pop("runner-exec-10-steps")
rows["runner-exec, each further step of a job"] = (ten - rows["runner-exec"]) / 9
# crun through bwrap: crun_run2 / bwrap_run2 * bwrap_run1
rows["crun"] = med(run2["crun"]) / med(run2["bwrap"]) * rows["bwrap"]
ours = rows["ours"]
print(f"| runtime | median wall ms | vs ours | mean CPU ms (user+sys) |")
print(f"|---|---:|---:|---:|")
for name, ms in sorted(rows.items(), key=lambda kv: kv[1]):
    c = f"{cpus[name]:.1f}" if name in cpus else "-"
    print(f"| {name} | {ms:.1f} | {ms / ours:.2f}x | {c} |")
print()
print(f"ours / bwrap = {ours / rows['bwrap']:.2f} (goal <= 1.5); runc / ours = {rows['runc'] / ours:.2f} (goal >= 3)")
for name in ["runner-exec", "runner-exec-runtime-on-disk", "runner-exec, each further step of a job"]:
    ex = rows[name]
    print(f"{name} / bwrap = {ex / rows['bwrap']:.2f} (goal <= 1.5); runc / {name} = {rows['runc'] / ex:.2f} (goal >= 3)")
if sys.argv[3]:
    print(sys.argv[3], f"(crun {med(run2['crun']):.1f} ms, bwrap {med(run2['bwrap']):.1f} ms in run 2)")
PY

# hyperfine times one command after another, so on a shared host whose load drifts a ratio can
# swing by 30% (bwrap timed in a busy minute, runner-exec in a quiet one). The goals are judged
# on an interleaved run: every round runs each command once, in rotating order.
AB_ROUNDS=${AB_ROUNDS:-60}
echo "bench: interleaved run ($AB_ROUNDS rounds: bwrap, runner-exec, ten steps, ours, runc)" >&2
N=$AB_ROUNDS python3 "$ROOT/deploy/bench/ab.py" "bwrap=$BWRAP" "runner-exec=$EXEC" \
  "runner-exec-10-steps=$EXEC10" "ours=$OURS" "runc=$RUNC" >"$WORK/ab.txt"
python3 - "$WORK/ab.txt" "$AB_ROUNDS" <<'PY'
import sys
med = {}
for line in open(sys.argv[1]):
    parts = line.split()
    med[parts[0]] = float(parts[2])
med["runner-exec, each further step of a job"] = (med.pop("runner-exec-10-steps") - med["runner-exec"]) / 9
print()
print(f"Interleaved medians ({sys.argv[2]} rounds, each round runs every command once):")
print("| runtime | median wall ms | vs bwrap |")
print("|---|---:|---:|")
for name, ms in sorted(med.items(), key=lambda kv: kv[1]):
    print(f"| {name} | {ms:.2f} | {ms / med['bwrap']:.2f}x |")
print()
for name in ["runner-exec", "runner-exec, each further step of a job", "ours"]:
    print(f"interleaved: {name} / bwrap = {med[name] / med['bwrap']:.2f} (goal <= 1.5); "
          f"runc / {name} = {med['runc'] / med[name]:.2f} (goal >= 3)")
PY
