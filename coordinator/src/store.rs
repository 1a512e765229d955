//! What the coordinator keeps, behind one trait: the SQLite file by default (`sqlite.rs`);
//! PostgreSQL can implement the same trait for several coordinator replicas. Every state change
//! that can race (claiming a job, finishing it) is a compare-and-set on the stored state, so
//! two replicas (or two requests) can never both win.

use std::collections::BTreeMap;

use async_trait::async_trait;

use protocol::{JobState, StepReport};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Db(#[from] rusqlite::Error),
    #[error("database task failed: {0}")]
    Task(String),
}

pub type Result<T> = std::result::Result<T, StoreError>;

#[derive(Debug, Clone, PartialEq)]
pub struct RegToken {
    pub labels: Vec<String>,
    pub isolations: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Runner {
    pub id: i64,
    pub name: String,
    pub labels: Vec<String>,
    pub isolations: Vec<String>,
    pub concurrent: u32,
    pub paused: bool,
}

#[derive(Debug, Clone)]
pub struct NewRun {
    pub name: String,
    pub event: String,
    pub branch: String,
    pub secrets: BTreeMap<String, String>,
}

#[derive(Debug, Clone)]
pub struct NewJob {
    pub spec: pipelines::PlannedJob,
    /// `Created`, or `Skipped` when the plan says so.
    pub state: JobState,
    pub reason: Option<String>,
    /// Labels a runner must have.
    pub labels: Vec<String>,
    /// Isolations a runner must accept (one per kind of step).
    pub isolations: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct Run {
    pub id: i64,
    pub name: String,
    pub state: String,
    pub event: String,
    pub branch: String,
    pub created: i64,
    pub secrets: BTreeMap<String, String>,
}

#[derive(Debug, Clone)]
pub struct Job {
    pub id: i64,
    pub run_id: i64,
    pub spec: pipelines::PlannedJob,
    pub state: JobState,
    pub attempt: u32,
    pub runner_id: Option<i64>,
    pub failure_reason: Option<String>,
    pub cancel_requested: bool,
    pub steps: Vec<StepReport>,
    pub checksum: Option<String>,
    pub log_size: u64,
    pub labels: Vec<String>,
    pub isolations: Vec<String>,
}

/// A queued job, as the dispatcher needs to see it.
#[derive(Debug, Clone, PartialEq)]
pub struct Pending {
    pub id: i64,
    pub labels: Vec<String>,
    pub isolations: Vec<String>,
}

/// The final state a runner reported.
#[derive(Debug, Clone)]
pub struct Finish {
    pub state: JobState,
    pub reason: Option<String>,
    pub steps: Vec<StepReport>,
    pub checksum: String,
    pub log_size: u64,
}

#[async_trait]
pub trait Store: Send + Sync {
    async fn create_reg_token(&self, hash: &str, token: &RegToken) -> Result<()>;
    async fn reg_token(&self, hash: &str) -> Result<Option<RegToken>>;

    async fn create_runner(
        &self,
        name: &str,
        token_hash: &str,
        labels: &[String],
        isolations: &[String],
        concurrent: u32,
    ) -> Result<i64>;
    async fn runner_by_token(&self, hash: &str) -> Result<Option<Runner>>;
    async fn runners(&self) -> Result<Vec<Runner>>;
    /// False when there is no such runner.
    async fn set_runner_paused(&self, id: i64, paused: bool) -> Result<bool>;
    async fn delete_runner(&self, id: i64) -> Result<bool>;

    async fn create_run(&self, run: &NewRun, jobs: &[NewJob]) -> Result<i64>;
    async fn run(&self, id: i64) -> Result<Option<Run>>;
    /// Newest first.
    async fn runs(&self, limit: u32) -> Result<Vec<Run>>;
    /// Runs not yet finished.
    async fn active_runs(&self) -> Result<Vec<i64>>;
    /// In plan order.
    async fn run_jobs(&self, run_id: i64) -> Result<Vec<Job>>;
    /// Sets the run's state; a final state also forgets the run's secrets.
    async fn set_run_state(&self, id: i64, state: &str, finished: bool) -> Result<()>;

    async fn job(&self, id: i64) -> Result<Option<Job>>;
    async fn job_by_token(&self, hash: &str) -> Result<Option<Job>>;
    /// Queued jobs, oldest first.
    async fn pending(&self) -> Result<Vec<Pending>>;
    /// Pending -> Running for `runner`; false if someone else took it first.
    async fn claim(&self, job: i64, runner: i64, token_hash: &str) -> Result<bool>;
    /// `from` -> `to` (with a reason); false if the job was not in `from`.
    async fn transition(
        &self,
        job: i64,
        from: JobState,
        to: JobState,
        reason: Option<&str>,
    ) -> Result<bool>;
    /// Several transitions in one transaction; one result per change.
    async fn transitions(
        &self,
        changes: &[(i64, JobState, JobState, Option<String>)],
    ) -> Result<Vec<bool>>;
    /// Jobs of a run still waiting for their needs, and jobs not yet finished.
    async fn unsettled(&self, run_id: i64) -> Result<(u64, u64)>;
    /// Running (attempt `attempt`) -> a final state; false if it was not running that attempt.
    async fn finish(&self, job: i64, attempt: u32, finish: &Finish) -> Result<bool>;
    /// Running (attempt `attempt`) -> Pending with attempt + 1.
    async fn requeue(&self, job: i64, attempt: u32, reason: &str) -> Result<bool>;
    async fn request_cancel(&self, job: i64) -> Result<()>;
    /// (job id, attempt, runner id) of every running job.
    async fn running(&self) -> Result<Vec<(i64, u32, i64)>>;
    /// Number of jobs in each state.
    async fn job_counts(&self) -> Result<Vec<(JobState, u64)>>;

    async fn set_secret(&self, name: &str, value: &str) -> Result<()>;
    async fn delete_secret(&self, name: &str) -> Result<bool>;
    async fn secret_names(&self) -> Result<Vec<String>>;
    /// Values of those of `names` that are set.
    async fn secrets(&self, names: &[String]) -> Result<BTreeMap<String, String>>;
}
