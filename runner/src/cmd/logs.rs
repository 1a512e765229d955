//! `runner logs RUN[/JOB] [-f]`: print a job's log, or every job's log of a run in plan order;
//! with `-f`, follow it live until the job ends (a chunked stream from the coordinator).

use std::io::Write as _;

use anyhow::Context as _;
use futures_util::StreamExt as _;

use super::remote::{send, Remote, RemoteArgs};
use super::Context;
use protocol::{JobView, RunView};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// `RUN`, or `RUN/JOB` where JOB is the job's id number, its plan name or its position (1-based)
    #[arg(value_name = "RUN[/JOB]")]
    pub target: String,
    /// Follow the log until the job ends
    #[arg(short, long)]
    pub follow: bool,
    #[command(flatten)]
    pub remote: RemoteArgs,
}

fn pick<'a>(run: &'a RunView, sel: &str) -> anyhow::Result<&'a JobView> {
    if let Ok(n) = sel.parse::<i64>() {
        if let Some(j) = run.jobs.iter().find(|j| j.id == n) {
            return Ok(j);
        }
        if n >= 1 && (n as usize) <= run.jobs.len() {
            return Ok(&run.jobs[n as usize - 1]);
        }
    }
    run.jobs.iter().find(|j| j.name == sel).with_context(|| {
        let names: Vec<&str> = run.jobs.iter().map(|j| j.name.as_str()).collect();
        format!(
            "run {} has no job {sel:?} (jobs: {})",
            run.id,
            names.join(", ")
        )
    })
}

pub async fn run(ctx: &Context, args: Args) -> anyhow::Result<u8> {
    let r = Remote::new(ctx, &args.remote)?;
    let (run_s, job_s) = match args.target.split_once('/') {
        Some((a, b)) => (a, Some(b)),
        None => (args.target.as_str(), None),
    };
    let run_id: i64 = run_s
        .parse()
        .with_context(|| format!("invalid run {run_s:?}: expected a number"))?;
    let run: RunView = send(r.get(&format!("/api/v1/runs/{run_id}")))
        .await?
        .json()
        .await?;
    let jobs: Vec<&JobView> = match job_s {
        Some(sel) => vec![pick(&run, sel)?],
        None => run.jobs.iter().collect(),
    };
    let many = jobs.len() > 1;
    for j in jobs {
        if many {
            println!("==> job {} ({})", j.name, j.id);
        }
        stream(&r, j.id, args.follow).await?;
    }
    Ok(0)
}

/// Copies a job's log to stdout as it arrives.
async fn stream(r: &Remote, job: i64, follow: bool) -> anyhow::Result<()> {
    let resp = send(r.get(&format!("/api/v1/jobs/{job}/log?follow={follow}"))).await?;
    let mut body = resp.bytes_stream();
    let mut out = std::io::stdout().lock();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.context("the log stream broke")?;
        out.write_all(&chunk)?;
        out.flush()?;
    }
    Ok(())
}
