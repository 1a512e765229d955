//! End-to-end tests of the container executor: real namespaces, overlayfs, cgroups and seccomp,
//! as root. Every test has its own temp dirs, state dir and job id, so they run in parallel,
//! and ends by checking that nothing of its own is left: no sandbox record, cgroup, mount or
//! process.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use executors::container::{
    build_busybox_rootfs, CgroupDriver, ContainerConfig, ContainerExecutor, LocalDirImages,
};
use executors::{
    Executor, ImageSpec, JobSpec, LogChunk, Network, PreparedJob, Resources, Shell, StepResult,
    StepSpec, Stream,
};
use testkit::leftovers::processes_mentioning;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const IMAGE: &str = "busybox-local";

struct Fixture {
    tmp: tempfile::TempDir,
    exec: ContainerExecutor,
    job: PreparedJob,
}

struct Output {
    result: StepResult,
    stdout: String,
    stderr: String,
    chunks: Vec<LogChunk>,
}

impl Fixture {
    async fn new(name: &str) -> Fixture {
        let tmp = tempfile::Builder::new()
            .prefix(&format!("ctest-{name}-"))
            .tempdir()
            .unwrap();
        let rootfs = tmp.path().join("rootfs");
        build_busybox_rootfs(&rootfs).unwrap();
        let workspace = tmp.path().join("workspace");
        std::fs::create_dir(&workspace).unwrap();
        let images = LocalDirImages::new().with(IMAGE, &rootfs);
        let mut config = ContainerConfig::new(tmp.path().join("state"), Arc::new(images));
        config.masked_paths = vec![tmp.path().to_path_buf()];
        let exec = ContainerExecutor::new(config).unwrap();
        exec.reconcile().unwrap();
        let job = JobSpec {
            id: format!("t{name}{}", std::process::id()),
            hostname: format!("job-{name}"),
            workspace,
        };
        let job = exec.prepare(&job).await.unwrap();
        Fixture { tmp, exec, job }
    }

    fn step(&self, script: &str) -> StepSpec {
        StepSpec {
            name: "test".into(),
            image: ImageSpec::Oci(IMAGE.into()),
            script: script.into(),
            shell: Shell::Sh,
            env: BTreeMap::new(),
            workdir: "/workspace".into(),
            timeout: Duration::from_secs(50),
            network: Network::None,
            resources: Resources::default(),
        }
    }

    async fn run(&self, step: StepSpec) -> Output {
        self.run_with(step, CancellationToken::new()).await
    }

    async fn run_with(&self, step: StepSpec, cancel: CancellationToken) -> Output {
        let (tx, mut rx) = mpsc::channel(16);
        let collect = tokio::spawn(async move {
            let mut chunks = Vec::new();
            while let Some(c) = rx.recv().await {
                chunks.push(c);
            }
            chunks
        });
        let result = self
            .exec
            .run_step(&self.job, &step, tx, cancel)
            .await
            .unwrap();
        let chunks = collect.await.unwrap();
        let text = |s: Stream| {
            String::from_utf8_lossy(
                &chunks
                    .iter()
                    .filter(|c| c.stream == s)
                    .flat_map(|c| c.data.clone())
                    .collect::<Vec<u8>>(),
            )
            .into_owned()
        };
        Output {
            stdout: text(Stream::Stdout),
            stderr: text(Stream::Stderr),
            result,
            chunks,
        }
    }

    /// Nothing of this fixture's job is left on the host.
    async fn assert_clean(self) {
        self.exec.cleanup(&self.job).await.unwrap();
        let state = self.tmp.path().join("state/sandboxes");
        let left: Vec<_> = std::fs::read_dir(&state).unwrap().flatten().collect();
        assert!(left.is_empty(), "sandbox state left: {left:?}");
        let job_id = &self.job.job.id;
        for parent in CgroupDriver::detect().unwrap().dirs_for("") {
            for entry in std::fs::read_dir(&parent).into_iter().flatten().flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                assert!(
                    !name.contains(job_id.as_str()),
                    "cgroup left: {}",
                    entry.path().display()
                );
            }
        }
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let tmp = self.tmp.path().to_string_lossy().into_owned();
        assert!(!mounts.contains(&tmp), "mount left under {tmp}");
        assert!(processes_mentioning(&tmp).is_empty(), "process left");
    }
}

