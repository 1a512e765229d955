//! Command-line interface: argument structs only; the work lives in `cmd/`.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::cmd;

/// Run CI pipelines with every step in a throwaway sandbox (container or VM).
#[derive(Debug, Parser)]
#[command(name = "runner", version, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, clap::Args)]
pub struct GlobalArgs {
    /// Data directory (images, state, caches) [default: /var/lib/runner as root, XDG data dir otherwise]
    #[arg(long, global = true, env = "RUNNER_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Config file (TOML) [default: /etc/runner/config.toml as root, XDG config dir otherwise]
    #[arg(long, global = true, env = "RUNNER_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Runtime directory: locks, sandbox records and mount points of live runs, best on tmpfs
    /// [default: /run/runner as root, $XDG_RUNTIME_DIR/runner or <data-dir>/run otherwise]
    #[arg(long, global = true, env = "RUNNER_RUNTIME_DIR", value_name = "DIR")]
    pub runtime_dir: Option<PathBuf>,
}

// Each subcommand's arguments are built only when it is the one invoked (or for help): the
// whole tree is dozens of commands and hundreds of arguments, built on every start otherwise.
#[derive(Debug, Subcommand)]
#[command(defer = true)]
pub enum Command {
    /// Run a pipeline locally, or print its plan with --dry-run
    Exec(cmd::exec::Args),
    /// Check a pipeline file and report every problem found
    Validate(cmd::validate::Args),
    /// Print the JSON Schema of the pipeline format (for editors)
    Schema(cmd::schema::Args),
    /// Manage OCI images in the local store
    #[command(subcommand)]
    Image(cmd::image::Command),
    /// Report what this host can do: namespaces, cgroups, overlayfs, KVM, QEMU
    Doctor(cmd::doctor::Args),
    /// Start the coordinator (HTTP API, job queue, log store)
    Serve(cmd::serve::Args),
    /// Register this runner with a coordinator
    Register(cmd::register::Args),
    /// Remove this runner's registration
    Unregister(cmd::register::UnregisterArgs),
    /// Pull jobs from the coordinator and run them
    Run(cmd::run::Args),
    /// Submit a pipeline run to a coordinator
    Submit(cmd::submit::Args),
    /// Show or follow the log of a run or job
    Logs(cmd::logs::Args),
    /// List and cancel runs on a coordinator
    #[command(subcommand)]
    Runs(cmd::runs::Command),
    /// Create registration tokens (coordinator admin)
    #[command(subcommand)]
    Token(cmd::token::Command),
    /// List, pause and remove registered runners (coordinator admin)
    #[command(subcommand)]
    Runners(cmd::runners::Command),
    /// Manage secrets stored on the coordinator
    #[command(subcommand)]
    Secret(cmd::secret::Command),
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }
}
