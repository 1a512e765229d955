//! `runner exec` end to end: the real binary, real pipeline files, every step in a real
//! container sandbox (`image: host`, so no registry is needed). Needs root, like the
//! container executor itself; CI runs the suite as root.
//!
//! Each test has its own source tree and `--data-dir`, so they run in parallel safely.

#[path = "support/runs.rs"]
mod runs;

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use testkit::exec::LIMIT;
use testkit::leftovers::{processes_with_arg, sandbox_cgroups};
use testkit::process::{position, wait_with_limit as wait};

const RUNNER: &str = env!("CARGO_BIN_EXE_runner");

type Project = testkit::exec::Project;

/// A checkout holding `pipeline`, run with this tree's `runner`.
fn project(pipeline: &str) -> Project {
    Project::new(RUNNER, pipeline)
}

#[testkit::needs(root)]
#[test]
fn two_jobs_with_needs_run_in_order_each_on_its_own_copy() {
    let p = project(
        r#"
name: e2e
defaults:
  image: host
jobs:
  build:
    steps:
      - name: compile
        run: echo compiled > artifact.txt && echo "in $(pwd)"
      - name: package
        run: cat artifact.txt
  test:
    needs: [build]
    steps:
      - name: check
        run: |
          test ! -e artifact.txt && echo "fresh workspace"
          cat input.txt
"#,
    );
    std::fs::write(p.src.path().join("input.txt"), "from the checkout\n").unwrap();
    let r = p.exec(&[]);
    assert_eq!(r.code, Some(0), "{r}");
    let out = &r.stdout;
    assert!(out.contains("build │ in /workspace"), "{r}");
    // Step 2 sees what step 1 left in the workspace.
    assert!(out.contains("build │ compiled"), "{r}");
    assert!(out.contains("test  │ fresh workspace"), "{r}");
    assert!(out.contains("test  │ from the checkout"), "{r}");
    // `test` needs `build`: it starts after build's last step finished.
    assert!(
        position(out, "build ✓ package") < position(out, "test  ▶ check"),
        "{r}"
    );
    assert!(
        out.contains("2 jobs: 2 succeeded, 0 failed, 0 skipped"),
        "{r}"
    );
    // The checkout is untouched and the run left nothing in the data dir.
    assert!(!p.src.path().join("artifact.txt").exists());
    assert_no_leftovers(p.data.path(), None);
}

#[testkit::needs(root)]
#[test]
fn a_failing_step_exits_1_skips_dependents_and_summarises() {
    let p = project(
        r#"
name: e2e
defaults:
  image: host
jobs:
  unit:
    steps:
      - name: run tests
        run: echo "3 tests, 1 failure"; exit 3
      - name: report
        run: echo never
  deploy:
    needs: [unit]
    steps:
      - name: ship
        run: echo shipping
"#,
    );
    let r = p.exec(&[]);
    assert_eq!(r.code, Some(1), "{r}");
    assert!(r.stdout.contains("unit   │ 3 tests, 1 failure"), "{r}");
    assert!(
        !r.stdout.contains("never") && !r.stdout.contains("shipping"),
        "{r}"
    );
    let summary = &r.stdout[position(&r.stdout, "\nJOB ")..];
    let rows: Vec<&str> = summary.lines().map(str::trim_end).collect();
    assert!(
        rows.iter().any(|l| l.starts_with("unit")
            && l.contains("run tests")
            && l.contains("failed (exit 3)")),
        "{summary}"
    );
    assert!(
        rows.iter()
            .any(|l| l.starts_with("unit") && l.contains("report") && l.contains("not run")),
        "{summary}"
    );
    assert!(
        rows.iter()
            .any(|l| l.starts_with("deploy") && l.contains("skipped: needs 'unit', which failed")),
        "{summary}"
    );
    assert!(
        summary.contains("2 jobs: 0 succeeded, 1 failed, 1 skipped"),
        "{summary}"
    );
    assert_no_leftovers(p.data.path(), None);
}

