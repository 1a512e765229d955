//! End-to-end tests of `isolation: vm`: real QEMU, the real Debian cloud kernel (from
//! `deploy/setup-vm-kernel.sh`), the real guest agent, a real busybox image layer.
//! Under TCG each boot costs a few seconds of CPU, so each test boots as few VMs as it can.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use executors::vm::{VmConfig, VmExecutor};
use executors::{
    Executor, ExecutorError, ImageProvider, ImageSpec, JobSpec, LogChunk, Network, PreparedJob,
    ResolvedImage, Shell, StepResult, StepSpec, Stream,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// A one-layer busybox image, as the image store would unpack it.
struct Busybox {
    layer: PathBuf,
}

impl Busybox {
    fn create(dir: &Path) -> Busybox {
        Busybox {
            layer: testkit::guest::busybox_layer(dir),
        }
    }
}

#[async_trait]
impl ImageProvider for Busybox {
    async fn resolve(
        &self,
        reference: &str,
        _output: &mpsc::Sender<LogChunk>,
    ) -> Result<ResolvedImage, ExecutorError> {
        assert_eq!(reference, "busybox:test");
        Ok(ResolvedImage {
            digest: "sha256:busybox-test".into(),
            layers: vec![self.layer.clone()],
            env: vec!["IMAGE_VAR=from-image".into()],
            working_dir: None,
            lease: Default::default(),
        })
    }
}

struct Fixture {
    dir: tempfile::TempDir,
    exec: VmExecutor,
    job: PreparedJob,
}

async fn fixture(warm_pool: usize) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let images = Arc::new(Busybox::create(dir.path()));
    let mut cfg = VmConfig::with_data_dir(&dir.path().join("data"));
    cfg.kernel_dir = testkit::guest::kernel_dir();
    cfg.agent = testkit::guest::agent().to_path_buf();
    cfg.warm_pool = warm_pool;
    cfg.memory_mib = 256;
    let exec = VmExecutor::new(cfg, images).expect("VM executor");
    let ws = dir.path().join("workspace");
    std::fs::create_dir_all(&ws).unwrap();
    let job = exec
        .prepare(&JobSpec {
            id: "job1".into(),
            hostname: "vmjob".into(),
            workspace: ws,
        })
        .await
        .unwrap();
    Fixture { dir, exec, job }
}

fn step(script: &str, timeout: Duration) -> StepSpec {
    StepSpec {
        name: "s".into(),
        image: ImageSpec::Oci("busybox:test".into()),
        script: script.into(),
        shell: Shell::Sh,
        env: BTreeMap::from([("STEP_VAR".to_string(), "from-step".to_string())]),
        workdir: "/builds/project".into(),
        timeout,
        network: Network::None,
        resources: Default::default(),
    }
}

/// Run a step, collecting its stdout, stderr and system lines.
async fn run(
    f: &Fixture,
    s: &StepSpec,
    cancel: CancellationToken,
) -> (Result<StepResult, ExecutorError>, String, String, String) {
    let (tx, mut rx) = mpsc::channel::<LogChunk>(256);
    let collect = tokio::spawn(async move {
        let (mut out, mut err, mut sys) = (String::new(), String::new(), String::new());
        while let Some(c) = rx.recv().await {
            let text = String::from_utf8_lossy(&c.data).into_owned();
            match c.stream {
                Stream::Stdout => out.push_str(&text),
                Stream::Stderr => err.push_str(&text),
                Stream::System => sys.push_str(&text),
            }
        }
        (out, err, sys)
    });
    let r = f.exec.run_step(&f.job, s, tx, cancel).await;
    let (out, err, sys) = collect.await.unwrap();
    (r, out, err, sys)
}

/// QEMU processes started for this fixture (their command line names its data dir).
fn qemu_processes(data_dir: &Path) -> Vec<u32> {
    let needle = data_dir.display().to_string();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cmd = String::from_utf8_lossy(&cmd);
            cmd.contains("qemu-system") && cmd.contains(&needle)
        })
        .collect()
}

/// Files in the cache besides the initramfs and the root disks.
fn stray_files(data_dir: &Path) -> Vec<PathBuf> {
    let mut stray = Vec::new();
    for d in [data_dir.join("vm/cache"), data_dir.join("vm/cache/disks")] {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let known = (name.starts_with("initramfs-") && name.ends_with(".cpio"))
                || name.ends_with(".ext4")
                || name == "disks";
            if !known {
                stray.push(e.path());
            }
        }
    }
    stray
}

