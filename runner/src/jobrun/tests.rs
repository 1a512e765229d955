//! Job logic through the test-only host-shell executor (no sandbox): order, failure,
//! continue_on_error, secrets, timeouts, cancellation. Isolation itself is tested in `tests/`
//! with the real executors.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use pipelines::{Image, Isolation, PlannedJob, PlannedStep, Resources};

use super::test_host_shell::HostShellExecutor;
use super::*;

pub(crate) fn step(name: &str, run: &str) -> PlannedStep {
    PlannedStep {
        name: name.into(),
        run: run.into(),
        shell: pipelines::Shell::Sh,
        image: Image::Host,
        isolation: Isolation::Container,
        env: BTreeMap::new(),
        workdir: "/workspace".into(),
        timeout: Duration::from_secs(30),
        network: pipelines::Network::None,
        resources: Resources::default(),
        continue_on_error: false,
        secrets: Vec::new(),
    }
}

pub(crate) fn job(name: &str, steps: Vec<PlannedStep>) -> PlannedJob {
    PlannedJob {
        id: name.into(),
        name: name.into(),
        matrix: BTreeMap::new(),
        needs: Vec::new(),
        skipped: None,
        allow_failure: false,
        retry: 0,
        timeout: Duration::from_secs(60),
        steps,
    }
}

pub(crate) fn host_executors() -> Executors {
    Executors {
        container: Arc::new(HostShellExecutor),
        vm: None,
    }
}

struct Outcome {
    status: JobStatus,
    results: Vec<StepResult>,
    events: Vec<JobEvent>,
}

impl Outcome {
    /// All output of all streams, in order, as text.
    fn output(&self) -> String {
        let mut s = String::new();
        for e in &self.events {
            if let JobEvent::Output { chunk, .. } = e {
                s.push_str(&String::from_utf8_lossy(&chunk.data));
            }
        }
        s
    }

    fn started(&self) -> Vec<String> {
        self.events
            .iter()
            .filter_map(|e| match e {
                JobEvent::StepStarted { name, .. } => Some(name.clone()),
                _ => None,
            })
            .collect()
    }
}

async fn run(
    job: PlannedJob,
    secrets: &[(&str, &str)],
    cancel: CancellationToken,
) -> (Outcome, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let (tx, mut rx) = mpsc::channel(1024);
    let req = JobRequest {
        job,
        run_id: "t".into(),
        workspace: dir.path().to_path_buf(),
        secrets: secrets
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    };
    let collector = tokio::spawn(async move {
        let mut v = Vec::new();
        while let Some(e) = rx.recv().await {
            v.push(e);
        }
        v
    });
    let (status, results) = run_job(&host_executors(), req, tx, cancel).await.unwrap();
    let events = collector.await.unwrap();
    (
        Outcome {
            status,
            results,
            events,
        },
        dir,
    )
}

#[tokio::test]
async fn steps_run_in_order_sharing_the_workspace() {
    let j = job(
        "build",
        vec![
            step("one", "echo built > artifact"),
            step("two", "cat artifact; echo two"),
        ],
    );
    let (o, _dir) = run(j, &[], CancellationToken::new()).await;
    assert_eq!(o.status, JobStatus::Success);
    assert_eq!(o.results.len(), 2);
    assert_eq!(o.started(), ["one", "two"]);
    assert_eq!(o.output(), "built\ntwo\n");
    // Every step is started, then its output, then finished.
    assert!(matches!(
        o.events.first(),
        Some(JobEvent::StepStarted { index: 0, .. })
    ));
    assert!(matches!(
        o.events.last(),
        Some(JobEvent::StepFinished { index: 1, .. })
    ));
}

#[tokio::test]
async fn a_failing_step_ends_the_job() {
    let j = job(
        "j",
        vec![step("a", "exit 3"), step("b", "echo must-not-run")],
    );
    let (o, _dir) = run(j, &[], CancellationToken::new()).await;
    assert_eq!(o.status, JobStatus::Failed);
    assert_eq!(o.results.len(), 1);
    assert_eq!(o.results[0].exit_code, Some(3));
    assert!(!o.output().contains("must-not-run"));
}

#[tokio::test]
async fn continue_on_error_keeps_going_and_the_job_succeeds() {
    let mut a = step("a", "exit 1");
    a.continue_on_error = true;
    let j = job("j", vec![a, step("b", "echo after")]);
    let (o, _dir) = run(j, &[], CancellationToken::new()).await;
    assert_eq!(o.status, JobStatus::Success);
    assert_eq!(o.results.len(), 2);
    assert!(!o.results[0].success());
    assert!(o.output().contains("after"));
}