#[testkit::needs(root)]
#[test]
fn the_workspace_persists_between_steps_but_the_root_filesystem_does_not() {
    let marker = format!("/etc/runner-exec-e2e-{}", std::process::id());
    let p = project(&format!(
        r#"
name: e2e
defaults:
  image: host
jobs:
  j:
    steps:
      - name: write
        run: |
          echo kept > /workspace/kept.txt
          echo gone > {marker}
          cat {marker}
      - name: read
        run: |
          cat /workspace/kept.txt
          test ! -e {marker} && echo "etc is clean"
"#
    ));
    let r = p.exec(&[]);
    assert_eq!(r.code, Some(0), "{r}");
    assert!(r.stdout.contains("j │ gone"), "{r}");
    assert!(r.stdout.contains("j │ kept"), "{r}");
    assert!(r.stdout.contains("j │ etc is clean"), "{r}");
    assert!(
        !Path::new(&marker).exists(),
        "a step wrote to the host's /etc"
    );
}

#[testkit::needs(root)]
#[test]
fn secrets_are_masked_in_plain_base64_and_json_forms() {
    // Quotes, a backslash and a slash make the JSON-escaped form differ from the plain one.
    let secret = r#"hunter2"with\back/slash"#;
    let other = "second-secret-value";
    let p = project(
        r#"
name: e2e
defaults:
  image: host
jobs:
  j:
    steps:
      - name: leak
        secrets: [API_TOKEN, OTHER]
        run: |
          printf 'plain: %s\n' "$API_TOKEN"
          printf '%s' "$API_TOKEN" | base64
          printf 'user:%s' "$API_TOKEN" | base64
          printf 'json: {"t":"%s"}\n' "$(printf '%s' "$API_TOKEN" | sed 's/\\/\\\\/g; s/"/\\"/g')"
          echo "to stderr: $OTHER" >&2
      - name: blind
        run: echo "blind sees [${API_TOKEN:-nothing}]"
"#,
    );
    let env_file = p.data.path().join("secrets.env");
    std::fs::write(&env_file, format!("API_TOKEN='{secret}'\n")).unwrap();
    let r = p.exec(&[
        "--secrets-file",
        env_file.to_str().unwrap(),
        "--secret",
        &format!("OTHER={other}"),
    ]);
    assert_eq!(r.code, Some(0), "{r}");
    let out = &r.stdout;
    let b64 = base64::engine::general_purpose::STANDARD;
    let json = serde_json::to_string(secret).unwrap();
    let forbidden = [
        secret.to_string(),
        other.to_string(),
        // Encodings minus their last characters (which mix in padding or neighbours).
        b64.encode(secret)[..24].to_string(),
        b64.encode(format!("user:{secret}"))[8..28].to_string(),
        json.trim_matches('"').to_string(),
    ];
    for f in &forbidden {
        assert!(!out.contains(f.as_str()), "{f:?} leaked:\n{r}");
    }
    assert!(out.contains("plain: [MASKED]"), "{r}");
    assert!(out.contains(r#"json: {"t":"[MASKED]"}"#), "{r}");
    assert!(out.contains("to stderr: [MASKED]"), "{r}");
    assert!(out.contains("blind sees [nothing]"), "{r}");
}

#[testkit::needs(root)]
#[test]
fn a_missing_secret_is_refused_before_anything_runs() {
    let p = project(
        r#"
name: e2e
defaults:
  image: host
jobs:
  j:
    steps:
      - name: first
        run: echo ran
      - name: deploy
        secrets: [DEPLOY_TOKEN]
        run: echo deploying
"#,
    );
    let r = p.exec(&[]);
    assert_eq!(r.code, Some(2), "{r}");
    assert!(r.stderr.contains("DEPLOY_TOKEN"), "{r}");
    assert!(!r.stdout.contains("ran"), "{r}");
}

#[testkit::needs(root)]
#[test]
fn a_job_timeout_kills_its_step_and_fails_the_run() {
    let nap = format!("{}", 5000 + std::process::id() % 997);
    let p = project(&format!(
        r#"
name: e2e
defaults:
  image: host
jobs:
  slow:
    timeout: 2s
    steps:
      - name: hang
        run: |
          trap '' TERM
          sleep {nap} &
          sleep {nap}
      - name: after
        run: echo after-step-ran
"#
    ));
    let start = Instant::now();
    let r = p.exec(&[]);
    assert!(start.elapsed() < Duration::from_secs(20), "{r}");
    assert_eq!(r.code, Some(1), "{r}");
    assert!(r.stdout.contains("slow ✗ hang · timed out"), "{r}");
    assert!(r.stdout.contains("job timed out"), "{r}");
    assert!(!r.stdout.contains("after-step-ran"), "{r}");
    assert_no_leftovers(p.data.path(), Some(&nap));
}

#[testkit::needs(root)]
#[test]
fn bind_workspace_lets_jobs_change_the_checkout() {
    let p = project(
        r#"
name: e2e
defaults:
  image: host
jobs:
  j:
    steps:
      - name: write
        run: echo generated > result.txt
"#,
    );
    let r = p.exec(&["--bind-workspace"]);
    assert_eq!(r.code, Some(0), "{r}");
    assert_eq!(
        std::fs::read_to_string(p.src.path().join("result.txt")).unwrap(),
        "generated\n"
    );
}

#[testkit::needs(root)]
#[test]
fn a_vm_step_without_a_usable_vm_executor_is_refused_with_the_reason() {
    // A fresh data dir has no guest kernel, so the VM executor cannot start.
    let p = project(
        r#"
name: e2e
jobs:
  j:
    steps:
      - name: risky
        isolation: vm
        image: 127.0.0.1:5000/busybox:latest
        run: echo in a vm
"#,
    );
    let r = p.exec(&[]);
    assert_eq!(r.code, Some(1), "{r}");
    assert!(
        r.stderr
            .contains("step 'risky' of job 'j' asks for isolation: vm"),
        "{r}"
    );
    assert!(r.stderr.contains("--isolation container"), "{r}");
    assert!(!r.stdout.contains("in a vm"), "{r}");
}

#[testkit::needs(root)]
#[test]
fn ctrl_c_cancels_the_running_step_and_leaves_no_sandbox_behind() {
    // A sleep with an argument no other test uses, to find its processes afterwards.
    let nap = format!("{}", 3000 + std::process::id() % 997);
    let p = project(&format!(
        r#"
name: e2e
defaults:
  image: host
jobs:
  long:
    steps:
      - name: wait
        run: |
          echo started
          sleep {nap} &
          sleep {nap}
      - name: after
        run: echo after-step-ran
"#
    ));
    let mut child = p.command(&[]).spawn().expect("start runner");
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut all = String::new();
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let _ = tx.send(line.clone());
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) if l.contains("│ started") => break,
            Ok(_) => {}
            Err(_) => {
                let _ = child.kill();
                panic!("the step never started:\n{}", reader.join().unwrap());
            }
        }
    }
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            panic!("runner exec did not stop within 30 s of Ctrl-C");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = reader.join().unwrap();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert_eq!(status.code(), Some(130), "stdout:\n{out}\nstderr:\n{err}");
    assert!(!out.contains("after-step-ran"), "{out}");
    assert!(out.contains("long ✗ wait · cancelled"), "{out}");
    assert!(out.contains("1 cancelled"), "{out}");
    assert_no_leftovers(p.data.path(), Some(&nap));
    let cgroups = sandbox_cgroups(pid.as_raw());
    assert!(cgroups.is_empty(), "cgroups left: {cgroups:?}");
}

