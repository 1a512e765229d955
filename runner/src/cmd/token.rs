//! `runner token create`: registration tokens for new runners (coordinator admin).

use super::remote::out;
use super::remote::{list, send, Remote, RemoteArgs};
use super::Context;
use protocol::{TokenRequest, TokenResponse};

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Print a new registration token
    Create {
        /// Labels every runner registered with this token gets (comma-separated)
        #[arg(long, value_name = "A,B")]
        labels: Option<String>,
        /// Isolations runners registered with it may accept: container, vm [default: any]
        #[arg(long, value_name = "container,vm")]
        isolations: Option<String>,
        #[command(flatten)]
        remote: RemoteArgs,
    },
}

pub async fn run(ctx: &Context, cmd: Command) -> anyhow::Result<u8> {
    let Command::Create {
        labels,
        isolations,
        remote,
    } = cmd;
    let r = Remote::new(ctx, &remote)?;
    let body = TokenRequest {
        labels: list(&labels),
        isolations: list(&isolations),
    };
    let t: TokenResponse = send(r.post("/api/v1/tokens").json(&body))
        .await?
        .json()
        .await?;
    out!("{}", t.token);
    Ok(0)
}
