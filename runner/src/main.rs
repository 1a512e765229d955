//! `runner`: runs CI pipelines with every step in a throwaway sandbox.

mod agent;
mod cli;
mod cmd;
mod config;
mod coordinator;
mod jobrun;
mod mask;
mod metrics;
mod paths;
mod protocol;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(cmd::dispatch(cli)) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            // One line with the whole cause chain: what failed and why.
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}
