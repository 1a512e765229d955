//! `runner runners ls|pause|resume|rm` (coordinator admin).

use super::remote::out;
use super::remote::{send, Remote, RemoteArgs};
use super::Context;
use protocol::RunnerView;

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// List registered runners
    Ls {
        /// Print JSON
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        remote: RemoteArgs,
    },
    /// Stop giving jobs to a runner (running jobs continue)
    Pause {
        id: i64,
        #[command(flatten)]
        remote: RemoteArgs,
    },
    /// Give jobs to a paused runner again
    Resume {
        id: i64,
        #[command(flatten)]
        remote: RemoteArgs,
    },
    /// Remove a runner (its token stops working)
    Rm {
        id: i64,
        #[command(flatten)]
        remote: RemoteArgs,
    },
}

pub async fn run(ctx: &Context, cmd: Command) -> anyhow::Result<u8> {
    match cmd {
        Command::Ls { json, remote } => {
            let r = Remote::new(ctx, &remote)?;
            let list: Vec<RunnerView> = send(r.get("/api/v1/runners")).await?.json().await?;
            if json {
                out!("{}", serde_json::to_string_pretty(&list)?);
                return Ok(0);
            }
            out!(
                "{:<5} {:<20} {:<8} {:<4} {:<8} {:<18} LABELS",
                "ID",
                "NAME",
                "STATUS",
                "JOBS",
                "CONCUR",
                "ISOLATIONS"
            );
            for x in list {
                out!(
                    "{:<5} {:<20} {:<8} {:<4} {:<8} {:<18} {}",
                    x.id,
                    x.name,
                    x.status,
                    x.running_jobs,
                    x.concurrent,
                    x.isolations.join(","),
                    x.labels.join(",")
                );
            }
        }
        Command::Pause { id, remote } => {
            send(Remote::new(ctx, &remote)?.post(&format!("/api/v1/runners/{id}/pause"))).await?;
            out!("runner {id} paused");
        }
        Command::Resume { id, remote } => {
            send(Remote::new(ctx, &remote)?.post(&format!("/api/v1/runners/{id}/resume"))).await?;
            out!("runner {id} resumed");
        }
        Command::Rm { id, remote } => {
            send(Remote::new(ctx, &remote)?.delete(&format!("/api/v1/runners/{id}"))).await?;
            out!("runner {id} removed");
        }
    }
    Ok(0)
}
