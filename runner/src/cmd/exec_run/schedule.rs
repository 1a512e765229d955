//! Jobs in DAG order: a job starts once everything it needs has finished well, up to
//! `parallel` at once, in plan order among the ready ones. A job whose needed job failed (and
//! was not `allow_failure`), was skipped or was cancelled is skipped; a failed or timed-out
//! job is run again up to its `retry` count; after cancellation nothing new starts.

use std::collections::HashMap;
use std::future::Future;

use executors::StepResult;
use pipelines::Plan;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::jobrun::JobStatus;

/// How one job of the plan ended.
#[derive(Debug, Clone, PartialEq)]
pub struct JobOutcome {
    pub status: JobStatus,
    /// Results of the steps that ran, in the last attempt.
    pub results: Vec<StepResult>,
    /// How many times the job ran (0 when skipped or never started).
    pub attempts: u32,
    /// Why it was skipped or not started.
    pub reason: Option<String>,
}

impl JobOutcome {
    fn not_run(status: JobStatus, reason: String) -> Self {
        JobOutcome {
            status,
            results: Vec::new(),
            attempts: 0,
            reason: Some(reason),
        }
    }
}

/// Something the user should hear about while the plan runs (besides the jobs' own output).
#[derive(Debug, Clone, PartialEq)]
pub enum Notice {
    Skipped { job: usize, reason: String },
    Retrying { job: usize, attempt: u32, of: u32 },
    Finished { job: usize, status: JobStatus },
}

/// Run every job of `plan` through `run(job_index, attempt)` (attempt counts from 1).
/// Returns one outcome per job, in plan order.
pub async fn run_plan<F, Fut>(
    plan: &Plan,
    parallel: usize,
    cancel: &CancellationToken,
    mut notify: impl FnMut(Notice),
    run: F,
) -> Vec<JobOutcome>
where
    F: Fn(usize, u32) -> Fut,
    Fut: Future<Output = (JobStatus, Vec<StepResult>)> + Send + 'static,
{
    let parallel = parallel.max(1);
    let index: HashMap<&str, usize> = plan
        .jobs
        .iter()
        .enumerate()
        .map(|(i, j)| (j.id.as_str(), i))
        .collect();
    let mut outcomes: Vec<Option<JobOutcome>> = vec![None; plan.jobs.len()];
    let mut started = vec![false; plan.jobs.len()];
    let mut attempts = vec![0u32; plan.jobs.len()];
    let mut running: JoinSet<(JobStatus, Vec<StepResult>)> = JoinSet::new();
    let mut task_job: HashMap<tokio::task::Id, usize> = HashMap::new();

    loop {
        // Settle every job that can be decided without running it, and start what is ready.
        let mut progressed = true;
        while progressed {
            progressed = false;
            for (i, job) in plan.jobs.iter().enumerate() {
                if started[i] || outcomes[i].is_some() {
                    continue;
                }
                let decided = if let Some(reason) = &job.skipped {
                    Some(JobOutcome::not_run(JobStatus::Skipped, reason.clone()))
                } else if cancel.is_cancelled() {
                    Some(JobOutcome::not_run(
                        JobStatus::Cancelled,
                        "cancelled before it started".into(),
                    ))
                } else {
                    match blocked_by(plan, &index, &outcomes, i) {
                        Blocked::Waiting => continue,
                        Blocked::No => None,
                        Blocked::Yes(reason) => {
                            Some(JobOutcome::not_run(JobStatus::Skipped, reason))
                        }
                    }
                };
                match decided {
                    Some(o) => {
                        if o.status == JobStatus::Skipped {
                            notify(Notice::Skipped {
                                job: i,
                                reason: o.reason.clone().unwrap_or_default(),
                            });
                        }
                        outcomes[i] = Some(o);
                        progressed = true;
                    }
                    None if running.len() < parallel => {
                        started[i] = true;
                        attempts[i] = 1;
                        task_job.insert(running.spawn(run(i, 1)).id(), i);
                    }
                    None => {}
                }
            }
        }
        let Some(done) = running.join_next_with_id().await else {
            break;
        };
        let (i, status, results) = match done {
            Ok((id, (s, r))) => (task_job[&id], s, r),
            // A job task that panicked: a bug, but the rest of the plan still gets an outcome.
            Err(e) => {
                tracing::error!("a job task failed: {e}");
                (task_job[&e.id()], JobStatus::Failed, Vec::new())
            }
        };
        let job = &plan.jobs[i];
        let retryable = matches!(status, JobStatus::Failed | JobStatus::TimedOut);
        if retryable && attempts[i] <= job.retry && !cancel.is_cancelled() {
            attempts[i] += 1;
            notify(Notice::Retrying {
                job: i,
                attempt: attempts[i],
                of: job.retry + 1,
            });
            task_job.insert(running.spawn(run(i, attempts[i])).id(), i);
            continue;
        }
        notify(Notice::Finished { job: i, status });
        outcomes[i] = Some(JobOutcome {
            status,
            results,
            attempts: attempts[i],
            reason: None,
        });
    }
    outcomes
        .into_iter()
        .map(|o| o.unwrap_or_else(|| JobOutcome::not_run(JobStatus::Skipped, "not reached".into())))
        .collect()
}

enum Blocked {
    /// Some needed job has not finished yet.
    Waiting,
    No,
    Yes(String),
}

fn blocked_by(
    plan: &Plan,
    index: &HashMap<&str, usize>,
    outcomes: &[Option<JobOutcome>],
    job: usize,
) -> Blocked {
    for need in &plan.jobs[job].needs {
        let Some(&n) = index.get(need.as_str()) else {
            return Blocked::Yes(format!("needs '{need}', which is not in the plan"));
        };
        let Some(o) = &outcomes[n] else {
            return Blocked::Waiting;
        };
        let allowed = plan.jobs[n].allow_failure;
        let why = match o.status {
            JobStatus::Success => continue,
            JobStatus::Failed | JobStatus::TimedOut if allowed => continue,
            JobStatus::Failed => "failed",
            JobStatus::TimedOut => "timed out",
            JobStatus::Cancelled => "was cancelled",
            JobStatus::Skipped => "was skipped",
        };
        return Blocked::Yes(format!("needs '{need}', which {why}"));
    }
    Blocked::No
}

#[cfg(test)]
mod tests;
