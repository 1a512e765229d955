//! `runner register` / `runner unregister`: trade a registration token for a runner token and
//! keep it in the `[agent]` section of the config file (mode 0600).

use std::path::Path;

use anyhow::Context as _;

use super::remote::list;
use super::remote::out;
use super::Context;
use crate::agent::client::Client;
use crate::config::{AgentConfig, Config};
use protocol::RegisterRequest;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Coordinator URL, e.g. http://127.0.0.1:8420
    #[arg(long, value_name = "URL")]
    pub url: String,
    /// Registration token from `runner token create`
    #[arg(long, env = "RUNNER_REGISTRATION_TOKEN", hide_env_values = true)]
    pub token: String,
    /// Runner name [default: the host name]
    #[arg(long)]
    pub name: Option<String>,
    /// Labels jobs can ask for (comma-separated)
    #[arg(long, value_name = "A,B")]
    pub labels: Option<String>,
    /// Isolations this host accepts: container, vm [default: container]
    #[arg(long, value_name = "container,vm")]
    pub isolations: Option<String>,
    /// Jobs run at once
    #[arg(long, default_value_t = 1)]
    pub concurrent: u32,
}

#[derive(Debug, clap::Args)]
pub struct UnregisterArgs {
    /// Only remove the local config, even if the coordinator cannot be reached
    #[arg(long)]
    pub local_only: bool,
}

fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "runner".into())
}

pub async fn run(ctx: &Context, args: Args) -> anyhow::Result<u8> {
    let cfg_path = &ctx.paths.config_file;
    if let Some(a) = Config::load(cfg_path)?.agent {
        anyhow::bail!(
            "{} already holds a registration (runner {} at {}); run `runner unregister` first",
            cfg_path.display(),
            a.id,
            a.url
        );
    }
    if args.concurrent == 0 {
        anyhow::bail!("--concurrent must be at least 1");
    }
    let name = args.name.unwrap_or_else(hostname);
    let client = Client::new(&args.url)?;
    let resp = client
        .register(&RegisterRequest {
            token: args.token,
            name: name.clone(),
            labels: list(&args.labels),
            isolations: list(&args.isolations),
            concurrent: args.concurrent,
            version: env!("CARGO_PKG_VERSION").into(),
        })
        .await
        .context("registration failed")?;
    let agent = AgentConfig {
        url: args.url.trim_end_matches('/').to_string(),
        id: resp.id,
        token: resp.token,
        name,
        labels: resp.labels,
        isolations: resp.isolations,
        concurrent: args.concurrent,
    };
    write_agent_section(cfg_path, Some(&agent))?;
    out!(
        "registered runner {} ({}); config written to {}",
        agent.id,
        agent.name,
        cfg_path.display()
    );
    Ok(0)
}

pub async fn unregister(ctx: &Context, args: UnregisterArgs) -> anyhow::Result<u8> {
    let cfg_path = &ctx.paths.config_file;
    let Some(agent) = Config::load(cfg_path)?.agent else {
        anyhow::bail!("{} holds no registration", cfg_path.display());
    };
    if !args.local_only {
        Client::new(&agent.url)?
            .unregister(&agent.token)
            .await
            .context(
            "the coordinator did not remove the runner (use --local-only to forget it here anyway)",
        )?;
    }
    write_agent_section(cfg_path, None)?;
    out!(
        "runner {} unregistered; {} updated",
        agent.id,
        cfg_path.display()
    );
    Ok(0)
}

/// Sets (or removes) `[agent]` in the config file, keeping every other section as it is.
fn write_agent_section(path: &Path, agent: Option<&AgentConfig>) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut table: toml::Table = match std::fs::read_to_string(path) {
        Ok(t) => t
            .parse()
            .with_context(|| format!("invalid config file {}", path.display()))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => toml::Table::new(),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    match agent {
        Some(a) => {
            table.insert("agent".into(), toml::Value::try_from(a)?);
        }
        None => {
            table.remove("agent");
        }
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let tmp = path.with_extension("toml.tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    f.write_all(toml::to_string(&table)?.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}
