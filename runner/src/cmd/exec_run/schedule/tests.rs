//! Scheduling logic alone: `run` is a closure that records what was started and returns the
//! status the test chose (no executor involved).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pipelines::PlannedJob;

use super::*;

fn job(id: &str, needs: &[&str]) -> PlannedJob {
    PlannedJob {
        id: id.into(),
        name: id.into(),
        matrix: BTreeMap::new(),
        needs: needs.iter().map(|s| s.to_string()).collect(),
        skipped: None,
        allow_failure: false,
        retry: 0,
        timeout: Duration::from_secs(60),
        steps: Vec::new(),
    }
}

fn plan(jobs: Vec<PlannedJob>) -> Plan {
    Plan {
        name: "p".into(),
        jobs,
    }
}

#[derive(Default)]
struct Record {
    /// (job, attempt, "start" | "end") in the order they happened.
    log: Mutex<Vec<(usize, u32, &'static str)>>,
    running: AtomicUsize,
    max_running: AtomicUsize,
}

impl Record {
    fn position(&self, job: usize, what: &str) -> usize {
        let log = self.log.lock().unwrap();
        log.iter()
            .position(|(j, _, w)| *j == job && *w == what)
            .unwrap_or_else(|| panic!("job {job} never {what}: {log:?}"))
    }
    fn starts(&self, job: usize) -> usize {
        let log = self.log.lock().unwrap();
        log.iter()
            .filter(|(j, _, w)| *j == job && *w == "start")
            .count()
    }
}

/// Runs the plan; `status(job, attempt)` decides each attempt's result; each attempt takes
/// `ms` milliseconds.
async fn go(
    plan: &Plan,
    parallel: usize,
    cancel: &CancellationToken,
    ms: u64,
    status: impl Fn(usize, u32) -> JobStatus + Send + Sync + 'static,
) -> (Vec<JobOutcome>, Vec<Notice>, Arc<Record>) {
    let rec = Arc::new(Record::default());
    let status = Arc::new(status);
    let mut notices = Vec::new();
    let r = rec.clone();
    let outcomes = run_plan(
        plan,
        parallel,
        cancel,
        |n| notices.push(n),
        move |i, attempt| {
            let rec = r.clone();
            let status = status.clone();
            async move {
                rec.log.lock().unwrap().push((i, attempt, "start"));
                let now = rec.running.fetch_add(1, Ordering::SeqCst) + 1;
                rec.max_running.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(ms)).await;
                rec.running.fetch_sub(1, Ordering::SeqCst);
                rec.log.lock().unwrap().push((i, attempt, "end"));
                (status(i, attempt), Vec::new())
            }
        },
    )
    .await;
    (outcomes, notices, rec)
}

fn statuses(o: &[JobOutcome]) -> Vec<JobStatus> {
    o.iter().map(|o| o.status).collect()
}

#[tokio::test]
async fn jobs_start_only_after_what_they_need() {
    let p = plan(vec![
        job("a", &[]),
        job("b", &["a"]),
        job("c", &["a"]),
        job("d", &["b", "c"]),
    ]);
    let (o, _, rec) = go(&p, 4, &CancellationToken::new(), 30, |_, _| {
        JobStatus::Success
    })
    .await;
    assert_eq!(statuses(&o), [JobStatus::Success; 4]);
    assert!(rec.position(0, "end") < rec.position(1, "start"));
    assert!(rec.position(0, "end") < rec.position(2, "start"));
    assert!(rec.position(1, "end") < rec.position(3, "start"));
    assert!(rec.position(2, "end") < rec.position(3, "start"));
    // b and c are independent: they ran side by side.
    assert!(rec.position(1, "start") < rec.position(2, "end"));
    assert!(rec.position(2, "start") < rec.position(1, "end"));
}

