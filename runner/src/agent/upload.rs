//! Sends a job's spooled log to the coordinator with `PATCH` + `Content-Range`, from the last
//! acknowledged offset. Output is sent as soon as it is spooled (a patch carries whatever piled
//! up while the previous one was in flight, up to 1 MiB), and at least every 250 ms while output
//! flows. Unreachable coordinator: back off and retry, the spool keeps growing. 416: rewind to
//! the coordinator's length. Nothing is sent twice once acknowledged, and a resend of bytes the
//! coordinator already holds is skipped by it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::client::{Client, ClientError};
use super::spool::Spool;
use crate::metrics::AgentMetrics;
use protocol::{FinishRequest, JobControl};

/// Most bytes per patch.
pub const MAX_PATCH: usize = 1 << 20;
/// Longest a spooled byte waits before a send is attempted.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(250);

/// Shared by the job's tasks: cancellation asked by the coordinator, and whether the
/// coordinator no longer knows the job (token expired: the job was declared lost or removed).
#[derive(Debug, Default)]
pub struct JobCtl {
    pub cancel: CancellationToken,
    pub gone: AtomicBool,
}

impl JobCtl {
    pub fn with_cancel(cancel: CancellationToken) -> JobCtl {
        JobCtl {
            cancel,
            gone: AtomicBool::new(false),
        }
    }

    pub fn obey(&self, control: JobControl) {
        if control == JobControl::Cancel && !self.cancel.is_cancelled() {
            tracing::info!("coordinator asked to cancel the job");
            self.cancel.cancel();
        }
    }

    pub fn lose(&self, why: &str) {
        tracing::warn!(
            reason = why,
            "coordinator no longer accepts this job; cancelling it"
        );
        self.gone.store(true, Ordering::Release);
        self.cancel.cancel();
    }

    pub fn is_gone(&self) -> bool {
        self.gone.load(Ordering::Acquire)
    }
}

/// The coordinator refused the job for good (token expired, or a non-retryable error).
#[derive(Debug, thiserror::Error)]
#[error("job no longer accepted by the coordinator: {0}")]
pub struct Gone(pub String);

pub struct Uploader {
    pub client: Client,
    pub job: i64,
    pub token: String,
    pub spool: Arc<Spool>,
    /// Bytes the coordinator holds.
    pub acked: u64,
    pub ctl: Arc<JobCtl>,
    pub metrics: Arc<AgentMetrics>,
}

fn backoff(attempt: u32) -> Duration {
    Duration::from_millis((100u64 << attempt.min(5)).min(2000))
}

impl Uploader {
    /// Sends everything spooled so far; retries while the coordinator is unreachable.
    pub async fn push(&mut self) -> Result<(), Gone> {
        let mut failures = 0u32;
        loop {
            if self.acked >= self.spool.size() {
                return Ok(());
            }
            let data = self
                .spool
                .read_at(self.acked, MAX_PATCH)
                .map_err(|e| Gone(format!("cannot read the spool: {e}")))?;
            let sent = data.len() as u64;
            match self
                .client
                .patch_log(self.job, &self.token, self.acked, data)
                .await
            {
                Ok(ack) => {
                    failures = 0;
                    if ack.size > self.acked {
                        self.metrics.log_bytes_sent.inc_by(ack.size - self.acked);
                    }
                    tracing::trace!(
                        job = self.job,
                        from = self.acked,
                        sent,
                        now = ack.size,
                        "log sent"
                    );
                    self.acked = ack.size.min(self.spool.size());
                    self.ctl.obey(ack.control);
                }
                Err(ClientError::Rewind(size)) => {
                    tracing::debug!(
                        job = self.job,
                        from = self.acked,
                        to = size,
                        "rewinding log upload"
                    );
                    self.acked = size.min(self.spool.size());
                }
                Err(ClientError::Unauthorized(m)) => {
                    self.ctl.lose(&m);
                    return Err(Gone(m));
                }
                Err(e) if e.retryable() => {
                    failures += 1;
                    if failures == 1 || failures.is_multiple_of(20) {
                        tracing::warn!(job = self.job, error = %e, "log upload failed; spooling and retrying");
                    }
                    tokio::time::sleep(backoff(failures)).await;
                }
                Err(e) => {
                    tracing::error!(job = self.job, error = %e, "log upload refused");
                    return Err(Gone(e.to_string()));
                }
            }
        }
    }

