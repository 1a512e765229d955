//! `runner exec` for real: every job of the plan, in DAG order, each step in a sandbox, live on
//! the terminal, then a summary. Exit code 0 when every job succeeded (or was allowed to
//! fail), 1 when one failed, 2 for bad input (secrets), 130 after Ctrl-C.
//!
//! The source tree is `--workspace DIR`, or the directory holding the pipeline file.
//! Each job attempt gets its own copy of it under
//! `<data-dir>/exec/<run>/job<N>-<attempt>/` (or the tree itself with `--bind-workspace`),
//! removed when the job ends; the run's directory is locked while it lives so that the next
//! `runner exec` removes it if this one was killed.

mod interrupt;
mod schedule;
mod secrets;
mod snapshot;
pub(crate) mod terminal;
#[cfg(test)]
mod tests;
mod workspace;

use std::collections::BTreeMap;
use std::io::{IsTerminal as _, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use anyhow::Context as _;
use pipelines::{Isolation, Plan, PlannedJob};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use self::schedule::JobOutcome;
use self::terminal::{Message, Printer, Style};
use self::workspace::{JobDirs, RunDir};
use super::exec::Args;
use super::Context;
use crate::jobrun::{self, Executors, JobRequest, JobStatus};
use crate::mask::Masker;

/// Run `plan` here with the `runner exec` arguments `args`.
pub async fn run_pipeline(ctx: &Context, args: Args, plan: Plan) -> anyhow::Result<u8> {
    let secrets = match secrets::collect(&args.secrets, args.secrets_file.as_deref())
        .and_then(|s| check_secrets(&plan, &s).map(|()| s))
    {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e:#}");
            return Ok(2);
        }
    };
    let source = match &args.workspace {
        Some(dir) => dir.clone(),
        None => match args.file.parent().filter(|p| !p.as_os_str().is_empty()) {
            Some(dir) => dir.to_path_buf(),
            None => PathBuf::from("."),
        },
    };
    let source = source
        .canonicalize()
        .with_context(|| format!("workspace {}", source.display()))?;
    anyhow::ensure!(
        source.is_dir(),
        "workspace {} is not a directory",
        source.display()
    );

    // What runs that died left: their sandboxes first (processes, cgroups, mounts), then
    // their workspaces. Each run keeps its sandbox records in its own run directory, so this
    // never touches a run that is still alive.
    let mut sandboxes = 0;
    let stale = workspace::reconcile(&ctx.paths.runtime_dir, &ctx.paths.data_dir, |dir| {
        let state = dir.join(CONTAINER_STATE);
        if state.exists() {
            sandboxes += jobrun::setup::reconcile_container_state(&state)?.len();
        }
        Ok(())
    })?;
    if stale > 0 {
        tracing::info!("removed {stale} run(s) and {sandboxes} sandbox(es) left by runs that died");
    }
    let run_id = new_run_id();
    let run_dir = RunDir::create(&ctx.paths.runtime_dir, &ctx.paths.data_dir, &run_id)?;
    let source = Arc::new(Source::new(&ctx.paths.data_dir, source));
    // Counting CPUs reads the cgroup's CPU quota (several files): not worth it for one job.
    let parallel = if plan.jobs.len() > 1 {
        parallel(&args)
    } else {
        1
    };
    let executors = async {
        let config = crate::config::Config::load(&ctx.paths.config_file)?;
        let vm_step = vm_step(&plan);
        let built = jobrun::setup::build(
            &ctx.paths,
            &config,
            &run_dir.path.join(CONTAINER_STATE),
            vm_step.is_some(),
        )
        .await?;
        if let (Some((job, step)), None) = (vm_step, &built.executors.vm) {
            anyhow::bail!(
                "step '{step}' of job '{job}' asks for isolation: vm, but the VM executor is \
                 not available here: {} (see `runner doctor`; --isolation container runs every \
                 step in a container instead)",
                built.vm_unavailable.as_deref().unwrap_or("unknown reason")
            );
        }
        Ok(built.executors)
    }
    .await;
    let executors = match executors {
        Ok(e) => e,
        Err(e) => {
            let _ = run_dir.remove();
            return Err(e);
        }
    };

    let cancel = CancellationToken::new();
    let interrupts = interrupt::Interrupts::watch(cancel.clone())?;
    let setup = Setup {
        run_dir,
        run_id,
        source,
        bind: args.bind_workspace,
        parallel,
        style: Style {
            color: use_color(),
            timestamps: args.timestamps,
        },
        secrets,
    };
    let (outcomes, _) = execute(setup, executors, &plan, std::io::stdout(), cancel).await?;
    if let Some(code) = interrupts.exit_code() {
        return Ok(code);
    }
    Ok(exit_code(&plan, &outcomes))
}