#[testkit::needs(root)]
#[tokio::test]
async fn pid_one_own_hostname_and_no_host_processes() {
    let f = Fixture::new("pid1").await;
    let out = f
        .run(f.step("echo pid=$$; hostname; ls /proc | grep -c '^[0-9]'"))
        .await;
    assert!(out.result.success(), "{out:?}", out = out.stderr);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines[0], "pid=1");
    assert_eq!(lines[1], "job-pid1");
    // sh, ls and grep at most: none of the host's processes.
    let count: usize = lines[2].trim().parse().unwrap();
    assert!(count <= 3, "{count} processes visible");
    f.assert_clean().await;
}

#[testkit::needs(root)]
#[tokio::test]
async fn etc_writes_vanish_and_workspace_persists() {
    let f = Fixture::new("persist").await;
    let first = f
        .run(f.step("echo secret > /etc/marker && echo built > /workspace/out && cat /etc/marker"))
        .await;
    assert!(first.result.success(), "{}", first.stderr);
    assert_eq!(first.stdout, "secret\n");
    let second = f.run(f.step("test ! -e /etc/marker && cat out")).await;
    assert!(second.result.success(), "{}", second.stderr);
    assert_eq!(second.stdout, "built\n");
    assert_eq!(
        std::fs::read_to_string(f.job.job.workspace.join("out")).unwrap(),
        "built\n"
    );
    assert!(!f.tmp.path().join("rootfs/etc/marker").exists());
    f.assert_clean().await;
}

#[testkit::needs(root)]
#[tokio::test]
async fn memory_limit_oom_is_reported() {
    let f = Fixture::new("oom").await;
    let mut step = f.step("dd if=/dev/zero of=/dev/null bs=256M count=1; echo after");
    step.resources.memory = Some(32 << 20);
    let out = f.run(step).await;
    assert!(
        out.result.oom_killed,
        "not reported as OOM: {:?}",
        out.result
    );
    assert!(!out.result.success());
    f.assert_clean().await;
}

/// What a step writes outside its workspace lives on the sandbox's own tmpfs: nothing of it
/// reaches the host's disk, and it counts against the step's memory limit.
#[testkit::needs(root)]
#[tokio::test]
async fn rootfs_writes_are_scratch_charged_to_the_step() {
    let f = Fixture::new("scratch").await;
    let out = f
        .run(f.step(
            "dd if=/dev/zero of=/fill bs=1M count=64 2>/dev/null; \
             ls -l /fill; grep ' / ' /proc/mounts",
        ))
        .await;
    assert!(out.result.success(), "{out:?}", out = out.stderr);
    assert!(out.stdout.contains("67108864"), "stdout: {}", out.stdout);
    assert!(out.stdout.contains("overlay"), "stdout: {}", out.stdout);
    // Nothing the step wrote is on the host: no file of that size anywhere under the test's
    // directory (state dir included) while or after the step ran.
    let big = walk(f.tmp.path())
        .into_iter()
        .filter(|p| {
            std::fs::metadata(p)
                .map(|m| m.len() >= 64 << 20)
                .unwrap_or(false)
        })
        .collect::<Vec<_>>();
    assert!(big.is_empty(), "step writes reached the host: {big:?}");

    let mut step = f.step("dd if=/dev/zero of=/fill bs=1M count=128; echo after");
    step.resources.memory = Some(32 << 20);
    let out = f.run(step).await;
    assert!(
        !out.result.success() && !out.stdout.contains("after"),
        "128 MiB written outside the workspace under a 32 MiB limit: {:?}\n{}",
        out.result,
        out.stderr
    );
    f.assert_clean().await;
}

