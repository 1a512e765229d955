//! Runs one planned job: a workspace, each step through the executor its isolation names,
//! secrets injected into the steps that ask for them and masked in everything that comes out.
//! Shared by `runner exec` (local) and `runner run` (the agent), so a job behaves the same in
//! both places.
//!
//! A job fails cleanly rather than erroring: a missing secret, a VM step on a runner without a
//! VM executor, a sandbox that cannot be built, all end the job as `Failed` with the reason as a
//! `Stream::System` line in its log, so the local terminal and the coordinator's log both say
//! why.

pub mod setup;
mod spec;
mod step;
#[cfg(test)]
pub(crate) mod test_host_shell;
#[cfg(test)]
pub(crate) mod tests;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use executors::{Executor, ExecutorError, JobSpec, LogChunk, PreparedJob, StepResult, Stream};
use pipelines::{Isolation, PlannedJob};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::mask::{MaskError, Masker};

pub use spec::hostname_for;

/// The executors a job's steps can use, by isolation.
#[derive(Clone)]
pub struct Executors {
    pub container: Arc<dyn Executor>,
    pub vm: Option<Arc<dyn Executor>>,
}

impl Executors {
    /// The executor for `isolation`, if this runner has one.
    pub fn get(&self, isolation: Isolation) -> Option<&Arc<dyn Executor>> {
        match isolation {
            Isolation::Container => Some(&self.container),
            Isolation::Vm => self.vm.as_ref(),
        }
    }
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
    /// Step output, or (as `Stream::System`) a message of the runner about step `index`. A
    /// job that fails before its first step starts reports why with `index` 0 and no
    /// `StepStarted`.
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

impl JobStatus {
    /// As shown to users and stored: `success`, `failed`, `cancelled`, `timed_out`, `skipped`.
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Success => "success",
            JobStatus::Failed => "failed",
            JobStatus::Cancelled => "cancelled",
            JobStatus::TimedOut => "timed_out",
            JobStatus::Skipped => "skipped",
        }
    }
}

/// Everything needed to run one job.
pub struct JobRequest {
    pub job: PlannedJob,
    /// Unique id for this run of the job (names sandboxes, cgroups, state files).
    pub run_id: String,
    /// Host directory holding the job's workspace, already filled with the source tree.
    pub workspace: PathBuf,
    /// Secret values by name; a step receives only those it names. All of them are masked in
    /// all of the job's output.
    pub secrets: BTreeMap<String, String>,
}

/// Why a job could not run its steps. Shown in the job's log.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error(
        "step '{step}' needs secret {name}, which was not given (runner exec: --secret \
         {name}=VALUE or --secrets-file FILE)"
    )]
    MissingSecret { step: String, name: String },
    #[error(
        "step '{step}' asks for isolation: vm, but this runner has no VM executor \
         (use isolation: container, or run it on a runner that offers vm)"
    )]
    NoVmExecutor { step: String },
    #[error(transparent)]
    Secret(#[from] MaskError),
    #[error("cannot prepare the {executor} sandbox: {source}")]
    Prepare {
        executor: &'static str,
        source: ExecutorError,
    },
}

/// Run a job to its end; events flow on `events` while it runs.
///
/// Steps run in order in the job's workspace; the first failing step ends the job unless it
/// has `continue_on_error`. The job's `timeout` bounds the whole job: each step gets at most
/// what is left of it. Cancelling `cancel` kills the running step and runs no more.
/// Returns the job's status and the result of every step that ran.
pub async fn run_job(
    executors: &Executors,
    req: JobRequest,
    events: mpsc::Sender<JobEvent>,
    cancel: CancellationToken,
) -> anyhow::Result<(JobStatus, Vec<StepResult>)> {
    let deadline = Instant::now() + req.job.timeout;
    let log = Log::new(&events);
    let masker = match check(executors, &req) {
        Ok(m) => m,
        Err(e) => {
            log.system(0, &format!("error: {e}")).await;
            return Ok((JobStatus::Failed, Vec::new()));
        }
    };
    let log = log.with_masker(masker);

    let mut prepared: Vec<(Isolation, Arc<dyn Executor>, PreparedJob)> = Vec::new();
    let outcome = run_steps(executors, &req, &log, &cancel, deadline, &mut prepared).await;
    for (_, exec, job) in &prepared {
        if let Err(e) = exec.cleanup(job).await {
            log.system(
                0,
                &format!("warning: cleaning up the {} sandbox: {e}", exec.name()),
            )
            .await;
        }
    }
    Ok(outcome)
}

