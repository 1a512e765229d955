#!/usr/bin/env bash
# Fetches the guest kernel of the VM executor (Debian's linux-image-cloud-amd64) and unpacks it
# into <data-dir>/vm/kernel; it is never installed into this host's /boot. Also builds the
# static guest agent into <data-dir>/vm/guest-agent when run from a source checkout.
# Usage: deploy/setup-vm-kernel.sh [DATA_DIR]   (default: $RUNNER_DATA_DIR or /var/lib/runner)
set -euo pipefail

data_dir="${1:-${RUNNER_DATA_DIR:-/var/lib/runner}}"
dest="$data_dir/vm/kernel"

if ! ls "$dest"/boot/vmlinuz-* >/dev/null 2>&1; then
  # The meta package only depends on the versioned image package that holds the files.
  kernel_pkg() {
    apt-cache depends linux-image-cloud-amd64 2>/dev/null \
      | awk '/Depends: linux-image-[0-9]/ {print $2; exit}'
  }
  pkg=$(kernel_pkg)
  # A fresh machine may have no package lists yet.
  if [ -z "$pkg" ]; then apt-get update -qq && pkg=$(kernel_pkg); fi
  if [ -z "$pkg" ]; then
    echo "setup-vm-kernel: linux-image-cloud-amd64 not known to apt (run apt-get update; Debian/Ubuntu only)" >&2
    exit 1
  fi
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  chmod 755 "$work"
  echo "setup-vm-kernel: fetching $pkg"
  (cd "$work" && apt-get download -q -o APT::Sandbox::User=root "$pkg" >/dev/null)
  dpkg-deb -x "$work"/"$pkg"_*.deb "$work/root"
  mkdir -p "$work/kernel/lib"
  mv "$work/root/boot" "$work/kernel/boot"
  mv "$work/root/lib/modules" "$work/kernel/lib/modules"
  mkdir -p "$data_dir/vm"
  rm -rf "$dest"
  mv "$work/kernel" "$dest"
  echo "setup-vm-kernel: guest kernel in $dest"
fi

repo="$(cd "$(dirname "$0")/.." && pwd)"
if [ -f "$repo/guest-agent/Cargo.toml" ] && command -v cargo >/dev/null 2>&1; then
  (cd "$repo" && cargo build -q -p guest-agent --target x86_64-unknown-linux-musl --release)
  install -m 0755 "$repo/target/x86_64-unknown-linux-musl/release/guest-agent" "$data_dir/vm/guest-agent"
fi
