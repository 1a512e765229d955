//! The microVM backend of the VM executor: where KVM is hardware-backed it runs a real step
//! (the guest's own kernel, the image root from the virtio disk, output over the agent UART);
//! elsewhere (PVM) it must be refused at once, with the reason. (`auto` choosing QEMU there is
//! unit-tested in `vm::microvm`.)

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use executors::vm::microvm::Backend;
use executors::vm::{KvmKind, VmConfig, VmExecutor};
use executors::{
    Executor, ExecutorError, ImageProvider, ImageSpec, JobSpec, LogChunk, Network, ResolvedImage,
    Shell, StepSpec, Stream,
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
        _reference: &str,
        _output: &mpsc::Sender<LogChunk>,
    ) -> Result<ResolvedImage, ExecutorError> {
        Ok(ResolvedImage {
            digest: "sha256:busybox-microvm-test".into(),
            layers: vec![self.layer.clone()],
            env: vec![],
            working_dir: None,
            lease: Default::default(),
        })
    }
}

fn config(dir: &Path, backend: Backend) -> VmConfig {
    let mut cfg = VmConfig::with_data_dir(&dir.join("data"));
    cfg.backend = backend;
    cfg.memory_mib = 256;
    cfg
}

/// Where KVM is hardware-backed the refusal does not apply: the step test below runs instead.
#[testkit::host(no_hardware_kvm)]
#[test]
fn microvm_is_refused_where_kvm_cannot_boot_linux() {
    let kvm = KvmKind::detect();
    let dir = tempfile::tempdir().unwrap();
    let images = Arc::new(Busybox::create(dir.path()));
    let err = match VmExecutor::new(config(dir.path(), Backend::Microvm), images) {
        Ok(_) => panic!("the microvm backend was accepted on a {kvm:?} host"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("hardware KVM") && err.contains("qemu"),
        "{err}"
    );
}

/// Where KVM cannot boot Linux (PVM, none), the refusal above is tested instead.
#[testkit::host(hardware_kvm)]
#[testkit::needs(guest_kernel)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_runs_in_a_microvm_on_hardware_kvm() {
    let dir = tempfile::tempdir().unwrap();
    let images = Arc::new(Busybox::create(dir.path()));
    let mut cfg = config(dir.path(), Backend::Microvm);
    cfg.kernel_dir = testkit::guest::kernel_dir();
    cfg.agent = testkit::guest::agent().to_path_buf();
    let exec = VmExecutor::new(cfg, images).expect("VM executor with the microvm backend");
    assert_eq!(exec.describe(), "microvm, kvm");
    let ws = dir.path().join("workspace");
    std::fs::create_dir_all(&ws).unwrap();
    std::fs::write(ws.join("in.txt"), "from the host\n").unwrap();
    let job = exec
        .prepare(&JobSpec {
            id: "microvm-job".into(),
            hostname: "microvm".into(),
            workspace: ws.clone(),
        })
        .await
        .unwrap();
    let step = StepSpec {
        name: "s".into(),
        image: ImageSpec::Oci("busybox:test".into()),
        script: "cat in.txt; uname -r; echo made > out.txt; exit 3".into(),
        shell: Shell::Sh,
        env: Default::default(),
        workdir: "/builds/project".into(),
        timeout: Duration::from_secs(60),
        network: Network::None,
        resources: Default::default(),
    };
    let (tx, mut rx) = mpsc::channel::<LogChunk>(256);
    let collect = tokio::spawn(async move {
        let mut out = String::new();
        while let Some(c) = rx.recv().await {
            if c.stream == Stream::Stdout {
                out.push_str(&String::from_utf8_lossy(&c.data));
            }
        }
        out
    });
    let result = exec
        .run_step(&job, &step, tx, CancellationToken::new())
        .await
        .unwrap();
    let out = collect.await.unwrap();
    assert_eq!(result.exit_code, Some(3), "{out}");
    assert!(out.contains("from the host"), "{out}");
    let host_release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    assert!(
        !out.contains(host_release.trim()),
        "the guest runs its own kernel: {out}"
    );
    assert_eq!(
        std::fs::read_to_string(ws.join("out.txt")).unwrap(),
        "made\n"
    );
    exec.cleanup(&job).await.unwrap();
}
