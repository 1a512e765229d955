#!/usr/bin/env bash
# Tests deploy/: install.sh into a temporary DESTDIR (layout, modes, idempotence, PREFIX,
# uninstall), `systemd-analyze verify` on the installed units, the units and Kubernetes
# manifests against the real binary (check_manifests.py), and, without systemd, what the
# units and the init container do: the installed binary as `runner serve` on a free port,
# `runner token create`, `runner register` (config mode 0600), `runner run` stopped by SIGTERM,
# each under the user, capabilities and no_new_privs its unit gives it; and the container
# executor's tests under the agent unit's capability bounding set.
# Needs root (the agent), python3-yaml and systemd-analyze (deploy/setup.sh installs both).
set -euo pipefail
repo="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$repo"

bin="${RUNNER_BIN:-$repo/target/x86_64-unknown-linux-musl/debug/runner}"
if [ ! -x "$bin" ]; then
  cargo build -q -p runner
  bin="$repo/target/x86_64-unknown-linux-musl/debug/runner"
fi

tmp="$(mktemp -d /tmp/runner-deploy-test.XXXXXX)"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT
fail() { echo "deploy test: FAIL: $*" >&2; exit 1; }
ok() { echo "deploy test: ok: $*"; }
mode() { stat -c %a "$1"; }
expect_mode() { [ -e "$1" ] || fail "$1 missing"; [ "$(mode "$1")" = "$2" ] || fail "$1 has mode $(mode "$1"), want $2"; }
tree() { (cd "$1" && find . -printf '%p %m %s\n' | sort); }

# --- install into a DESTDIR ---------------------------------------------------------------
root="$tmp/root"
DESTDIR="$root" ./deploy/install.sh --binary "$bin" --no-setup >/dev/null
expect_mode "$root/usr/local/bin/runner" 755
[ "$("$root/usr/local/bin/runner" --version)" = "$("$bin" --version)" ] || fail "installed binary differs"
cmp -s "$bin" "$root/usr/local/bin/runner" || fail "installed binary is not a copy of $bin"
expect_mode "$root/etc/runner" 700
expect_mode "$root/var/lib/runner" 700
expect_mode "$root/etc/runner/serve.env.example" 644
for u in runner.service runner-serve.service; do
  expect_mode "$root/etc/systemd/system/$u" 644
  cmp -s "deploy/systemd/$u" "$root/etc/systemd/system/$u" || fail "$u differs from deploy/systemd/$u with the default PREFIX"
done
expect_mode "$root/usr/local/share/doc/runner/operating.md" 644
[ -z "$(find "$root" -name '*.new')" ] || fail "temporary files left behind"
ok "install layout and modes"

before="$(tree "$root")"
chmod 0755 "$root/etc/runner" # a drifted mode is put right again
DESTDIR="$root" ./deploy/install.sh --binary "$bin" --no-setup >/dev/null
[ "$(tree "$root")" = "$before" ] || fail "a second install changed the tree: $(diff <(echo "$before") <(tree "$root"))"
ok "install is idempotent"

# PREFIX moves the binary, and the units follow it.
DESTDIR="$tmp/opt" PREFIX=/opt/runner ./deploy/install.sh --binary "$bin" --no-setup >/dev/null
[ -x "$tmp/opt/opt/runner/bin/runner" ] || fail "PREFIX=/opt/runner: no binary"
grep -q '^ExecStart=/opt/runner/bin/runner run$' "$tmp/opt/etc/systemd/system/runner.service" || fail "PREFIX not applied to runner.service"
! grep -q /usr/local "$tmp/opt/etc/systemd/system/"*.service || fail "a unit still names /usr/local"
ok "PREFIX is applied to the units"

# Bad arguments fail with a reason and leave nothing behind.
out="$(DESTDIR="$tmp/bad" ./deploy/install.sh --binary /nonexistent --no-setup 2>&1)" && fail "a missing binary was accepted"
grep -q "not a working runner binary" <<<"$out" || fail "unclear error: $out"
out="$(DESTDIR="$tmp/bad" ./deploy/install.sh --frobnicate 2>&1)" && fail "an unknown flag was accepted"
grep -q "unknown argument" <<<"$out" || fail "unclear error: $out"
[ ! -e "$tmp/bad" ] || fail "a failed install left $tmp/bad"
ok "bad arguments are refused"

# --- systemd-analyze verify --------------------------------------------------------------
# verify checks that ExecStart's binary exists, and its --root wants a whole systemd tree; so
# verify copies of the installed units whose ExecStart names the binary inside the DESTDIR.
command -v systemd-analyze >/dev/null || fail "systemd-analyze not installed (deploy/setup.sh installs systemd)"
mkdir "$tmp/verify"
for u in runner.service runner-serve.service broken.service; do
  src="$root/etc/systemd/system/${u/broken/runner}"
  sed "s|^ExecStart=/usr/local/bin/runner|ExecStart=$root/usr/local/bin/runner|" "$src" >"$tmp/verify/$u"