/// Every secret the plan names must be given, and all must be long enough to mask.
fn check_secrets(plan: &Plan, secrets: &BTreeMap<String, String>) -> anyhow::Result<()> {
    Masker::new(secrets.iter().map(|(k, v)| (k.as_str(), v.as_str())))?;
    let mut missing: Vec<String> = Vec::new();
    for job in plan.jobs.iter().filter(|j| j.skipped.is_none()) {
        for step in &job.steps {
            for name in &step.secrets {
                if !secrets.contains_key(name) && !missing.contains(name) {
                    missing.push(name.clone());
                }
            }
        }
    }
    if !missing.is_empty() {
        let flags: Vec<String> = missing
            .iter()
            .map(|n| format!("--secret {n}=VALUE"))
            .collect();
        anyhow::bail!(
            "the pipeline needs secret(s) {} that were not given; pass {} or --secrets-file FILE",
            missing.join(", "),
            flags.join(" ")
        );
    }
    Ok(())
}

fn vm_step(plan: &Plan) -> Option<(&str, &str)> {
    plan.jobs
        .iter()
        .filter(|j| j.skipped.is_none())
        .flat_map(|j| j.steps.iter().map(move |s| (j, s)))
        .find(|(_, s)| s.isolation == Isolation::Vm)
        .map(|(j, s)| (j.id.as_str(), s.name.as_str()))
}

/// Colours on a terminal only, and never with `NO_COLOR` set or `TERM=dumb`.
fn use_color() -> bool {
    std::io::stdout().is_terminal()
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
        && std::env::var("TERM").map_or(true, |t| t != "dumb")
}

/// 1 when a job that was not allowed to fail failed, timed out or was cancelled.
fn exit_code(plan: &Plan, outcomes: &[JobOutcome]) -> u8 {
    let failed = plan.jobs.iter().zip(outcomes).any(|(j, o)| {
        matches!(
            o.status,
            JobStatus::Failed | JobStatus::TimedOut | JobStatus::Cancelled
        ) && !j.allow_failure
    });
    u8::from(failed)
}

/// Where, inside a run's directory, the container executor keeps its sandbox records.
const CONTAINER_STATE: &str = "sandboxes";

/// Everything a run needs besides the plan and the executors.
pub(crate) struct Setup {
    /// This run's locked directory (workspaces, sandbox records), and its id.
    pub run_dir: RunDir,
    pub run_id: String,
    pub source: Arc<Source>,
    pub bind: bool,
    pub parallel: usize,
    pub style: Style,
    pub secrets: BTreeMap<String, String>,
}

