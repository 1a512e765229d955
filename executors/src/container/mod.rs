//! The container executor: every step in a throwaway Linux sandbox built in-process on
//! namespaces, overlayfs, cgroups, capabilities and seccomp. No daemon, no runc.
//!
//! A step's life: `sandbox.rs` creates a state record and cgroup, clones a child into new
//! mount/PID/UTS/IPC/network (and optionally user) namespaces, which (`child.rs`) mounts a
//! tmpfs for a fresh upper dir and an overlay of the image layers on it, builds `/proc`,
//! `/dev`, `/sys`, `/tmp` and the workspace bind (`mounts.rs`), pivots into it, drops
//! capabilities, sets `no_new_privs`, installs the seccomp filter (`seccomp.rs`, from
//! `policy.rs`) and execs the step's shell as pid 1. Output streams through pipes (`logs.rs`);
//! timeouts and cancellation kill the cgroup; the upper dir goes with the sandbox's mount
//! namespace, the record and cgroup are removed afterwards (`state.rs`), and `reconcile`
//! removes whatever a killed runner left.

pub mod cgroup;
mod child;
mod idmap;
pub mod images;
mod logs;
pub mod mounts;
pub mod network;
pub mod policy;
mod sandbox;
pub mod seccomp;
pub mod state;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use seccompiler::BpfProgram;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::executor::{
    Executor, ExecutorError, ImageProvider, JobSpec, LogChunk, PreparedJob, StepResult, StepSpec,
};
pub use cgroup::{CgroupDriver, CgroupError};
pub use images::{build_busybox_rootfs, LocalDirImages};
pub use network::BridgeConfig;
use state::StateDir;

#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    #[error("invalid step: {0}")]
    InvalidSpec(String),
    #[error("seccomp filter: {0}")]
    Seccomp(String),
    #[error("starting the sandbox: {0}")]
    Spawn(String),
    #[error("sandbox setup failed: {0}")]
    Setup(String),
    #[error("image: {0}")]
    Image(String),
    #[error("network: {0}")]
    Network(String),
    #[error("state directory: {0}")]
    State(String),
}

impl ContainerError {
    pub(crate) fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ContainerError + '_ {
        move |source| ContainerError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

impl From<ContainerError> for ExecutorError {
    fn from(e: ContainerError) -> Self {
        ExecutorError::Backend(format!("container: {e}"))
    }
}

/// Map the sandbox's root to an unprivileged range of host ids (Docker's `userns-remap`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdMap {
    /// First host uid/gid; container id 0 maps to it.
    pub host_id: u32,
    /// How many ids are mapped (65536 covers every id an image uses).
    pub count: u32,
}

impl IdMap {
    fn write(&self, pid: i32) -> Result<(), ContainerError> {
        let map = format!("0 {} {}\n", self.host_id, self.count);
        for (file, content) in [
            ("setgroups", "deny"),
            ("uid_map", map.as_str()),
            ("gid_map", map.as_str()),
        ] {
            let path = PathBuf::from(format!("/proc/{pid}/{file}"));
            std::fs::write(&path, content).map_err(ContainerError::io(&path))?;
        }
        Ok(())
    }
}

/// How the runner configures the container executor.
#[derive(Clone)]
pub struct ContainerConfig {
    /// Directory of live sandboxes (records, and with `userns` the idmapped layers);
    /// reconciled at start-up. Upper dirs are not kept here: each sandbox has its own tmpfs.
    pub state_dir: PathBuf,
    /// Host paths hidden from `image: host` steps: the runner's config and data directories
    /// (the state dir is always hidden).
    pub masked_paths: Vec<PathBuf>,
    /// Where OCI images come from.
    pub images: Arc<dyn ImageProvider>,
    /// Run steps in a user namespace with root mapped to this host range. `None` (the
    /// default): root in the sandbox is root on the host, confined by capabilities, seccomp
    /// and namespaces, as with Docker's default.
    pub userns: Option<IdMap>,
    /// The bridge used by steps with `network: bridge`.
    pub bridge: BridgeConfig,
    /// Where a step's writes outside its workspace go.
    pub scratch: Scratch,
}

/// Where the overlay upper dir of a step's root (everything it writes outside the workspace
/// and `/tmp`) lives. Either way it is thrown away when the step ends.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Scratch {
    /// A tmpfs of the sandbox's own (the default): no host directories to create and delete
    /// per step, charged to the step's memory cgroup, so `resources.memory` caps it too.
    #[default]
    Memory,
    /// A directory under the state dir, on its filesystem: for steps that install more than
    /// they may keep in memory. Costs directory creation and removal on every step.
    Disk,
}