    /// Streams the log while the job runs; returns once `done` fired and all is sent.
    pub async fn live(mut self, done: CancellationToken) -> Result<Uploader, Gone> {
        let spool = self.spool.clone();
        loop {
            let notified = spool.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.spool.size() > self.acked {
                self.push().await?;
                continue;
            }
            if done.is_cancelled() {
                return Ok(self);
            }
            tokio::select! {
                _ = &mut notified => {}
                _ = done.cancelled() => {}
                _ = tokio::time::sleep(FLUSH_INTERVAL) => {}
            }
        }
    }

    /// Sends the rest of the log and the final state, resending as the coordinator asks.
    pub async fn report(mut self, fin: &FinishRequest) -> Result<(), Gone> {
        let mut failures = 0u32;
        loop {
            self.push().await?;
            match self.client.finish(self.job, &self.token, fin).await {
                Ok(()) => return Ok(()),
                Err(ClientError::Rewind(size)) => self.acked = size.min(self.spool.size()),
                Err(ClientError::Resend) => {
                    tracing::warn!(job = self.job, "checksum mismatch; resending the whole log");
                    self.acked = 0;
                }
                Err(ClientError::Unauthorized(m)) => return Err(Gone(m)),
                Err(e) if e.retryable() => {
                    failures += 1;
                    tracing::warn!(job = self.job, error = %e, "final report failed; retrying");
                    tokio::time::sleep(backoff(failures)).await;
                }
                Err(e) => return Err(Gone(e.to_string())),
            }
        }
    }
}

