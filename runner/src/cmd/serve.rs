//! `runner serve`: the coordinator.

use std::net::SocketAddr;
use std::time::Duration;

use super::Context;
use coordinator::{serve, Settings};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Address to listen on (port 0 picks a free one; the URL is written to the data dir)
    #[arg(long, default_value = "127.0.0.1:8420", value_name = "ADDR")]
    pub listen: SocketAddr,
    /// Seconds without a heartbeat after which a running job's runner is declared lost
    #[arg(long, default_value_t = 60.0, value_name = "SECS")]
    pub heartbeat_timeout: f64,
    /// Longest a runner's job request is held open, in seconds
    #[arg(long, default_value_t = 30.0, value_name = "SECS")]
    pub poll_timeout: f64,
    /// Largest accepted source upload, in MiB
    #[arg(long, default_value_t = 512, value_name = "MIB")]
    pub max_upload_mib: usize,
}

fn secs(name: &str, v: f64) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(v)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| anyhow::anyhow!("--{name} must be a positive number of seconds, got {v}"))
}

pub async fn run(ctx: &Context, args: Args) -> anyhow::Result<u8> {
    let settings = Settings {
        listen: args.listen,
        data_dir: ctx.paths.data_dir.join("coordinator"),
        heartbeat_timeout: secs("heartbeat-timeout", args.heartbeat_timeout)?,
        poll_timeout: secs("poll-timeout", args.poll_timeout)?,
        max_upload: args.max_upload_mib.saturating_mul(1 << 20),
    };
    serve(settings).await?;
    Ok(0)
}