/// Start `runner exec` and wait until a line containing `marker` appears on its stdout.
/// Returns the child and a reader thread that collects the rest of stdout.
fn start_until(
    p: &Project,
    args: &[&str],
    marker: &str,
) -> (std::process::Child, std::thread::JoinHandle<String>) {
    let mut child = p.command(args).spawn().expect("start runner");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut all = String::new();
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let _ = tx.send(line.clone());
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(l) if l.contains(marker) => return (child, reader),
            Ok(_) => {}
            Err(_) => {
                let _ = child.kill();
                panic!("{marker:?} never appeared:\n{}", reader.join().unwrap());
            }
        }
    }
}

#[testkit::needs(root)]
#[test]
fn a_second_run_on_the_same_data_dir_leaves_a_live_run_alone() {
    let p = project(
        r#"
name: e2e
defaults:
  image: host
jobs:
  long:
    steps:
      - name: wait
        run: echo started; sleep 3; echo survived
"#,
    );
    let (first, reader) = start_until(&p, &[], "│ started");
    // A second run starts up (reconciling what dead runs left) while the first is mid-step.
    let second = Project {
        src: tempfile::tempdir().unwrap(),
        data: tempfile::TempDir::new().unwrap(),
        bin: RUNNER,
    };
    std::fs::write(
        second.src.path().join(".runner.yml"),
        "name: b\njobs:\n  quick:\n    steps:\n      - name: s\n        image: host\n        run: echo quick\n",
    )
    .unwrap();
    let mut c = second.command(&[]);
    c.arg("--data-dir").arg(p.data.path());
    let r = wait(c.spawn().unwrap(), LIMIT);
    assert_eq!(
        r.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&r.stderr)
    );
    let out = wait_child(first);
    let text = reader.join().unwrap();
    assert_eq!(out, Some(0), "{text}");
    assert!(text.contains("long │ survived"), "{text}");
}

