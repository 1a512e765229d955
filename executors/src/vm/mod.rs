//! `isolation: vm`: every step in a throwaway Linux VM.
//!
//! Per step: resolve the image, build (once per digest) its read-only root disk, boot a VM
//! through a [`Hypervisor`] backend (or take a pre-booted one from the warm pool), wait for
//! the guest agent, send it the step and the workspace, relay the output, take the workspace
//! back, kill the VM. The guest side is the `guest-agent` crate; the wire format is in
//! `docs/vm-protocol.md`.

pub mod host;
pub mod hypervisor;
pub mod kernel;
pub mod microvm;
mod pool;
pub mod qemu;
pub mod rootfs;
pub mod session;
pub mod workspace;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use guest_agent::protocol::Run;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::{
    Executor, ExecutorError, ImageProvider, ImageSpec, JobSpec, LogChunk, Network, PreparedJob,
    ResolvedImage, Shell, StepResult, StepSpec, Stream,
};
pub use host::KvmKind;
pub use hypervisor::{Hypervisor, RunningVm, VmControl, VmSpec};
pub use qemu::{Accel, Qemu};

#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("guest kernel not found in {0}: run deploy/setup-vm-kernel.sh or set [vm] kernel_dir")]
    KernelMissing(PathBuf),
    #[error("guest agent binary {0} unreadable ({1}): build it with `cargo build -p guest-agent --target x86_64-unknown-linux-musl --release` or set [vm] agent")]
    AgentMissing(PathBuf, std::io::Error),
    #[error("building the initramfs: {0}")]
    Initramfs(String),
    #[error("building the root disk: {0}")]
    RootDisk(String),
    #[error("hypervisor: {0}")]
    Hypervisor(String),
    #[error("VM did not boot: {0}")]
    Boot(String),
    #[error("agent channel: {0}")]
    Channel(String),
    #[error("guest agent: {0}")]
    Agent(String),
    #[error("workspace transfer: {0}")]
    Workspace(String),
    #[error("cancelled")]
    Cancelled,
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl VmError {
    fn io(path: &Path, source: std::io::Error) -> VmError {
        VmError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

impl From<VmError> for ExecutorError {
    fn from(e: VmError) -> Self {
        ExecutorError::Backend(format!("vm: {e}"))
    }
}

/// Settings of the VM executor (the runner fills them from its `[vm]` config section).
#[derive(Debug, Clone)]
pub struct VmConfig {
    /// Unpacked kernel package (`boot/vmlinuz-*`, `lib/modules/*`).
    pub kernel_dir: PathBuf,
    /// The static `guest-agent` binary.
    pub agent: PathBuf,
    /// Initramfs and root disks are cached here.
    pub cache_dir: PathBuf,
    pub qemu: PathBuf,
    /// Which hypervisor: `auto` (the microVM on hardware KVM, QEMU otherwise), `qemu`, `microvm`.
    pub backend: microvm::Backend,
    /// `None`: KVM where it can boot Linux, TCG otherwise.
    pub accel: Option<Accel>,
    /// VM size when the step does not say.
    pub cpus: u32,
    pub memory_mib: u64,
    /// Pre-booted VMs kept ready (each runs one step only).
    pub warm_pool: usize,
    pub boot_timeout: Duration,
}

impl VmConfig {
    /// Defaults for a runner data dir: kernel in `<data>/vm/kernel`, caches in `<data>/vm/cache`.
    pub fn with_data_dir(data_dir: &Path) -> VmConfig {
        VmConfig {
            kernel_dir: data_dir.join("vm/kernel"),
            agent: data_dir.join("vm/guest-agent"),
            cache_dir: data_dir.join("vm/cache"),
            qemu: "qemu-system-x86_64".into(),
            backend: microvm::Backend::Auto,
            accel: None,
            cpus: 1,
            memory_mib: 512,
            warm_pool: 0,
            boot_timeout: Duration::from_secs(60),
        }
    }
}

/// Where the time of one VM step went; also sent as a `System` line after the step.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Breakdown {
    pub prepare_disk: Duration,
    /// Hypervisor start to agent `Hello` (zero when a warm VM was used).
    pub boot: Duration,
    /// Step sent to exit status received (includes both workspace transfers).
    pub run: Duration,
    pub shutdown: Duration,
    pub warm: bool,
    /// Guest uptime when the agent started and when it was ready (guest clock).
    pub guest_init: Duration,
    pub guest_ready: Duration,
}

impl Breakdown {
    pub fn line(&self) -> String {
        format!(
            "vm: prepare disk {} ms, boot {} ms{}, run {} ms, shutdown {} ms (guest: init at {} ms, agent ready at {} ms)\n",
            self.prepare_disk.as_millis(),
            self.boot.as_millis(),
            if self.warm { " (warm pool)" } else { "" },
            self.run.as_millis(),
            self.shutdown.as_millis(),
            self.guest_init.as_millis(),
            self.guest_ready.as_millis(),
        )
    }
}

pub(crate) struct Inner {
    cfg: VmConfig,
    images: Arc<dyn ImageProvider>,
    hypervisor: Arc<dyn Hypervisor>,
    kernel: kernel::GuestKernel,
    initramfs: PathBuf,
    disk_lock: tokio::sync::Mutex<()>,
}

/// The VM executor.
pub struct VmExecutor {
    inner: Arc<Inner>,
    pool: Arc<pool::Pool>,
}

impl VmExecutor {
    /// With the backend [`VmConfig::backend`] picks for this host (QEMU accelerated as
    /// [`VmConfig::accel`] or the host allows). Builds the initramfs if needed (blocking: call
    /// at start-up).
    pub fn new(cfg: VmConfig, images: Arc<dyn ImageProvider>) -> Result<VmExecutor, VmError> {
        let kvm = KvmKind::detect();
        let accel = cfg.accel.unwrap_or_else(|| Accel::for_host(kvm));
        let qemu = Qemu {
            binary: cfg.qemu.clone(),
            accel,
            tsc_khz: host::host_tsc_khz(),
        };
        let hypervisor = microvm::select(cfg.backend, kvm, qemu)?;
        Self::with_hypervisor(cfg, images, hypervisor)
    }

    /// With any backend (e.g. the in-process microVM).
    pub fn with_hypervisor(
        cfg: VmConfig,
        images: Arc<dyn ImageProvider>,
        hypervisor: Arc<dyn Hypervisor>,
    ) -> Result<VmExecutor, VmError> {
        let kernel = kernel::GuestKernel::find(&cfg.kernel_dir)?;
        let initramfs = kernel::initramfs(&kernel, &cfg.agent, &cfg.cache_dir)?;
        remove_stale_temp_files(&cfg.cache_dir);
        let inner = Arc::new(Inner {
            cfg,
            images,
            hypervisor,
            kernel,
            initramfs,
            disk_lock: tokio::sync::Mutex::new(()),
        });
        Ok(VmExecutor {
            pool: Arc::new(pool::Pool::new(inner.cfg.warm_pool)),
            inner,
        })
    }

    pub fn describe(&self) -> String {
        self.inner.hypervisor.describe()
    }

    /// Pre-boot the warm pool for `image` now (otherwise it fills after the first step).
    pub async fn warm(&self, image: &str) -> Result<(), ExecutorError> {
        let (_, disk) = self.inner.root_disk(image, &mpsc::channel(1).0).await?;
        let spec = self.inner.spec(&disk, None, false);
        self.pool.fill(&self.inner, spec).await;
        Ok(())
    }

    /// Wait until the warm pool holds its full count of ready VMs (or `timeout` passes).
    pub async fn wait_pool_ready(&self, timeout: Duration) -> bool {
        self.pool.wait_full(timeout).await
    }
}

impl Inner {
    async fn root_disk(
        &self,
        reference: &str,
        output: &mpsc::Sender<LogChunk>,
    ) -> Result<(ResolvedImage, PathBuf), ExecutorError> {
        let image = self.images.resolve(reference, output).await?;
        let _guard = self.disk_lock.lock().await;
        let dir = self.cfg.cache_dir.join("disks");
        if !rootfs::disk_path(&dir, &image.digest).exists() {
            let _ = output
                .send(LogChunk::new(
                    Stream::System,
                    format!("vm: building root disk for {reference}\n"),
                ))
                .await;
        }
        let img = image.clone();
        let disk = tokio::task::spawn_blocking(move || rootfs::base_disk(&img, &dir))
            .await
            .map_err(|e| ExecutorError::Backend(format!("vm: disk task: {e}")))??;
        Ok((image, disk))
    }

    fn spec(&self, disk: &Path, resources: Option<&crate::Resources>, network: bool) -> VmSpec {
        let cpus = resources
            .and_then(|r| r.cpus)
            .map(|c| c.ceil().max(1.0) as u32)
            .unwrap_or(self.cfg.cpus);
        let memory_mib = resources
            .and_then(|r| r.memory)
            .map(|m| (m >> 20).max(128))
            .unwrap_or(self.cfg.memory_mib);
        VmSpec {
            kernel: self.kernel.vmlinuz.clone(),
            initramfs: self.initramfs.clone(),
            root_disk: disk.to_path_buf(),
            cpus,
            memory_mib,
            network,
            cmdline: Vec::new(),
        }
    }

    async fn boot(
        &self,
        spec: &VmSpec,
        cancel: &CancellationToken,
    ) -> Result<session::ReadyVm, VmError> {
        let started = Instant::now();
        let vm = self.hypervisor.boot(spec).await?;
        session::wait_ready(vm, started, self.cfg.boot_timeout, cancel).await
    }
}

/// Leftovers of a runner killed while building a disk or initramfs.
fn remove_stale_temp_files(cache: &Path) {
    for dir in [cache.to_path_buf(), cache.join("disks")] {
        let Ok(rd) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                let p = e.path();
                let _ = if p.is_dir() {
                    std::fs::remove_dir_all(&p)
                } else {
                    std::fs::remove_file(&p)
                };
            }
        }
    }
}