/// Heartbeats the job until `stop`; obeys cancellation carried on the answers.
pub async fn heartbeat(
    client: Client,
    job: i64,
    token: String,
    every: Duration,
    ctl: Arc<JobCtl>,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        match client.heartbeat(job, &token).await {
            Ok(ack) => ctl.obey(ack.control),
            Err(ClientError::Unauthorized(m)) => {
                ctl.lose(&m);
                return;
            }
            Err(e) => tracing::debug!(job, error = %e, "heartbeat failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    //! The uploader against a real coordinator (in-process, on loopback) that is killed and
    //! restarted while a job's log is flowing.

    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::agent::spool::SpoolMeta;
    use coordinator::store::{NewJob, NewRun};
    use coordinator::{api, auth, Coordinator, Settings};
    use protocol::{FinalStatus, JobState};

    /// A coordinator on its own runtime, so dropping the runtime kills it like kill -9 would
    /// (every connection and task gone at once).
    fn start(dir: &std::path::Path, port: u16) -> (tokio::runtime::Runtime, Arc<Coordinator>, u16) {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let (c, port) = rt.block_on(async {
            let c = Coordinator::open(Settings {
                listen: "127.0.0.1:0".parse().unwrap(),
                data_dir: dir.to_path_buf(),
                heartbeat_timeout: Duration::from_secs(30),
                poll_timeout: Duration::from_secs(5),
                max_upload: 1 << 20,
            })
            .await
            .unwrap();
            let l = tokio::net::TcpListener::bind(("127.0.0.1", port))
                .await
                .unwrap();
            let port = l.local_addr().unwrap().port();
            let app = api::router(c.clone());
            tokio::spawn(async move { axum::serve(l, app).await });
            (c, port)
        });
        (rt, c, port)
    }

    fn planned(id: &str) -> pipelines::PlannedJob {
        pipelines::PlannedJob {
            id: id.into(),
            name: id.into(),
            matrix: Default::default(),
            needs: vec![],
            skipped: None,
            allow_failure: false,
            retry: 0,
            timeout: Duration::from_secs(60),
            steps: vec![],
        }
    }

    #[test]
    fn log_survives_a_coordinator_crash_with_nothing_lost_or_doubled() {
        let tmp = tempfile::tempdir().unwrap();
        let cdir = tmp.path().join("coord");
        let (rt1, c, port) = start(&cdir, 0);
        let runner_token = auth::new_token("rnr").unwrap();
        rt1.block_on(async {
            c.store
                .create_runner("r", &auth::hash(&runner_token), &[], &[], 1)
                .await
                .unwrap();
            let run = c
                .store
                .create_run(
                    &NewRun {
                        name: "p".into(),
                        event: "push".into(),
                        branch: "main".into(),
                        secrets: Default::default(),
                    },
                    &[NewJob {
                        spec: planned("a"),
                        state: JobState::Created,
                        reason: None,
                        labels: vec![],
                        isolations: vec![],
                    }],
                )
                .await
                .unwrap();
            c.progress(run).await.unwrap();
        });
        let url = format!("http://127.0.0.1:{port}");
        let agent_rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let client = Client::new(&url).unwrap();
        let payload = agent_rt
            .block_on(client.request_job(&runner_token, Duration::from_secs(2)))
            .unwrap()
            .expect("a job");
        let spool = Arc::new(
            Spool::create(
                tmp.path().join("spool/1.1"),
                &SpoolMeta {
                    url: url.clone(),
                    id: payload.id,
                    attempt: payload.attempt,
                    token: payload.token.clone(),
                },
            )
            .unwrap(),
        );
        let ctl = Arc::new(JobCtl::default());
        let up = Uploader {
            client: client.clone(),
            job: payload.id,
            token: payload.token.clone(),
            spool: spool.clone(),
            acked: 0,
            ctl: ctl.clone(),
            metrics: Arc::new(AgentMetrics::new()),
        };
        let done = CancellationToken::new();
        let live = agent_rt.spawn(up.live(done.clone()));
        // A step writing lines: some before the crash, some while the coordinator is down,
        // some after it is back.
        let write = |from: usize, to: usize| {
            for i in from..to {
                spool
                    .append(format!("line {i:05} {}\n", "x".repeat(i % 50)).as_bytes())
                    .unwrap();
                std::thread::sleep(Duration::from_millis(2));
            }
        };
        write(0, 200);
        std::thread::sleep(Duration::from_millis(300));
        let before = std::fs::metadata(cdir.join(format!("logs/{}.1.log", payload.id)))
            .map(|m| m.len())
            .unwrap_or(0);
        assert!(before > 0, "nothing was streamed before the crash");
        rt1.shutdown_background();
        write(200, 400);
        std::thread::sleep(Duration::from_millis(300));
        let (rt2, c2, _) = start(&cdir, port);
        write(400, 600);
        done.cancel();
        let up = agent_rt.block_on(live).unwrap().unwrap();
        let (checksum, log_size) = spool.checksum().unwrap();
        let fin = FinishRequest {
            status: FinalStatus::Success,
            failure_reason: None,
            steps: vec![],
            checksum: checksum.clone(),
            log_size,
        };
        agent_rt.block_on(up.report(&fin)).unwrap();
        let stored = std::fs::read(cdir.join(format!("logs/{}.1.log", payload.id))).unwrap();
        let spooled = spool.read_at(0, usize::MAX).unwrap();
        assert_eq!(stored.len(), spooled.len());
        assert!(
            stored == spooled,
            "stored log differs from what the step wrote"
        );
        let job = rt2.block_on(c2.store.job(payload.id)).unwrap().unwrap();
        assert_eq!(job.state, JobState::Success);
        assert_eq!(job.checksum.as_deref(), Some(checksum.as_str()));
        assert!(!ctl.is_gone());
        rt2.shutdown_background();
    }
}
