#!/usr/bin/env python3
"""Interleaved A/B timing of whole commands, for decisions on a noisy host.

hyperfine times one command at a time, so a host whose load drifts (a shared 2-core VM) can
favour whichever ran in the quiet minute. Here each round runs every command once, in rotating
order, and the medians are compared. Output goes to /dev/null; spawning through Python adds the
same ~0.3 ms to every command.

    N=80 deploy/bench/ab.py "bwrap=bwrap --unshare-all --ro-bind R / --proc /proc --dev /dev /bin/true" \
        "old=/tmp/runner-old --data-dir D exec ..." "new=/tmp/runner-new --data-dir D exec ..."
"""
import os
import shlex
import statistics
import sys
import time


def main() -> None:
    cmds = []
    for arg in sys.argv[1:]:
        name, _, command = arg.partition("=")
        if not command:
            sys.exit(f"ab.py: expected NAME=COMMAND, got {arg!r}")
        cmds.append((name, shlex.split(command)))
    if not cmds:
        sys.exit(__doc__)
    rounds, warmup = int(os.environ.get("N", "60")), 5
    times = {name: [] for name, _ in cmds}
    devnull = os.open(os.devnull, os.O_WRONLY)
    for r in range(rounds + warmup):
        k = r % len(cmds)
        for name, argv in cmds[k:] + cmds[:k]:
            start = time.perf_counter()
            pid = os.posix_spawnp(argv[0], argv, os.environ,
                                  file_actions=[(os.POSIX_SPAWN_DUP2, devnull, 1)])
            _, status = os.waitpid(pid, 0)
            if status != 0:
                sys.exit(f"ab.py: {name} failed (status {status})")
            if r >= warmup:
                times[name].append((time.perf_counter() - start) * 1000)
    first = None
    for name, _ in cmds:
        v = sorted(times[name])
        median = statistics.median(v)
        first = first or median
        print(f"{name:14s} median {median:6.2f} ms  p25 {v[len(v) // 4]:6.2f}  "
              f"p75 {v[3 * len(v) // 4]:6.2f}  vs first {median / first:5.2f}x")


if __name__ == "__main__":
    main()
