//! `runner exec`: plan a pipeline file and run it here (see `exec_run`).
//!
//! A stand-in until the pipeline-format work (issue 2) lands its own `exec.rs` with
//! `--dry-run`: same argument names and types as that one, so the merge keeps theirs and
//! `exec_run` compiles against it unchanged.

use std::num::NonZeroUsize;
use std::path::PathBuf;

use super::{exec_run, Context};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Pipeline file
    #[arg(value_name = "FILE", default_value = ".runner.yml")]
    pub file: PathBuf,
    /// Only this job and the jobs it needs. Repeat for several
    #[arg(long = "job", short = 'j', value_name = "NAME")]
    pub jobs: Vec<String>,
    /// How many jobs may run at once [default: the number of CPUs]
    #[arg(long, value_name = "N")]
    pub parallel: Option<NonZeroUsize>,
    /// Prefix every output line with the time since its step started
    #[arg(long)]
    pub timestamps: bool,
    /// Source tree the jobs see as their workspace [default: the directory holding FILE]
    #[arg(long, value_name = "DIR")]
    pub workspace: Option<PathBuf>,
    /// Mount the workspace read-write into the steps instead of giving each job a copy
    #[arg(long)]
    pub bind_workspace: bool,
    /// A secret for steps that list it: NAME=VALUE, or NAME to take the value from the
    /// environment variable NAME (keeps it out of `ps`). Repeatable
    #[arg(long = "secret", value_name = "NAME[=VALUE]", value_parser = parse_secret)]
    pub secrets: Vec<(String, String)>,
    /// Read secrets from a file of NAME=VALUE lines
    #[arg(long, value_name = "FILE")]
    pub secrets_file: Option<PathBuf>,
}

fn parse_secret(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) => Ok((k.to_string(), v.to_string())),
        None => std::env::var(s)
            .map(|v| (s.to_string(), v))
            .map_err(|_| format!("--secret {s}: the environment variable {s} is not set")),
    }
}

pub async fn run(ctx: &Context, args: Args) -> anyhow::Result<u8> {
    let opts = pipelines::PlanOptions {
        event: "push".into(),
        jobs: args.jobs.clone(),
        ..Default::default()
    };
    let plan = match pipelines::plan_file(&args.file, &opts) {
        Ok(p) => p,
        Err(diags) => {
            eprintln!("{diags}");
            return Ok(2);
        }
    };
    exec_run::run_pipeline(ctx, args, plan).await
}
