#!/usr/bin/env bash
# Installs (or removes) the runner binary, its directories and its systemd units.
#
#   deploy/install.sh [--binary PATH] [--no-setup]      install or upgrade (idempotent)
#   deploy/install.sh --uninstall [--purge]            remove; --purge also removes config and data
#
# Environment:
#   PREFIX=/usr/local   the binary goes to $PREFIX/bin/runner (the units are rewritten to match)
#   DESTDIR=            stage everything under this directory (packaging, tests): no packages
#                       are installed and systemd is not told
#   UNITDIR=/etc/systemd/system
#
# Without --binary it builds the binary with cargo (the dist profile: release + LTO). It runs deploy/setup.sh (runtime
# packages) unless --no-setup is given or DESTDIR is set. See docs/operating.md.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
repo="$(dirname "$here")"
PREFIX="${PREFIX:-/usr/local}"
DESTDIR="${DESTDIR:-}"
UNITDIR="${UNITDIR:-/etc/systemd/system}"

binary=""
setup=1
uninstall=0
purge=0
usage() { sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
  case "$1" in
    --binary) [ $# -ge 2 ] || { echo "install: --binary needs a path" >&2; exit 2; }
              binary="$2"; shift 2 ;;
    --binary=*) binary="${1#--binary=}"; shift ;;
    --no-setup) setup=0; shift ;;
    --uninstall) uninstall=1; shift ;;
    --purge) purge=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "install: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
if [ "$purge" = 1 ] && [ "$uninstall" = 0 ]; then
  echo "install: --purge only goes with --uninstall" >&2
  exit 2
fi

if [ -z "$DESTDIR" ] && [ "$(id -u)" != 0 ]; then
  echo "install: run as root (or set DESTDIR to stage the files elsewhere)" >&2
  exit 1
fi

bin="$DESTDIR$PREFIX/bin/runner"
etc="$DESTDIR/etc/runner"
data="$DESTDIR/var/lib/runner"
units="$DESTDIR$UNITDIR"
doc="$DESTDIR$PREFIX/share/doc/runner"
unit_names=(runner.service runner-serve.service)

# Talk to systemd only on a real install on a host booted with it.
live_systemd() { [ -z "$DESTDIR" ] && [ -d /run/systemd/system ] && command -v systemctl >/dev/null; }

# Removes a directory if it is empty, then its parents up to (not including) $2.
prune() {
  local d="$1" stop="$2"
  while [ "$d" != "$stop" ] && [ "$d" != "/" ]; do
    if [ -d "$d" ]; then rmdir "$d" 2>/dev/null || break; fi
    d="$(dirname "$d")"
  done
}

if [ "$uninstall" = 1 ]; then
  if live_systemd; then
    # Stopping the agent waits for running jobs to finish (TimeoutStopSec in runner.service).
    systemctl disable --now "${unit_names[@]}" 2>/dev/null || true
  fi
  for u in "${unit_names[@]}"; do rm -f "$units/$u"; done
  rm -f "$bin" "$doc/operating.md"
  if [ "$purge" = 1 ]; then
    # The registration (runner token), the agent's images and spool, the coordinator's database.
    rm -rf "$etc" "$data" "$DESTDIR/var/lib/runner-coordinator" "$DESTDIR/var/lib/private/runner-coordinator"
  else
    rm -f "$etc/serve.env.example"
    for d in "$etc" "$data"; do
      if [ -d "$d" ] && [ -n "$(ls -A "$d")" ]; then
        echo "install: kept $d (config or data; --purge removes it)"
      fi
    done
  fi
  live_systemd && systemctl daemon-reload
  if [ -n "$DESTDIR" ]; then
    # A staging tree: leave it as empty as it was.
    for d in "$etc" "$data" "$units" "$(dirname "$bin")" "$doc" "$DESTDIR/var/lib/private"; do
      prune "$d" "$DESTDIR"
    done
  else
    # A real host: only the directories that are ours.
    for d in "$etc" "$data" "$doc"; do rmdir "$d" 2>/dev/null || true; done
  fi
  echo "install: runner uninstalled"
  exit 0
fi

if [ -z "$binary" ]; then
  command -v cargo >/dev/null || { echo "install: cargo not found; pass --binary PATH or install Rust" >&2; exit 1; }
  # The dist profile (Cargo.toml): release with whole-program optimisation.
  (cd "$repo" && cargo build --profile dist -p runner)
  binary="$repo/target/x86_64-unknown-linux-musl/dist/runner"
fi
if [ ! -x "$binary" ] || ! "$binary" --version >/dev/null 2>&1; then
  echo "install: $binary is not a working runner binary" >&2
  exit 1
fi

if [ "$setup" = 1 ] && [ -z "$DESTDIR" ]; then
  "$here/setup.sh"
elif [ "$setup" = 1 ]; then
  echo "install: DESTDIR is set, not installing packages (run deploy/setup.sh on the target host)"
fi

# Replace the binary through a temporary file and a rename, so a running agent keeps its old
# (still open) copy and `systemctl restart` picks up the new one.
install -d -m 0755 "$(dirname "$bin")"
install -m 0755 "$binary" "$bin.new"
mv -f "$bin.new" "$bin"

# /etc/runner holds the runner token (config.toml is written 0600 by `runner register`) and
# /var/lib/runner the agent's images, sandbox state and log spool: root only.
install -d -m 0700 "$etc" "$data"
chmod 0700 "$etc" "$data"
install -m 0644 "$here/systemd/serve.env" "$etc/serve.env.example"

install -d -m 0755 "$units"
for u in "${unit_names[@]}"; do
  # The units name /usr/local/bin/runner and /usr/local/share; follow PREFIX.
  sed -e "s|/usr/local/|$PREFIX/|g" "$here/systemd/$u" >"$units/$u.new"
  chmod 0644 "$units/$u.new"
  mv -f "$units/$u.new" "$units/$u"
done
install -d -m 0755 "$doc"
install -m 0644 "$repo/docs/operating.md" "$doc/operating.md"

if live_systemd; then
  systemctl daemon-reload
fi
echo "install: $("$bin" --version) installed to $bin"
echo "install: units in $units: ${unit_names[*]}"
if [ -z "$DESTDIR" ]; then
  echo "next: systemctl enable --now runner-serve    (coordinator, if this host runs it)"
  echo "      runner register --url URL --token TOKEN && systemctl enable --now runner"
fi