/// Run the plan, print it live and then the summary to `out`; returns the outcomes and `out`.
pub(crate) async fn execute<W: Write + Send + 'static>(
    setup: Setup,
    executors: Executors,
    plan: &Plan,
    out: W,
    cancel: CancellationToken,
) -> anyhow::Result<(Vec<JobOutcome>, W)> {
    let started = Instant::now();
    let (run_dir, run_id) = (setup.run_dir, setup.run_id);
    let (tx, mut rx) = mpsc::channel::<Message>(1024);
    let style = setup.style;
    let mut printer = Printer::new(out, style, plan);
    // The terminal is written from a thread of its own: a slow terminal then slows the
    // output channel (and so the steps), never the runtime. The thread hands the printer back
    // when every sender is gone; awaiting that (rather than joining the thread from the
    // blocking pool) saves two cross-thread wake-ups at the end of every run.
    let (printed_tx, printed) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        while let Some(m) = rx.blocking_recv() {
            printer.handle(m);
        }
        let _ = printed_tx.send(printer);
    });

    let shared = Arc::new(Shared {
        executors,
        jobs: plan.jobs.clone(),
        run_dir,
        run_id,
        source: setup.source,
        bind: setup.bind,
        secrets: setup.secrets,
        tx: tx.clone(),
        cancel: cancel.clone(),
    });
    let notices = tx.clone();
    let s = shared.clone();
    let outcomes = schedule::run_plan(
        plan,
        setup.parallel,
        &cancel,
        move |n| {
            // The scheduler cannot wait here; a task does, so a notice is never dropped when
            // the terminal is behind (the printer ends only when every sender is gone).
            let tx = notices.clone();
            tokio::spawn(async move {
                let _ = tx.send(Message::Notice(n)).await;
            });
        },
        move |i, attempt| {
            let s = s.clone();
            async move { s.run_job(i, attempt).await }
        },
    )
    .await;
    drop(tx);
    let removed = shared.run_dir.remove();
    drop(shared);
    // Awaited, not blocked on: queued notices still need the runtime to reach the printer.
    // The sender is dropped unsent only if the thread panicked.
    let mut out = printed
        .await
        .map_err(|_| anyhow::anyhow!("the output thread panicked"))?
        .into_inner();
    let _ = out.write_all(terminal::summary(plan, &outcomes, style, started.elapsed()).as_bytes());
    let _ = out.flush();
    if let Err(e) = removed {
        eprintln!("warning: {e:#}");
    }
    Ok((outcomes, out))
}

/// What every job task shares.
struct Shared {
    executors: Executors,
    jobs: Vec<PlannedJob>,
    run_dir: RunDir,
    run_id: String,
    source: Arc<Source>,
    bind: bool,
    secrets: BTreeMap<String, String>,
    tx: mpsc::Sender<Message>,
    cancel: CancellationToken,
}

impl Shared {
    async fn run_job(
        self: Arc<Self>,
        i: usize,
        attempt: u32,
    ) -> (JobStatus, Vec<executors::StepResult>) {
        let info = |text: String| {
            let tx = self.tx.clone();
            async move {
                let _ = tx.send(Message::Info { job: i, text }).await;
            }
        };
        // The job's own directory (removed at the end) and the workspace the steps see.
        let (job_dir, workspace) = if self.bind {
            (None, self.source.path.clone())
        } else {
            match self.fresh_workspace(i, attempt).await {
                Ok((dir, ws, text)) => {
                    info(text).await;
                    (Some(dir), ws)
                }
                Err(e) => {
                    info(format!("error: cannot prepare the workspace: {e:#}")).await;
                    return (JobStatus::Failed, Vec::new());
                }
            }
        };
        let (ev_tx, mut ev_rx) = mpsc::channel(256);
        let tx = self.tx.clone();
        let forward = tokio::spawn(async move {
            while let Some(event) = ev_rx.recv().await {
                let _ = tx.send(Message::Event { job: i, event }).await;
            }
        });
        let req = JobRequest {
            job: self.jobs[i].clone(),
            run_id: format!("{}-{i}-{attempt}", self.run_id),
            workspace: workspace.clone(),
            secrets: self.secrets.clone(),
        };
        let result = jobrun::run_job(&self.executors, req, ev_tx, self.cancel.child_token()).await;
        let _ = forward.await;
        if let Some(dirs) = job_dir {
            if let Err(e) = remove_workspace(dirs.clone()).await {
                info(format!(
                    "warning: cannot remove the workspace {}: {e}",
                    dirs.merged.display()
                ))
                .await;
            }
        }
        match result {
            Ok(r) => r,
            Err(e) => {
                info(format!("error: {e:#}")).await;
                (JobStatus::Failed, Vec::new())
            }
        }
    }

