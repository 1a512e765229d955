//! The whole loop on loopback: `runner serve`, `runner register`, `runner run` (the agent, with
//! the real container executor, `image: host` steps), `runner submit`, `runner logs`. Needs
//! root, like the container executor itself.

#[path = "support/coord.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::*;

/// One registered agent with its own data dir and config file.
struct Agent {
    dir: tempfile::TempDir,
    child: Option<Child>,
    metrics_addr: String,
}

impl Agent {
    fn register(s: &Server, concurrent: u32) -> Agent {
        // The agent runs real container sandboxes.
        testkit::require(&[testkit::Need::Root]);
        let token = String::from_utf8(s.cli().args(["token", "create"]).output().unwrap().stdout)
            .unwrap()
            .trim()
            .to_string();
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let a = Agent {
            dir,
            child: None,
            metrics_addr: format!("127.0.0.1:{port}"),
        };
        let out = a
            .cmd()
            .args([
                "register", "--url", &s.url, "--token", &token, "--name", "t",
            ])
            .args(["--concurrent", &concurrent.to_string()])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains(&a.config().display().to_string()),
            "path shown: {text}"
        );
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(a.config()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "the config holds a token");
        a
    }

    fn config(&self) -> PathBuf {
        self.dir.path().join("config.toml")
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn cmd(&self) -> Command {
        let mut c = Command::new(BIN);
        c.arg("--data-dir")
            .arg(self.data())
            .arg("--config")
            .arg(self.config());
        c
    }

    fn start(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("agent.log"))
            .unwrap();
        let child = self
            .cmd()
            .args([
                "run",
                "--poll-wait",
                "2",
                "--metrics-listen",
                &self.metrics_addr,
            ])
            .env("RUST_LOG", "runner=debug")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    fn signal(&self, sig: nix::sys::signal::Signal) {
        let pid = self.child.as_ref().unwrap().id() as i32;
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig).unwrap();
    }

    fn wait_exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        let start = Instant::now();
        let c = self.child.as_mut().unwrap();
        loop {
            if let Some(s) = c.try_wait().unwrap() {
                self.child = None;
                return s;
            }
            assert!(
                start.elapsed() < limit,
                "agent did not exit:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default()
    }

    fn leftovers(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        // The spool and workspaces of jobs, and the records of their sandboxes (a killed agent's
        // step keeps running until the next agent's start-up reconciles it).
        for d in [
            "agent/spool",
            "agent/work",
            "state/agent-container/sandboxes",
        ] {
            if let Ok(rd) = std::fs::read_dir(self.data().join(d)) {
                out.extend(rd.map(|e| e.unwrap().path()));
            }
        }
        out
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn project(pipeline: &str) -> tempfile::TempDir {
    let dir = testkit::exec::pipeline_dir(pipeline);
    std::fs::write(dir.path().join("input.txt"), "from the workspace\n").unwrap();
    dir
}

fn submit(s: &Server, dir: &Path, extra: &[&str]) -> i64 {
    let out = s
        .cli()
        .arg("submit")
        .arg(dir.join(".runner.yml"))
        .args(["--json"])
        .args(extra)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v["id"].as_i64().unwrap()
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Runtime::new().unwrap()
}

fn wait_run(s: &Server, run: i64, limit: Duration, pred: impl Fn(&Value) -> bool) -> Value {
    rt().block_on(Http::new(&s.url).wait_run(&s.admin, run, limit, pred))
}

fn stored_log(s: &Server, job: i64) -> Vec<u8> {
    rt().block_on(Http::new(&s.url).log(&s.admin, job))
}

/// Drops what legitimately differs between two runs: durations and timestamps.
fn normalise(text: &str) -> String {
    let mut out = String::new();
    for line in text.lines() {
        let words: Vec<String> = line
            .split(' ')
            .map(|w| {
                let t = w.trim_end_matches('s');
                if t != w && t.parse::<f64>().is_ok() {
                    "<dur>".to_string()
                } else {
                    w.to_string()
                }
            })
            .collect();
        out.push_str(&words.join(" "));
        out.push('\n');
    }
    out
}

const TWO_JOBS: &str = r#"
name: e2e
jobs:
  build:
    steps:
      - name: hello
        image: host
        run: |
          echo "line one"
          echo "to stderr" >&2
          cat input.txt
      - name: second
        image: host
        run: echo "second step"
  test:
    needs: [build]
    steps:
      - name: check
        image: host
        run: echo "tested"
"#;

#[testkit::needs(root)]
#[test]
fn serve_register_run_submit_stores_the_log_runner_exec_prints() {
    let s = Server::start(30.0);
    let mut a = Agent::register(&s, 2);
    a.start();
    let p = project(TWO_JOBS);
    let run = submit(&s, p.path(), &[]);
    let v = wait_run(&s, run, Duration::from_secs(50), |v| {
        v["state"] != "running"
    });
    assert_eq!(v["state"], "success", "{v:#}\nagent:\n{}", a.log());
    let build = &v["jobs"][0];
    assert_eq!(build["steps"][0]["exit_code"], 0);
    assert_eq!(build["steps"].as_array().unwrap().len(), 2);
    let log = String::from_utf8(stored_log(&s, build["id"].as_i64().unwrap())).unwrap();
    for want in ["line one", "to stderr", "from the workspace", "second step"] {
        assert!(
            log.contains(want),
            "{want:?} missing from the stored log:\n{log}"
        );
    }
    // The stored log is `runner exec`'s rendering of the job: line by line, job label first.
    for want in [
        "build ▶ hello · container",
        "build │ line one",
        "build │ to stderr",
        "build │ from the workspace",
        "build ✓ hello · success in ",
        "build ✓ second · success in ",
    ] {
        assert!(
            log.lines().any(|l| l.starts_with(want)),
            "no line starting {want:?}:\n{log}"
        );
    }
    // And `runner exec` on the same pipeline prints the same lines for the job.
    let exec = Command::new(BIN)
        .arg("--data-dir")
        .arg(a.data())
        .args(["exec", "--job", "build"])
        .arg(p.path().join(".runner.yml"))
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let exec_err = String::from_utf8_lossy(&exec.stderr);
    assert!(exec.status.success(), "{exec_err}");
    let exec_out = normalise(&String::from_utf8_lossy(&exec.stdout));
    for line in normalise(&log).lines() {
        assert!(
            exec_out.contains(line),
            "stored line {line:?} not in `runner exec` output:\n{exec_out}"
        );
    }
    // Logs through the CLI are the stored bytes.
    let out = s
        .cli()
        .args(["logs", &format!("{run}/build")])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8(out.stdout).unwrap(), log);
    // The agent's own metrics.
    let metrics = rt().block_on(async {
        reqwest::get(format!("http://{}/metrics", a.metrics_addr))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    });
    for want in [
        "runner_agent_jobs_finished_total{status=\"success\"} 2",
        "runner_agent_jobs_running 0",
        "runner_agent_step_duration_seconds_count 3",
    ] {
        assert!(metrics.contains(want), "{want:?} not in:\n{metrics}");
    }
    a.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(a.wait_exit(Duration::from_secs(10)).success());
    assert!(a.leftovers().is_empty(), "{:?}", a.leftovers());
    // Unregister: the coordinator forgets the runner, the config loses its [agent] section.
    let out = a.cmd().arg("unregister").output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!std::fs::read_to_string(a.config())
        .unwrap()
        .contains("[agent]"));
    let out = s.cli().args(["runners", "ls", "--json"]).output().unwrap();
    assert_eq!(
        serde_json::from_slice::<Value>(&out.stdout).unwrap(),
        serde_json::json!([])
    );
}

