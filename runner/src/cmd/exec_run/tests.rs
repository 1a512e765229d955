//! The run loop end to end through the test-only host-shell executor (no sandbox): workspaces,
//! output, summary, exit code, clean-up. The same flows with real sandboxes are in
//! `tests/exec.rs`.

use std::path::Path;
use std::time::Duration;

use super::*;
use crate::jobrun::tests::{host_executors, job, step};

struct Run {
    text: String,
    outcomes: Vec<JobOutcome>,
    code: u8,
}

async fn go(plan: &Plan, source: &Path, data: &Path, bind: bool, secrets: &[(&str, &str)]) -> Run {
    go_with(plan, source, data, bind, secrets, CancellationToken::new()).await
}

async fn go_with(
    plan: &Plan,
    source: &Path,
    data: &Path,
    bind: bool,
    secrets: &[(&str, &str)],
    cancel: CancellationToken,
) -> Run {
    let run_id = new_run_id();
    let run_dir = RunDir::create(&data.join("run"), data, &run_id).unwrap();
    let source = Arc::new(Source::new(data, source.to_path_buf()));
    let setup = Setup {
        run_dir,
        run_id,
        source,
        bind,
        parallel: 2,
        style: Style {
            color: false,
            timestamps: false,
        },
        secrets: secrets
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    };
    let (outcomes, out) = execute(setup, host_executors(), plan, Vec::new(), cancel)
        .await
        .unwrap();
    Run {
        text: String::from_utf8(out).unwrap(),
        code: exit_code(plan, &outcomes),
        outcomes,
    }
}

fn plan(jobs: Vec<PlannedJob>) -> Plan {
    Plan {
        name: "t".into(),
        jobs,
    }
}

#[tokio::test]
async fn jobs_get_private_copies_of_the_source_and_leave_nothing_behind() {
    let src = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    std::fs::write(src.path().join("input.txt"), "from the checkout\n").unwrap();
    let mut test = job(
        "test",
        vec![step(
            "check",
            "cat input.txt; cat out.txt 2>/dev/null || echo no-out",
        )],
    );
    test.needs = vec!["build".into()];
    let p = plan(vec![
        job(
            "build",
            vec![
                step("write", "echo built > out.txt; echo changed > input.txt"),
                step("read", "cat out.txt"),
            ],
        ),
        test,
    ]);
    let r = go(&p, src.path(), data.path(), false, &[]).await;
    assert_eq!(r.code, 0, "{}", r.text);
    // Step 2 of build sees step 1's file; job test has its own copy of the checkout.
    assert!(r.text.contains("build │ built\n"), "{}", r.text);
    assert!(r.text.contains("test  │ from the checkout\n"), "{}", r.text);
    assert!(r.text.contains("test  │ no-out\n"), "{}", r.text);
    // The user's checkout is untouched.
    assert_eq!(
        std::fs::read_to_string(src.path().join("input.txt")).unwrap(),
        "from the checkout\n"
    );
    assert!(!src.path().join("out.txt").exists());
    // Every workspace and the run directory are gone.
    for dir in [data.path().join("exec"), data.path().join("run/exec")] {
        let left: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
        assert!(left.is_empty(), "{}: {left:?}", dir.display());
    }
    assert!(
        r.text.contains("2 jobs: 2 succeeded, 0 failed, 0 skipped"),
        "{}",
        r.text
    );
}

#[tokio::test]
async fn a_run_cancelled_before_its_jobs_start_leaves_no_workspace_or_mount() {
    let src = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    std::fs::write(src.path().join("input.txt"), "x").unwrap();
    let p = plan(vec![
        job("a", vec![step("s", "true")]),
        job("b", vec![step("s", "true")]),
    ]);
    let cancel = CancellationToken::new();
    cancel.cancel();
    let r = go_with(&p, src.path(), data.path(), false, &[], cancel).await;
    assert!(
        r.outcomes.iter().all(|o| o.status == JobStatus::Cancelled),
        "{}",
        r.text
    );
    for dir in [data.path().join("exec"), data.path().join("run/exec")] {
        let left: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
        assert!(left.is_empty(), "{}: {left:?}", dir.display());
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(data.path().to_str().unwrap()),
        "a workspace stayed mounted"
    );
}

#[tokio::test]
async fn bind_workspace_works_in_the_checkout_itself() {
    let src = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let p = plan(vec![job("j", vec![step("w", "echo kept > result.txt")])]);
    let r = go(&p, src.path(), data.path(), true, &[]).await;
    assert_eq!(r.code, 0, "{}", r.text);
    assert_eq!(
        std::fs::read_to_string(src.path().join("result.txt")).unwrap(),
        "kept\n"
    );
}

