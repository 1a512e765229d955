//! TEST ONLY, NO SANDBOX: an executor that runs a step's script with `sh -c` straight on the
//! host, in the job's workspace directory. It exists so that the job and pipeline scheduling
//! logic (order, failures, retries, timeouts, cancellation, masking) can be unit-tested
//! without root; everything about isolation is tested with the real executors in `tests/`.
//! Compiled only under `cfg(test)`.

use std::os::unix::process::ExitStatusExt;
use std::process::Stdio;
use std::time::Instant;

use async_trait::async_trait;
use executors::{
    Executor, ExecutorError, JobSpec, LogChunk, PreparedJob, Shell, StepResult, StepSpec, Stream,
};
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Default)]
pub(crate) struct HostShellExecutor;

#[async_trait]
impl Executor for HostShellExecutor {
    fn name(&self) -> &'static str {
        "test-host-shell"
    }

    async fn prepare(&self, job: &JobSpec) -> Result<PreparedJob, ExecutorError> {
        Ok(PreparedJob {
            job: job.clone(),
            description: "test-host-shell (no isolation)".into(),
        })
    }

    async fn run_step(
        &self,
        job: &PreparedJob,
        step: &StepSpec,
        output: mpsc::Sender<LogChunk>,
        cancel: CancellationToken,
    ) -> Result<StepResult, ExecutorError> {
        let started = Instant::now();
        let shell = match step.shell {
            Shell::Sh => "sh",
            Shell::Bash => "bash",
        };
        let mut child = tokio::process::Command::new(shell)
            .arg("-c")
            .arg(&step.script)
            .current_dir(&job.job.workspace)
            .env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin")
            .envs(&step.env)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true)
            .spawn()?;
        let pid = child.id().map(|p| nix::unistd::Pid::from_raw(p as i32));
        let pumps = [
            tokio::spawn(pump(child.stdout.take(), Stream::Stdout, output.clone())),
            tokio::spawn(pump(child.stderr.take(), Stream::Stderr, output)),
        ];
        let (status, timed_out, cancelled) = tokio::select! {
            s = child.wait() => (Some(s?), false, false),
            _ = tokio::time::sleep(step.timeout) => (None, true, false),
            _ = cancel.cancelled() => (None, false, true),
        };
        let status = match status {
            Some(s) => s,
            None => {
                if let Some(pid) = pid {
                    let _ = nix::sys::signal::killpg(pid, nix::sys::signal::Signal::SIGKILL);
                }
                child.wait().await?
            }
        };
        for p in pumps {
            let _ = p.await;
        }
        Ok(StepResult {
            exit_code: status.code(),
            signal: status.signal(),
            oom_killed: false,
            timed_out,
            cancelled,
            duration: started.elapsed(),
        })
    }

    async fn cleanup(&self, _job: &PreparedJob) -> Result<(), ExecutorError> {
        Ok(())
    }
}

async fn pump<R: tokio::io::AsyncRead + Unpin>(
    reader: Option<R>,
    stream: Stream,
    output: mpsc::Sender<LogChunk>,
) {
    let Some(mut reader) = reader else { return };
    let mut buf = vec![0u8; 8192];
    while let Ok(n) = reader.read(&mut buf).await {
        if n == 0 || output.send(LogChunk::new(stream, &buf[..n])).await.is_err() {
            break;
        }
    }
}
