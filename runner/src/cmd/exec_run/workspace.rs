//! Where `runner exec` keeps a run's job workspaces, and how the source tree gets into them.
//!
//! Each run owns `<data-dir>/exec/<run-id>/`, holding an exclusive `flock` on its `lock` file
//! for as long as it lives. At start-up every run directory whose lock can be taken belongs to
//! a runner that died (even by SIGKILL) and is removed: nothing survives a killed runner.
//!
//! The workspace is an overlay snapshot of the source tree where possible (see `snapshot`).
//! Otherwise the source tree is copied whole (`.git`, `target/`, everything: a pipeline sees what the
//! user sees) with `std::fs::copy`, which uses `copy_file_range(2)`: the kernel copies without
//! a round trip through user space and shares extents (a reflink) on filesystems that can
//! (btrfs, XFS, NFS 4.2). Modes and modification times are kept so incremental build tools
//! are not fooled; symlinks are copied as symlinks; sockets, FIFOs and devices are skipped.

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::{symlink, FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use nix::fcntl::{Flock, FlockArg};

/// The run's directory under the data dir, locked while this process lives.
#[derive(Debug)]
pub struct RunDir {
    pub path: PathBuf,
    /// Holds the lock; released when dropped (or when the process dies).
    _lock: Flock<File>,
}

impl RunDir {
    pub fn create(data_dir: &Path, run_id: &str) -> anyhow::Result<RunDir> {
        let path = exec_root(data_dir).join(run_id);
        fs::create_dir_all(&path)
            .with_context(|| format!("cannot create the run directory {}", path.display()))?;
        let Some(lock) = try_lock(File::create(path.join("lock"))?)? else {
            anyhow::bail!(
                "run directory {} is locked by another runner",
                path.display()
            );
        };
        Ok(RunDir { path, _lock: lock })
    }

    /// A fresh, empty directory for one attempt of one job.
    pub fn job_dir(&self, job_index: usize, attempt: u32) -> anyhow::Result<PathBuf> {
        let dir = self.path.join(format!("job{job_index}-{attempt}"));
        if dir.exists() {
            fs::remove_dir_all(&dir)?;
        }
        fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create the job workspace {}", dir.display()))?;
        Ok(dir)
    }

    /// Remove the run's directory (the lock goes with it), unmounting what is left first.
    /// Jobs unmount and remove their own directories; only when one is left (its job could
    /// not clean up) is the mount table scanned for what may still be mounted below.
    pub fn remove(&self) -> anyhow::Result<()> {
        let job_left = fs::read_dir(&self.path)
            .map(|entries| {
                entries
                    .flatten()
                    .any(|e| e.file_name().to_string_lossy().starts_with("job"))
            })
            .unwrap_or(true);
        let unmounted = if job_left {
            super::snapshot::unmount_under(&self.path)
        } else {
            Ok(())
        };
        unmounted
            .and_then(|()| remove_tree(&self.path))
            .with_context(|| format!("cannot remove the run directory {}", self.path.display()))
    }
}

pub fn exec_root(data_dir: &Path) -> PathBuf {
    data_dir.join("exec")
}

/// Remove what runs that died left behind. `before_remove` is called with each dead run's
/// directory first, while this process holds its lock (to tear down its sandboxes). Returns
/// how many run directories were removed.
pub fn reconcile(
    data_dir: &Path,
    mut before_remove: impl FnMut(&Path) -> anyhow::Result<()>,
) -> anyhow::Result<usize> {
    let root = exec_root(data_dir);
    let entries = match fs::read_dir(&root) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", root.display())),
    };
    let mut removed = 0;
    for entry in entries {
        let path = entry?.path();
        // Taking the lock proves its owner is gone; it stays held until the tree is gone.
        let (stale, _held) = match File::open(path.join("lock")) {
            Ok(f) => {
                let held = try_lock(f)?;
                (held.is_some(), held)
            }
            // No lock file: a directory whose creator died before it could lock it.
            Err(e) if e.kind() == io::ErrorKind::NotFound => (true, None),
            Err(e) => return Err(e).with_context(|| format!("cannot open {}", path.display())),
        };
        if stale {
            before_remove(&path)?;
            super::snapshot::unmount_under(&path)
                .and_then(|()| remove_tree(&path))
                .with_context(|| format!("cannot remove stale run {}", path.display()))?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// Take the exclusive lock on `f` without waiting: `None` when another process holds it.
fn try_lock(f: File) -> io::Result<Option<Flock<File>>> {
    match Flock::lock(f, FlockArg::LockExclusiveNonblock) {
        Ok(l) => Ok(Some(l)),
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => Ok(None),
        Err((_, e)) => Err(io::Error::from(e)),
    }
}

/// `remove_dir_all` that first makes read-only directories writable (a step may `chmod -w`).
pub fn remove_tree(path: &Path) -> io::Result<()> {
    match fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(_) => {
            make_writable(path);
            fs::remove_dir_all(path)
        }
    }
}

fn make_writable(path: &Path) {
    let Ok(meta) = fs::symlink_metadata(path) else {
        return;
    };
    if meta.is_dir() {
        let mut perm = meta.permissions();
        perm.set_mode(perm.mode() | 0o700);
        let _ = fs::set_permissions(path, perm);
        if let Ok(entries) = fs::read_dir(path) {
            for e in entries.flatten() {
                make_writable(&e.path());
            }
        }
    }
}

/// What a copy did, for the log.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CopyStats {
    pub files: u64,
    pub bytes: u64,
    pub skipped: u64,
}

/// Copy the tree at `src` into the existing directory `dst`, leaving out `exclude` (the
/// runner's own run directory when it lies inside the source tree).
pub fn copy_tree(src: &Path, dst: &Path, exclude: &Path) -> io::Result<CopyStats> {
    let mut stats = CopyStats::default();
    copy_dir(src, dst, exclude, &mut stats)?;
    Ok(stats)
}

fn copy_dir(src: &Path, dst: &Path, exclude: &Path, stats: &mut CopyStats) -> io::Result<()> {
    for entry in fs::read_dir(src)? {
        let entry = entry?;
        let from = entry.path();
        if from == exclude {
            continue;
        }
        let to = dst.join(entry.file_name());
        let ty = entry.file_type()?;
        if ty.is_dir() {
            fs::create_dir(&to)?;
            copy_dir(&from, &to, exclude, stats)?;
            let meta = entry.metadata()?;
            fs::set_permissions(&to, meta.permissions())?;
            set_mtime(&to, &meta);
        } else if ty.is_symlink() {
            symlink(fs::read_link(&from)?, &to)?;
            stats.files += 1;
        } else if ty.is_file() {
            // Copies the permission bits too.
            stats.bytes += fs::copy(&from, &to)?;
            stats.files += 1;
            set_mtime(&to, &entry.metadata()?);
        } else if ty.is_socket() || ty.is_fifo() || ty.is_block_device() || ty.is_char_device() {
            stats.skipped += 1;
        }
    }
    Ok(())
}

fn set_mtime(path: &Path, meta: &fs::Metadata) {
    if let (Ok(mtime), Ok(f)) = (meta.modified(), File::open(path)) {
        let _ = f.set_modified(mtime);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_files_dirs_symlinks_modes_and_times_but_not_the_run_dir() {
        let src = tempfile::tempdir().unwrap();
        let s = src.path();
        fs::create_dir_all(s.join("a/b")).unwrap();
        fs::create_dir_all(s.join(".git")).unwrap();
        fs::write(s.join("a/b/file"), b"hello").unwrap();
        fs::write(s.join(".git/HEAD"), b"ref").unwrap();
        fs::write(s.join("run.sh"), b"#!/bin/sh\n").unwrap();
        fs::set_permissions(s.join("run.sh"), fs::Permissions::from_mode(0o755)).unwrap();
        symlink("a/b/file", s.join("link")).unwrap();
        let old = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000);
        File::options()
            .write(true)
            .open(s.join("a/b/file"))
            .unwrap()
            .set_modified(old)
            .unwrap();
        // The runner's own run dir inside the source tree must not be copied into itself.
        fs::create_dir_all(s.join("data/exec/r1")).unwrap();

        let dst = tempfile::tempdir().unwrap();
        let d = dst.path();
        let stats = copy_tree(s, d, &s.join("data/exec")).unwrap();
        assert_eq!(fs::read(d.join("a/b/file")).unwrap(), b"hello");
        assert_eq!(fs::read(d.join(".git/HEAD")).unwrap(), b"ref");
        assert_eq!(
            fs::read_link(d.join("link")).unwrap(),
            Path::new("a/b/file")
        );
        let mode = fs::metadata(d.join("run.sh")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o755);
        assert_eq!(
            fs::metadata(d.join("a/b/file"))
                .unwrap()
                .modified()
                .unwrap(),
            old
        );
        assert!(d.join("data").exists() && !d.join("data/exec").exists());
        assert_eq!(stats.files, 4);
        assert_eq!(stats.bytes, 5 + 3 + 10);
    }

    #[test]
    fn a_dead_runs_directory_is_reconciled_and_a_live_one_is_kept() {
        let data = tempfile::tempdir().unwrap();
        let live = RunDir::create(data.path(), "live").unwrap();
        let dead = exec_root(data.path()).join("dead");
        fs::create_dir_all(dead.join("job0-0/sub")).unwrap();
        fs::write(dead.join("lock"), b"").unwrap();
        // A read-only directory a step left behind must not stop the clean-up.
        fs::set_permissions(dead.join("job0-0/sub"), fs::Permissions::from_mode(0o500)).unwrap();
        let mut seen = Vec::new();
        let removed = reconcile(data.path(), |p| {
            seen.push(p.to_path_buf());
            Ok(())
        });
        assert_eq!(removed.unwrap(), 1);
        assert_eq!(seen, vec![dead.clone()]);
        assert!(!dead.exists());
        assert!(live.path.exists());
        live.remove().unwrap();
        assert_eq!(fs::read_dir(exec_root(data.path())).unwrap().count(), 0);
    }

    #[test]
    fn reconcile_unmounts_a_dead_runs_snapshot_before_removing_it() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("not run: overlay snapshots need root; CI runs this test as root");
            return;
        }
        let src = tempfile::tempdir().unwrap();
        fs::write(src.path().join("precious"), b"keep me").unwrap();
        let data = tempfile::tempdir().unwrap();
        let dead = exec_root(data.path()).join("dead");
        fs::create_dir_all(&dead).unwrap();
        fs::write(dead.join("lock"), b"").unwrap();
        let ws = super::super::snapshot::mount_snapshot(src.path(), &dead.join("job0-1")).unwrap();
        assert!(ws.join("precious").exists());
        assert_eq!(reconcile(data.path(), |_| Ok(())).unwrap(), 1);
        assert!(!dead.exists());
        assert!(super::super::snapshot::mounts_under(data.path())
            .unwrap()
            .is_empty());
        assert_eq!(fs::read(src.path().join("precious")).unwrap(), b"keep me");
    }
}