/// `Scratch::Disk`: the upper dir is a directory of the sandbox's on the state dir's
/// filesystem, and it goes with the sandbox.
#[testkit::needs(root)]
#[tokio::test]
async fn disk_scratch_holds_rootfs_writes_until_the_step_ends() {
    let mut f = Fixture::new("diskscratch").await;
    let images = LocalDirImages::new().with(IMAGE, f.tmp.path().join("rootfs"));
    let mut config = ContainerConfig::new(f.tmp.path().join("state"), Arc::new(images));
    config.masked_paths = vec![f.tmp.path().to_path_buf()];
    config.scratch = executors::container::Scratch::Disk;
    f.exec = ContainerExecutor::new(config).unwrap();
    let state = f.tmp.path().join("state/sandboxes");
    // While the step runs, its write is a file in its sandbox's upper dir on the host.
    let seen = async {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            let found = walk(&state).into_iter().any(|p| {
                p.ends_with("upper/fill") && std::fs::metadata(&p).is_ok_and(|m| m.len() == 8 << 20)
            });
            if found {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    };
    let (out, seen) = tokio::join!(
        f.run(f.step("dd if=/dev/zero of=/fill bs=1M count=8 2>/dev/null; ls /fill; sleep 2")),
        seen
    );
    assert!(out.result.success(), "{}", out.stderr);
    assert!(out.stdout.starts_with("/fill"), "stdout: {}", out.stdout);
    assert!(
        seen,
        "the step's write never showed up in its upper dir on disk"
    );
    assert!(std::fs::read_dir(&state).unwrap().next().is_none());
    f.assert_clean().await;
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        match entry.file_type() {
            Ok(t) if t.is_dir() => out.extend(walk(&path)),
            Ok(_) => out.push(path),
            Err(_) => {}
        }
    }
    out
}

#[testkit::needs(root)]
#[tokio::test]
async fn pids_limit_holds() {
    let f = Fixture::new("pids").await;
    let mut step = f.step("for i in $(seq 40); do sleep 30 & done; echo all-started");
    step.resources.pids = Some(16);
    step.resources.cpus = Some(0.5);
    step.timeout = Duration::from_secs(20);
    let started = Instant::now();
    let out = f.run(step).await;
    assert!(
        !out.result.success(),
        "40 processes started under a limit of 16"
    );
    assert!(!out.stdout.contains("all-started"));
    assert!(out.stderr.contains("fork"), "stderr: {}", out.stderr);
    // The failed shell is pid 1: its exit takes every background sleep with it.
    assert!(started.elapsed() < Duration::from_secs(15));
    f.assert_clean().await;
}

#[testkit::needs(root)]
#[tokio::test]
async fn timeout_kills_a_tree_that_ignores_sigterm() {
    let f = Fixture::new("timeout").await;
    let marker = f.tmp.path().to_string_lossy().into_owned();
    let script = format!(
        "trap '' TERM; (trap '' TERM; sh -c 'sleep 1000 # {marker}') & \
         sh -c 'trap \"\" TERM; sleep 1000 # {marker}' & sleep 1000"
    );
    let mut step = f.step(&script);
    step.timeout = Duration::from_secs(2);
    let started = Instant::now();
    let out = f.run(step).await;
    assert!(out.result.timed_out, "{:?}", out.result);
    assert!(!out.result.success());
    assert!(started.elapsed() < Duration::from_secs(20));
    f.assert_clean().await;
}

#[testkit::needs(root)]
#[tokio::test]
async fn cancellation_kills_the_step() {
    let f = Fixture::new("cancel").await;
    let cancel = CancellationToken::new();
    let c = cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(500)).await;
        c.cancel();
    });
    let started = Instant::now();
    let out = f.run_with(f.step("sleep 1000 & sleep 1000"), cancel).await;
    assert!(out.result.cancelled, "{:?}", out.result);
    assert!(started.elapsed() < Duration::from_secs(20));
    f.assert_clean().await;
}