#[tokio::test]
async fn a_failure_gives_exit_1_a_skipped_dependent_and_a_summary() {
    let src = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let mut deploy = job("deploy", vec![step("ship", "echo shipping")]);
    deploy.needs = vec!["test".into()];
    let p = plan(vec![
        job(
            "test",
            vec![step("unit", "echo testing; exit 4"), step("more", "true")],
        ),
        deploy,
    ]);
    let r = go(&p, src.path(), data.path(), false, &[]).await;
    assert_eq!(r.code, 1);
    assert_eq!(r.outcomes[1].status, JobStatus::Skipped);
    assert!(!r.text.contains("shipping"), "{}", r.text);
    let summary = r.text.split("\nJOB").nth(1).expect("a summary table");
    assert!(
        summary.contains("test    unit  failed (exit 4)"),
        "{summary}"
    );
    assert!(summary.contains("test    more  not run"), "{summary}");
    assert!(
        summary.contains("deploy  -     skipped: needs 'test', which failed"),
        "{summary}"
    );
    assert!(
        summary.contains("2 jobs: 0 succeeded, 1 failed, 1 skipped"),
        "{summary}"
    );
}

#[tokio::test]
async fn an_allowed_failure_keeps_exit_0() {
    let src = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let mut j = job("lint", vec![step("a", "exit 1")]);
    j.allow_failure = true;
    let r = go(&plan(vec![j]), src.path(), data.path(), false, &[]).await;
    assert_eq!(r.code, 0, "{}", r.text);
    assert!(
        r.text.contains("0 failed, 1 failed (allowed)"),
        "{}",
        r.text
    );
}

#[tokio::test]
async fn secrets_are_masked_on_the_terminal() {
    let src = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let mut s = step("leak", "echo \"token=$API_TOKEN\"");
    s.secrets = vec!["API_TOKEN".into()];
    let r = go(
        &plan(vec![job("j", vec![s])]),
        src.path(),
        data.path(),
        false,
        &[("API_TOKEN", "tok-123456789")],
    )
    .await;
    assert!(r.text.contains("j │ token=[MASKED]"), "{}", r.text);
    assert!(!r.text.contains("tok-123456789"), "{}", r.text);
}

#[tokio::test]
async fn missing_or_short_secrets_are_refused_before_anything_runs() {
    let mut s = step("deploy", "true");
    s.secrets = vec!["DEPLOY_KEY".into(), "OTHER".into()];
    let p = plan(vec![job("j", vec![s])]);
    let e = check_secrets(&p, &BTreeMap::new()).unwrap_err().to_string();
    assert!(
        e.contains("DEPLOY_KEY, OTHER") && e.contains("--secret DEPLOY_KEY=VALUE"),
        "{e}"
    );
    let short = BTreeMap::from([("PIN".to_string(), "12".to_string())]);
    let e = format!("{:#}", check_secrets(&plan(vec![]), &short).unwrap_err());
    assert!(e.contains("PIN") && e.contains("shorter than 4"), "{e}");
}

#[tokio::test]
async fn a_retried_job_starts_from_a_fresh_copy() {
    let src = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    // Fails the first time (leaving a marker in its workspace); a fresh copy has no marker.
    let mut j = job(
        "flaky",
        vec![step(
            "s",
            "if [ -e marker ]; then echo stale; exit 0; fi; touch marker; exit 1",
        )],
    );
    j.retry = 1;
    let r = go(&plan(vec![j]), src.path(), data.path(), false, &[]).await;
    assert_eq!(r.outcomes[0].attempts, 2);
    assert_eq!(r.outcomes[0].status, JobStatus::Failed, "{}", r.text);
    assert!(!r.text.contains("stale"), "{}", r.text);
    assert!(r.text.contains("retrying (attempt 2 of 2)"), "{}", r.text);
}

#[test]
fn run_ids_are_short_and_distinct() {
    let a = new_run_id();
    std::thread::sleep(Duration::from_millis(2));
    let b = new_run_id();
    assert_eq!(a.len(), 9);
    assert_ne!(a, b);
}

#[tokio::test]
async fn a_data_dir_inside_the_source_tree_is_left_out_of_workspaces() {
    let src = tempfile::tempdir().unwrap();
    let data = src.path().join(".runner-data");
    std::fs::write(src.path().join("code.txt"), "x").unwrap();
    let p = plan(vec![job("j", vec![step("ls", "ls -A")])]);
    let r = go(&p, src.path(), &data, false, &[]).await;
    assert_eq!(r.code, 0, "{}", r.text);
    assert!(
        r.text.contains("j » workspace: copied 1 files"),
        "{}",
        r.text
    );
    assert!(r.text.contains("j │ code.txt"), "{}", r.text);
    assert!(!r.text.contains(".runner-data"), "{}", r.text);
}

#[testkit::needs(root)]
#[tokio::test]
async fn as_root_the_workspace_is_an_overlay_snapshot_that_is_unmounted_after() {
    let src = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    std::fs::write(src.path().join("code.txt"), "x").unwrap();
    let p = plan(vec![job(
        "j",
        vec![step("edit", "echo y > code.txt; cat code.txt")],
    )]);
    let r = go(&p, src.path(), data.path(), false, &[]).await;
    assert_eq!(r.code, 0, "{}", r.text);
    assert!(
        r.text.contains("j » workspace: overlay snapshot of"),
        "{}",
        r.text
    );
    assert!(r.text.contains("j │ y"), "{}", r.text);
    assert_eq!(
        std::fs::read_to_string(src.path().join("code.txt")).unwrap(),
        "x"
    );
    assert!(snapshot::mounts_under(data.path()).unwrap().is_empty());
}
