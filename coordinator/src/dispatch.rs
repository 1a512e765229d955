//! Dispatch policy as pure functions (so it is tested without a server): which runner may take
//! which job, and how a run moves forward when a job ends (DAG order, `allow_failure`, skips).

use std::collections::BTreeMap;

use super::store::{Job, Pending, Runner};
use protocol::JobState;

/// A runner fits a job when it has every label the job asks for and accepts every isolation
/// the job's steps use.
pub fn fits(runner: &Runner, job: &Pending) -> bool {
    job.labels.iter().all(|l| runner.labels.contains(l))
        && job.isolations.iter().all(|i| runner.isolations.contains(i))
}

/// Isolations a job's steps use, deduplicated, in a stable order.
pub fn isolations_of(job: &pipelines::PlannedJob) -> Vec<String> {
    let mut out: Vec<String> = job
        .steps
        .iter()
        .map(|s| match s.isolation {
            pipelines::Isolation::Container => "container".to_string(),
            pipelines::Isolation::Vm => "vm".to_string(),
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

/// Labels a job asks for. The plan carries them as `runs_on` (or `labels`) when the pipeline
/// format has them; a plan without either asks for none.
pub fn labels_of(job: &pipelines::PlannedJob) -> Vec<String> {
    let v = serde_json::to_value(job).unwrap_or_default();
    let list = v.get("runs_on").or_else(|| v.get("labels"));
    match list {
        Some(serde_json::Value::Array(a)) => a
            .iter()
            .filter_map(|x| x.as_str().map(str::to_string))
            .collect(),
        Some(serde_json::Value::String(s)) => vec![s.clone()],
        _ => vec![],
    }
}

/// A state change the run needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub job: i64,
    pub from: JobState,
    pub to: JobState,
    pub reason: Option<String>,
}

/// Moves waiting jobs whose needs are all done to the queue (or to skipped when a need did not
/// succeed), and says how the run ended once every job has.
pub fn advance(jobs: &[Job]) -> (Vec<Change>, Option<&'static str>) {
    let mut state: BTreeMap<&str, JobState> =
        jobs.iter().map(|j| (j.spec.id.as_str(), j.state)).collect();
    let allow: BTreeMap<&str, bool> = jobs
        .iter()
        .map(|j| (j.spec.id.as_str(), j.spec.allow_failure))
        .collect();
    let mut changes = Vec::new();
    // Jobs come in topological order, so one pass settles a chain of skips.
    for j in jobs {
        if state[j.spec.id.as_str()] != JobState::Created {
            continue;
        }
        let mut ready = true;
        let mut blocked: Option<String> = None;
        for need in &j.spec.needs {
            match state.get(need.as_str()) {
                None => {}
                Some(s) if !s.is_terminal() => ready = false,
                Some(JobState::Success) => {}
                Some(JobState::Failed) if allow[need.as_str()] => {}
                Some(s) => {
                    blocked.get_or_insert_with(|| format!("needs `{need}`, which {}", s.as_str()));
                }
            }
        }
        let to = match (ready, blocked) {
            (true, Some(reason)) => Some((JobState::Skipped, Some(reason))),
            (true, None) => Some((JobState::Pending, None)),
            (false, _) => None,
        };
        if let Some((to, reason)) = to {
            state.insert(j.spec.id.as_str(), to);
            changes.push(Change {
                job: j.id,
                from: JobState::Created,
                to,
                reason,
            });
        }
    }
    let outcome = if state.values().all(|s| s.is_terminal()) {
        let failed = jobs
            .iter()
            .any(|j| state[j.spec.id.as_str()] == JobState::Failed && !j.spec.allow_failure);
        Some(if state.values().any(|s| *s == JobState::Cancelled) {
            "cancelled"
        } else if failed {
            "failed"
        } else {
            "success"
        })
    } else {
        None
    };
    (changes, outcome)
}

/// What cancelling a run does: jobs not started are cancelled now; running jobs are asked to
/// stop (the runner reports them cancelled).
pub fn cancel(jobs: &[Job]) -> (Vec<Change>, Vec<i64>) {
    let mut now = Vec::new();
    let mut ask = Vec::new();
    for j in jobs {
        match j.state {
            JobState::Created | JobState::Pending => now.push(Change {
                job: j.id,
                from: j.state,
                to: JobState::Cancelled,
                reason: Some("cancelled by a user".into()),
            }),
            JobState::Running => ask.push(j.id),
            _ => {}
        }
    }
    (now, ask)
}

/// Whether a failed attempt gets another try.
pub fn should_retry(job: &Job) -> bool {
    job.attempt <= job.spec.retry && !job.cancel_requested
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn job(id: i64, name: &str, needs: &[&str], state: JobState) -> Job {
        Job {
            id,
            run_id: 1,
            spec: pipelines::PlannedJob {
                id: name.into(),
                name: name.into(),
                matrix: Default::default(),
                needs: needs.iter().map(|s| s.to_string()).collect(),
                skipped: None,
                allow_failure: false,
                retry: 0,
                timeout: Duration::from_secs(10),
                steps: vec![],
            },
            state,
            attempt: 1,
            runner_id: None,
            failure_reason: None,
            cancel_requested: false,
            steps: vec![],
            checksum: None,
            log_size: 0,
            labels: vec![],
            isolations: vec![],
        }
    }

    use JobState::{Cancelled, Created, Failed, Running, Skipped, Success};
    const PENDING: JobState = JobState::Pending;

    #[test]
    fn roots_are_queued_dependents_wait() {
        let jobs = [
            job(1, "a", &[], Created),
            job(2, "b", &["a"], Created),
            job(3, "c", &[], Created),
        ];
        let (ch, outcome) = advance(&jobs);
        let queued: Vec<i64> = ch
            .iter()
            .filter(|c| c.to == PENDING)
            .map(|c| c.job)
            .collect();
        assert_eq!(queued, vec![1, 3]);
        assert_eq!(outcome, None);
    }

    #[test]
    fn success_releases_failure_skips_the_chain() {
        let jobs = [
            job(1, "a", &[], Success),
            job(2, "b", &["a"], Created),
            job(3, "c", &[], Failed),
            job(4, "d", &["c"], Created),
            job(5, "e", &["d"], Created),
        ];
        let (ch, outcome) = advance(&jobs);
        assert_eq!(ch[0].job, 2);
        assert_eq!(ch[0].to, PENDING);
        assert_eq!((ch[1].job, ch[1].to), (4, Skipped));
        assert_eq!((ch[2].job, ch[2].to), (5, Skipped));
        assert!(ch[1].reason.as_deref().unwrap().contains("`c`"));
        assert_eq!(outcome, None, "b is still to run");
    }

    #[test]
    fn allow_failure_lets_dependents_run_and_the_run_pass() {
        let mut a = job(1, "a", &[], Failed);
        a.spec.allow_failure = true;
        let jobs = [a.clone(), job(2, "b", &["a"], Created)];
        let (ch, _) = advance(&jobs);
        assert_eq!(ch[0].to, PENDING);
        let (_, outcome) = advance(&[a, job(2, "b", &["a"], Success)]);
        assert_eq!(outcome, Some("success"));
    }

    #[test]
    fn run_outcome() {
        assert_eq!(
            advance(&[job(1, "a", &[], Failed), job(2, "b", &[], Success)]).1,
            Some("failed")
        );
        assert_eq!(
            advance(&[job(1, "a", &[], Cancelled), job(2, "b", &[], Failed)]).1,
            Some("cancelled")
        );
        assert_eq!(
            advance(&[job(1, "a", &[], Skipped), job(2, "b", &[], Success)]).1,
            Some("success")
        );
    }

    #[test]
    fn cancel_splits_queued_and_running() {
        let jobs = [
            job(1, "a", &[], Running),
            job(2, "b", &["a"], Created),
            job(3, "c", &[], PENDING),
            job(4, "d", &[], Success),
        ];
        let (now, ask) = cancel(&jobs);
        assert_eq!(now.iter().map(|c| c.job).collect::<Vec<_>>(), vec![2, 3]);
        assert_eq!(ask, vec![1]);
    }

    #[test]
    fn matching_labels_and_isolations() {
        let r = Runner {
            id: 1,
            name: "r".into(),
            labels: vec!["linux".into(), "gpu".into()],
            isolations: vec!["container".into()],
            concurrent: 1,
            paused: false,
        };
        let p = |l: &[&str], i: &[&str]| Pending {
            id: 1,
            labels: l.iter().map(|s| s.to_string()).collect(),
            isolations: i.iter().map(|s| s.to_string()).collect(),
        };
        assert!(fits(&r, &p(&[], &[])));
        assert!(fits(&r, &p(&["gpu"], &["container"])));
        assert!(!fits(&r, &p(&["arm"], &["container"])));
        assert!(!fits(&r, &p(&["gpu"], &["container", "vm"])));
    }

    #[test]
    fn retry_counts_attempts() {
        let mut j = job(1, "a", &[], Running);
        assert!(!should_retry(&j));
        j.spec.retry = 2;
        assert!(should_retry(&j));
        j.attempt = 3;
        assert!(!should_retry(&j));
        j.attempt = 1;
        j.cancel_requested = true;
        assert!(!should_retry(&j));
    }
}