done
grep -q "^ExecStart=$root/usr/local/bin/runner run\$" "$tmp/verify/runner.service" || fail "ExecStart not rewritten"
units=("$tmp/verify/runner.service" "$tmp/verify/runner-serve.service")
if ! out="$(systemd-analyze verify "${units[@]}" 2>&1)" || [ -n "$out" ]; then
  fail "systemd-analyze verify: $out"
fi
# The same check must catch a broken unit (a bad value, a missing binary).
sed -i 's/^KillMode=mixed/KillMode=gently/' "$tmp/verify/broken.service"
out="$(systemd-analyze verify "$tmp/verify/broken.service" 2>&1)" || true
grep -qi "kill mode" <<<"$out" || fail "verify did not notice a bad KillMode: $out"
mv "$root/usr/local/bin/runner" "$root/runner.moved"
out="$(systemd-analyze verify "${units[0]}" 2>&1)" && fail "verify passed without the binary"
mv "$root/runner.moved" "$root/usr/local/bin/runner"
ok "systemd-analyze verify (and it catches broken units)"

# --- units and manifests against the binary ----------------------------------------------
python3 deploy/tests/check_manifests.py "$bin" "$root/etc/systemd/system" deploy/kubernetes
# ... and the checker fails on a flag the binary does not have.
cp -r deploy/kubernetes "$tmp/k8s-bad"
sed -i 's/"--metrics-listen"/"--metrics-address"/' "$tmp/k8s-bad/runners.yaml"
python3 deploy/tests/check_manifests.py "$bin" "$root/etc/systemd/system" "$tmp/k8s-bad" 2>"$tmp/err" &&
  fail "check_manifests accepted a flag runner does not have"
grep -q "has no flag --metrics-address" "$tmp/err" || fail "check_manifests: unexpected error $(cat "$tmp/err")"
if command -v kubectl >/dev/null; then
  kubectl kustomize deploy/kubernetes >"$tmp/rendered.yaml" || fail "kubectl kustomize failed"
  python3 - "$tmp/rendered.yaml" <<'EOF' || fail "rendered manifests"
import sys, yaml
objs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
assert all(d["metadata"].get("namespace") == "runner" for d in objs if d["kind"] != "Namespace")
for d in objs:
    for c in d.get("spec", {}).get("template", {}).get("spec", {}).get("containers", []):
        assert c["image"] == "registry.example.com/ci/runner:0.1.0", c["image"]
EOF
  ok "kubectl kustomize renders the manifests"
else
  echo "deploy test: kubectl not installed, not rendering with kustomize (the YAML checks above ran)"
fi

# --- end to end without systemd: what the units and the init container do -----------------
installed="$root/usr/local/bin/runner"
# The coordinator as the unit and the pod run it: an unprivileged user (uid 65532, the pod's
# runAsUser) with no capabilities, no_new_privs, umask 077, in a 0700 state dir it owns.
cdata="$tmp/coordinator-data"
chmod 0711 "$tmp"
install -d -m 0700 -o 65532 -g 65532 "$cdata"
(umask 077 && exec env RUNNER_DATA_DIR="$cdata" RUST_LOG=info \
  setpriv --reuid=65532 --regid=65532 --clear-groups --inh-caps=-all --bounding-set=-all \
  --no-new-privs "$installed" serve --listen 127.0.0.1:0) >"$tmp/serve.log" 2>&1 &
serve_pid=$!
pids+=("$serve_pid")
for _ in $(seq 100); do [ -s "$cdata/coordinator/coordinator-url" ] && break; sleep 0.1; done
[ -s "$cdata/coordinator/coordinator-url" ] || fail "runner serve did not start: $(cat "$tmp/serve.log")"
url="$(cat "$cdata/coordinator/coordinator-url")"
expect_mode "$cdata/coordinator" 700
expect_mode "$cdata/coordinator/admin-token" 600
[ "$(stat -c %u "$cdata/coordinator/coordinator.db")" = 65532 ] || fail "the coordinator did not run as uid 65532"
fetch() { python3 -c 'import sys, urllib.request; sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=10).read().decode())' "$1"; }
[ "$(fetch "$url/health")" = "ok" ] || fail "/health"
fetch "$url/metrics" | grep -q '^# TYPE' || fail "/metrics is not Prometheus text"

# As `kubectl exec deploy/runner-coordinator -- runner token create`: URL and admin token from the data dir.
token="$(RUNNER_DATA_DIR="$cdata" "$installed" token create --labels deploy-test)"
[[ "$token" == reg_* ]] || fail "token create printed '$token'"

