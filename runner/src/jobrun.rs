//! Runs one planned job: a workspace, each step through the executor its isolation names,
//! secrets injected into the steps that ask for them and masked in everything that comes out.
//! Shared by `runner exec` (local) and `runner run` (the agent), so a job behaves the same in
//! both places.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use executors::{Executor, LogChunk, StepResult};
use pipelines::PlannedJob;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// The executors a job's steps can use, by isolation.
#[derive(Clone)]
pub struct Executors {
    pub container: Arc<dyn Executor>,
    pub vm: Option<Arc<dyn Executor>>,
}

/// What happens while a job runs, in order. Output is already masked.
#[derive(Debug, Clone)]
pub enum JobEvent {
    StepStarted {
        index: usize,
        name: String,
        /// e.g. `container (image 127.0.0.1:5000/busybox:latest)` or `vm (qemu, tcg)`.
        sandbox: String,
    },
    Output {
        index: usize,
        chunk: LogChunk,
    },
    StepFinished {
        index: usize,
        result: StepResult,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Copy, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    Success,
    Failed,
    Cancelled,
    TimedOut,
    Skipped,
}

/// Everything needed to run one job.
pub struct JobRequest {
    pub job: PlannedJob,
    /// Unique id for this run of the job (names sandboxes, cgroups, state files).
    pub run_id: String,
    /// Host directory holding the job's workspace, already filled with the source tree.
    pub workspace: PathBuf,
    /// Secret values by name; a step receives only those it names.
    pub secrets: BTreeMap<String, String>,
}

/// Run a job to its end; events flow on `events` while it runs.
pub async fn run_job(
    _executors: &Executors,
    _req: JobRequest,
    _events: mpsc::Sender<JobEvent>,
    _cancel: CancellationToken,
) -> anyhow::Result<(JobStatus, Vec<StepResult>)> {
    // Filled in by the container/exec work (issue 4).
    anyhow::bail!("running jobs is not implemented yet")
}
