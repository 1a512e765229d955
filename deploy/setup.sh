#!/usr/bin/env bash
# Installs what the runner and its test suite need on Debian/Ubuntu. Idempotent; run as root.
set -euo pipefail

# One package per line, so that parts of the project add theirs without clashing.
packages=(
  ca-certificates
  iproute2
  busybox-static
  cpio
  # container executor: bridge networking (ip, iptables); tests call perl (perl-base) for raw syscalls
  iptables
  perl-base
  # container executor tests: an OCI image served from a local registry; unshare for the v2 test
  docker-registry
  util-linux
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

# Guest kernel for the microVM tests: Debian's cloud kernel, unpacked here and never installed
# into the host's /boot. The tests read it from $VMM_TEST_KERNEL_DIR (default below).
vmm_kernel_dir="${VMM_TEST_KERNEL_DIR:-/var/cache/runner/vmm-test-kernel}"
if ! compgen -G "$vmm_kernel_dir/boot/vmlinuz-*" >/dev/null; then
  echo "setup: unpacking Debian's cloud kernel into $vmm_kernel_dir"
  kernel_pkg() { apt-cache depends linux-image-cloud-amd64 2>/dev/null | awk '/Depends: linux-image-/ {print $2; exit}'; }
  pkg=$(kernel_pkg)
  if [ -z "$pkg" ]; then apt-get update -qq; pkg=$(kernel_pkg); fi
  tmp=$(mktemp -d)
  (cd "$tmp" && apt-get download -qq "$pkg")
  mkdir -p "$vmm_kernel_dir"
  dpkg-deb -x "$tmp"/*.deb "$vmm_kernel_dir"
  rm -rf "$tmp"
fi
