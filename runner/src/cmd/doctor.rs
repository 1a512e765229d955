//! `runner doctor`. Not built yet: see the open issue that covers it.

use super::Context;

#[derive(Debug, clap::Args)]
pub struct Args {}

pub async fn run(_ctx: &Context, _args: Args) -> anyhow::Result<u8> {
    anyhow::bail!("`runner doctor` is not implemented yet")
}
