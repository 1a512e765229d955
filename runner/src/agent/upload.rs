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
use crate::protocol::{FinishRequest, JobControl};

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
                    if failures == 1 || failures % 20 == 0 {
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