const SLOW: &str = r#"
name: slow
jobs:
  slow:
    steps:
      - name: count
        image: host
        run: |
          for i in $(seq 1 150); do echo "tick $i"; sleep 0.02; done
"#;

#[testkit::needs(root)]
#[test]
fn coordinator_killed_mid_job_the_job_completes_and_its_log_is_whole() {
    let mut s = Server::start(30.0);
    let mut a = Agent::register(&s, 1);
    a.start();
    let p = project(SLOW);
    let run = submit(&s, p.path(), &[]);
    wait_run(&s, run, Duration::from_secs(30), |v| {
        v["jobs"][0]["state"] == "running"
    });
    std::thread::sleep(Duration::from_millis(800));
    s.kill9();
    std::thread::sleep(Duration::from_millis(1500));
    s.crash_and_restart();
    let v = wait_run(&s, run, Duration::from_secs(50), |v| {
        v["state"] != "running"
    });
    assert_eq!(v["state"], "success", "{v:#}\nagent:\n{}", a.log());
    let log = stored_log(&s, v["jobs"][0]["id"].as_i64().unwrap());
    let text = String::from_utf8_lossy(&log);
    let ticks: Vec<&str> = text.lines().filter(|l| l.contains("tick ")).collect();
    assert_eq!(ticks.len(), 150, "every line exactly once:\n{text}");
    for (i, l) in ticks.iter().enumerate() {
        assert!(l.ends_with(&format!("tick {}", i + 1)), "line {i} is {l:?}");
    }
    assert_eq!(v["jobs"][0]["log_size"].as_u64(), Some(log.len() as u64));
}

