//! Helpers for the coordinator and agent end-to-end tests: a real `runner serve` in a temp data
//! dir on a free loopback port, restartable (kill -9) on the same port, and a small client.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

pub const BIN: &str = env!("CARGO_BIN_EXE_runner");

pub struct Server {
    pub dir: tempfile::TempDir,
    pub url: String,
    pub port: u16,
    pub admin: String,
    child: Option<Child>,
    heartbeat_timeout: f64,
}

fn wait_for(path: &Path, timeout: Duration) -> String {
    let start = Instant::now();
    loop {
        if let Ok(s) = std::fs::read_to_string(path) {
            if !s.trim().is_empty() {
                return s.trim().to_string();
            }
        }
        assert!(
            start.elapsed() < timeout,
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Server {
    pub fn start(heartbeat_timeout: f64) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Server {
            dir,
            url: String::new(),
            port: 0,
            admin: String::new(),
            child: None,
            heartbeat_timeout,
        };
        s.spawn();
        s
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn spawn(&mut self) {
        let url_file = self.data_dir().join("coordinator/coordinator-url");
        let _ = std::fs::remove_file(&url_file);
        let child = Command::new(BIN)
            .arg("--data-dir")
            .arg(self.data_dir())
            .args(["serve", "--listen", &format!("127.0.0.1:{}", self.port)])
            .args(["--heartbeat-timeout", &self.heartbeat_timeout.to_string()])
            .args(["--poll-timeout", "10"])
            .env(
                "RUST_LOG",
                std::env::var("COORD_TEST_LOG").unwrap_or_else(|_| "runner=debug".into()),
            )
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.dir.path().join("serve.log")).unwrap())
            .spawn()
            .unwrap();
        self.child = Some(child);
        self.url = wait_for(&url_file, Duration::from_secs(20));
        self.port = self.url.rsplit(':').next().unwrap().parse().unwrap();
        self.admin = wait_for(
            &self.data_dir().join("coordinator/admin-token"),
            Duration::from_secs(5),
        );
        // The URL file is written right after bind; the listener is up.
    }

    /// kill -9, then start again on the same port and data dir.
    pub fn crash_and_restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("serve.log")).unwrap_or_default()
    }

    /// A `runner` command aimed at this coordinator (with its data dir, so the URL and admin
    /// token are found the way local CLI calls find them).
    pub fn cli(&self) -> Command {
        let mut c = Command::new(BIN);
        c.arg("--data-dir").arg(self.data_dir());
        c.env_remove("RUNNER_URL").env_remove("RUNNER_ADMIN_TOKEN");
        c
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
    }
}

pub struct Http {
    pub base: String,
    pub c: reqwest::Client,
}

impl Http {
    pub fn new(base: &str) -> Http {
        Http {
            base: base.to_string(),
            c: reqwest::Client::builder().no_proxy().build().unwrap(),
        }
    }

    pub fn req(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
    ) -> reqwest::RequestBuilder {
        let r = self.c.request(method, format!("{}{path}", self.base));
        match token {
            Some(t) => r.bearer_auth(t),
            None => r,
        }
    }