/// Everything that can be known to fail before a step runs: missing secrets, missing
/// executors, secrets too short to mask.
fn check(executors: &Executors, req: &JobRequest) -> Result<Masker, JobError> {
    for step in &req.job.steps {
        if executors.get(step.isolation).is_none() {
            return Err(JobError::NoVmExecutor {
                step: step.name.clone(),
            });
        }
        if let Some(name) = step.secrets.iter().find(|n| !req.secrets.contains_key(*n)) {
            return Err(JobError::MissingSecret {
                step: step.name.clone(),
                name: name.clone(),
            });
        }
    }
    Ok(Masker::new(
        req.secrets.iter().map(|(k, v)| (k.as_str(), v.as_str())),
    )?)
}

async fn run_steps(
    executors: &Executors,
    req: &JobRequest,
    log: &Log<'_>,
    cancel: &CancellationToken,
    deadline: Instant,
    prepared: &mut Vec<(Isolation, Arc<dyn Executor>, PreparedJob)>,
) -> (JobStatus, Vec<StepResult>) {
    let mut results = Vec::new();
    for (index, step) in req.job.steps.iter().enumerate() {
        if cancel.is_cancelled() {
            return (JobStatus::Cancelled, results);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            log.system(
                index,
                "error: the job's timeout was reached before this step",
            )
            .await;
            return (JobStatus::TimedOut, results);
        }
        let Some(exec) = executors.get(step.isolation).cloned() else {
            // `check` already refused the job; kept so this cannot panic.
            return (JobStatus::Failed, results);
        };
        let job = match prepared.iter().find(|(iso, ..)| *iso == step.isolation) {
            Some((_, _, job)) => job.clone(),
            None => match prepare(&exec, req).await {
                Ok(job) => {
                    prepared.push((step.isolation, exec.clone(), job.clone()));
                    job
                }
                Err(e) => {
                    log.system(index, &format!("error: {e}")).await;
                    return (JobStatus::Failed, results);
                }
            },
        };
        let spec = spec::step_spec(step, &req.secrets, left);
        let limited_by_job = left < step.timeout;
        log.send(JobEvent::StepStarted {
            index,
            name: step.name.clone(),
            sandbox: spec::sandbox_line(&job, step),
        })
        .await;
        let result = step::run(&exec, &job, &spec, index, log, cancel).await;
        log.send(JobEvent::StepFinished {
            index,
            result: result.clone(),
        })
        .await;
        let ok = result.success();
        let (cancelled, timed_out) = (result.cancelled, result.timed_out);
        results.push(result);
        if cancelled || cancel.is_cancelled() {
            return (JobStatus::Cancelled, results);
        }
        if timed_out && limited_by_job {
            return (JobStatus::TimedOut, results);
        }
        if !ok && !step.continue_on_error {
            return (JobStatus::Failed, results);
        }
    }
    (JobStatus::Success, results)
}

async fn prepare(exec: &Arc<dyn Executor>, req: &JobRequest) -> Result<PreparedJob, JobError> {
    let spec = JobSpec {
        id: req.run_id.clone(),
        hostname: hostname_for(&req.job.name),
        workspace: req.workspace.clone(),
    };
    exec.prepare(&spec)
        .await
        .map_err(|source| JobError::Prepare {
            executor: exec.name(),
            source,
        })
}

/// Where a job's events go: masks output and never fails (a listener that went away must not
/// stop the job).
pub(crate) struct Log<'a> {
    events: &'a mpsc::Sender<JobEvent>,
    masker: Masker,
}

impl<'a> Log<'a> {
    fn new(events: &'a mpsc::Sender<JobEvent>) -> Self {
        Log {
            events,
            masker: Masker::none(),
        }
    }

    fn with_masker(self, masker: Masker) -> Self {
        Log { masker, ..self }
    }

    async fn send(&self, event: JobEvent) {
        let _ = self.events.send(event).await;
    }

    /// A message of the runner, masked like everything else (an error text may quote a value).
    async fn system(&self, index: usize, line: &str) {
        let data = self.masker.mask(format!("{line}\n").as_bytes());
        self.send(JobEvent::Output {
            index,
            chunk: LogChunk::new(Stream::System, data),
        })
        .await;
    }
}

/// How long to wait for output still queued after an executor returned from a step.
const DRAIN_GRACE: Duration = Duration::from_secs(5);