# As the init container: token from the environment, config in an empty directory.
conf="$tmp/etc-runner/config.toml"
mkdir "$(dirname "$conf")"
RUNNER_REGISTRATION_TOKEN="$token" RUNNER_CONFIG="$conf" "$installed" register \
  --url "$url" --name deploy-test --isolations container --concurrent 2 >/dev/null
expect_mode "$conf" 600
grep -q '^\[agent\]' "$conf" || fail "no [agent] section in $conf"
grep -q "^url = \"$url\"" "$conf" || fail "wrong url in $conf"
grep -q '"deploy-test"' "$conf" || fail "label missing in $conf"
RUNNER_DATA_DIR="$cdata" "$installed" runners ls | grep -q deploy-test || fail "the coordinator does not list the runner"
# An init container that runs again finds the registration and says so.
out="$(RUNNER_REGISTRATION_TOKEN="$token" RUNNER_CONFIG="$conf" "$installed" register --url "$url" 2>&1)" &&
  fail "a second registration into the same config succeeded"
grep -q "already holds a registration" <<<"$out" || fail "unclear error: $out"
ok "serve, token create, register (config 0600)"

# As runner.service: the agent with that config; SIGTERM (KillSignal) ends it cleanly.
# The unit's capability bounding set, as setpriv wants it: +chown,+dac_override,...
caps="$(sed -n 's/^CapabilityBoundingSet=//p' "$root/etc/systemd/system/runner.service" |
  tr 'A-Z' 'a-z' | sed -e 's/cap_/+/g' -e 's/ /,/g')"
[[ "$caps" == *+sys_admin* ]] || fail "no bounding set parsed from runner.service: '$caps'"
RUNNER_CONFIG="$conf" RUNNER_DATA_DIR="$tmp/agent-data" setpriv --bounding-set="-all,$caps" \
  --no-new-privs "$installed" run --poll-wait 1 >"$tmp/agent.log" 2>&1 &
agent_pid=$!
pids+=("$agent_pid")
for _ in $(seq 100); do grep -q "polling" "$tmp/agent.log" && break; sleep 0.1; done
grep -q "polling" "$tmp/agent.log" || fail "the agent did not start: $(cat "$tmp/agent.log")"
kill -TERM "$agent_pid"
rc=0
wait "$agent_pid" || rc=$?
[ "$rc" = 0 ] || fail "the agent exited $rc on SIGTERM: $(cat "$tmp/agent.log")"
kill -TERM "$serve_pid"
rc=0
wait "$serve_pid" || rc=$?
[ "$rc" = 0 ] || fail "runner serve exited $rc on SIGTERM: $(cat "$tmp/serve.log")"
ok "agent and coordinator stop cleanly on SIGTERM"

# --- the unit's capability bounding set is enough for real sandboxes ------------------------
# The container executor's end-to-end tests (namespaces, overlayfs, cgroups, bridge network,
# seccomp, reconcile) under exactly the bounding set and no_new_privs of runner.service; the
# same binary `cargo test --workspace` built (same features), so normally nothing is rebuilt.
exe="$(cargo test -q --workspace --test container --no-run --message-format=json 2>/dev/null |
  python3 -c 'import sys, json
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "container" and m.get("executable"):
        print(m["executable"])')"
[ -x "$exe" ] || fail "cannot build the container executor tests"
(cd executors && setpriv --bounding-set="-all,$caps" --no-new-privs "$exe" \
  --test-threads 2 >"$tmp/caps.log" 2>&1) || fail "container tests under runner.service's capabilities: $(tail -40 "$tmp/caps.log")"
grep -q "test result: ok" "$tmp/caps.log" || fail "container tests did not run: $(tail "$tmp/caps.log")"
ok "container sandboxes work under runner.service's capability bounding set ($(grep -o '[0-9]* passed' "$tmp/caps.log"))"

# --- uninstall -----------------------------------------------------------------------------
echo "[agent]" >"$root/etc/runner/config.toml"
DESTDIR="$root" ./deploy/install.sh --uninstall >/dev/null
[ ! -e "$root/usr/local/bin/runner" ] || fail "uninstall left the binary"
[ -z "$(find "$root/etc/systemd" -name '*.service' 2>/dev/null)" ] || fail "uninstall left units"
[ -f "$root/etc/runner/config.toml" ] || fail "uninstall without --purge removed the registration"
DESTDIR="$root" ./deploy/install.sh --uninstall --purge >/dev/null
[ -z "$(ls -A "$root")" ] || fail "uninstall --purge left: $(cd "$root" && find .)"
DESTDIR="$tmp/opt" PREFIX=/opt/runner ./deploy/install.sh --uninstall >/dev/null
[ -z "$(ls -A "$tmp/opt")" ] || fail "uninstall of a fresh install left: $(cd "$tmp/opt" && find .)"
ok "uninstall keeps config and data, --purge leaves nothing"
echo "deploy test: all passed"