#[testkit::needs(root)]
#[tokio::test]
async fn output_streams_while_the_step_runs() {
    let f = Fixture::new("stream").await;
    let out = f
        .run(f.step("echo first; echo oops >&2; sleep 2; echo second"))
        .await;
    assert!(out.result.success());
    assert_eq!(out.stdout, "first\nsecond\n");
    assert_eq!(out.stderr, "oops\n");
    let first = out
        .chunks
        .iter()
        .find(|c| c.data.starts_with(b"first"))
        .unwrap();
    let second = out
        .chunks
        .iter()
        .find(|c| c.data.starts_with(b"second"))
        .unwrap();
    let gap = second.timestamp.duration_since(first.timestamp).unwrap();
    assert!(
        gap >= Duration::from_millis(1500),
        "chunks not streamed: gap {gap:?}"
    );
    f.assert_clean().await;
}

#[testkit::needs(root)]
#[tokio::test]
async fn escapes_fail_inside() {
    let f = Fixture::new("escape").await;
    let secret = f.tmp.path().join("host-secret");
    std::fs::write(&secret, "x").unwrap();
    let script = format!(
        "mount -t tmpfs none /mnt 2>/dev/null && echo ESCAPE-mount; \
         unshare -m true 2>/dev/null && echo ESCAPE-unshare; \
         unshare -U true 2>/dev/null && echo ESCAPE-userns; \
         nsenter -t 1 -m true 2>/dev/null && echo ESCAPE-nsenter; \
         echo junk > /tmp/m.ko; insmod /tmp/m.ko 2>&1 | grep -qi 'not permitted' || echo ESCAPE-insmod-not-denied; \
         for r in /proc/[0-9]*/root; do test -e $r{secret} && echo ESCAPE-proc-root; done; \
         test -e {secret} && echo ESCAPE-path; \
         test -e /dev/kvm && echo ESCAPE-kvm; \
         test -e /dev/vda -o -e /dev/sda && echo ESCAPE-disk; \
         mknod /tmp/disk b 8 0 2>/dev/null && echo ESCAPE-mknod; \
         echo 1 > /proc/sys/kernel/sysrq 2>/dev/null && echo ESCAPE-procsys; \
         cat /proc/kcore 2>/dev/null | head -c1 | grep -q . && echo ESCAPE-kcore; \
         grep CapEff /proc/self/status; echo done",
        secret = secret.display()
    );
    let out = f.run(f.step(&script)).await;
    assert!(out.result.success(), "{}", out.stderr);
    assert!(!out.stdout.contains("ESCAPE"), "{}", out.stdout);
    assert!(out.stdout.contains("done"));
    // CAP_SYS_ADMIN (bit 21) and CAP_SYS_MODULE (16) are gone.
    let capeff = out
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .unwrap();
    let caps = u64::from_str_radix(capeff.trim(), 16).unwrap();
    assert_eq!(caps & (1 << 21 | 1 << 16), 0, "caps {caps:x}");
    f.assert_clean().await;
}

#[testkit::needs(root)]
#[tokio::test]
async fn host_image_hides_secrets_and_denies_keyctl_and_modules() {
    let f = Fixture::new("host").await;
    let secret = f.tmp.path().join("host-secret");
    std::fs::write(&secret, "x").unwrap();
    // perl (Debian's perl-base is essential) makes the raw syscalls: keyctl, init_module,
    // finit_module, and mount, with their x86_64 numbers.
    let script = format!(
        "test -e {secret} && echo ESCAPE-secret; \
         ls /root | grep -q . && echo ESCAPE-root-home; \
         cat /etc/shadow | grep -q . && echo ESCAPE-shadow; \
         ls -A /var/lib/runner 2>/dev/null | grep -q . && echo ESCAPE-runner-data; \
         ls -A /var/lib/private 2>/dev/null | grep -q . && echo ESCAPE-systemd-private; \
         /usr/bin/perl -e 'for my $n (250, 175, 313, 165) {{ my $r = syscall($n, 0, 0, 0, 0, 0); print \"$n=$r:\", $!+0, \"\\n\" }}'; \
         echo pid=$$",
        secret = secret.display()
    );
    let mut step = f.step(&script);
    step.image = ImageSpec::Host;
    let out = f.run(step).await;
    assert!(out.result.success(), "{}", out.stderr);
    assert!(!out.stdout.contains("ESCAPE"), "{}", out.stdout);
    for n in [250, 175, 313, 165] {
        assert!(
            out.stdout.contains(&format!("{n}=-1:1\n")),
            "syscall {n} not denied with EPERM: {}",
            out.stdout
        );
    }
    assert!(out.stdout.contains("pid=1"));
    f.assert_clean().await;
}

