#!/usr/bin/env bash
# Benchmarks the microVM against QEMU (microvm machine, KVM) on the same kind of tiny guest:
# a program whose first instructions signal the host and end the VM. Prints medians and ratios.
#   ours: vmm_bench once (boot-timer marker, then i8042 reset)
#   QEMU: a 64 KiB BIOS whose reset vector writes to isa-debug-exit (QEMU exits with status 1)
# Usage: vmm/bench.sh [runs]   (needs /dev/kvm, hyperfine, qemu-system-x86_64)
set -euo pipefail
cd "$(dirname "$0")/.."
runs="${1:-30}"
cargo build --release -q -p vmm --example vmm_bench
bench=target/x86_64-unknown-linux-musl/release/examples/vmm_bench
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# Reset vector at 0xfff0: mov al, 0; out 0xf4, al; hlt. Everything else is hlt.
python3 - "$tmp/exit-bios.bin" <<'PY'
import sys
rom = bytearray(b"\xf4" * 65536)
rom[0xfff0:0xfff5] = bytes([0xb0, 0x00, 0xe6, 0xf4, 0xf4])
open(sys.argv[1], "wb").write(rom)
PY
qemu="qemu-system-x86_64 -M microvm,x-option-roms=off,rtc=off,pit=off,pic=off,isa-serial=off \
-accel kvm -nodefaults -no-user-config -nographic -display none -bios $tmp/exit-bios.bin \
-device isa-debug-exit,iobase=0xf4,iosize=1 -m 128"

echo "== whole process: start, VM create, first guest instruction, VM end, exit (hyperfine)"
hyperfine -N -i --warmup 3 --runs "$runs" --export-json "$tmp/h.json" \
  -n microvm "$bench once" -n qemu-microvm-kvm "$qemu" >/dev/null 2>&1
python3 - "$tmp/h.json" <<'PY'
import json, sys
r = {b["command"]: b for b in json.load(open(sys.argv[1]))["results"]}
ours, qemu = r["microvm"], r["qemu-microvm-kvm"]
for name, b in (("microvm", ours), ("qemu-microvm-kvm", qemu)):
    print(f"{name:18} median {b['median']*1000:7.1f} ms  user {b['user']*1000:5.1f} ms  "
          f"system {b['system']*1000:5.1f} ms")
print(f"ratio qemu/microvm: {qemu['median']/ours['median']:.1f}x")
PY

echo "== process start to first guest instruction (boot-timer port), child processes"
"$bench" spawn "$runs"
echo "== VM create + run + teardown in one process"
"$bench" loop "$runs"
echo "== resident memory with a live VM (process RSS minus the guest's own pages)"
"$bench" rss 128
"$bench" rss 1024