impl std::fmt::Debug for ContainerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ContainerConfig")
            .field("state_dir", &self.state_dir)
            .field("masked_paths", &self.masked_paths)
            .field("userns", &self.userns)
            .field("bridge", &self.bridge)
            .field("scratch", &self.scratch)
            .finish_non_exhaustive()
    }
}

impl ContainerConfig {
    /// Address leases of the bridge network.
    fn leases_dir(&self) -> PathBuf {
        self.state_dir.join("leases")
    }

    /// A configuration with defaults: no extra masks, no user namespace, bridge `runner0`.
    pub fn new(state_dir: impl Into<PathBuf>, images: Arc<dyn ImageProvider>) -> Self {
        ContainerConfig {
            state_dir: state_dir.into(),
            masked_paths: Vec::new(),
            images,
            userns: None,
            bridge: BridgeConfig::default(),
            scratch: Scratch::default(),
        }
    }
}

/// Runs each step in its own container sandbox.
#[derive(Debug)]
pub struct ContainerExecutor {
    config: ContainerConfig,
    state: StateDir,
    cgroups: CgroupDriver,
    seccomp: Arc<Vec<BpfProgram>>,
    last_cap: u32,
    counter: AtomicU64,
    /// With `userns`: the namespace carrying the mapping, for idmapped layers.
    mapping: Option<idmap::MappingNs>,
}

impl ContainerExecutor {
    /// Check the host (cgroups, seccomp) and open the state directory. Call [`reconcile`]
    /// next, once, before running steps.
    ///
    /// [`reconcile`]: ContainerExecutor::reconcile
    pub fn new(config: ContainerConfig) -> Result<Self, ContainerError> {
        if !nix::unistd::geteuid().is_root() {
            return Err(ContainerError::Spawn(
                "the container executor must run as root (namespaces, mounts, cgroups)".into(),
            ));
        }
        let state = StateDir::new(&config.state_dir)?;
        let cgroups = CgroupDriver::detect()?;
        let seccomp = Arc::new(seccomp::default_filter()?);
        let last_cap = crate::procfs::read("/proc/sys/kernel/cap_last_cap")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(40);
        let mapping = config
            .userns
            .as_ref()
            .map(idmap::MappingNs::new)
            .transpose()?;
        Ok(ContainerExecutor {
            mapping,
            config,
            state,
            cgroups,
            seccomp,
            last_cap,
            counter: AtomicU64::new(0),
        })
    }

    /// Remove every sandbox a previous runner (killed, crashed) left in the state directory:
    /// its processes, cgroups, veth, address lease and upper dir. Returns their names.
    pub fn reconcile(&self) -> Result<Vec<String>, ContainerError> {
        self.state
            .reconcile(&self.cgroups, &self.config.leases_dir())
    }

    /// Unique sandbox name: also the cgroup name, so short and filesystem-safe. It carries
    /// the job id so that an operator (or a test) can tell whose sandbox it is.
    fn new_name(&self, job_id: &str) -> String {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let job: String = job_id
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
            .take(32)
            .collect();
        format!("rnr-{job}-{:x}-{n}", std::process::id())
    }
}

#[async_trait]
impl Executor for ContainerExecutor {
    fn name(&self) -> &'static str {
        "container"
    }

    async fn prepare(&self, job: &JobSpec) -> Result<PreparedJob, ExecutorError> {
        if !job.workspace.is_dir() {
            return Err(ExecutorError::Backend(format!(
                "container: workspace {} is not a directory",
                job.workspace.display()
            )));
        }
        Ok(PreparedJob {
            job: job.clone(),
            description: format!("container (overlayfs, {})", self.cgroups.describe()),
        })
    }

    async fn run_step(
        &self,
        job: &PreparedJob,
        step: &StepSpec,
        output: mpsc::Sender<LogChunk>,
        cancel: CancellationToken,
    ) -> Result<StepResult, ExecutorError> {
        let rootfs = sandbox::resolve_rootfs(self, &step.image, &output).await?;
        Ok(self
            .run_sandbox(&job.job, step, rootfs, output, cancel)
            .await?)
    }

    async fn cleanup(&self, job: &PreparedJob) -> Result<(), ExecutorError> {
        // Steps remove their sandboxes as they end; this catches any a dropped future left.
        for name in self.state.list().map_err(ExecutorError::from)? {
            if let Some(record) = self.state.load(&name) {
                if record.job_id == job.job.id {
                    self.state.destroy(&record)?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
