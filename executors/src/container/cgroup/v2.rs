//! cgroup v2: one unified tree; controllers must be enabled in the parent's subtree_control.

use std::path::{Path, PathBuf};

use super::{io_err, read_key, write, Cgroup, CgroupError, Hierarchies};
use crate::executor::Resources;

/// Leaf the runner moves itself into when its own cgroup must hand controllers to children
/// (v2 forbids processes in a cgroup that delegates controllers).
const RUNNER_LEAF: &str = "runner.main";

#[derive(Debug, Clone)]
pub struct Root {
    /// The runner's cgroup; sandboxes are created as its children.
    dir: PathBuf,
}

impl Root {
    /// A pure v2 host (no v1 memory hierarchy). `None` on v1 or hybrid hosts. Controllers the
    /// runner's cgroup lacks only fail the steps that ask for that limit, with a clear error.
    pub fn from_hierarchies(h: &Hierarchies) -> Result<Option<Self>, CgroupError> {
        let Some((mount, own)) = &h.v2 else {
            return Ok(None);
        };
        if h.v1.contains_key("memory") {
            return Ok(None);
        }
        let mut dir = mount.join(own.trim_start_matches('/'));
        if dir.ends_with(RUNNER_LEAF) {
            dir.pop();
        }
        Ok(Some(Root { dir }))
    }

    /// Hand the memory, pids and cpu controllers (those we have) to sandbox cgroups.
    fn enable_controllers(&self) -> Result<(), CgroupError> {
        let control = self.dir.join("cgroup.subtree_control");
        let enabled = std::fs::read_to_string(&control).unwrap_or_default();
        let available =
            std::fs::read_to_string(self.dir.join("cgroup.controllers")).unwrap_or_default();
        let missing: Vec<String> = ["memory", "pids", "cpu"]
            .iter()
            .filter(|c| available.split_whitespace().any(|a| a == **c))
            .filter(|c| !enabled.split_whitespace().any(|e| e == **c))
            .map(|c| format!("+{c}"))
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        let missing = missing.join(" ");
        match std::fs::write(&control, &missing) {
            Ok(()) => Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                // Our cgroup holds processes (the runner itself): move them into a leaf.
                let leaf = self.dir.join(RUNNER_LEAF);
                match std::fs::create_dir(&leaf) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                    Err(e) => return Err(io_err(&leaf)(e)),
                }
                let procs = std::fs::read_to_string(self.dir.join("cgroup.procs"))
                    .map_err(io_err(&self.dir))?;
                for pid in procs.lines() {
                    let _ = std::fs::write(leaf.join("cgroup.procs"), pid);
                }
                write(&control, &missing)
            }
            Err(e) => Err(io_err(&control)(e)),
        }
    }

    pub fn dirs_for(&self, name: &str) -> Vec<PathBuf> {
        vec![self.dir.join(name)]
    }

    pub fn create(&self, name: &str, res: &Resources) -> Result<V2Cgroup, CgroupError> {
        if res.memory.is_some() || res.pids.is_some() || res.cpus.is_some() {
            self.enable_controllers()?;
        }
        let dir = self.dir.join(name);
        std::fs::create_dir(&dir).map_err(io_err(&dir))?;
        let cg = V2Cgroup { dir };
        let result = (|| {
            let need = |file: &str, ctrl: &'static str| -> Result<PathBuf, CgroupError> {
                let p = cg.dir.join(file);
                if p.exists() {
                    Ok(p)
                } else {
                    Err(CgroupError::MissingController(cg.dir.clone(), ctrl))
                }
            };
            if let Some(bytes) = res.memory {
                write(&need("memory.max", "memory")?, &bytes.to_string())?;
                let swap = cg.dir.join("memory.swap.max");
                if swap.exists() {
                    write(&swap, "0")?;
                }
            }
            if let Some(cpus) = res.cpus {
                let quota = ((cpus * 100_000.0) as u64).max(1_000);
                write(&need("cpu.max", "cpu")?, &format!("{quota} 100000"))?;
            }
            if let Some(pids) = res.pids {
                write(&need("pids.max", "pids")?, &pids.to_string())?;
            }
            Ok(())
        })();
        match result {
            Ok(()) => Ok(cg),
            Err(e) => {
                let _ = cg.remove();
                Err(e)
            }
        }
    }
}

#[derive(Debug)]
pub struct V2Cgroup {
    dir: PathBuf,
}

impl Cgroup for V2Cgroup {
    fn clone_target(&self) -> Option<&Path> {
        Some(&self.dir)
    }

    fn procs_files(&self, placed: Option<&Path>) -> Vec<PathBuf> {
        if placed == Some(self.dir.as_path()) {
            return Vec::new();
        }
        vec![self.dir.join("cgroup.procs")]
    }

    fn kill(&self) -> Result<(), CgroupError> {
        kill(&self.dir)
    }

    fn oom_killed(&self) -> bool {
        read_key(&self.dir.join("memory.events"), "oom_kill").is_some_and(|n| n > 0)
    }

    fn dirs(&self) -> Vec<PathBuf> {
        vec![self.dir.clone()]
    }
}

fn kill(dir: &Path) -> Result<(), CgroupError> {
    write(&dir.join("cgroup.kill"), "1")
}