#[testkit::needs(root)]
#[test]
fn a_killed_run_is_cleaned_up_by_the_next_start() {
    let nap = format!("{}", 4000 + std::process::id() % 997);
    let p = project(&format!(
        r#"
name: e2e
defaults:
  image: host
jobs:
  long:
    steps:
      - name: wait
        run: echo started; sleep {nap}
"#
    ));
    let (mut first, reader) = start_until(&p, &[], "│ started");
    let pid = first.id() as i32;
    first.kill().unwrap(); // SIGKILL: no chance to clean up
    first.wait().unwrap();
    let _ = reader.join();
    assert!(
        !sandbox_cgroups(pid).is_empty() || !processes_with_arg(&nap).is_empty(),
        "the killed run left nothing to clean up, so this test would prove nothing"
    );
    // The next run on the same data dir removes all of it before running its own jobs.
    std::fs::write(
        p.src.path().join(".runner.yml"),
        "name: b\njobs:\n  quick:\n    steps:\n      - name: s\n        image: host\n        run: echo quick\n",
    )
    .unwrap();
    let r = p.exec(&[]);
    assert_eq!(r.code, Some(0), "{r}");
    assert_no_leftovers(p.data.path(), Some(&nap));
    let cgroups = sandbox_cgroups(pid);
    assert!(cgroups.is_empty(), "cgroups left: {cgroups:?}");
}

fn wait_child(mut child: std::process::Child) -> Option<i32> {
    let start = Instant::now();
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s.code();
        }
        if start.elapsed() > LIMIT {
            let _ = child.kill();
            panic!("runner exec did not finish within {LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Nothing of a finished run survives: no mount under the data dir, no process of the step,
/// no job workspace, no sandbox state.
fn assert_no_leftovers(data: &Path, process_marker: Option<&str>) {
    let data = data.canonicalize().unwrap();
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let data_str = data.to_str().unwrap();
    let left: Vec<&str> = mounts.lines().filter(|l| l.contains(data_str)).collect();
    assert!(left.is_empty(), "mounts left under the data dir: {left:#?}");
    if let Some(marker) = process_marker {
        let procs = processes_with_arg(marker);
        assert!(procs.is_empty(), "step processes survived: {procs:?}");
    }
    let sandboxes = data.join("state/container/sandboxes");
    if sandboxes.exists() {
        let left: Vec<_> = std::fs::read_dir(&sandboxes)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .collect();
        assert!(left.is_empty(), "sandboxes left: {left:?}");
    }
    let runs = runs::runs_of(&data);
    assert!(runs.is_empty(), "run directories left: {runs:?}");
    let exec = data.join("exec");
    if exec.exists() {
        let left: Vec<_> = std::fs::read_dir(&exec)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .collect();
        assert!(left.is_empty(), "workspaces left: {left:?}");
    }
}
