//! The state directory: one subdirectory per live sandbox with a record of everything it holds
//! on the host (process, cgroups, veth, idmapped layers), so that a runner killed with SIGKILL can
//! find and remove it all at its next start ([`reconcile`]).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::{cgroup, network, ContainerError};

const RECORD: &str = "sandbox.json";
/// Next to `sandboxes/`: see [`StateDir::scratch_dir`].
const SCRATCH: &str = "scratch";
/// Mount points of idmapped layers inside a sandbox dir: `lower-0`, `lower-1`, ...
pub const LOWER_PREFIX: &str = "lower-";

/// What one sandbox holds on the host.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SandboxRecord {
    pub name: String,
    pub job_id: String,
    /// The sandbox's first process (pid 1 inside), once cloned.
    pub pid: Option<i32>,
    /// Its start time in clock ticks (`/proc/PID/stat` field 22), so that a recycled pid is
    /// never killed by mistake.
    pub pid_start: Option<u64>,
    pub cgroups: Vec<PathBuf>,
    /// Host end of the bridge veth pair, if any.
    pub veth: Option<String>,
    /// Address lease file of the bridge network, if any.
    pub lease: Option<PathBuf>,
}

/// `<state_dir>/sandboxes`.
#[derive(Debug, Clone)]
pub struct StateDir {
    root: PathBuf,
}

