#!/usr/bin/env bash
# Installs what the runner and its test suite need on Debian/Ubuntu. Idempotent; run as root.
set -euo pipefail

# One package per line, so that parts of the project add theirs without clashing.
packages=(
  ca-certificates
  apt               # setup-vm-kernel.sh fetches the kernel package with apt-get download
  mawk              # awk: setup-vm-kernel.sh, the pure cgroup v2 test
  mount             # umount: the pure cgroup v2 test
  python3-minimal   # python3: the schema test, deploy tests, testkit's Python probes
  iproute2
  busybox-static
  # container executor: bridge networking (ip, iptables); tests call perl (perl-base) for raw syscalls
  iptables
  perl-base
  qemu-system-x86
  e2fsprogs
  cpio              # VM initramfs tests read our newc archives back with the real cpio
  util-linux        # unshare, for the container executor's pure cgroup v2 test
  musl-tools        # every build targets static musl (.cargo/config.toml): C deps build with musl-gcc
  make              # jemalloc (the runner's allocator) builds from source with configure + make
  python3-yaml
  python3-jsonschema
  docker-registry   # image store tests: a local OCI registry
  apache2-utils     # htpasswd, for the auth-registry test
  skopeo            # image import test writes an OCI layout
  systemd           # deploy tests: systemd-analyze verify on the units
  g++               # fuzz targets: cargo-fuzz builds libFuzzer (C++) through libfuzzer-sys
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "setup: cargo not found; install Rust with rustup (https://rustup.rs) and run again" >&2
  exit 1
fi

# Every build of the workspace targets static musl (.cargo/config.toml): the runner, its tests
# and the VM guest agent.
if command -v rustup >/dev/null 2>&1; then
  rustup target add x86_64-unknown-linux-musl >/dev/null
elif ! rustc --print target-libdir --target x86_64-unknown-linux-musl >/dev/null 2>&1 ||
  [ ! -d "$(rustc --print target-libdir --target x86_64-unknown-linux-musl)" ]; then
  echo "setup: the x86_64-unknown-linux-musl Rust target is missing and rustup is not here to add it" >&2
  exit 1
fi
# Fuzz targets (deploy/fuzz.sh): cargo-fuzz, pinned, from crates.io. It drives the stable
# toolchain with RUSTC_BOOTSTRAP=1 (no nightly is needed) and builds for the glibc target.
cargo_fuzz_version=0.13.2
if [ "$(cargo fuzz --version 2>/dev/null)" != "cargo-fuzz $cargo_fuzz_version" ]; then
  echo "setup: installing cargo-fuzz $cargo_fuzz_version"
  cargo install --quiet --locked cargo-fuzz --version "$cargo_fuzz_version"
fi

# Guest kernel and agent of the VM executor (isolation: vm); the microVM tests (vmm/) use the
# same kernel.
"$(dirname "$0")/setup-vm-kernel.sh"
