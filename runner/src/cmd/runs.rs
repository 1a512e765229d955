//! `runner runs ls|show|cancel`.

use super::remote::out;
use super::remote::{send, Remote, RemoteArgs};
use super::Context;
use protocol::RunView;

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// List runs, newest first
    Ls {
        #[arg(long, default_value_t = 20)]
        limit: u32,
        /// Print JSON
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        remote: RemoteArgs,
    },
    /// Show a run's jobs, their states and step results
    Show {
        run: i64,
        /// Print JSON
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        remote: RemoteArgs,
    },
    /// Cancel a run: queued jobs are dropped, running jobs are stopped
    Cancel {
        run: i64,
        #[command(flatten)]
        remote: RemoteArgs,
    },
}

fn print_run(r: &RunView, jobs: bool) {
    out!(
        "run {:<5} {:<10} {} ({} on {})",
        r.id,
        r.state,
        r.name,
        r.event,
        r.branch
    );
    if !jobs {
        return;
    }
    for j in &r.jobs {
        let reason = j
            .failure_reason
            .as_deref()
            .map(|x| format!("  {x}"))
            .unwrap_or_default();
        let attempt = if j.attempt > 1 {
            format!(" (attempt {})", j.attempt)
        } else {
            String::new()
        };
        out!(
            "  job {:<5} {:<10} {}{attempt}{reason}",
            j.id,
            j.state.as_str(),
            j.name
        );
        for s in &j.steps {
            let code = s
                .exit_code
                .map(|c| c.to_string())
                .unwrap_or_else(|| "-".into());
            out!(
                "      step {:<24} exit {code:<4} {:.2}s",
                s.name,
                s.duration_ms as f64 / 1000.0
            );
        }
    }
}

pub async fn run(ctx: &Context, cmd: Command) -> anyhow::Result<u8> {
    match cmd {
        Command::Ls {
            limit,
            json,
            remote,
        } => {
            let r = Remote::new(ctx, &remote)?;
            let runs: Vec<RunView> = send(r.get(&format!("/api/v1/runs?limit={limit}")))
                .await?
                .json()
                .await?;
            if json {
                out!("{}", serde_json::to_string_pretty(&runs)?);
            } else {
                for run in &runs {
                    print_run(run, false);
                }
            }
        }
        Command::Show { run, json, remote } => {
            let r = Remote::new(ctx, &remote)?;
            let v: RunView = send(r.get(&format!("/api/v1/runs/{run}")))
                .await?
                .json()
                .await?;
            if json {
                out!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                print_run(&v, true);
            }
        }
        Command::Cancel { run, remote } => {
            let r = Remote::new(ctx, &remote)?;
            let v: RunView = send(r.post(&format!("/api/v1/runs/{run}/cancel")))
                .await?
                .json()
                .await?;
            print_run(&v, true);
        }
    }
    Ok(0)
}
