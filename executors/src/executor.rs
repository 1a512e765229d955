//! The contract every sandbox backend implements: prepare a job, run its steps one by one,
//! cancel, clean up.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Errors common to all backends. A backend wraps its own module errors in `Backend`.
#[derive(Debug, thiserror::Error)]
pub enum ExecutorError {
    /// The step asked for something this backend cannot give (e.g. `image: host` in a VM).
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// The sandbox could not be set up or torn down.
    #[error("{0}")]
    Backend(String),
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
}

/// What root filesystem a step runs on.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ImageSpec {
    /// The host's own root, read-only under a throwaway layer, with secrets masked.
    Host,
    /// An OCI image reference as written by the user (`alpine:3.20`, `127.0.0.1:5000/x:y`).
    Oci(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Shell {
    Sh,
    Bash,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Network {
    /// Loopback only.
    None,
    /// The host's network namespace.
    Host,
    /// Own network namespace, NAT through a runner bridge.
    Bridge,
}

#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Resources {
    pub cpus: Option<f64>,
    /// Bytes.
    pub memory: Option<u64>,
    pub pids: Option<u64>,
}

/// One job as the executor sees it: an identity and the host directory holding its workspace,
/// which persists from step to step of the job.
#[derive(Debug, Clone)]
pub struct JobSpec {
    /// Unique per run of the job; used to name sandboxes, cgroups and state files.
    pub id: String,
    /// Hostname the job's sandboxes get.
    pub hostname: String,
    /// Host directory with the job's workspace (created by the runner before `prepare`).
    pub workspace: PathBuf,
}

/// One step, fully resolved: defaults applied, secrets already in `env`.
#[derive(Debug, Clone)]
pub struct StepSpec {
    pub name: String,
    pub image: ImageSpec,
    pub script: String,
    pub shell: Shell,
    pub env: BTreeMap<String, String>,
    /// Where the workspace appears inside the sandbox, and the step's working directory.
    pub workdir: String,
    pub timeout: Duration,
    pub network: Network,
    pub resources: Resources,
}

/// Handle a backend returns from `prepare`; opaque state lives in the backend, keyed by id.
#[derive(Debug, Clone)]
pub struct PreparedJob {
    pub job: JobSpec,
    /// A line for the step header, e.g. `container (overlayfs, cgroup v1)` or `vm (qemu, tcg)`.
    pub description: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    Stdout,
    Stderr,
    /// Messages of the runner itself (pulling image, booting VM, ...).
    System,
}

/// A piece of step output, in the order it was produced.
#[derive(Debug, Clone)]
pub struct LogChunk {
    pub stream: Stream,
    pub timestamp: SystemTime,
    pub data: Vec<u8>,
}

impl LogChunk {
    pub fn new(stream: Stream, data: impl Into<Vec<u8>>) -> Self {
        LogChunk {
            stream,
            timestamp: SystemTime::now(),
            data: data.into(),
        }
    }
}

/// How a step ended.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct StepResult {
    /// Exit code of the step's shell, when it exited normally.
    pub exit_code: Option<i32>,
    /// Signal that killed it, if any.
    pub signal: Option<i32>,
    /// The kernel's OOM killer ended the step (memory limit reached).
    pub oom_killed: bool,
    /// The step ran past its timeout and was killed.
    pub timed_out: bool,
    /// The step was cancelled from outside.
    pub cancelled: bool,
    pub duration: Duration,
}

impl StepResult {
    pub fn success(&self) -> bool {
        self.exit_code == Some(0) && !self.timed_out && !self.cancelled && !self.oom_killed
    }
}

/// A sandbox backend.
#[async_trait]
pub trait Executor: Send + Sync {
    /// Short name shown to users: `container`, `vm`.
    fn name(&self) -> &'static str;

    /// Get ready to run steps of `job` (e.g. check the host, pull nothing yet).
    async fn prepare(&self, job: &JobSpec) -> Result<PreparedJob, ExecutorError>;

    /// Run one step in a fresh sandbox. Output is sent on `output` while the step runs, in
    /// order; the sandbox is gone when this returns. Cancelling `cancel` kills the step's
    /// whole process tree (or VM) and returns a result with `cancelled` set.
    async fn run_step(
        &self,
        job: &PreparedJob,
        step: &StepSpec,
        output: mpsc::Sender<LogChunk>,
        cancel: CancellationToken,
    ) -> Result<StepResult, ExecutorError>;

    /// Release everything `prepare` and the steps held for the job.
    async fn cleanup(&self, job: &PreparedJob) -> Result<(), ExecutorError>;
}

/// An image resolved to what a backend needs to build a root filesystem.
#[derive(Debug, Clone)]
pub struct ResolvedImage {
    /// Manifest digest (`sha256:...`).
    pub digest: String,
    /// Unpacked layer directories, bottom layer first (overlayfs wants them top first).
    pub layers: Vec<PathBuf>,
    /// The image config's `Env` (`KEY=VALUE`), applied before the step's own env.
    pub env: Vec<String>,
    /// The image config's `WorkingDir`, if any.
    pub working_dir: Option<String>,
    /// Keeps the layers from being pruned while a step uses them: hold it (or a clone) for as
    /// long as they are mounted or read.
    pub lease: LayerLease,
}

/// Proof that an image's layers are in use (shared locks the image store's `prune` respects).
/// Empty for providers whose layers nothing deletes.
#[derive(Clone, Default)]
pub struct LayerLease(Option<std::sync::Arc<dyn std::any::Any + Send + Sync>>);

impl LayerLease {
    pub fn new(held: impl std::any::Any + Send + Sync) -> Self {
        LayerLease(Some(std::sync::Arc::new(held)))
    }
}

impl std::fmt::Debug for LayerLease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "LayerLease(held)"
        } else {
            "LayerLease(none)"
        })
    }
}

/// Where backends get images from: the OCI image store implements it.
#[async_trait]
pub trait ImageProvider: Send + Sync {
    /// Make `reference` available locally (pulling it if needed) and return its layers.
    /// Progress messages go to `output` as `Stream::System` chunks.
    async fn resolve(
        &self,
        reference: &str,
        output: &mpsc::Sender<LogChunk>,
    ) -> Result<ResolvedImage, ExecutorError>;
}