#[testkit::needs(guest_kernel)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vm_steps_share_the_workspace_and_throw_the_rest_away() {
    let f = fixture(0).await;
    let ws = f.job.job.workspace.clone();
    std::fs::write(ws.join("from-host.txt"), "checked out\n").unwrap();

    let (r, out, err, sys) = run(
        &f,
        &step(
            "cat from-host.txt; uname -r > guest-kernel; echo \"$IMAGE_VAR $STEP_VAR $(pwd) $(hostname)\"; \
             mkdir -p sub && echo built > sub/artifact; echo junk > /etc/outside; echo to-stderr >&2",
            Duration::from_secs(60),
        ),
        CancellationToken::new(),
    )
    .await;
    let r = r.unwrap();
    assert!(r.success(), "{r:?}\nstdout: {out}\nstderr: {err}\n{sys}");
    assert!(
        out.contains("checked out"),
        "the VM sees files made before it: {out}"
    );
    assert!(
        out.contains("from-image from-step /builds/project vmjob"),
        "{out}"
    );
    assert_eq!(err.trim(), "to-stderr");
    assert!(sys.contains("vm: prepare disk"), "{sys}");
    let guest_kernel = std::fs::read_to_string(ws.join("guest-kernel")).unwrap();
    let host_kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    assert!(
        guest_kernel.trim().ends_with("cloud-amd64"),
        "{guest_kernel}"
    );
    assert_ne!(
        guest_kernel.trim(),
        host_kernel.trim(),
        "the step ran on its own kernel"
    );
    assert_eq!(
        std::fs::read_to_string(ws.join("sub/artifact")).unwrap(),
        "built\n"
    );

    // A second VM step: sees the first one's files, not its writes outside the workspace;
    // its exit code comes back.
    let port = http_server("never served");
    let (r, out, err, _) = run(
        &f,
        &step(
            &format!(
                "cat sub/artifact; test ! -e /etc/outside && echo outside-gone; rm from-host.txt; \
                 wget -O - http://10.0.2.2:{port}/ || echo no-network; exit 3"
            ),
            Duration::from_secs(60),
        ),
        CancellationToken::new(),
    )
    .await;
    let r = r.unwrap();
    assert_eq!(r.exit_code, Some(3), "{r:?} {out}");
    assert!(!r.success());
    assert!(
        out.contains("built") && out.contains("outside-gone"),
        "{out}"
    );
    assert!(
        out.contains("no-network") && err.contains("Network is unreachable"),
        "network none has no way out: {out} {err}"
    );
    assert!(
        !ws.join("from-host.txt").exists(),
        "deletions in the VM reach the workspace"
    );
    assert!(qemu_processes(f.dir.path()).is_empty());
    assert!(stray_files(&f.dir.path().join("data")).is_empty());
}

#[testkit::needs(guest_kernel)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_and_cancel_kill_the_vm_and_leave_nothing() {
    let f = fixture(0).await;
    let data = f.dir.path().join("data");

    let (r, out, _, _) = run(
        &f,
        &step("echo started; sleep 120", Duration::from_secs(5)),
        CancellationToken::new(),
    )
    .await;
    let r = r.unwrap();
    assert!(r.timed_out && !r.success(), "{r:?}");
    assert!(out.contains("started"), "{out}");
    assert!(
        qemu_processes(f.dir.path()).is_empty(),
        "QEMU survived a timeout"
    );

    let cancel = CancellationToken::new();
    let c = cancel.clone();
    let started = Instant::now();
    let (tx, mut rx) = mpsc::channel::<LogChunk>(64);
    let s = step("echo started; sleep 120", Duration::from_secs(300));
    let watcher = tokio::spawn(async move {
        while let Some(chunk) = rx.recv().await {
            if chunk.stream == Stream::Stdout
                && String::from_utf8_lossy(&chunk.data).contains("started")
            {
                c.cancel();
            }
        }
    });
    let r = f.exec.run_step(&f.job, &s, tx, cancel).await.unwrap();
    watcher.await.unwrap();
    assert!(r.cancelled && !r.success(), "{r:?}");
    assert!(started.elapsed() < Duration::from_secs(100));
    assert!(
        qemu_processes(f.dir.path()).is_empty(),
        "QEMU survived a cancel"
    );
    assert!(stray_files(&data).is_empty(), "{:?}", stray_files(&data));
}

