//! `runner exec` without `--dry-run`: run the planned jobs here, each step sandboxed.
//! Owned by the local-run work (through `crate::jobrun`); not built yet.

use pipelines::Plan;

use super::exec::Args;
use super::Context;

pub async fn run_pipeline(_ctx: &Context, _args: Args, _plan: Plan) -> anyhow::Result<u8> {
    anyhow::bail!(
        "running a pipeline locally is not implemented yet; use --dry-run to see the plan"
    )
}
