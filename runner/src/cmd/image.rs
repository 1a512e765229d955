//! `runner image`. Not built yet: see the open issue that covers it.

use super::Context;

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// List
    Ls,
}

pub async fn run(_ctx: &Context, _cmd: Command) -> anyhow::Result<u8> {
    anyhow::bail!("`runner image` is not implemented yet")
}
