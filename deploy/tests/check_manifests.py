#!/usr/bin/env python3
"""Checks the systemd units and Kubernetes manifests in deploy/ against the real `runner` binary.

Usage: check_manifests.py RUNNER_BINARY UNIT_DIR K8S_DIR

Every `runner` command line they contain must name a real subcommand and only flags that
`runner <sub> --help` lists; every RUNNER_* variable they set must be one the binary reads;
the Kubernetes objects must fit together (selectors, ports, volumes, Secret, Service URL).
Prints each failure and exits 1 if there was any.
"""

import ipaddress
import os
import re
import shlex
import subprocess
import sys

import yaml

failures = []


def check(cond, what):
    if not cond:
        failures.append(what)
    return cond


RUNNER, UNIT_DIR, K8S_DIR = sys.argv[1:4]
_help_cache = {}


def help_text(words):
    key = tuple(words)
    if key not in _help_cache:
        p = subprocess.run([RUNNER, *words, "--help"], capture_output=True, text=True)
        _help_cache[key] = p.stdout if p.returncode == 0 else None
    return _help_cache[key]


def flags_of(help_out):
    return set(re.findall(r"(?m)^\s+(?:-\w, )?(--[a-z][a-z0-9-]*)", help_out))


def env_of(help_out):
    return set(re.findall(r"\[env: ([A-Z_]+)", help_out))


ALL_ENV = env_of(help_text([]) or "")


def check_command(argv, where, env=None):
    """argv starts with the runner binary; checks subcommand path and flags."""
    if not check(argv and os.path.basename(argv[0]) == "runner", f"{where}: runs {argv[:1]}, not runner"):
        return
    args = argv[1:]
    sub = []
    # Subcommand words come first (`token create`); the first flag ends them.
    while args and not args[0].startswith("-"):
        if help_text(sub + [args[0]]) is None:
            break
        sub.append(args.pop(0))
    if not check(sub, f"{where}: no runner subcommand in {argv}"):
        return
    h = help_text(sub)
    known = flags_of(h)
    it = iter(args)
    for a in it:
        if a.startswith("--"):
            name = a.split("=", 1)[0]
            check(name in known, f"{where}: `runner {' '.join(sub)}` has no flag {name} (has {sorted(known)})")
            if name in ("--listen", "--metrics-listen") and "=" not in a:
                value = next(it, "")
                if value.startswith("${"):
                    value = (env or {}).get(value[2:-1], value)
                host, _, port = value.rpartition(":")
                ok = port.isdigit() and int(port) < 65536
                try:
                    ipaddress.ip_address(host.strip("[]"))
                except ValueError:
                    ok = False
                check(ok, f"{where}: {name} {value!r} is not a socket address")
        else:
            check(not a.startswith("-"), f"{where}: short flag {a} not expected")
    return sub


# --- systemd units -------------------------------------------------------------------------
def unit(path):
    out = {}
    for line in open(path):
        line = line.strip()
        if line and not line.startswith(("#", "[")):
            k, _, v = line.partition("=")
            out.setdefault(k, []).append(v)
    return out


units = {}
for name in ("runner.service", "runner-serve.service"):
    u = unit(os.path.join(UNIT_DIR, name))
    units[name] = u
    env = dict(e.split("=", 1) for e in u.get("Environment", []))
    for var in env:
        if var.startswith("RUNNER_") and var != "RUNNER_LISTEN":
            check(var in ALL_ENV, f"{name}: sets {var}, which runner does not read ({sorted(ALL_ENV)})")
    (exec_start,) = u["ExecStart"]
    argv = shlex.split(exec_start)
    check(argv[0] == "/usr/local/bin/runner", f"{name}: ExecStart runs {argv[0]}")
    units[name]["sub"] = check_command(argv, name, env)

serve, agent = units["runner-serve.service"], units["runner.service"]
check(serve["sub"] == ["serve"], "runner-serve.service does not run `runner serve`")
check(agent["sub"] == ["run"], "runner.service does not run `runner run`")
check(serve.get("DynamicUser") == ["yes"] or serve.get("User", ["root"]) != ["root"], "coordinator runs as root")
for k, v in {"NoNewPrivileges": "yes", "ProtectSystem": "strict", "PrivateTmp": "yes",
             "ProtectHome": "yes", "CapabilityBoundingSet": ""}.items():
    check(serve.get(k) == [v], f"runner-serve.service: {k}={v} missing")
check(serve.get("StateDirectory") == ["runner-coordinator"], "runner-serve.service: StateDirectory")
check("RUNNER_DATA_DIR=/var/lib/runner-coordinator" in serve["Environment"],
      "runner-serve.service: RUNNER_DATA_DIR must be its StateDirectory")
