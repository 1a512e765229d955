//! Resource limits and whole-tree kill for one sandbox, on cgroup v1 or v2 behind one trait.
//!
//! Sandbox cgroups are nested under the runner's own cgroup in every hierarchy (read from
//! `/proc/self/cgroup`), so a runner confined by systemd or Kubernetes confines its steps too.
//! On a hybrid host (v1 controllers plus a controller-less v2 tree) limits go through v1 and
//! the kill goes through v2's `cgroup.kill`, which is atomic; without it, v1's freezer.

mod mount;
mod v1;
mod v2;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::executor::Resources;

pub use mount::Hierarchies;

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("cgroup {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("no usable cgroup hierarchy found in /proc/self/mountinfo (need cgroup v2, or v1 with memory, cpu and pids)")]
    NoHierarchy,
    #[error("cgroup {0} still has processes after kill")]
    Busy(PathBuf),
    #[error("cgroup v2 at {0}: the {1} controller is not available; delegate it to the runner's cgroup (systemd: Delegate=yes)")]
    MissingController(PathBuf, &'static str),
}

/// One sandbox's cgroup(s).
pub trait Cgroup: Send + Sync + std::fmt::Debug {
    /// A v2 cgroup directory the first process can be cloned straight into
    /// (`CLONE_INTO_CGROUP`): much cheaper than moving it afterwards, which waits for an RCU
    /// grace period in the kernel (several milliseconds).
    fn clone_target(&self) -> Option<&Path>;
    /// The `cgroup.procs` files a process must be written into to be fully inside this
    /// cgroup, leaving out `placed`, the directory it was already cloned into, if any.
    fn procs_files(&self, placed: Option<&Path>) -> Vec<PathBuf>;
    /// Move `pid` (and so everything it will start) into the cgroup; `placed` is the
    /// directory it was already cloned into, if any.
    fn add(&self, pid: i32, placed: Option<&Path>) -> Result<(), CgroupError> {
        for file in self.procs_files(placed) {
            write(&file, &pid.to_string())?;
        }
        Ok(())
    }
    /// Kill every process in the cgroup.
    fn kill(&self) -> Result<(), CgroupError>;
    /// Whether the kernel's OOM killer killed a process of this cgroup.
    fn oom_killed(&self) -> bool;
    /// Directories to record in the state file, so that `reconcile` can remove them.
    fn dirs(&self) -> Vec<PathBuf>;
    /// Kill what is left, wait until the cgroup is empty, and remove it.
    fn remove(&self) -> Result<(), CgroupError> {
        destroy(&self.dirs())
    }
}

/// Which cgroup layout the host has, and where the runner sits in it.
#[derive(Debug, Clone)]
pub enum CgroupDriver {
    V1(v1::Roots),
    V2(v2::Root),
}

impl CgroupDriver {
    /// Find the hierarchies of this host and the runner's place in them.
    pub fn detect() -> Result<Self, CgroupError> {
        let h = Hierarchies::read()?;
        if let Some(root) = v2::Root::from_hierarchies(&h)? {
            return Ok(CgroupDriver::V2(root));
        }
        v1::Roots::from_hierarchies(&h).map(CgroupDriver::V1)
    }

    /// `cgroup v1` or `cgroup v2`, for the step header.
    pub fn describe(&self) -> &'static str {
        match self {
            CgroupDriver::V1(_) => "cgroup v1",
            CgroupDriver::V2(_) => "cgroup v2",
        }
    }

    /// Every directory a sandbox cgroup called `name` could have (for `reconcile`).
    pub fn dirs_for(&self, name: &str) -> Vec<PathBuf> {
        match self {
            CgroupDriver::V1(roots) => roots.dirs_for(name),
            CgroupDriver::V2(root) => root.dirs_for(name),
        }
    }

    /// Create the cgroup `name` with `resources` applied.
    pub fn create(
        &self,
        name: &str,
        resources: &Resources,
    ) -> Result<Box<dyn Cgroup>, CgroupError> {
        match self {
            CgroupDriver::V1(roots) => Ok(Box::new(roots.create(name, resources)?)),
            CgroupDriver::V2(root) => Ok(Box::new(root.create(name, resources)?)),
        }
    }
}

pub(crate) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> CgroupError + '_ {
    move |source| CgroupError::Io {
        path: path.to_path_buf(),
        source,
    }
}

pub(crate) fn write(path: &Path, value: &str) -> Result<(), CgroupError> {
    std::fs::write(path, value).map_err(io_err(path))
}

/// Kill everything in `dirs` (any mix of v1 and v2 cgroup directories), wait until they are
/// empty and remove them. Used after every step and by `reconcile`, which only has the paths.
pub fn destroy(dirs: &[PathBuf]) -> Result<(), CgroupError> {
    let dirs: Vec<&PathBuf> = dirs.iter().filter(|d| d.exists()).collect();
    if dirs.is_empty() {
        return Ok(());
    }
    for dir in &dirs {
        kill_dir(dir)?;
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    for dir in dirs {
        loop {
            match std::fs::remove_dir(dir) {
                Ok(()) => break,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                    // Processes are still exiting; kill again in case one was forking.
                    kill_dir(dir)?;
                    std::thread::sleep(Duration::from_millis(2));
                }
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                    return Err(CgroupError::Busy(dir.clone()))
                }
                Err(e) => return Err(io_err(dir)(e)),
            }
        }
    }
    Ok(())
}

/// Kill every process in one cgroup directory by the best means it offers.
fn kill_dir(dir: &Path) -> Result<(), CgroupError> {
    if !has_processes(dir) {
        return Ok(());
    }
    let kill = dir.join("cgroup.kill");
    if kill.exists() {
        return write(&kill, "1");
    }
    let freezer = dir.join("freezer.state");
    if freezer.exists() {
        return v1::freeze_and_kill(dir);
    }
    signal_all(dir);
    Ok(())
}

fn has_processes(dir: &Path) -> bool {
    std::fs::read_to_string(dir.join("cgroup.procs"))
        .map(|s| !s.trim().is_empty())
        .unwrap_or(false)
}

/// SIGKILL every process listed in `dir/cgroup.procs` (racy against forks; callers loop).
pub(crate) fn signal_all(dir: &Path) {
    let Ok(procs) = std::fs::read_to_string(dir.join("cgroup.procs")) else {
        return;
    };
    for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// Read a `key value` line from a flat-keyed cgroup file (`memory.events`, `memory.oom_control`).
pub(crate) fn read_key(path: &Path, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines().find_map(|line| {
        let mut it = line.split_whitespace();
        (it.next()? == key).then(|| it.next()?.parse().ok())?
    })
}