    pub async fn json(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Value,
    ) -> (u16, Value) {
        let resp = self
            .req(method, path, token)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    pub async fn reg_token(&self, admin: &str, labels: &[&str]) -> String {
        let (s, v) = self
            .json(
                reqwest::Method::POST,
                "/api/v1/tokens",
                Some(admin),
                json!({"labels": labels}),
            )
            .await;
        assert_eq!(s, 201, "{v}");
        v["token"].as_str().unwrap().to_string()
    }

    /// Registers a runner; returns its token.
    pub async fn runner(
        &self,
        admin: &str,
        name: &str,
        labels: &[&str],
        isolations: &[&str],
    ) -> String {
        let reg = self.reg_token(admin, &[]).await;
        let (s, v) = self
            .json(
                reqwest::Method::POST,
                "/api/v1/runners",
                None,
                json!({"token": reg, "name": name, "labels": labels, "isolations": isolations}),
            )
            .await;
        assert_eq!(s, 201, "{v}");
        v["token"].as_str().unwrap().to_string()
    }

    /// Submits a ready plan; returns the run id.
    pub async fn submit_plan(&self, admin: &str, plan: Value, secrets: Value) -> i64 {
        let meta = json!({"plan": plan, "secrets": secrets, "event": "push", "branch": "main"});
        let form = reqwest::multipart::Form::new().text("meta", meta.to_string());
        let resp = self
            .req(reqwest::Method::POST, "/api/v1/runs", Some(admin))
            .multipart(form)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let v: Value = resp.json().await.unwrap();
        assert_eq!(status, 201, "{v}");
        v["id"].as_i64().unwrap()
    }

    pub async fn request_job(&self, token: &str, wait: f64) -> (u16, Value) {
        self.json(
            reqwest::Method::POST,
            "/api/v1/jobs/request",
            Some(token),
            json!({"wait_secs": wait}),
        )
        .await
    }

    pub async fn patch(
        &self,
        job: i64,
        token: &str,
        start: u64,
        data: &[u8],
    ) -> (u16, Value, String) {
        let end = start + data.len() as u64 - 1;
        let resp = self
            .req(
                reqwest::Method::PATCH,
                &format!("/api/v1/jobs/{job}/log"),
                Some(token),
            )
            .header("content-range", format!("{start}-{end}"))
            .body(data.to_vec())
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let range = resp
            .headers()
            .get("range")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        (status, resp.json().await.unwrap_or(Value::Null), range)
    }

    pub async fn finish(&self, job: i64, token: &str, status: &str, log: &[u8]) -> (u16, Value) {
        self.json(
            reqwest::Method::PUT,
            &format!("/api/v1/jobs/{job}"),
            Some(token),
            json!({"status": status, "checksum": checksum(log), "log_size": log.len(),
                   "steps": [{"name": "s1", "exit_code": 0, "signal": null, "oom_killed": false,
                              "timed_out": false, "cancelled": false, "duration_ms": 12}]}),
        )
        .await
    }

    pub async fn run(&self, admin: &str, id: i64) -> Value {
        let (s, v) = self
            .json(
                reqwest::Method::GET,
                &format!("/api/v1/runs/{id}"),
                Some(admin),
                Value::Null,
            )
            .await;
        assert_eq!(s, 200, "{v}");
        v
    }

    pub async fn log(&self, admin: &str, job: i64) -> Vec<u8> {
        let resp = self
            .req(
                reqwest::Method::GET,
                &format!("/api/v1/jobs/{job}/log"),
                Some(admin),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 200);
        resp.bytes().await.unwrap().to_vec()
    }

    /// Polls the run until `pred` holds (or panics after `timeout`).
    pub async fn wait_run(
        &self,
        admin: &str,
        id: i64,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        let start = Instant::now();
        loop {
            let v = self.run(admin, id).await;
            if pred(&v) {
                return v;
            }
            assert!(
                start.elapsed() < timeout,
                "run never reached the expected state: {v:#}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

pub fn checksum(data: &[u8]) -> String {
    use sha2::Digest as _;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(data)))
}

/// A planned step running `script` on the host image in a container.
pub fn step(name: &str, script: &str, secrets: &[&str]) -> Value {
    json!({"name": name, "run": script, "shell": "sh", "image": "host", "isolation": "container",
           "env": {}, "workdir": "/workspace", "timeout": 60, "network": "none", "resources": {},
           "continue_on_error": false, "secrets": secrets})
}

pub fn job(id: &str, needs: &[&str], steps: Vec<Value>) -> Value {
    json!({"id": id, "name": id, "matrix": {}, "needs": needs, "skipped": null,
           "allow_failure": false, "retry": 0, "timeout": 120, "steps": steps})
}

pub fn plan(jobs: Vec<Value>) -> Value {
    json!({"name": "test", "jobs": jobs})
}

/// A plan of one job `job` with one step `step` running `script`.
pub fn one_step_plan(job_id: &str, step_name: &str, script: &str) -> Value {
    plan(vec![job(job_id, &[], vec![step(step_name, script, &[])])])
}

/// The coordinator's job id and the job token of a job payload (a job request's 201 answer).
pub fn lease(payload: &Value) -> (i64, String) {
    let id = payload["id"].as_i64();
    let token = payload["token"].as_str();
    match (id, token) {
        (Some(id), Some(token)) => (id, token.to_string()),
        _ => panic!("not a job payload: {payload}"),
    }
}