check(agent.get("User") == ["root"], "runner.service: the agent must run as root")
check(agent.get("Delegate") == ["yes"], "runner.service: Delegate=yes missing")
check(agent.get("KillMode") == ["mixed"], "runner.service: KillMode=mixed (SIGTERM to the agent only)")
check(agent.get("KillSignal") == ["SIGTERM"], "runner.service: KillSignal=SIGTERM")
m = re.fullmatch(r"(\d+)min", (agent.get("TimeoutStopSec") or [""])[0])
check(m and int(m.group(1)) >= 60, "runner.service: TimeoutStopSec must cover a 60 min job")
caps = set((agent.get("CapabilityBoundingSet") or [""])[0].split())
for c in ("CAP_SYS_ADMIN", "CAP_NET_ADMIN", "CAP_SETPCAP", "CAP_SYS_CHROOT", "CAP_SETUID"):
    check(c in caps, f"runner.service: the bounding set lacks {c}")
for c in ("CAP_SYS_MODULE", "CAP_SYS_BOOT", "CAP_SYS_TIME", "CAP_BPF"):
    check(c not in caps, f"runner.service: the bounding set keeps {c}")
check(agent.get("Restart") == ["on-failure"], "runner.service: Restart=on-failure")


def arg(cmd, flag):
    """The value after `flag` in `cmd`, or a failure and an empty string."""
    if check(flag in cmd[:-1], f"{flag} missing from {cmd}"):
        return cmd[cmd.index(flag) + 1]
    return ""


# --- Kubernetes ------------------------------------------------------------------------------
docs = {}
for f in sorted(os.listdir(K8S_DIR)):
    if f.endswith(".yaml"):
        with open(os.path.join(K8S_DIR, f)) as fh:
            docs[f] = [d for d in yaml.safe_load_all(fh) if d is not None]

kust = docs.pop("kustomization.yaml")[0]
check(kust.get("kind") == "Kustomization", "kustomization.yaml: kind")
for r in kust["resources"]:
    check(r in docs, f"kustomization.yaml: resource {r} does not exist")
listed = set(kust["resources"]) | {"kvm.yaml"}
for f in docs:
    check(f in listed, f"{f} is not referenced by kustomization.yaml")
objs = {(d["kind"], d["metadata"]["name"]): d for r in kust["resources"] for d in docs[r]}
for (kind, name), d in objs.items():
    check("apiVersion" in d, f"{kind}/{name}: no apiVersion")
images = {i["name"]: i for i in kust.get("images", [])}
check("runner" in images and images["runner"].get("newName"), "kustomization.yaml: set the runner image")