#[tokio::test]
async fn secrets_reach_only_the_steps_that_name_them_and_are_masked() {
    let secret = "hunter2-very-secret";
    let mut uses = step(
        "uses",
        "echo \"plain $TOKEN\"; printf '%s' \"$TOKEN\" | base64; \
         printf '{\"t\":\"%s\"}\\n' \"$TOKEN\"; echo \"err $TOKEN\" >&2",
    );
    uses.secrets = vec!["TOKEN".into()];
    let other = step("other", "echo \"other sees [${TOKEN:-nothing}]\"");
    let j = job("j", vec![uses, other]);
    let (o, _dir) = run(j, &[("TOKEN", secret)], CancellationToken::new()).await;
    assert_eq!(o.status, JobStatus::Success);
    let out = o.output();
    assert!(!out.contains(secret), "{out}");
    let b64 = base64::engine::general_purpose::STANDARD.encode(secret);
    assert!(!out.contains(&b64[..b64.len() - 2]), "{out}");
    assert!(out.contains("plain [MASKED]"), "{out}");
    assert!(out.contains("{\"t\":\"[MASKED]\"}"), "{out}");
    assert!(out.contains("err [MASKED]"), "{out}");
    assert!(out.contains("other sees [nothing]"), "{out}");
}

#[tokio::test]
async fn a_secret_printed_in_tiny_pieces_is_still_masked() {
    // The shell writes one character per write(2): every chunk boundary is exercised.
    let mut s = step(
        "drip",
        "i=0; while [ $i -lt ${#TOKEN} ]; do printf '%s' \"${TOKEN:$i:1}\"; \
         i=$((i+1)); done; echo",
    );
    s.shell = pipelines::Shell::Bash;
    s.secrets = vec!["TOKEN".into()];
    let (o, _dir) = run(
        job("j", vec![s]),
        &[("TOKEN", "abcdefgh12345")],
        CancellationToken::new(),
    )
    .await;
    assert_eq!(o.status, JobStatus::Success);
    assert_eq!(o.output(), "[MASKED]\n");
}

#[tokio::test]
async fn a_missing_secret_fails_the_job_before_any_step_runs() {
    let mut s = step("deploy", "echo ran");
    s.secrets = vec!["DEPLOY_TOKEN".into()];
    let (o, _dir) = run(
        job("j", vec![step("first", "echo first"), s]),
        &[],
        CancellationToken::new(),
    )
    .await;
    assert_eq!(o.status, JobStatus::Failed);
    assert!(o.results.is_empty());
    let out = o.output();
    assert!(
        out.contains("DEPLOY_TOKEN") && out.contains("deploy"),
        "{out}"
    );
    assert!(!out.contains("first\n"), "{out}");
}

#[tokio::test]
async fn a_short_secret_is_refused() {
    let (o, _dir) = run(
        job("j", vec![step("a", "true")]),
        &[("PIN", "123")],
        CancellationToken::new(),
    )
    .await;
    assert_eq!(o.status, JobStatus::Failed);
    assert!(o.output().contains("PIN"), "{}", o.output());
    assert!(o.results.is_empty());
}

#[tokio::test]
async fn a_vm_step_without_a_vm_executor_fails_clearly() {
    let mut s = step("risky", "true");
    s.isolation = Isolation::Vm;
    let (o, _dir) = run(job("j", vec![s]), &[], CancellationToken::new()).await;
    assert_eq!(o.status, JobStatus::Failed);
    assert!(o.output().contains("isolation: vm"), "{}", o.output());
}

#[tokio::test]
async fn the_job_timeout_bounds_its_steps() {
    let mut j = job(
        "slow",
        vec![step("sleep", "sleep 30"), step("never", "true")],
    );
    j.timeout = Duration::from_millis(500);
    let t = Instant::now();
    let (o, _dir) = run(j, &[], CancellationToken::new()).await;
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    assert_eq!(o.status, JobStatus::TimedOut);
    assert_eq!(o.results.len(), 1);
    assert!(o.results[0].timed_out);
}

#[tokio::test]
async fn a_step_timeout_is_a_failed_step_not_a_timed_out_job() {
    let mut s = step("sleep", "sleep 30");
    s.timeout = Duration::from_millis(300);
    let (o, _dir) = run(job("j", vec![s]), &[], CancellationToken::new()).await;
    assert_eq!(o.status, JobStatus::Failed);
    assert!(o.results[0].timed_out);
}

#[tokio::test]
async fn cancelling_kills_the_running_step_and_runs_no_more() {
    let cancel = CancellationToken::new();
    let c = cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        c.cancel();
    });
    let t = Instant::now();
    let j = job(
        "j",
        vec![step("sleep", "sleep 30"), step("never", "echo never")],
    );
    let (o, _dir) = run(j, &[], cancel).await;
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    assert_eq!(o.status, JobStatus::Cancelled);
    assert_eq!(o.results.len(), 1);
    assert!(o.results[0].cancelled);
    assert!(!o.output().contains("never"));
}
