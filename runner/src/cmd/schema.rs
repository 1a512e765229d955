//! `runner schema`: print the JSON Schema of the pipeline format, for editors (e.g. the YAML
//! language server: `# yaml-language-server: $schema=pipeline.schema.json`).

use super::Context;

#[derive(Debug, clap::Args)]
pub struct Args {}

pub async fn run(_ctx: &Context, _args: Args) -> anyhow::Result<u8> {
    println!(
        "{}",
        serde_json::to_string_pretty(&pipelines::schema::schema())?
    );
    Ok(0)
}
