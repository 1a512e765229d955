//! One job on the agent, start to end: spool, workspace with the source tree, the job runner,
//! live upload and heartbeats, the final report, clean-up.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::client::Client;
use super::render::Renderer;
use super::spool::{Spool, SpoolMeta};
use super::upload::{heartbeat, JobCtl, Uploader};
use super::Agent;
use crate::jobrun::{self, JobEvent, JobStatus};
use protocol::{FinalStatus, FinishRequest, JobPayload, StepReport};

/// Runs a job handed over by the coordinator. `hard_cancel` fires on a second SIGINT.
pub async fn run(agent: Arc<Agent>, p: JobPayload, hard_cancel: CancellationToken) {
    let key = format!("{}.{}", p.id, p.attempt);
    let span = tracing::info_span!("job", id = p.id, attempt = p.attempt, name = %p.job.id);
    let _e = span.enter();
    drop(_e);
    let meta = SpoolMeta {
        url: agent.cfg.url.clone(),
        id: p.id,
        attempt: p.attempt,
        token: p.token.clone(),
    };
    let spool = match Spool::create(agent.spool_dir.join(&key), &meta) {
        Ok(s) => Arc::new(s),
        Err(e) => {
            tracing::error!(job = p.id, error = %e, "cannot create the spool; the job will be reported lost");
            return;
        }
    };
    agent.metrics.jobs_running.inc();
    let ctl = Arc::new(JobCtl::with_cancel(hard_cancel.child_token()));
    let stop_hb = CancellationToken::new();
    tokio::spawn(heartbeat(
        agent.client.clone(),
        p.id,
        p.token.clone(),
        Duration::from_millis(p.heartbeat_interval_ms.max(100)),
        ctl.clone(),
        stop_hb.clone(),
    ));
    let uploader = Uploader {
        client: agent.client.clone(),
        job: p.id,
        token: p.token.clone(),
        spool: spool.clone(),
        acked: 0,
        ctl: ctl.clone(),
        metrics: agent.metrics.clone(),
    };
    let done = CancellationToken::new();
    let live = tokio::spawn(uploader.live(done.clone()));

    let workspace = agent.work_dir.join(&key);
    let fin = execute(&agent, &p, &workspace, &spool, &ctl).await;
    done.cancel();
    let fin = match fin {
        Ok(f) => f,
        Err(e) => {
            let _ = spool.append(format!("\nrunner: {e:#}\n").as_bytes());
            finish_request(&spool, FinalStatus::Failed, Some(format!("{e:#}")), vec![])
        }
    };
    if let Err(e) = spool.write_final(&fin) {
        tracing::warn!(job = p.id, error = %e, "cannot record the final state in the spool");
    }
    let result = match live.await {
        Ok(Ok(up)) => up.report(&fin).await,
        Ok(Err(gone)) => Err(gone),
        Err(e) => Err(super::upload::Gone(format!("upload task failed: {e}"))),
    };
    stop_hb.cancel();
    match result {
        Ok(()) => {
            tracing::info!(job = p.id, status = ?fin.status, bytes = fin.log_size, "job reported")
        }
        Err(e) => tracing::warn!(job = p.id, error = %e, "job not reported"),
    }
    let status = format!("{:?}", fin.status).to_lowercase();
    agent
        .metrics
        .jobs_finished
        .get_or_create(&vec![("status".into(), status)])
        .inc();
    agent.metrics.jobs_running.dec();
    remove_dir(&workspace);
    let _ = spool.remove();
}

fn remove_dir(dir: &Path) {
    if let Err(e) = std::fs::remove_dir_all(dir) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot remove the job's workspace");
        }
    }
}

pub fn finish_request(
    spool: &Spool,
    status: FinalStatus,
    failure_reason: Option<String>,
    steps: Vec<StepReport>,
) -> FinishRequest {
    let (checksum, log_size) = spool
        .checksum()
        .unwrap_or_else(|_| (String::new(), spool.size()));
    FinishRequest {
        status,
        failure_reason,
        steps,
        checksum,
        log_size,
    }
}

