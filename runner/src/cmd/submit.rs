//! `runner submit`: upload a pipeline and its source tree to a coordinator as a new run.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context as _;

use super::remote::out;
use super::remote::{key_value, send_checked, Remote, RemoteArgs};
use super::Context;
use protocol::{SubmitMeta, SubmitResponse};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Pipeline file (YAML; a `.json` file is taken as a ready plan from
    /// `runner exec --dry-run --json`)
    #[arg(default_value = ".runner.yml", value_name = "FILE")]
    pub file: PathBuf,
    /// Source tree to upload as the jobs' workspace [default: the directory holding FILE]
    #[arg(long, value_name = "DIR")]
    pub workspace: Option<PathBuf>,
    /// Event the run is for: push, pull_request, manual
    #[arg(long, default_value = "push")]
    pub event: String,
    /// Branch the run is for
    #[arg(long, default_value = "main")]
    pub branch: String,
    /// Extra variable (repeatable)
    #[arg(long = "var", value_name = "K=V", value_parser = key_value)]
    pub vars: Vec<(String, String)>,
    /// Secret for this run only (repeatable); forgotten by the coordinator when the run ends
    #[arg(long = "secret", value_name = "NAME=VALUE", value_parser = key_value)]
    pub secrets: Vec<(String, String)>,
    /// Print the answer as JSON
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub remote: RemoteArgs,
}

pub async fn run(ctx: &Context, args: Args) -> anyhow::Result<u8> {
    let r = Remote::new(ctx, &args.remote)?;
    let text = std::fs::read_to_string(&args.file)
        .with_context(|| format!("cannot read {}", args.file.display()))?;
    let mut meta = SubmitMeta {
        file: args.file.display().to_string(),
        event: args.event,
        branch: args.branch,
        vars: args.vars.into_iter().collect(),
        secrets: args.secrets.into_iter().collect::<BTreeMap<_, _>>(),
        ..Default::default()
    };
    if args.file.extension().is_some_and(|e| e == "json") {
        meta.plan = Some(
            serde_json::from_str(&text)
                .with_context(|| format!("{} is not a plan (JSON)", args.file.display()))?,
        );
    } else {
        meta.pipeline = Some(text);
    }
    let workspace = match args.workspace {
        Some(w) => w,
        None => match args.file.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => std::env::current_dir()?,
        },
    };
    let tgz = tokio::task::spawn_blocking(move || pack(&workspace)).await??;
    let form = reqwest::multipart::Form::new()
        .part(
            "meta",
            reqwest::multipart::Part::bytes(serde_json::to_vec(&meta)?)
                .mime_str("application/json")?,
        )
        .part(
            "source",
            reqwest::multipart::Part::bytes(tgz).mime_str("application/gzip")?,
        );
    let resp = r
        .post("/api/v1/runs")
        .multipart(form)
        .send()
        .await
        .context("cannot reach the coordinator")?;
    if resp.status() == reqwest::StatusCode::UNPROCESSABLE_ENTITY {
        // The pipeline (or its secrets) is invalid: show every diagnostic, exit 2.
        let body: protocol::ErrorBody = resp.json().await?;
        eprintln!("{}", body.error);
        return Ok(2);
    }
    let resp: SubmitResponse = send_checked(resp).await?.json().await?;
    if args.json {
        out!("{}", serde_json::to_string_pretty(&resp)?);
        return Ok(0);
    }
    out!("run {}", resp.id);
    for j in &resp.jobs {
        out!("  {:<6} {:<10} {}", j.id, j.state.as_str(), j.name);
    }
    Ok(0)
}

/// The directory as a tar.gz (symlinks kept as links).
pub fn pack(dir: &Path) -> anyhow::Result<Vec<u8>> {
    let enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut tar = tar::Builder::new(enc);
    tar.follow_symlinks(false);
    tar.append_dir_all(".", dir)
        .with_context(|| format!("cannot pack the workspace {}", dir.display()))?;
    Ok(tar.into_inner()?.finish()?)
}