dep = objs.get(("Deployment", "runner-coordinator"))
svc = objs.get(("Service", "runner-coordinator"))
pvc = objs.get(("PersistentVolumeClaim", "runner-coordinator"))
ds = objs.get(("DaemonSet", "runner"))
check(("Namespace", kust["namespace"]) in objs, "the namespace object is missing")
if check(dep and svc and pvc and ds, "missing coordinator Deployment/Service/PVC or runner DaemonSet"):
    pod = dep["spec"]["template"]
    check(dep["spec"]["replicas"] == 1, "coordinator: replicas must be 1 (SQLite, in-process queue)")
    check(dep["spec"]["strategy"]["type"] == "Recreate", "coordinator: strategy must be Recreate")
    check(dep["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items(),
          "coordinator: selector does not match the pod labels")
    check(svc["spec"]["selector"].items() <= pod["metadata"]["labels"].items(),
          "Service selector does not match the coordinator pod")
    (c,) = pod["spec"]["containers"]
    check(c["image"] == "runner", "coordinator image")
    check_command(c["command"], "coordinator container")
    check(c["command"][1] == "serve", "coordinator container does not run `runner serve`")
    listen = arg(c["command"], "--listen")
    port = int(listen.rsplit(":", 1)[-1] or 0)
    cports = {p["name"]: p["containerPort"] for p in c["ports"]}
    check(cports.get("http") == port, "coordinator containerPort differs from --listen")
    check(not listen.startswith("127."), "coordinator listens on loopback only: the Service cannot reach it")
    (sport,) = svc["spec"]["ports"]
    check(sport["targetPort"] in ("http", port), "Service targetPort")
    envs = {e["name"]: e.get("value") for e in c["env"]}
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    vols = {v["name"]: v for v in pod["spec"]["volumes"]}
    check(mounts.get(envs.get("RUNNER_DATA_DIR")) == "data", "coordinator: RUNNER_DATA_DIR is not the volume")
    check(vols["data"]["persistentVolumeClaim"]["claimName"] == pvc["metadata"]["name"], "coordinator: PVC name")
    check(pvc["spec"]["accessModes"] == ["ReadWriteOnce"], "PVC access mode")
    check(c["securityContext"].get("readOnlyRootFilesystem") is True, "coordinator: read-only root fs")
    check(pod["spec"]["securityContext"].get("runAsNonRoot") is True, "coordinator: runAsNonRoot")
    check(c["readinessProbe"]["httpGet"]["path"] == "/health", "coordinator: readiness probe on /health")
    svc_url = f"http://{svc['metadata']['name']}:{sport['port']}"

    rpod = ds["spec"]["template"]
    check(ds["spec"]["selector"]["matchLabels"].items() <= rpod["metadata"]["labels"].items(),
          "runner DaemonSet: selector does not match the pod labels")
    check(rpod["spec"]["terminationGracePeriodSeconds"] >= 3600,
          "runners: terminationGracePeriodSeconds must let a 60 min job finish")
    (init,) = rpod["spec"]["initContainers"]
    (run,) = rpod["spec"]["containers"]
    check(init["image"] == run["image"] == "runner", "runner images")
    check(check_command(init["command"], "register init container") == ["register"], "init runs register")
    check(check_command(run["command"], "runner container") == ["run"], "runner container runs `runner run`")
    cmd = init["command"]
    check(arg(cmd, "--url") == svc_url, f"init container --url is not the Service ({svc_url})")
    ienv = {e["name"]: e for e in init["env"]}
    renv = {e["name"]: e for e in run["env"]}
    reg_help = help_text(["register"])
    tok = ienv.get("RUNNER_REGISTRATION_TOKEN", {})
    check("RUNNER_REGISTRATION_TOKEN" in env_of(reg_help), "`runner register` does not read RUNNER_REGISTRATION_TOKEN")
    check(tok.get("valueFrom", {}).get("secretKeyRef") == {"name": "runner-registration", "key": "token"},
          "registration token must come from Secret runner-registration/token")
    check("--token" not in cmd, "the token must not be in the init container's args")
    if "--name" in cmd:
        ref = arg(cmd, "--name")
        check(ref.startswith("$(") and ref[2:-1] in ienv, f"--name {ref} refers to an undefined variable")
    conf = ienv["RUNNER_CONFIG"]["value"]
    check(renv["RUNNER_CONFIG"]["value"] == conf, "init and runner containers use different RUNNER_CONFIG")
    rvols = {v["name"]: v for v in rpod["spec"]["volumes"]}
    imounts = {m["mountPath"]: m["name"] for m in init["volumeMounts"]}
    rmounts = {m["mountPath"]: m["name"] for m in run["volumeMounts"]}
    cdir = os.path.dirname(conf)
    check(imounts.get(cdir) and imounts.get(cdir) == rmounts.get(cdir), "config dir is not shared by both containers")
    check("emptyDir" in rvols.get(imounts.get(cdir), {}), "config volume must be an emptyDir")
    check(rmounts.get(renv["RUNNER_DATA_DIR"]["value"]) in rvols, "runner data dir must be a volume (overlayfs upper)")
    check(run["securityContext"].get("privileged") is True, "runner container must be privileged (own runtime)")
    check(init["securityContext"].get("privileged") is not True, "the init container needs no privilege")
    mport = arg(run["command"], "--metrics-listen").rsplit(":", 1)[-1]
    check({str(p["containerPort"]) for p in run["ports"]} == {mport}, "metrics port differs from --metrics-listen")

    # The optional KVM patch: same DaemonSet and containers, a CharDevice, isolations with vm.
    (kvm,) = docs["kvm.yaml"]
    check((kvm["kind"], kvm["metadata"]["name"]) == ("DaemonSet", "runner"), "kvm.yaml patches another object")
    ks = kvm["spec"]["template"]["spec"]
    check({c["name"] for c in ks["containers"]} == {run["name"]}, "kvm.yaml: container name")
    check({c["name"] for c in ks["initContainers"]} == {init["name"]}, "kvm.yaml: init container name")
    kcmd = ks["initContainers"][0]["command"]
    check_command(kcmd, "kvm.yaml init container")
    check(arg(kcmd, "--isolations") == "container,vm", "kvm.yaml: --isolations container,vm")
    check(ks["volumes"][0]["hostPath"] == {"path": "/dev/kvm", "type": "CharDevice"}, "kvm.yaml: /dev/kvm CharDevice")

for f in failures:
    print(f"check_manifests: FAIL: {f}", file=sys.stderr)
if failures:
    sys.exit(1)
print(f"check_manifests: units and {sum(map(len, docs.values()))} Kubernetes objects OK "
      f"({len(_help_cache)} runner --help pages checked)")