#[testkit::needs(root)]
#[tokio::test]
async fn setup_errors_are_reported_not_hidden() {
    let f = Fixture::new("badshell").await;
    let mut step = f.step("true");
    step.shell = Shell::Bash; // busybox image has no bash
    let (tx, _rx) = mpsc::channel(16);
    let err = f
        .exec
        .run_step(&f.job, &step, tx, CancellationToken::new())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("execve"), "{err}");
    f.assert_clean().await;
}

#[testkit::needs(root)]
#[test]
fn reconcile_cleans_up_after_a_killed_runner() {
    let tmp = tempfile::Builder::new()
        .prefix("ctest-reconcile-")
        .tempdir()
        .unwrap();
    let rootfs = tmp.path().join("rootfs");
    build_busybox_rootfs(&rootfs).unwrap();
    let workspace = tmp.path().join("ws");
    std::fs::create_dir(&workspace).unwrap();
    let state = tmp.path().join("state");
    let marker = tmp.path().to_string_lossy().into_owned();
    let mut runner = std::process::Command::new(env!("CARGO_BIN_EXE_container-step"))
        .args(["--state", state.to_str().unwrap()])
        .args(["--workspace", workspace.to_str().unwrap()])
        .args(["--rootfs", rootfs.to_str().unwrap()])
        .args(["--memory", "67108864"])
        .arg("--")
        // `wait` keeps the shell (pid 1, whose command line names the marker) alive.
        .arg(format!("sleep 1000 & wait # {marker}"))
        .spawn()
        .unwrap();
    // Wait until the sandbox runs: its record names its pid.
    let sandboxes = state.join("sandboxes");
    let deadline = Instant::now() + Duration::from_secs(30);
    let record: serde_json::Value = loop {
        let rec = std::fs::read_dir(&sandboxes)
            .into_iter()
            .flatten()
            .flatten()
            .find_map(|e| std::fs::read(e.path().join("sandbox.json")).ok())
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok());
        // The runner's own command line names the marker too: wait for the sandbox's pid 1.
        if let Some(rec) = rec {
            let pid = rec["pid"].as_i64().unwrap_or(0) as i32;
            if processes_mentioning(&marker).contains(&pid) {
                break rec;
            }
        }
        assert!(Instant::now() < deadline, "the step never started");
        std::thread::sleep(Duration::from_millis(50));
    };
    runner.kill().unwrap(); // SIGKILL
    runner.wait().unwrap();
    let pid = record["pid"].as_i64().unwrap() as i32;
    assert!(
        processes_mentioning(&marker).contains(&pid),
        "sandbox died with the runner"
    );
    let cgroups: Vec<PathBuf> = serde_json::from_value(record["cgroups"].clone()).unwrap();
    assert!(!cgroups.is_empty());

    // The next start of the runner.
    let exec = ContainerExecutor::new(ContainerConfig::new(
        &state,
        Arc::new(LocalDirImages::new()),
    ))
    .unwrap();
    let removed = exec.reconcile().unwrap();
    assert_eq!(removed.len(), 1, "{removed:?}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !processes_mentioning(&marker).is_empty() {
        assert!(
            Instant::now() < deadline,
            "sandbox processes survived reconcile"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    for dir in &cgroups {
        assert!(!dir.exists(), "cgroup {} left", dir.display());
    }
    assert_eq!(std::fs::read_dir(&sandboxes).unwrap().count(), 0);
    assert!(exec.reconcile().unwrap().is_empty());
}

#[testkit::needs(root)]
#[tokio::test]
async fn bridge_network_reaches_the_gateway() {
    let tmp = tempfile::Builder::new()
        .prefix("ctest-bridge-")
        .tempdir()
        .unwrap();
    let rootfs = tmp.path().join("rootfs");
    build_busybox_rootfs(&rootfs).unwrap();
    let workspace = tmp.path().join("ws");
    std::fs::create_dir(&workspace).unwrap();
    let mut config = ContainerConfig::new(
        tmp.path().join("state"),
        Arc::new(LocalDirImages::new().with(IMAGE, &rootfs)),
    );
    // A bridge of this test process alone, removed at the end.
    let n = std::process::id();
    config.bridge = executors::container::BridgeConfig {
        name: format!("rt{}", n % 1_000_000),
        subnet: format!("10.213.{}", n % 250),
    };
    let bridge = config.bridge.clone();
    let exec = ContainerExecutor::new(config).unwrap();
    let job = exec
        .prepare(&JobSpec {
            id: format!("tbridge{n}"),
            hostname: "bridge".into(),
            workspace,
        })
        .await
        .unwrap();
    let gateway = format!("{}.1", bridge.subnet);
    let f = Fixture { tmp, exec, job };
    let mut step = f.step(&format!(
        "ip -4 addr show eth0 | grep -q '{}\\.' && ping -c1 -W5 {gateway} >/dev/null && echo reached",
        bridge.subnet.replace('.', "\\.")
    ));
    step.network = Network::Bridge;
    let out = f.run(step).await;
    let veths: Vec<String> = std::fs::read_dir("/sys/class/net")
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    bridge.remove();
    assert!(out.result.success(), "{} {}", out.stdout, out.stderr);
    assert_eq!(out.stdout, "reached\n");
    // The step's veth went with its sandbox; only the bridge itself was left until now.
    let brif = std::fs::read_dir(format!("/sys/class/net/{}/brif", bridge.name));
    assert!(brif.is_err() || brif.unwrap().count() == 0, "{veths:?}");
    f.assert_clean().await;
}

#[testkit::needs(root)]
#[tokio::test]
async fn user_namespace_maps_root_to_an_unprivileged_range() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let tmp = tempfile::Builder::new()
        .prefix("ctest-userns-")
        .tempdir()
        .unwrap();
    // The mapped root is an ordinary user on the host: it must be able to reach its files.
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    let rootfs = tmp.path().join("rootfs");
    build_busybox_rootfs(&rootfs).unwrap();
    let workspace = tmp.path().join("ws");
    std::fs::create_dir(&workspace).unwrap();
    let base = 3_000_000 + (std::process::id() % 1000) * 65536;
    std::fs::write(workspace.join("from-host"), "x").unwrap();
    let mut config = ContainerConfig::new(
        tmp.path().join("state"),
        Arc::new(LocalDirImages::new().with(IMAGE, &rootfs)),
    );
    config.userns = Some(executors::container::IdMap {
        host_id: base,
        count: 65536,
    });
    let exec = ContainerExecutor::new(config).unwrap();
    let job = exec
        .prepare(&JobSpec {
            id: format!("tuserns{}", std::process::id()),
            hostname: "userns".into(),
            workspace: workspace.clone(),
        })
        .await
        .unwrap();
    let f = Fixture { tmp, exec, job };
    let out = f
        .run(f.step(
            "id -u; cat /proc/self/uid_map; echo hi > /workspace/made; \
             echo x > /tmp/t && echo tmp-ok; echo $$; stat -c %u /etc/passwd; \
             echo added >> /etc/passwd && echo etc-ok; stat -c %u /workspace/from-host",
        ))
        .await;
    assert!(out.result.success(), "{} {}", out.stdout, out.stderr);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines[0], "0");
    let map: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(map, ["0", &base.to_string(), "65536"]);
    assert_eq!(lines[2], "tmp-ok");
    assert_eq!(lines[3], "1");
    // Image layers are idmapped: host root's files belong to the step's root, which can
    // change them (in its upper dir only).
    assert_eq!(lines[4], "0");
    assert_eq!(lines[5], "etc-ok");
    assert!(
        !std::fs::read_to_string(f.tmp.path().join("rootfs/etc/passwd"))
            .unwrap()
            .contains("added")
    );
    // The workspace is idmapped too: host root's files are the step's root's, and what the
    // step writes lands on the host as root's, as without a user namespace.
    assert_eq!(lines[6], "0");
    assert_eq!(std::fs::metadata(workspace.join("made")).unwrap().uid(), 0);
    f.assert_clean().await;
}

