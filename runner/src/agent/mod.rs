//! The runner agent (`runner run`): long-polls the coordinator for jobs, runs up to
//! `concurrent` at once through the executors, streams their logs back (spooled to disk
//! first), heartbeats, and reports each job's end with a checksum of its log.
//!
//! Shutdown: SIGTERM, SIGQUIT or a first SIGINT stop polling (a job request already in flight
//! is awaited, and a job it brings is run: a job handed over is never dropped), let running
//! jobs finish, and exit. A second SIGINT cancels the running jobs, which are reported
//! `cancelled`.

pub mod client;
pub mod job;
pub mod render;
pub mod spool;
pub mod upload;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::config::AgentConfig;
use crate::jobrun::Executors;
use crate::metrics::AgentMetrics;
use client::{Client, ClientError};

pub struct Agent {
    pub cfg: AgentConfig,
    pub client: Client,
    pub executors: Executors,
    pub spool_dir: PathBuf,
    pub work_dir: PathBuf,
    pub metrics: Arc<AgentMetrics>,
    /// How long each job request may be held by the coordinator.
    pub poll_wait: Duration,
}

impl Agent {
    pub fn new(
        cfg: AgentConfig,
        executors: Executors,
        data_dir: &std::path::Path,
        poll_wait: Duration,
    ) -> anyhow::Result<Agent> {
        use std::os::unix::fs::DirBuilderExt as _;
        let base = data_dir.join("agent");
        let spool_dir = base.join("spool");
        let work_dir = base.join("work");
        for d in [&spool_dir, &work_dir] {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(d)
                .with_context(|| format!("cannot create {}", d.display()))?;
        }
        Ok(Agent {
            client: Client::new(&cfg.url)?,
            cfg,
            executors,
            spool_dir,
            work_dir,
            metrics: Arc::new(AgentMetrics::new()),
            poll_wait,
        })
    }

    /// Jobs left by a previous agent process: a finished job whose report did not get through
    /// is reported now; a job that was still running is reported failed (it was interrupted),
    /// and its workspace removed.
    async fn reconcile(
        self: &Arc<Self>,
        jobs: &mut tokio::task::JoinSet<()>,
    ) -> anyhow::Result<()> {
        let mut left = Vec::new();
        for entry in std::fs::read_dir(&self.spool_dir)? {
            let dir = entry?.path();
            match spool::Spool::open(dir.clone()) {
                Ok((meta, s)) => left.push((meta, Arc::new(s))),
                Err(e) => {
                    tracing::warn!(dir = %dir.display(), error = %e, "unreadable spool; removing it");
                    let _ = std::fs::remove_dir_all(&dir);
                }
            }
        }
        // Workspaces with no spool are leftovers of jobs already reported.
        for entry in std::fs::read_dir(&self.work_dir)? {
            let dir = entry?.path();
            let key = dir
                .file_name()
                .map(|n| n.to_os_string())
                .unwrap_or_default();
            if !self.spool_dir.join(&key).exists() {
                tracing::info!(dir = %dir.display(), "removing a leftover workspace");
                let _ = std::fs::remove_dir_all(&dir);
            }
        }
        for (meta, s) in left {
            let me = self.clone();
            jobs.spawn(async move {
                let fin = s.read_final().unwrap_or_else(|| {
                    let note = "\nrunner: the agent restarted while this job ran; the job was interrupted\n";
                    let _ = s.append(note.as_bytes());
                    job::finish_request(
                        &s,
                        protocol::FinalStatus::Failed,
                        Some("runner restarted: the job was interrupted".into()),
                        vec![],
                    )
                });
                tracing::info!(
                    job = meta.id,
                    attempt = meta.attempt,
                    "reporting a job left by the previous agent"
                );
                let client = match Client::new(&meta.url) {
                    Ok(c) => c,
                    Err(_) => me.client.clone(),
                };
                let up = upload::Uploader {
                    client,
                    job: meta.id,
                    token: meta.token.clone(),
                    spool: s.clone(),
                    acked: 0,
                    ctl: Arc::new(upload::JobCtl::default()),
                    metrics: me.metrics.clone(),
                };
                // Resume from what the coordinator holds rather than from 0.
                let mut up = up;
                if let Ok(ack) = up.client.heartbeat(meta.id, &meta.token).await {
                    up.acked = ack.size.min(s.size());
                }
                match up.report(&fin).await {
                    Ok(()) => tracing::info!(job = meta.id, "left-over job reported"),
                    Err(e) => {
                        tracing::info!(job = meta.id, error = %e, "left-over job not reported")
                    }
                }
                let _ = std::fs::remove_dir_all(
                    me.work_dir.join(s.dir().file_name().unwrap_or_default()),
                );
                let _ = s.remove();
            });
        }
        Ok(())
    }

