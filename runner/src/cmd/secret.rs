//! `runner secret set|ls|rm`: secrets kept by the coordinator. Values are read from stdin and
//! never printed or returned by any endpoint.

use std::io::Read as _;

use super::remote::out;
use super::remote::{send, Remote, RemoteArgs};
use super::Context;

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Set a secret; the value is read from stdin (one trailing newline is dropped)
    Set {
        name: String,
        #[command(flatten)]
        remote: RemoteArgs,
    },
    /// List secret names
    Ls {
        #[command(flatten)]
        remote: RemoteArgs,
    },
    /// Delete a secret
    Rm {
        name: String,
        #[command(flatten)]
        remote: RemoteArgs,
    },
}

pub async fn run(ctx: &Context, cmd: Command) -> anyhow::Result<u8> {
    match cmd {
        Command::Set { name, remote } => {
            let r = Remote::new(ctx, &remote)?;
            let mut value = String::new();
            std::io::stdin().read_to_string(&mut value)?;
            if value.ends_with('\n') {
                value.pop();
                if value.ends_with('\r') {
                    value.pop();
                }
            }
            send(r.put(&format!("/api/v1/secrets/{name}")).body(value)).await?;
            out!("secret {name} set");
        }
        Command::Ls { remote } => {
            let r = Remote::new(ctx, &remote)?;
            let names: Vec<String> = send(r.get("/api/v1/secrets")).await?.json().await?;
            for n in names {
                out!("{n}");
            }
        }
        Command::Rm { name, remote } => {
            send(Remote::new(ctx, &remote)?.delete(&format!("/api/v1/secrets/{name}"))).await?;
            out!("secret {name} removed");
        }
    }
    Ok(0)
}
