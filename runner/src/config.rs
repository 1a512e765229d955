//! The runner's config file (TOML). Every section is optional; a missing file means defaults.
//! Each part of the runner owns one section.

use std::path::Path;

use anyhow::Context as _;
use serde::Deserialize;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `[agent]`: this host's registration with a coordinator (written by `runner register`).
    #[serde(default)]
    pub agent: Option<AgentConfig>,
}

/// The `[agent]` section.
#[derive(Debug, Clone, Default, serde::Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// Coordinator base URL, e.g. `http://127.0.0.1:8420`.
    pub url: String,
    pub id: i64,
    /// Runner token (secret: the file is mode 0600).
    pub token: String,
    pub name: String,
    #[serde(default)]
    pub labels: Vec<String>,
    #[serde(default)]
    pub isolations: Vec<String>,
    #[serde(default = "default_concurrent")]
    pub concurrent: u32,
}

fn default_concurrent() -> u32 {
    1
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
