//! Where the runner keeps its data (images, state, caches) and finds its config file.
//!
//! As root: `/var/lib/runner`, `/etc/runner/config.toml` and `/run/runner`, as a system
//! service expects. Otherwise the XDG data, config and runtime dirs. `--data-dir`/
//! `RUNNER_DATA_DIR`, `--config`/`RUNNER_CONFIG` and `--runtime-dir`/`RUNNER_RUNTIME_DIR`
//! override them, so several runners can live on one host.
//!
//! The runtime dir holds what only lives as long as a run: locks, sandbox records, mount
//! points. `/run` is a tmpfs on every systemd host, where creating and deleting those costs a
//! few microseconds instead of the tens a journaling filesystem takes (a `runner exec` of one
//! step makes and removes a dozen), and a reboot empties it, as it empties what it describes.

use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
pub struct Paths {
    pub data_dir: PathBuf,
    pub config_file: PathBuf,
    pub runtime_dir: PathBuf,
}

impl Paths {
    pub fn resolve(
        data_dir: Option<PathBuf>,
        config: Option<PathBuf>,
        runtime_dir: Option<PathBuf>,
    ) -> Paths {
        let root = nix::unistd::geteuid().is_root();
        let home = env_home();
        let data_dir = data_dir.unwrap_or_else(|| default_data_dir(root, &home));
        let config_file = config.unwrap_or_else(|| default_config_file(root, &home));
        let runtime_dir =
            runtime_dir.unwrap_or_else(|| default_runtime_dir(root, &home, &data_dir));
        Paths {
            data_dir,
            config_file,
            runtime_dir,
        }
    }

    /// Downloaded images and unpacked layers.
    pub fn images(&self) -> PathBuf {
        self.data_dir.join("images")
    }

    /// Live sandboxes, reconciled at start-up after a crash.
    pub fn state(&self) -> PathBuf {
        self.data_dir.join("state")
    }
}

struct Home {
    home: Option<PathBuf>,
    xdg_data: Option<PathBuf>,
    xdg_config: Option<PathBuf>,
    xdg_runtime: Option<PathBuf>,
}

fn env_home() -> Home {
    let var = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    Home {
        home: var("HOME"),
        xdg_data: var("XDG_DATA_HOME"),
        xdg_config: var("XDG_CONFIG_HOME"),
        xdg_runtime: var("XDG_RUNTIME_DIR"),
    }
}

fn default_runtime_dir(root: bool, h: &Home, data_dir: &Path) -> PathBuf {
    match (root, &h.xdg_runtime) {
        (true, _) => PathBuf::from("/run/runner"),
        (false, Some(dir)) => dir.join("runner"),
        (false, None) => data_dir.join("run"),
    }
}

fn default_data_dir(root: bool, h: &Home) -> PathBuf {
    if root {
        return PathBuf::from("/var/lib/runner");
    }
    xdg(h.xdg_data.as_deref(), h.home.as_deref(), ".local/share").join("runner")
}

fn default_config_file(root: bool, h: &Home) -> PathBuf {
    if root {
        return PathBuf::from("/etc/runner/config.toml");
    }
    xdg(h.xdg_config.as_deref(), h.home.as_deref(), ".config")
        .join("runner")
        .join("config.toml")
}

fn xdg(explicit: Option<&Path>, home: Option<&Path>, fallback: &str) -> PathBuf {
    match (explicit, home) {
        (Some(dir), _) => dir.to_path_buf(),
        (None, Some(home)) => home.join(fallback),
        (None, None) => PathBuf::from("/tmp").join(fallback.trim_start_matches('.')),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn home(data: Option<&str>, config: Option<&str>) -> Home {
        Home {
            home: Some(PathBuf::from("/home/u")),
            xdg_data: data.map(PathBuf::from),
            xdg_config: config.map(PathBuf::from),
            xdg_runtime: None,
        }
    }

    #[test]
    fn root_uses_system_dirs() {
        let h = home(Some("/x"), Some("/y"));
        assert_eq!(default_data_dir(true, &h), PathBuf::from("/var/lib/runner"));
        assert_eq!(
            default_config_file(true, &h),
            PathBuf::from("/etc/runner/config.toml")
        );
    }

    #[test]
    fn user_uses_xdg_then_home() {
        assert_eq!(
            default_data_dir(false, &home(Some("/x"), None)),
            PathBuf::from("/x/runner")
        );
        assert_eq!(
            default_data_dir(false, &home(None, None)),
            PathBuf::from("/home/u/.local/share/runner")
        );
        assert_eq!(
            default_config_file(false, &home(None, None)),
            PathBuf::from("/home/u/.config/runner/config.toml")
        );
    }

    #[test]
    fn explicit_paths_win() {
        let p = Paths::resolve(Some("/d".into()), Some("/c.toml".into()), Some("/r".into()));
        assert_eq!(p.data_dir, PathBuf::from("/d"));
        assert_eq!(p.config_file, PathBuf::from("/c.toml"));
        assert_eq!(p.runtime_dir, PathBuf::from("/r"));
    }

    #[test]
    fn runtime_dir_is_run_for_root_then_xdg_then_the_data_dir() {
        let mut h = home(None, None);
        let data = Path::new("/d");
        assert_eq!(
            default_runtime_dir(true, &h, data),
            PathBuf::from("/run/runner")
        );
        assert_eq!(
            default_runtime_dir(false, &h, data),
            PathBuf::from("/d/run")
        );
        h.xdg_runtime = Some(PathBuf::from("/run/user/1000"));
        assert_eq!(
            default_runtime_dir(false, &h, data),
            PathBuf::from("/run/user/1000/runner")
        );
    }
}