    /// The directories of a new workspace (an overlay snapshot or a copy of the source tree),
    /// the workspace, and a line saying which it is.
    async fn fresh_workspace(&self, i: usize, attempt: u32) -> anyhow::Result<Workspace> {
        let dirs = self.run_dir.job_dirs(i, attempt)?;
        let t = Instant::now();
        let fallback = if self.source.snapshot {
            // A few directories and one mount: made here, on the runtime's thread. Handing
            // them to the blocking pool (a thread to start, two wake-ups) cost more than they
            // do (0.2-0.3 ms of a one-step run, measured A/B), and overlapping them with the
            // executors' start-up did not win it back.
            match snapshot::mount_snapshot(&self.source.path, &dirs) {
                Ok(ws) => {
                    let text = format!(
                        "workspace: overlay snapshot of {} ({})",
                        self.source.path.display(),
                        terminal::duration(t.elapsed())
                    );
                    return Ok((dirs, ws, text));
                }
                Err(e) => format!("no overlay snapshot ({e}), "),
            }
        } else {
            String::new()
        };
        // A copy takes as long as the tree is big: off the runtime.
        let source = self.source.clone();
        tokio::task::spawn_blocking(move || copy_workspace(&source, dirs, &fallback, t)).await?
    }
}

/// Unmount and remove a job's workspace. The usual case of a one-off run (a snapshot the job
/// wrote nothing into) is a handful of syscalls, done here; whatever holds files (a copied
/// tree, or what the job wrote) is removed off the runtime, however big it is.
async fn remove_workspace(dirs: JobDirs) -> std::io::Result<()> {
    if dirs.remove_if_small()? {
        return Ok(());
    }
    tokio::task::spawn_blocking(move || dirs.remove())
        .await
        .map_err(std::io::Error::other)?
}

/// What job workspaces are made from.
pub(crate) struct Source {
    pub path: PathBuf,
    /// Never copied into a workspace: the runner's data dir, if it lies in the source tree.
    exclude: PathBuf,
    /// Try an overlay snapshot of the source before copying it.
    snapshot: bool,
}

impl Source {
    pub fn new(data_dir: &std::path::Path, path: PathBuf) -> Source {
        let exclude = data_dir
            .canonicalize()
            .unwrap_or_else(|_| data_dir.to_path_buf());
        Source {
            snapshot: nix::unistd::geteuid().is_root() && !exclude.starts_with(&path),
            exclude,
            path,
        }
    }
}

/// A job's workspace: its directories, the workspace itself, and a line saying what it is.
type Workspace = (JobDirs, PathBuf, String);

/// Make a workspace in `dirs` as a copy of the source; `why` says why it is not a snapshot.
fn copy_workspace(
    source: &Source,
    dirs: JobDirs,
    why: &str,
    t: Instant,
) -> anyhow::Result<Workspace> {
    // The copy is the workspace itself, on disk.
    let ws = dirs.upper.clone();
    std::fs::create_dir_all(&ws)?;
    let stats = workspace::copy_tree(&source.path, &ws, &source.exclude)
        .with_context(|| format!("copying {} into {}", source.path.display(), ws.display()))?;
    let text = format!(
        "workspace: {why}copied {} files, {} in {}",
        stats.files,
        human_bytes(stats.bytes),
        terminal::duration(t.elapsed())
    );
    Ok((dirs, ws, text))
}

/// How many jobs may run at once: `--parallel`, else the number of CPUs.
fn parallel(args: &Args) -> usize {
    args.parallel
        .or_else(|| std::thread::available_parallelism().ok())
        .map_or(1, |n| n.get())
}

fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// Short and unique enough to name sandboxes and cgroups: `x` + 8 hex digits from the clock
/// and the pid.
fn new_run_id() -> String {
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mixed = nanos ^ (u64::from(std::process::id()) << 32) ^ (nanos >> 29);
    format!("x{:08x}", mixed as u32)
}
