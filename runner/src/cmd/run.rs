//! `runner run`: the agent.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use super::Context;
use crate::agent::Agent;
use crate::config::Config;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// How long each job request may wait on the coordinator, in seconds
    #[arg(long, default_value_t = 30.0, value_name = "SECS")]
    pub poll_wait: f64,
    /// Serve Prometheus metrics on this address (`/metrics`)
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<SocketAddr>,
}

pub async fn run(ctx: &Context, args: Args) -> anyhow::Result<u8> {
    let cfg = Config::load(&ctx.paths.config_file)?;
    let Some(agent_cfg) = cfg.agent.clone() else {
        anyhow::bail!(
            "this host is not registered ({} has no [agent] section): run `runner register --url URL --token TOKEN` first",
            ctx.paths.config_file.display()
        );
    };
    let poll_wait = Duration::try_from_secs_f64(args.poll_wait)
        .map_err(|_| anyhow::anyhow!("--poll-wait must be a non-negative number of seconds"))?;
    // The same executors as `runner exec`; sandboxes a killed agent left are removed first.
    let want_vm = agent_cfg.isolations.iter().any(|i| i == "vm");
    // One agent per data dir: its container state dir is its own, so reconciling it at start-up
    // removes only what a previous (killed) agent left. The lock makes that true: a second
    // agent on the same data dir would otherwise tear down the first one's live sandboxes.
    let _agent_lock = lock_agent(&ctx.paths.state())?;
    let container_state = ctx.paths.state().join("agent-container");
    let built = crate::jobrun::setup::build(&ctx.paths, &cfg, &container_state, want_vm).await?;
    if !built.reconciled.is_empty() {
        tracing::info!(sandboxes = ?built.reconciled, "removed sandboxes a previous agent left");
    }
    if let Some(why) = built.vm_unavailable {
        // Jobs with VM steps then fail with a clear reason in their log.
        tracing::warn!(reason = %why, "no VM executor on this host");
    }
    let executors = built.executors;
    let agent = Arc::new(Agent::new(
        agent_cfg,
        executors,
        &ctx.paths.data_dir,
        poll_wait,
    )?);
    if let Some(addr) = args.metrics_listen {
        let m = agent.metrics.clone();
        tokio::spawn(async move {
            if let Err(e) = crate::metrics::serve_agent(addr, m).await {
                tracing::error!(error = %e, "agent metrics server failed");
            }
        });
    }
    agent.run().await?;
    Ok(0)
}

/// Hold an exclusive lock on `<state>/agent.lock` for as long as the agent runs.
fn lock_agent(state: &std::path::Path) -> anyhow::Result<nix::fcntl::Flock<std::fs::File>> {
    use anyhow::Context as _;
    std::fs::create_dir_all(state)
        .with_context(|| format!("cannot create the state dir {}", state.display()))?;
    let path = state.join("agent.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
        Ok(lock) => Ok(lock),
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => anyhow::bail!(
            "another `runner run` is already using the data dir {} (give each agent its own --data-dir)",
            state.parent().unwrap_or(state).display()
        ),
        Err((_, e)) => Err(e).with_context(|| format!("cannot lock {}", path.display())),
    }
}