    /// Polls and runs jobs until a shutdown signal; returns when every job has been reported.
    pub async fn run(self: Arc<Self>) -> anyhow::Result<()> {
        let mut jobs = tokio::task::JoinSet::new();
        self.reconcile(&mut jobs).await?;
        let stopping = CancellationToken::new();
        let hard_cancel = CancellationToken::new();
        spawn_signal_handler(stopping.clone(), hard_cancel.clone())?;
        let slots = Arc::new(Semaphore::new(self.cfg.concurrent.max(1) as usize));
        let mut failures = 0u32;
        println!(
            "runner {} (id {}) polling {} for jobs, up to {} at once",
            self.cfg.name, self.cfg.id, self.cfg.url, self.cfg.concurrent
        );
        tracing::info!(url = %self.cfg.url, id = self.cfg.id, "agent started");
        loop {
            while jobs.try_join_next().is_some() {}
            let permit = tokio::select! {
                p = slots.clone().acquire_owned() => p?,
                _ = stopping.cancelled() => break,
            };
            if stopping.is_cancelled() {
                break;
            }
            // Not raced against `stopping`: dropping a request in flight could lose a job the
            // coordinator is handing over right now.
            match self
                .client
                .request_job(&self.cfg.token, self.poll_wait)
                .await
            {
                Ok(Some(payload)) => {
                    failures = 0;
                    tracing::info!(job = payload.id, attempt = payload.attempt, name = %payload.job.id, "job received");
                    let me = self.clone();
                    let hc = hard_cancel.clone();
                    jobs.spawn(async move {
                        job::run(me, payload, hc).await;
                        drop(permit);
                    });
                }
                Ok(None) => failures = 0,
                Err(ClientError::Unauthorized(m)) => {
                    stopping.cancel();
                    while jobs.join_next().await.is_some() {}
                    anyhow::bail!(
                        "the coordinator rejected this runner's token ({m}); register again with `runner register`"
                    );
                }
                Err(e) => {
                    failures += 1;
                    if failures == 1 || failures.is_multiple_of(30) {
                        tracing::warn!(error = %e, "job request failed; retrying");
                    }
                    let pause = Duration::from_millis((250u64 << failures.min(3)).min(2000));
                    tokio::select! {
                        _ = tokio::time::sleep(pause) => {}
                        _ = stopping.cancelled() => {}
                    }
                }
            }
        }
        let n = jobs.len();
        if n > 0 {
            println!(
                "stopping: waiting for {n} running job(s) to finish (Ctrl-C again cancels them)"
            );
        }
        while jobs.join_next().await.is_some() {}
        tracing::info!("agent stopped");
        Ok(())
    }
}

/// SIGTERM/SIGQUIT/SIGINT: stop polling. A second SIGINT: cancel running jobs.
fn spawn_signal_handler(
    stopping: CancellationToken,
    hard_cancel: CancellationToken,
) -> anyhow::Result<()> {
    let mut term = signal(SignalKind::terminate())?;
    let mut quit = signal(SignalKind::quit())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::spawn(async move {
        let mut ints = 0;
        loop {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM: finishing running jobs, then exiting"),
                _ = quit.recv() => tracing::info!("SIGQUIT: finishing running jobs, then exiting"),
                _ = int.recv() => {
                    ints += 1;
                    if ints >= 2 {
                        tracing::warn!("second SIGINT: cancelling running jobs");
                        eprintln!("cancelling running jobs");
                        hard_cancel.cancel();
                    } else {
                        eprintln!("stopping after running jobs finish (Ctrl-C again to cancel them)");
                    }
                }
            }
            stopping.cancel();
        }
    });
    Ok(())
}
