//! The runner's config file (TOML). Every section is optional; a missing file means defaults.
//! Each part of the runner owns one section.

use std::path::Path;

use anyhow::Context as _;
use serde::Deserialize;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `[registries]`: insecure registries, credentials, pull policy (see `executors::image::auth`).
    #[serde(default)]
    pub registries: executors::image::RegistryConfig,
}

impl Config {
    /// Read `path`; a file that does not exist gives the defaults.
    pub fn load(path: &Path) -> anyhow::Result<Config> {
        match std::fs::read_to_string(path) {
            Ok(text) => toml::from_str(&text)
                .with_context(|| format!("invalid config file {}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Config::default()),
            Err(e) => Err(e).with_context(|| format!("cannot read config file {}", path.display())),
        }
    }
}
