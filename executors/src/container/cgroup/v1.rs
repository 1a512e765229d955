//! cgroup v1: one directory per controller hierarchy.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::{io_err, read_key, signal_all, write, Cgroup, CgroupError, Hierarchies};
use crate::executor::Resources;

/// The runner's own cgroup directory in each v1 hierarchy we use.
#[derive(Debug, Clone)]
pub struct Roots {
    memory: PathBuf,
    cpu: PathBuf,
    pids: PathBuf,
    freezer: Option<PathBuf>,
    /// A controller-less v2 tree (hybrid hosts): used for its atomic `cgroup.kill`.
    unified: Option<PathBuf>,
}

fn join(mount: &Path, own: &str) -> PathBuf {
    mount.join(own.trim_start_matches('/'))
}

impl Roots {
    pub fn from_hierarchies(h: &Hierarchies) -> Result<Self, CgroupError> {
        let get = |c: &str| h.v1.get(c).map(|(m, own)| join(m, own));
        let (Some(memory), Some(cpu), Some(pids)) = (get("memory"), get("cpu"), get("pids")) else {
            return Err(CgroupError::NoHierarchy);
        };
        let unified = h.v2.as_ref().map(|(m, own)| join(m, own));
        Ok(Roots {
            memory,
            cpu,
            pids,
            freezer: get("freezer"),
            unified,
        })
    }

    pub fn dirs_for(&self, name: &str) -> Vec<PathBuf> {
        [Some(&self.memory), Some(&self.cpu), Some(&self.pids)]
            .into_iter()
            .chain([self.freezer.as_ref(), self.unified.as_ref()])
            .flatten()
            .map(|root| root.join(name))
            .collect()
    }

    /// Create `name` in the hierarchies the limits need, plus one that can kill the tree.
    /// Hierarchies a step does not need are skipped: every mkdir/rmdir costs step start-up.
    pub fn create(&self, name: &str, res: &Resources) -> Result<V1Cgroup, CgroupError> {
        let mut cg = V1Cgroup::default();
        match self.fill(&mut cg, name, res) {
            Ok(()) => Ok(cg),
            Err(e) => {
                let _ = cg.remove();
                Err(e)
            }
        }
    }

    fn fill(&self, cg: &mut V1Cgroup, name: &str, res: &Resources) -> Result<(), CgroupError> {
        fn mk(cg: &mut V1Cgroup, parent: &Path, name: &str) -> Result<PathBuf, CgroupError> {
            let dir = parent.join(name);
            std::fs::create_dir(&dir).map_err(io_err(&dir))?;
            cg.dirs.push(dir.clone());
            Ok(dir)
        }
        if let Some(u) = &self.unified {
            let dir = mk(cg, u, name)?;
            if dir.join("cgroup.kill").exists() {
                cg.kill_dir = Some(dir);
            } else {
                // Kernel before 5.14: no cgroup.kill; the freezer does the job.
                std::fs::remove_dir(&dir).map_err(io_err(&dir))?;
                cg.dirs.retain(|d| d != &dir);
            }
        }
        if cg.kill_dir.is_none() {
            if let Some(f) = &self.freezer {
                cg.kill_dir = Some(mk(cg, f, name)?);
            }
        }
        if let Some(bytes) = res.memory {
            let dir = mk(cg, &self.memory, name)?;
            write(&dir.join("memory.limit_in_bytes"), &bytes.to_string())?;
            // No swap beyond the limit, when the kernel accounts swap at all.
            let memsw = dir.join("memory.memsw.limit_in_bytes");
            if memsw.exists() {
                write(&memsw, &bytes.to_string())?;
            }
            cg.memory = Some(dir);
        }
        if let Some(cpus) = res.cpus {
            let dir = mk(cg, &self.cpu, name)?;
            let period = 100_000u64;
            let quota = ((cpus * period as f64) as u64).max(1_000);
            write(&dir.join("cpu.cfs_period_us"), &period.to_string())?;
            write(&dir.join("cpu.cfs_quota_us"), &quota.to_string())?;
        }
        if let Some(pids) = res.pids {
            let dir = mk(cg, &self.pids, name)?;
            write(&dir.join("pids.max"), &pids.to_string())?;
        }
        Ok(())
    }
}

#[derive(Debug, Default)]
pub struct V1Cgroup {
    dirs: Vec<PathBuf>,
    memory: Option<PathBuf>,
    kill_dir: Option<PathBuf>,
}

impl Cgroup for V1Cgroup {
    fn clone_target(&self) -> Option<&Path> {
        self.kill_dir
            .as_deref()
            .filter(|d| d.join("cgroup.kill").exists())
    }

    fn procs_files(&self, placed: Option<&Path>) -> Vec<PathBuf> {
        self.dirs
            .iter()
            .filter(|d| Some(d.as_path()) != placed)
            .map(|d| d.join("cgroup.procs"))
            .collect()
    }

    fn kill(&self) -> Result<(), CgroupError> {
        match &self.kill_dir {
            Some(dir) if dir.join("cgroup.kill").exists() => write(&dir.join("cgroup.kill"), "1"),
            Some(dir) => freeze_and_kill(dir),
            None => {
                self.dirs.iter().for_each(|d| signal_all(d));
                Ok(())
            }
        }
    }

    fn oom_killed(&self) -> bool {
        self.memory
            .as_ref()
            .and_then(|d| read_key(&d.join("memory.oom_control"), "oom_kill"))
            .is_some_and(|n| n > 0)
    }

    fn dirs(&self) -> Vec<PathBuf> {
        self.dirs.clone()
    }
}

/// Freeze the cgroup so nothing can fork, SIGKILL every member, thaw so they die.
pub(crate) fn freeze_and_kill(dir: &Path) -> Result<(), CgroupError> {
    let state = dir.join("freezer.state");
    write(&state, "FROZEN")?;
    let deadline = Instant::now() + Duration::from_secs(2);
    while std::fs::read_to_string(&state)
        .map_err(io_err(&state))?
        .trim()
        != "FROZEN"
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(1));
    }
    signal_all(dir);
    write(&state, "THAWED")
}