#[testkit::needs(guest_kernel)]
#[tokio::test]
async fn host_image_and_host_network_are_refused_clearly() {
    let f = fixture(0).await;
    let mut s = step("true", Duration::from_secs(5));
    s.image = ImageSpec::Host;
    let (r, _, _, _) = run(&f, &s, CancellationToken::new()).await;
    match r {
        Err(ExecutorError::Unsupported(msg)) => assert!(msg.contains("image: host"), "{msg}"),
        other => panic!("expected Unsupported, got {other:?}"),
    }
    let mut s = step("true", Duration::from_secs(5));
    s.network = Network::Host;
    assert!(matches!(
        run(&f, &s, CancellationToken::new()).await.0,
        Err(ExecutorError::Unsupported(_))
    ));
    assert!(
        f.job.description.starts_with("vm (qemu, "),
        "{}",
        f.job.description
    );
    if Path::new("/sys/module/kvm_pvm").exists() {
        assert_eq!(
            f.job.description, "vm (qemu, tcg)",
            "PVM hosts must use TCG"
        );
    }
}

#[testkit::needs(guest_kernel)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_pool_serves_a_step_and_dies_with_the_executor() {
    let f = fixture(1).await;
    f.exec.warm("busybox:test").await.unwrap();
    assert!(f.exec.wait_pool_ready(Duration::from_secs(60)).await);
    let (r, out, _, sys) = run(
        &f,
        &step(
            "echo warm > w.txt; head -c 300000 /dev/zero | tr '\\0' x",
            Duration::from_secs(60),
        ),
        CancellationToken::new(),
    )
    .await;
    assert!(r.unwrap().success(), "{}", &out[..out.len().min(200)]);
    assert!(sys.contains("(warm pool)"), "{sys}");
    // Output of some size streams through intact.
    assert_eq!(out.len(), 300_000);
    assert!(out.bytes().all(|b| b == b'x'));
    assert_eq!(
        std::fs::read_to_string(f.job.job.workspace.join("w.txt")).unwrap(),
        "warm\n"
    );
    // The used VM is gone; a fresh one boots for the next step. Dropping the executor kills it.
    assert!(f.exec.wait_pool_ready(Duration::from_secs(60)).await);
    assert_eq!(qemu_processes(f.dir.path()).len(), 1);
    let dir = f.dir;
    drop(f.exec);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !qemu_processes(dir.path()).is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        qemu_processes(dir.path()).is_empty(),
        "pool VM survived its executor"
    );
}

/// A one-response-per-connection HTTP server on 127.0.0.1; returns its port.
fn http_server(body: &'static str) -> u16 {
    use std::io::{Read, Write};
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut c in l.incoming().flatten() {
            let mut buf = [0u8; 1024];
            let _ = c.read(&mut buf);
            let _ = write!(
                c,
                "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
        }
    });
    port
}

#[testkit::needs(guest_kernel)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bridge_network_reaches_the_host_through_user_mode_nat() {
    let f = fixture(0).await;
    let port = http_server("hello from the host");
    let mut s = step(
        &format!("wget -O - http://10.0.2.2:{port}/; echo; cat /etc/resolv.conf"),
        Duration::from_secs(60),
    );
    s.network = Network::Bridge;
    let (r, out, err, _) = run(&f, &s, CancellationToken::new()).await;
    assert!(r.unwrap().success(), "stdout: {out}\nstderr: {err}");
    assert!(out.contains("hello from the host"), "{out}");
    assert!(out.contains("nameserver 10.0.2.3"), "{out}");
}