/// This host is hybrid (v1 controllers + a v2 tree). The pure-v2 driver is exercised by
/// running the executor (`container-step`) in a private mount namespace where only the v2 tree
/// is mounted, as on a v2-only host: a plain step, a clear error for a limit whose controller
/// the tree lacks, and a timeout that kills the tree through `cgroup.kill`.
#[testkit::needs(root)]
#[testkit::host(hybrid_cgroups)]
#[test]
fn pure_cgroup_v2_driver_runs_limits_errors_and_kills() {
    let unified = std::path::Path::new("/sys/fs/cgroup/unified");
    let tmp = tempfile::Builder::new()
        .prefix("ctest-v2-")
        .tempdir()
        .unwrap();
    let rootfs = tmp.path().join("rootfs");
    build_busybox_rootfs(&rootfs).unwrap();
    let ws = tmp.path().join("ws");
    std::fs::create_dir(&ws).unwrap();
    let state = tmp.path().join("state");
    let step = env!("CARGO_BIN_EXE_container-step");
    let job = format!("tv2only{}", std::process::id());
    let common = format!(
        "{step} --job {job} --state {} --workspace {} --rootfs {}",
        state.display(),
        ws.display(),
        rootfs.display()
    );
    // Unmount every v1 hierarchy in a private mount namespace (util-linux `unshare`, test only).
    let script = format!(
        "set -u; for m in $(awk '$9 == \"cgroup\" {{print $5}}' /proc/self/mountinfo); do umount $m; done; \
         {common} -- 'echo plain'; echo rc=$?; \
         {common} --pids 8 -- 'echo limited'; echo rc=$?; \
         {common} --timeout 1 -- 'sleep 1000 & sleep 1000'; echo rc=$?"
    );
    let out = std::process::Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c", &script])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stdout.contains("plain\nrc=0\n"), "{stdout} {stderr}");
    if stdout.contains("limited\nrc=0\n") {
        // The v2 tree here has a pids controller after all: the limit applied.
    } else {
        assert!(stdout.contains("rc=125"), "{stdout} {stderr}");
        assert!(
            stderr.contains("pids controller is not available"),
            "{stderr}"
        );
    }
    assert!(
        stdout.contains("rc=137"),
        "timeout not a kill: {stdout} {stderr}"
    );
    let left: Vec<_> = std::fs::read_dir(unified)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains(&job))
        .map(|e| e.path())
        .collect();
    assert!(std::fs::read_dir(state.join("sandboxes"))
        .unwrap()
        .next()
        .is_none());
    assert!(left.is_empty(), "sandbox cgroups left: {left:?}");
}

#[testkit::needs(root)]
#[tokio::test]
async fn dropping_a_running_step_removes_its_sandbox() {
    let f = Fixture::new("drop").await;
    let marker = f.tmp.path().to_string_lossy().into_owned();
    let step = f.step(&format!("sleep 1000 & wait # {marker}"));
    let (tx, _rx) = mpsc::channel(16);
    {
        let run = f.exec.run_step(&f.job, &step, tx, CancellationToken::new());
        tokio::pin!(run);
        let deadline = Instant::now() + Duration::from_secs(20);
        // Poll the step until its processes run, then give up on the future (as a caller
        // does when its task is aborted or a select! branch loses).
        while processes_mentioning(&marker).is_empty() {
            assert!(Instant::now() < deadline, "the step never started");
            tokio::select! {
                r = &mut run => panic!("the step ended on its own: {r:?}"),
                _ = tokio::time::sleep(Duration::from_millis(20)) => {}
            }
        }
    }
    f.assert_clean().await;
}