impl StateDir {
    pub fn new(state_dir: &Path) -> Result<Self, ContainerError> {
        let root = state_dir.join("sandboxes");
        std::fs::create_dir_all(&root).map_err(ContainerError::io(&root))?;
        let scratch = state_dir.join(SCRATCH);
        std::fs::create_dir_all(&scratch).map_err(ContainerError::io(&scratch))?;
        // Searchable (not listable) by others: the mapped root of a user-namespaced step must
        // reach its scratch dir and idmapped layers when it mounts the overlay.
        use std::os::unix::fs::PermissionsExt;
        for dir in [state_dir, root.as_path(), scratch.as_path()] {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711))
                .map_err(ContainerError::io(dir))?;
        }
        Ok(StateDir { root })
    }

    /// The (always empty) directory every sandbox mounts its scratch tmpfs on, in its own
    /// mount namespace.
    pub fn scratch_dir(&self) -> PathBuf {
        self.root.with_file_name(SCRATCH)
    }

    pub fn sandbox_dir(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// Write the record (once per sandbox: a torn write after a crash is handled by
    /// `reconcile`, which falls back to the directory name).
    pub fn save(&self, record: &SandboxRecord) -> Result<(), ContainerError> {
        let path = self.sandbox_dir(&record.name).join(RECORD);
        let json = serde_json::to_vec(record).map_err(|e| ContainerError::State(e.to_string()))?;
        std::fs::write(&path, json).map_err(ContainerError::io(&path))
    }

    /// Names of the sandboxes present.
    pub fn list(&self) -> Result<Vec<String>, ContainerError> {
        let mut names = Vec::new();
        let entries = std::fs::read_dir(&self.root).map_err(ContainerError::io(&self.root))?;
        for entry in entries.flatten() {
            if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                names.push(entry.file_name().to_string_lossy().into_owned());
            }
        }
        Ok(names)
    }

    pub fn load(&self, name: &str) -> Option<SandboxRecord> {
        let bytes = std::fs::read(self.sandbox_dir(name).join(RECORD)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Remove everything `name` holds. Used after every step and by `reconcile`.
    pub fn destroy(&self, record: &SandboxRecord) -> Result<(), ContainerError> {
        if let (Some(pid), Some(start)) = (record.pid, record.pid_start) {
            kill_if_same(pid, start);
        }
        cgroup::destroy(&record.cgroups)?;
        if let Some(veth) = &record.veth {
            network::delete_veth(veth);
        }
        if let Some(lease) = &record.lease {
            let _ = std::fs::remove_file(lease);
        }
        let dir = self.sandbox_dir(&record.name);
        // Idmapped layers are mounted under the sandbox dir until the clone: never delete
        // through a mount into an image layer.
        if dir.join(format!("{LOWER_PREFIX}0")).exists() {
            unmount_below(&dir);
        }
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(ContainerError::io(&dir)(e)),
        }
    }

    /// Remove every sandbox recorded here: what a runner killed mid-step left behind.
    /// `cgroups` gives the cgroup directories a sandbox of that name may have, for records a
    /// crash kept from being written.
    pub fn reconcile(
        &self,
        cgroups: &cgroup::CgroupDriver,
        leases: &Path,
    ) -> Result<Vec<String>, ContainerError> {
        let mut removed = Vec::new();
        for name in self.list()? {
            let mut record = self.load(&name).unwrap_or_else(|| SandboxRecord {
                name: name.clone(),
                ..Default::default()
            });
            for dir in cgroups.dirs_for(&name) {
                if !record.cgroups.contains(&dir) {
                    record.cgroups.push(dir);
                }
            }
            if record.veth.is_none() {
                record.veth = Some(network::veth_name(&name)).filter(|v| network::veth_exists(v));
            }
            unmount_below(&self.sandbox_dir(&name));
            self.destroy(&record)?;
            removed.push(name);
        }
        // Address leases name their sandbox; free those whose sandbox is gone.
        if let Ok(entries) = std::fs::read_dir(leases) {
            for entry in entries.flatten() {
                let owner = std::fs::read_to_string(entry.path()).unwrap_or_default();
                if !self.sandbox_dir(owner.trim()).exists() || owner.trim().is_empty() {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
        Ok(removed)
    }
}

/// Start time (clock ticks after boot) of `pid`, if it exists and is not a zombie.
pub fn start_time(pid: i32) -> Option<u64> {
    let stat = crate::procfs::read(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces and parentheses: fields start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    // rest starts at field 3 (state); starttime is field 22.
    if fields.first() == Some(&"Z") {
        return None;
    }
    fields.get(19)?.parse().ok()
}

/// SIGKILL `pid` if it is still the process we started, and wait (briefly) until it is gone.
/// Killing a pid namespace's first process makes the kernel kill everything else in it.
fn kill_if_same(pid: i32, start: u64) {
    if start_time(pid) != Some(start) {
        return;
    }
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while start_time(pid) == Some(start) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Sandbox mounts live in the sandbox's own mount namespace and vanish with it; this only
/// catches mounts left in ours by a bug or an older version.
fn unmount_below(dir: &Path) {
    let Ok(info) = crate::procfs::read("/proc/self/mountinfo") else {
        return;
    };
    let mut points: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(PathBuf::from)
        .filter(|p| p.starts_with(dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for p in points {
        let _ = nix::mount::umount2(&p, nix::mount::MntFlags::MNT_DETACH);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_time_of_self_is_stable() {
        let me = std::process::id() as i32;
        let t = start_time(me).unwrap();
        assert_eq!(start_time(me), Some(t));
        assert_eq!(start_time(i32::MAX), None);
    }

    #[test]
    fn records_round_trip_and_reconcile_removes_dirs() {
        let tmp = tempfile::tempdir().unwrap();
        let state = StateDir::new(tmp.path()).unwrap();
        let rec = SandboxRecord {
            name: "rnr-unit-a".into(),
            job_id: "j".into(),
            ..Default::default()
        };
        std::fs::create_dir_all(state.sandbox_dir(&rec.name).join("upper/x")).unwrap();
        state.save(&rec).unwrap();
        assert_eq!(state.load("rnr-unit-a").unwrap().job_id, "j");
        let driver = cgroup::CgroupDriver::detect().unwrap();
        let removed = state
            .reconcile(&driver, &tmp.path().join("leases"))
            .unwrap();
        assert_eq!(removed, vec!["rnr-unit-a".to_string()]);
        assert!(state.list().unwrap().is_empty());
    }
}