#[testkit::needs(root)]
#[test]
fn runner_killed_mid_job_is_declared_lost_and_the_restarted_runner_cleans_up() {
    let s = Server::start(2.0);
    let mut a = Agent::register(&s, 1);
    a.start();
    let p = project(SLOW.replace("seq 1 150", "seq 1 3000").as_str());
    let run = submit(&s, p.path(), &[]);
    let v = wait_run(&s, run, Duration::from_secs(30), |v| {
        v["jobs"][0]["state"] == "running"
    });
    let id = v["jobs"][0]["id"].as_i64().unwrap();
    let start = Instant::now();
    while !String::from_utf8_lossy(&stored_log(&s, id)).contains("tick 2") {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no output streamed:\n{}",
            a.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    a.kill9();
    let t = Instant::now();
    let v = wait_run(&s, run, Duration::from_secs(20), |v| {
        v["state"] != "running"
    });
    assert_eq!(v["jobs"][0]["state"], "failed", "{v:#}");
    assert!(
        v["jobs"][0]["failure_reason"]
            .as_str()
            .unwrap()
            .contains("runner lost"),
        "{v:#}"
    );
    assert!(
        t.elapsed() >= Duration::from_secs(1),
        "declared lost too early"
    );
    assert!(
        !a.leftovers().is_empty(),
        "the killed agent left its spool and workspace"
    );
    a.start();
    let start = Instant::now();
    while !a.leftovers().is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "leftovers stay: {:?}\n{}",
            a.leftovers(),
            a.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    a.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(a.wait_exit(Duration::from_secs(10)).success());
}

#[testkit::needs(root)]
#[test]
fn a_secret_and_its_encoded_forms_never_reach_the_stored_log() {
    use base64::Engine as _;
    let secret = "s3cr3t \"value\"/+&=x";
    let b64 = base64::engine::general_purpose::STANDARD.encode(secret);
    let url: String = secret
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect();
    let json = serde_json::to_string(secret).unwrap();
    let json = &json[1..json.len() - 1];
    // A second secret that the pipeline spells in no form, so that finding it on disk can only
    // mean it was kept (the first one's URL and JSON forms are in the pipeline itself).
    let second = format!("second-{}-Zq8xW", std::process::id());
    let second_b64 = base64::engine::general_purpose::STANDARD.encode(&second);
    let pipeline = format!(
        r#"
name: secrets
jobs:
  leak:
    steps:
      - name: try
        image: host
        secrets: [API_TOKEN, SECOND_TOKEN]
        run: |
          echo "plain: $API_TOKEN"
          echo "second: $SECOND_TOKEN"; printf '%s' "$SECOND_TOKEN" | base64
          printf '%s' "$API_TOKEN" | base64
          echo 'url: {url}'
          echo 'json: {json}'
          echo "split: $(printf '%s' "$API_TOKEN" | cut -c1-6)"; echo "$(printf '%s' "$API_TOKEN" | cut -c7-)"
"#,
        json = json.replace('\'', "'\\''")
    );
    let s = Server::start(30.0);
    let mut a = Agent::register(&s, 1);
    a.start();
    let p = project(&pipeline);
    let run = submit(
        &s,
        p.path(),
        &[
            "--secret",
            &format!("API_TOKEN={secret}"),
            "--secret",
            &format!("SECOND_TOKEN={second}"),
        ],
    );
    let v = wait_run(&s, run, Duration::from_secs(50), |v| {
        v["state"] != "running"
    });
    let log =
        String::from_utf8_lossy(&stored_log(&s, v["jobs"][0]["id"].as_i64().unwrap())).into_owned();
    assert!(log.contains("plain: "), "the step ran: {log}\n{v:#}");
    for form in [
        secret,
        b64.as_str(),
        url.as_str(),
        json,
        &second,
        &second_b64,
    ] {
        assert!(
            !log.contains(form),
            "{form:?} leaked into the stored log:\n{log}"
        );
    }
    // Nor anywhere in the coordinator's data (database and its journal, stored logs) or its
    // own log, once the run is over; nor in what the agent keeps.
    assert_eq!(v["state"], "success", "{v:#}\nagent:\n{}", a.log());
    let forms = [secret, b64.as_str(), &second, &second_b64];
    for dir in [s.dir.path(), a.dir.path()] {
        let found = files_containing(dir, &forms);
        assert!(found.is_empty(), "the secret is kept on disk: {found:#?}");
    }
}

/// Files under `dir` (recursively) holding any of `needles`, with the one found.
fn files_containing(dir: &Path, needles: &[&str]) -> Vec<(PathBuf, String)> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let t = e.file_type().unwrap();
            if t.is_dir() {
                stack.push(e.path());
            } else if t.is_file() {
                let bytes = std::fs::read(e.path()).unwrap_or_default();
                for n in needles {
                    if bytes.windows(n.len()).any(|w| w == n.as_bytes()) {
                        found.push((e.path(), n.to_string()));
                    }
                }
            }
        }
    }
    found
}