/// The pipeline: a container step, a VM step and a container step on one workspace,
/// all from the same image.
#[testkit::needs(root, guest_kernel)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_vm_container_share_the_workspace() {
    use executors::container::{
        build_busybox_rootfs, ContainerConfig, ContainerExecutor, LocalDirImages,
    };
    let tmp = tempfile::tempdir().unwrap();
    let rootfs = tmp.path().join("rootfs");
    build_busybox_rootfs(&rootfs).unwrap();
    let images = Arc::new(LocalDirImages::new().with("busybox:test", &rootfs));
    let mut ccfg = ContainerConfig::new(tmp.path().join("state"), images.clone());
    ccfg.masked_paths = vec![tmp.path().to_path_buf()];
    let container = ContainerExecutor::new(ccfg).unwrap();
    container.reconcile().unwrap();
    let mut vcfg = VmConfig::with_data_dir(&tmp.path().join("data"));
    vcfg.kernel_dir = testkit::guest::kernel_dir();
    vcfg.agent = testkit::guest::agent().to_path_buf();
    vcfg.memory_mib = 256;
    let vm = VmExecutor::new(vcfg, images).unwrap();

    let ws = tmp.path().join("workspace");
    std::fs::create_dir_all(&ws).unwrap();
    let job = JobSpec {
        id: format!("mixed{}", std::process::id()),
        hostname: "mixed".into(),
        workspace: ws.clone(),
    };
    let cjob = container.prepare(&job).await.unwrap();
    let vjob = vm.prepare(&job).await.unwrap();

    async fn go(e: &dyn Executor, job: &PreparedJob, script: &str) -> (StepResult, String, String) {
        let (tx, mut rx) = mpsc::channel::<LogChunk>(256);
        let collect = tokio::spawn(async move {
            let (mut out, mut err) = (String::new(), String::new());
            while let Some(c) = rx.recv().await {
                let t = String::from_utf8_lossy(&c.data).into_owned();
                match c.stream {
                    Stream::Stdout => out.push_str(&t),
                    Stream::Stderr => err.push_str(&t),
                    Stream::System => {}
                }
            }
            (out, err)
        });
        let mut s = step(script, Duration::from_secs(60));
        s.workdir = "/workspace".into();
        let r = e
            .run_step(job, &s, tx, CancellationToken::new())
            .await
            .unwrap();
        let (out, err) = collect.await.unwrap();
        (r, out, err)
    }

    let (r, out, err) = go(
        &container,
        &cjob,
        "echo one > step1.txt; uname -r > c-kernel",
    )
    .await;
    assert!(r.success(), "container step 1: {r:?} {out} {err}");
    let (r, out, err) = go(
        &vm,
        &vjob,
        "cat step1.txt; uname -r > vm-kernel; echo two > step2.txt; echo junk > /root/outside",
    )
    .await;
    assert!(r.success(), "vm step: {r:?} {out} {err}");
    assert!(out.contains("one"), "the VM sees step 1's file: {out}");
    let (r, out, err) = go(
        &container,
        &cjob,
        "cat step2.txt; test ! -e /root/outside && echo no-outside",
    )
    .await;
    assert!(r.success(), "container step 3: {r:?} {out} {err}");
    assert!(out.contains("two") && out.contains("no-outside"), "{out}");
    let c_kernel = std::fs::read_to_string(ws.join("c-kernel")).unwrap();
    let v_kernel = std::fs::read_to_string(ws.join("vm-kernel")).unwrap();
    assert_ne!(c_kernel, v_kernel, "the VM step runs its own kernel");
    container.cleanup(&cjob).await.unwrap();
    vm.cleanup(&vjob).await.unwrap();
    assert!(qemu_processes(tmp.path()).is_empty());
}

/// A runner killed with SIGKILL cannot clean up: its VMs must die with it anyway (QEMU runs
/// with PR_SET_PDEATHSIG). The test re-runs itself as the "runner" and kills that process.
#[testkit::needs(guest_kernel)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_runner_takes_its_vm_along() {
    const CHILD: &str = "RUNNER_VM_TEST_CHILD";
    if std::env::var_os(CHILD).is_some() {
        let f = fixture(0).await;
        println!("DATA={}", f.dir.path().display());
        let (tx, mut rx) = mpsc::channel::<LogChunk>(16);
        let printer = tokio::spawn(async move {
            while let Some(c) = rx.recv().await {
                print!("{}", String::from_utf8_lossy(&c.data));
            }
        });
        let s = step("echo step-started; sleep 120", Duration::from_secs(300));
        let _ = f
            .exec
            .run_step(&f.job, &s, tx, CancellationToken::new())
            .await;
        let _ = printer.await;
        return;
    }
    use std::io::BufRead;
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "a_killed_runner_takes_its_vm_along",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD, "1")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let reader = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut data = None;
    for line in reader.lines() {
        let line = line.unwrap();
        // libtest may print "test <name> ... " on the same line first.
        if let Some(i) = line.find("DATA=") {
            data = Some(PathBuf::from(line[i + 5..].trim()));
        }
        if line.contains("step-started") {
            break;
        }
    }
    let data = data.expect("child printed its data dir");
    assert_eq!(qemu_processes(&data).len(), 1, "the child's VM runs");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::SIGKILL,
    )
    .unwrap();
    child.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !qemu_processes(&data).is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(qemu_processes(&data).is_empty(), "QEMU outlived its runner");
    // The child's temp dir is its own leftover (it never got to clean up); remove it here.
    let _ = std::fs::remove_dir_all(&data);
}

/// What fails inside the guest comes back as a clear error, and the VM is gone.
#[testkit::needs(guest_kernel)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_inside_the_guest_is_reported_with_its_reason() {
    let f = fixture(0).await;
    let mut s = step("true", Duration::from_secs(60));
    s.workdir = "/proc/sys/kernel/nope".into(); // mkdir fails in the guest.
    let (r, _, _, _) = run(&f, &s, CancellationToken::new()).await;
    match r {
        Err(ExecutorError::Backend(msg)) => {
            assert!(
                msg.contains("guest agent") && msg.contains("create workspace"),
                "{msg}"
            )
        }
        other => panic!("expected the agent's error, got {other:?}"),
    }
    assert!(qemu_processes(f.dir.path()).is_empty());
}
