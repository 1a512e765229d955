//! `runner exec`: plan a pipeline file and run it here (see `exec_run`). The dry run and the
//! planning options belong to the pipeline-format work (issue 2); this is the minimum needed
//! to run a plan until that lands.

use std::path::PathBuf;

use super::{exec_run, Context};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Pipeline file
    #[arg(default_value = ".runner.yml")]
    pub file: PathBuf,
    /// Run only this job and what it needs (repeatable)
    #[arg(long = "job", value_name = "NAME")]
    pub jobs: Vec<String>,
    #[command(flatten)]
    pub run: exec_run::RunArgs,
}

pub async fn run(ctx: &Context, args: Args) -> anyhow::Result<u8> {
    let opts = pipelines::PlanOptions {
        event: "manual".into(),
        jobs: args.jobs.clone(),
        ..Default::default()
    };
    let plan = match pipelines::plan_file(&args.file, &opts) {
        Ok(p) => p,
        Err(diags) => {
            for d in &diags.0 {
                eprintln!("{d}");
            }
            return Ok(2);
        }
    };
    exec_run::run_pipeline(ctx, &args, plan).await
}