#[tokio::test]
async fn no_more_than_parallel_jobs_run_at_once() {
    let p = plan((0..6).map(|i| job(&format!("j{i}"), &[])).collect());
    let (_, _, rec) = go(&p, 2, &CancellationToken::new(), 40, |_, _| {
        JobStatus::Success
    })
    .await;
    assert_eq!(rec.max_running.load(Ordering::SeqCst), 2);
    let (_, _, rec) = go(&p, 1, &CancellationToken::new(), 10, |_, _| {
        JobStatus::Success
    })
    .await;
    assert_eq!(rec.max_running.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_failure_skips_its_dependents_transitively() {
    let p = plan(vec![
        job("a", &[]),
        job("b", &["a"]),
        job("c", &["b"]),
        job("other", &[]),
    ]);
    let (o, notices, rec) = go(&p, 2, &CancellationToken::new(), 5, |i, _| {
        if i == 0 {
            JobStatus::Failed
        } else {
            JobStatus::Success
        }
    })
    .await;
    assert_eq!(
        statuses(&o),
        [
            JobStatus::Failed,
            JobStatus::Skipped,
            JobStatus::Skipped,
            JobStatus::Success
        ]
    );
    assert_eq!(o[1].reason.as_deref(), Some("needs 'a', which failed"));
    assert_eq!(o[2].reason.as_deref(), Some("needs 'b', which was skipped"));
    assert_eq!(rec.starts(1) + rec.starts(2), 0);
    assert!(notices.contains(&Notice::Skipped {
        job: 1,
        reason: "needs 'a', which failed".into()
    }));
}

#[tokio::test]
async fn an_allowed_failure_does_not_block_dependents() {
    let mut a = job("a", &[]);
    a.allow_failure = true;
    let p = plan(vec![a, job("b", &["a"])]);
    let (o, _, _) = go(&p, 2, &CancellationToken::new(), 5, |i, _| {
        if i == 0 {
            JobStatus::Failed
        } else {
            JobStatus::Success
        }
    })
    .await;
    assert_eq!(statuses(&o), [JobStatus::Failed, JobStatus::Success]);
}

#[tokio::test]
async fn retry_reruns_a_failed_job_until_it_passes_or_runs_out() {
    let mut flaky = job("flaky", &[]);
    flaky.retry = 2;
    let mut broken = job("broken", &[]);
    broken.retry = 1;
    let p = plan(vec![flaky, broken, job("after", &["flaky"])]);
    let (o, notices, rec) = go(&p, 3, &CancellationToken::new(), 5, |i, attempt| match i {
        0 if attempt < 3 => JobStatus::Failed,
        1 => JobStatus::TimedOut,
        _ => JobStatus::Success,
    })
    .await;
    assert_eq!(
        statuses(&o),
        [JobStatus::Success, JobStatus::TimedOut, JobStatus::Success]
    );
    assert_eq!((o[0].attempts, o[1].attempts, o[2].attempts), (3, 2, 1));
    assert_eq!((rec.starts(0), rec.starts(1)), (3, 2));
    assert!(notices.contains(&Notice::Retrying {
        job: 0,
        attempt: 3,
        of: 3
    }));
}

#[tokio::test]
async fn a_cancelled_job_is_not_retried() {
    let mut j = job("j", &[]);
    j.retry = 3;
    let (o, _, rec) = go(&plan(vec![j]), 1, &CancellationToken::new(), 5, |_, _| {
        JobStatus::Cancelled
    })
    .await;
    assert_eq!(o[0].status, JobStatus::Cancelled);
    assert_eq!(rec.starts(0), 1);
}

#[tokio::test]
async fn after_cancellation_nothing_new_starts() {
    let p = plan(vec![job("a", &[]), job("b", &["a"]), job("c", &[])]);
    let cancel = CancellationToken::new();
    let c = cancel.clone();
    let (o, _, rec) = go(&p, 1, &cancel, 50, move |_, _| {
        c.cancel();
        JobStatus::Cancelled
    })
    .await;
    assert_eq!(statuses(&o), [JobStatus::Cancelled; 3]);
    assert_eq!(rec.starts(1) + rec.starts(2), 0);
    assert_eq!(o[2].reason.as_deref(), Some("cancelled before it started"));
}

#[tokio::test]
async fn a_job_the_plan_skips_is_not_run_and_says_why() {
    let mut j = job("deploy", &[]);
    j.skipped = Some("if: branch == 'main' is false".into());
    let p = plan(vec![j, job("x", &["deploy"])]);
    let (o, _, rec) = go(&p, 2, &CancellationToken::new(), 5, |_, _| {
        JobStatus::Success
    })
    .await;
    assert_eq!(statuses(&o), [JobStatus::Skipped, JobStatus::Skipped]);
    assert_eq!(
        o[0].reason.as_deref(),
        Some("if: branch == 'main' is false")
    );
    assert_eq!(rec.starts(0) + rec.starts(1), 0);
}
