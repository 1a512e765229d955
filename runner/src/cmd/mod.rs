//! One module per subcommand. Each returns the process exit code: 0 success, 1 a job or
//! operation failed, 2 bad input (invalid pipeline, bad arguments).

pub mod doctor;
mod dry_run;
pub mod exec;
pub mod exec_run;
pub mod image;
pub mod logs;
pub mod register;
pub mod remote;
pub mod run;
pub mod runners;
pub mod runs;
pub mod schema;
pub mod secret;
pub mod serve;
pub mod submit;
pub mod token;
pub mod validate;

use crate::cli::{Cli, Command};
use crate::paths::Paths;

/// What every subcommand gets besides its own arguments.
#[derive(Debug, Clone)]
pub struct Context {
    pub paths: Paths,
}

pub async fn dispatch(cli: Cli) -> anyhow::Result<u8> {
    let ctx = Context {
        paths: Paths::resolve(
            cli.global.data_dir,
            cli.global.config,
            cli.global.runtime_dir,
        ),
    };
    match cli.command {
        Command::Exec(a) => exec::run(&ctx, a).await,
        Command::Validate(a) => validate::run(&ctx, a).await,
        Command::Schema(a) => schema::run(&ctx, a).await,
        Command::Image(c) => image::run(&ctx, c).await,
        Command::Doctor(a) => doctor::run(&ctx, a).await,
        Command::Serve(a) => serve::run(&ctx, a).await,
        Command::Register(a) => register::run(&ctx, a).await,
        Command::Unregister(a) => register::unregister(&ctx, a).await,
        Command::Run(a) => run::run(&ctx, a).await,
        Command::Submit(a) => submit::run(&ctx, a).await,
        Command::Logs(a) => logs::run(&ctx, a).await,
        Command::Runs(c) => runs::run(&ctx, c).await,
        Command::Token(c) => token::run(&ctx, c).await,
        Command::Runners(c) => runners::run(&ctx, c).await,
        Command::Secret(c) => secret::run(&ctx, c).await,
    }
}