/// The step's argv for its shell. `-e` stops at the first failing command, as in a CI script.
fn argv(shell: Shell, script: &str) -> Vec<String> {
    match shell {
        Shell::Sh => vec!["/bin/sh".into(), "-e".into(), "-c".into(), script.into()],
        Shell::Bash => vec![
            "/bin/bash".into(),
            "--noprofile".into(),
            "--norc".into(),
            "-eo".into(),
            "pipefail".into(),
            "-c".into(),
            script.into(),
        ],
    }
}

fn step_env(image: &ResolvedImage, step: &StepSpec) -> std::collections::BTreeMap<String, String> {
    let mut env = std::collections::BTreeMap::new();
    env.insert(
        "PATH".to_string(),
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string(),
    );
    env.insert("HOME".into(), "/root".into());
    for kv in &image.env {
        if let Some((k, v)) = kv.split_once('=') {
            env.insert(k.to_string(), v.to_string());
        }
    }
    env.extend(step.env.iter().map(|(k, v)| (k.clone(), v.clone())));
    env
}

#[async_trait]
impl Executor for VmExecutor {
    fn name(&self) -> &'static str {
        "vm"
    }

    async fn prepare(&self, job: &JobSpec) -> Result<PreparedJob, ExecutorError> {
        if !job.workspace.is_dir() {
            return Err(ExecutorError::Backend(format!(
                "vm: workspace {} is not a directory",
                job.workspace.display()
            )));
        }
        Ok(PreparedJob {
            job: job.clone(),
            description: format!("vm ({})", self.inner.hypervisor.describe()),
        })
    }

    async fn run_step(
        &self,
        job: &PreparedJob,
        step: &StepSpec,
        output: mpsc::Sender<LogChunk>,
        cancel: CancellationToken,
    ) -> Result<StepResult, ExecutorError> {
        let began = Instant::now();
        let reference = match &step.image {
            ImageSpec::Host => {
                return Err(ExecutorError::Unsupported(
                    "`image: host` cannot run with isolation vm: a VM boots its own root file \
                     system; name an OCI image for this step"
                        .into(),
                ))
            }
            ImageSpec::Oci(r) => r.clone(),
        };
        let network =
            match step.network {
                Network::None => false,
                Network::Bridge => true,
                Network::Host => return Err(ExecutorError::Unsupported(
                    "`network: host` cannot run with isolation vm: use `bridge` (user-mode NAT) \
                     or `none`"
                        .into(),
                )),
            };
        let mut bd = Breakdown::default();
        let t = Instant::now();
        let (image, disk) = self.inner.root_disk(&reference, &output).await?;
        bd.prepare_disk = t.elapsed();
        let spec = self.inner.spec(&disk, Some(&step.resources), network);

        let ws_dir = job.job.workspace.clone();
        let pack = tokio::task::spawn_blocking(move || workspace::pack(&ws_dir));

        let ready = match self.pool.take(&spec) {
            Some(vm) => {
                bd.warm = true;
                vm
            }
            None => {
                let r = self.inner.boot(&spec, &cancel).await;
                match r {
                    Ok(vm) => {
                        bd.boot = vm.boot_time;
                        vm
                    }
                    Err(VmError::Cancelled) => {
                        return Ok(StepResult {
                            cancelled: true,
                            duration: began.elapsed(),
                            ..Default::default()
                        })
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        };

        let ws_tar = pack
            .await
            .map_err(|e| ExecutorError::Backend(format!("vm: pack task: {e}")))?
            .map_err(|e| {
                VmError::Workspace(format!("packing {}: {e}", job.job.workspace.display()))
            })?;
        let guest = ready.hello.clone();
        let run = Run {
            argv: argv(step.shell, &step.script),
            env: step_env(&image, step),
            workdir: step.workdir.clone(),
            hostname: job.job.hostname.clone(),
            network,
            workspace: true,
        };
        let t = Instant::now();
        let outcome = session::run(
            ready,
            &run,
            Some(ws_tar),
            &output,
            session::Limits {
                timeout: step.timeout,
                // Tar headers and padding on top of at most the guest's RAM.
                max_workspace: usize::try_from(spec.memory_mib << 21).unwrap_or(usize::MAX),
            },
            &cancel,
        )
        .await?;
        let finished = outcome.finished_at.unwrap_or_else(Instant::now);
        bd.run = finished - t;
        bd.shutdown = finished.elapsed();
        if let Some(tar) = outcome.workspace {
            let ws = job.job.workspace.clone();
            tokio::task::spawn_blocking(move || workspace::restore(&ws, &tar))
                .await
                .map_err(|e| ExecutorError::Backend(format!("vm: restore task: {e}")))?
                .map_err(|e| VmError::Workspace(format!("restoring the workspace: {e}")))?;
        }
        bd.guest_init = Duration::from_millis(guest.init_ms);
        bd.guest_ready = Duration::from_millis(guest.uptime_ms);
        // Top the pool up for the next step (a pool VM is used once). Only now: booting it
        // while this step runs would take CPU from the step itself.
        self.pool.refill(&self.inner, &spec);
        let _ = output.send(LogChunk::new(Stream::System, bd.line())).await;
        tracing::debug!(step = %step.name, "{}", bd.line().trim_end());
        let exit = outcome.exit.unwrap_or(guest_agent::protocol::Exit {
            code: None,
            signal: None,
        });
        Ok(StepResult {
            exit_code: exit.code,
            signal: exit.signal,
            oom_killed: false,
            timed_out: outcome.timed_out,
            cancelled: outcome.cancelled,
            duration: began.elapsed(),
        })
    }

    async fn cleanup(&self, _job: &PreparedJob) -> Result<(), ExecutorError> {
        // Every VM dies with its step; pool VMs belong to the executor, not the job.
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shells_stop_on_first_error() {
        assert_eq!(argv(Shell::Sh, "x"), ["/bin/sh", "-e", "-c", "x"]);
        assert!(argv(Shell::Bash, "x").contains(&"pipefail".to_string()));
    }

    #[test]
    fn step_env_overrides_image_env() {
        let image = ResolvedImage {
            digest: "d".into(),
            layers: vec![],
            env: vec!["PATH=/img".into(), "A=image".into(), "B=image".into()],
            working_dir: None,
            lease: Default::default(),
        };
        let step = StepSpec {
            name: "s".into(),
            image: ImageSpec::Oci("x".into()),
            script: "true".into(),
            shell: Shell::Sh,
            env: [("B".to_string(), "step".to_string())].into(),
            workdir: "/w".into(),
            timeout: Duration::from_secs(1),
            network: Network::None,
            resources: Default::default(),
        };
        let env = step_env(&image, &step);
        assert_eq!(env["PATH"], "/img");
        assert_eq!(env["A"], "image");
        assert_eq!(env["B"], "step");
        assert_eq!(env["HOME"], "/root");
    }

    #[test]
    fn breakdown_line() {
        let b = Breakdown {
            boot: Duration::from_millis(1500),
            warm: false,
            ..Default::default()
        };
        assert!(b
            .line()
            .starts_with("vm: prepare disk 0 ms, boot 1500 ms, run 0 ms"));
    }
}
