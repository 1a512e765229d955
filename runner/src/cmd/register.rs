//! `runner register` / `runner unregister`. Not built yet: see the open issue that covers it.

use super::Context;

#[derive(Debug, clap::Args)]
pub struct Args {}

#[derive(Debug, clap::Args)]
pub struct UnregisterArgs {}

pub async fn run(_ctx: &Context, _args: Args) -> anyhow::Result<u8> {
    anyhow::bail!("`runner register` is not implemented yet")
}

pub async fn unregister(_ctx: &Context, _args: UnregisterArgs) -> anyhow::Result<u8> {
    anyhow::bail!("`runner unregister` is not implemented yet")
}