#[testkit::needs(root)]
#[test]
fn sigterm_lets_the_running_job_finish_and_cancel_stops_one() {
    let s = Server::start(30.0);
    let mut a = Agent::register(&s, 1);
    a.start();
    let p = project(&SLOW.replace("seq 1 150", "seq 1 60"));
    let run = submit(&s, p.path(), &[]);
    wait_run(&s, run, Duration::from_secs(30), |v| {
        v["jobs"][0]["state"] == "running"
    });
    a.signal(nix::sys::signal::Signal::SIGTERM);
    let v = wait_run(&s, run, Duration::from_secs(30), |v| {
        v["state"] != "running"
    });
    assert_eq!(
        v["state"], "success",
        "a job handed over is finished, not dropped: {v:#}"
    );
    assert!(
        a.wait_exit(Duration::from_secs(15)).success(),
        "{}",
        a.log()
    );

    // Cancel: the running step is stopped and the run ends cancelled.
    a.start();
    let p = project(&SLOW.replace("seq 1 150", "seq 1 5000"));
    let run = submit(&s, p.path(), &[]);
    wait_run(&s, run, Duration::from_secs(30), |v| {
        v["jobs"][0]["state"] == "running"
    });
    let t = Instant::now();
    let out = s
        .cli()
        .args(["runs", "cancel", &run.to_string()])
        .output()
        .unwrap();
    assert!(out.status.success());
    let v = wait_run(&s, run, Duration::from_secs(30), |v| {
        v["state"] != "running"
    });
    assert_eq!(v["state"], "cancelled", "{v:#}");
    assert!(
        t.elapsed() < Duration::from_secs(15),
        "cancel took {:?}",
        t.elapsed()
    );
    a.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(a.wait_exit(Duration::from_secs(15)).success());
}

#[testkit::needs(root)]
#[test]
fn a_second_sigint_cancels_running_jobs_and_the_agent_exits() {
    let s = Server::start(30.0);
    let mut a = Agent::register(&s, 1);
    a.start();
    let p = project(&SLOW.replace("seq 1 150", "seq 1 5000"));
    let run = submit(&s, p.path(), &[]);
    wait_run(&s, run, Duration::from_secs(30), |v| {
        v["jobs"][0]["state"] == "running"
    });
    a.signal(nix::sys::signal::Signal::SIGINT);
    std::thread::sleep(Duration::from_millis(500));
    // The first SIGINT only stops polling: the job keeps running.
    assert_eq!(
        rt().block_on(Http::new(&s.url).run(&s.admin, run))["jobs"][0]["state"],
        "running"
    );
    let t = Instant::now();
    a.signal(nix::sys::signal::Signal::SIGINT);
    let v = wait_run(&s, run, Duration::from_secs(20), |v| {
        v["state"] != "running"
    });
    assert_eq!(v["jobs"][0]["state"], "cancelled", "{v:#}\n{}", a.log());
    assert!(
        a.wait_exit(Duration::from_secs(15)).success(),
        "{}",
        a.log()
    );
    assert!(t.elapsed() < Duration::from_secs(15));
    assert!(a.leftovers().is_empty(), "{:?}", a.leftovers());
}

