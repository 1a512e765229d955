//! The executors `runner exec` runs steps with, built from the host and the data dir, with
//! what a killed runner left behind reconciled first.

use crate::cmd::Context;
use crate::jobrun::Executors;

/// Build the executors (after reconciling their leftovers).
pub async fn executors(_ctx: &Context) -> anyhow::Result<Executors> {
    // The container executor (issue 4) is being built on its own branch; it is wired in here
    // when it lands. Until then there is nothing that can run a step in a sandbox, and
    // running steps without one is not an option.
    anyhow::bail!(
        "this build has no container executor yet, so steps cannot run \
         (`runner exec --dry-run` shows the plan)"
    )
}