/// Fetches the source, runs the job, and turns the outcome into a final report.
async fn execute(
    agent: &Agent,
    p: &JobPayload,
    workspace: &Path,
    spool: &Arc<Spool>,
    ctl: &Arc<JobCtl>,
) -> anyhow::Result<FinishRequest> {
    prepare_workspace(&agent.client, p, workspace.to_path_buf()).await?;
    let (tx, mut rx) = mpsc::channel::<JobEvent>(256);
    let mut renderer = Renderer::new(&p.job, spool.clone());
    let metrics = agent.metrics.clone();
    let writer = tokio::spawn(async move {
        while let Some(ev) = rx.recv().await {
            if let JobEvent::StepFinished { result, .. } = &ev {
                metrics.step_seconds.observe(result.duration.as_secs_f64());
            }
            renderer.render(ev)?;
        }
        Ok::<_, std::io::Error>(())
    });
    let req = jobrun::JobRequest {
        job: p.job.clone(),
        run_id: format!("r{}-j{}-a{}", p.run_id, p.id, p.attempt),
        workspace: workspace.to_path_buf(),
        secrets: p.secrets.clone(),
    };
    let outcome = jobrun::run_job(&agent.executors, req, tx, ctl.cancel.clone()).await;
    writer.await??;
    let (status, results) = outcome?;
    tracing::info!(
        job = p.id,
        status = status.as_str(),
        steps = results.len(),
        "job ran"
    );
    let steps: Vec<StepReport> = results
        .iter()
        .enumerate()
        .map(|(i, r)| StepReport {
            name: p
                .job
                .steps
                .get(i)
                .map(|s| s.name.clone())
                .unwrap_or_default(),
            exit_code: r.exit_code,
            signal: r.signal,
            oom_killed: r.oom_killed,
            timed_out: r.timed_out,
            cancelled: r.cancelled,
            duration_ms: r.duration.as_millis() as u64,
        })
        .collect();
    let (status, reason) = match status {
        JobStatus::Success | JobStatus::Skipped => (FinalStatus::Success, None),
        JobStatus::Failed => (FinalStatus::Failed, failed_step(&steps)),
        JobStatus::TimedOut => (FinalStatus::TimedOut, Some("timed out".into())),
        JobStatus::Cancelled if ctl.is_gone() => (
            FinalStatus::Cancelled,
            Some("the coordinator no longer accepts the job".into()),
        ),
        JobStatus::Cancelled => (FinalStatus::Cancelled, Some("cancelled".into())),
    };
    Ok(finish_request(spool, status, reason, steps))
}

fn failed_step(steps: &[StepReport]) -> Option<String> {
    let s = steps
        .iter()
        .find(|s| s.exit_code != Some(0) || s.timed_out || s.oom_killed || s.cancelled)?;
    Some(match (s.exit_code, s.signal) {
        (Some(c), _) => format!("step `{}` exited with {c}", s.name),
        (None, Some(sig)) => format!("step `{}` killed by signal {sig}", s.name),
        _ => format!("step `{}` failed", s.name),
    })
}

/// Creates the workspace and unpacks the run's source tree into it.
async fn prepare_workspace(client: &Client, p: &JobPayload, dir: PathBuf) -> anyhow::Result<()> {
    use anyhow::Context as _;
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    std::fs::create_dir_all(&dir)
        .with_context(|| format!("cannot create the workspace {}", dir.display()))?;
    let Some(tgz) = client
        .source(p.id, &p.token)
        .await
        .context("cannot download the source tree")?
    else {
        return Ok(());
    };
    tokio::task::spawn_blocking(move || {
        let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(&tgz[..]));
        archive.set_preserve_permissions(true);
        archive.set_overwrite(true);
        // `unpack` refuses entries that would land outside `dir` (`..`, absolute paths).
        archive
            .unpack(&dir)
            .with_context(|| format!("cannot unpack the source tree into {}", dir.display()))
    })
    .await?
}