#[testkit::needs(root)]
#[test]
fn concurrent_jobs_run_at_once_and_retry_and_allow_failure_are_honoured() {
    let s = Server::start(30.0);
    let mut a = Agent::register(&s, 2);
    a.start();
    let p = project(
        r#"
name: policy
jobs:
  one:
    steps:
      - image: host
        run: sleep 1.5; echo one
  two:
    steps:
      - image: host
        run: sleep 1.5; echo two
  flaky:
    needs: [one, two]
    retry: 1
    allow_failure: true
    steps:
      - image: host
        run: echo "try"; exit 3
  after:
    needs: [flaky]
    steps:
      - image: host
        run: echo after
"#,
    );
    let run = submit(&s, p.path(), &[]);
    // Both independent jobs are running at the same time on the one agent (concurrent = 2).
    wait_run(&s, run, Duration::from_secs(30), |v| {
        v["jobs"][0]["state"] == "running" && v["jobs"][1]["state"] == "running"
    });
    let v = wait_run(&s, run, Duration::from_secs(50), |v| {
        v["state"] != "running"
    });
    let jobs = v["jobs"].as_array().unwrap();
    let flaky = jobs.iter().find(|j| j["name"] == "flaky").unwrap();
    assert_eq!(flaky["state"], "failed", "{v:#}");
    assert_eq!(
        flaky["attempt"], 2,
        "retry: 1 gives a second attempt: {v:#}"
    );
    assert_eq!(flaky["steps"][0]["exit_code"], 3);
    let after = jobs.iter().find(|j| j["name"] == "after").unwrap();
    assert_eq!(
        after["state"], "success",
        "allow_failure lets dependents run: {v:#}"
    );
    assert_eq!(v["state"], "success", "{v:#}");
}

#[testkit::needs(root)]
#[test]
fn a_job_handed_over_during_shutdown_is_run_not_dropped() {
    let s = Server::start(30.0);
    let mut a = Agent::register(&s, 1);
    a.start();
    // Let the agent settle into its long poll (2 s), then stop it and submit at once: the job
    // arrives on the request already in flight (GitLab Runner issue 39847 loses it there).
    std::thread::sleep(Duration::from_millis(700));
    a.signal(nix::sys::signal::Signal::SIGTERM);
    let p = project(&SLOW.replace("seq 1 150", "seq 1 10"));
    let run = submit(&s, p.path(), &[]);
    assert!(
        a.wait_exit(Duration::from_secs(20)).success(),
        "{}",
        a.log()
    );
    let v = rt().block_on(Http::new(&s.url).run(&s.admin, run));
    let state = v["jobs"][0]["state"].as_str().unwrap();
    // Either the in-flight request brought the job and it ran to the end, or the request had
    // already ended and the job is still queued for another runner; never half-taken.
    assert!(
        state == "success" || state == "pending",
        "job left {state} by a stopping agent: {v:#}\n{}",
        a.log()
    );
    if state == "success" {
        let log = stored_log(&s, v["jobs"][0]["id"].as_i64().unwrap());
        assert!(String::from_utf8_lossy(&log).contains("tick 10"));
    } else {
        println!("NOTE: the agent's request had ended before the job was queued");
    }
}

#[testkit::needs(root)]
#[test]
fn a_second_agent_on_the_same_data_dir_is_refused() {
    let s = Server::start(2.0);
    let mut a = Agent::register(&s, 1);
    a.start();
    // Wait until the first agent holds its lock (it creates the lock file first thing).
    let lock = a.data().join("state/agent.lock");
    let start = Instant::now();
    while !lock.exists() {
        assert!(start.elapsed() < Duration::from_secs(20), "{}", a.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(200));
    let out = a.cmd().args(["run", "--poll-wait", "1"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "second agent must not start");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("another `runner run` is already using the data dir"),
        "{err}"
    );
    // The first one is unharmed and still stops cleanly.
    a.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(a.wait_exit(Duration::from_secs(10)).success());
}
