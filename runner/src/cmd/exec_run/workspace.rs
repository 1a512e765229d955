//! Where `runner exec` keeps a run's job workspaces, and how the source tree gets into them.
//!
//! Each run owns `<runtime-dir>/exec/<run-id>/` (a tmpfs as a rule: see `paths.rs`), holding
//! an exclusive `flock` on its `lock` file for as long as it lives, its container state and the
//! mount points of its job workspaces, and the file `data-dir` naming where its on-disk parts
//! are: the upper and work dirs of each job's snapshot (or its copy), as
//! `<data-dir>/exec/<run-id>.<job>.upper` and `.work`, since what a job builds may be large.
//! At start-up every run whose lock can be taken belongs to a runner that died (even by
//! SIGKILL) and is removed with its on-disk parts, and on-disk parts whose run has no lock any
//! more (the runtime dir is emptied by a reboot) are removed too: nothing survives a killed
//! runner.
//!
//! The workspace is an overlay snapshot of the source tree where possible (see `snapshot`).
//! Otherwise the source tree is copied whole (`.git`, `target/`, everything: a pipeline sees what the
//! user sees) with `std::fs::copy`, which uses `copy_file_range(2)`: the kernel copies without
//! a round trip through user space and shares extents (a reflink) on filesystems that can
//! (btrfs, XFS, NFS 4.2). Modes and modification times are kept so incremental build tools
//! are not fooled; symlinks are copied as symlinks; sockets, FIFOs and devices are skipped.

use std::fs::{self, File};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use nix::fcntl::{Flock, FlockArg};

/// The run's directory under the runtime dir, locked while this process lives.
#[derive(Debug)]
pub struct RunDir {
    /// `<runtime-dir>/exec/<run-id>`.
    pub path: PathBuf,
    /// `<data-dir>/exec`, where the run's on-disk parts are named `<run-id>.<...>`.
    data_exec: PathBuf,
    run_id: String,
    /// Holds the lock; released when dropped (or when the process dies).
    _lock: Flock<File>,
}

/// Where one attempt of one job keeps its workspace.
#[derive(Debug, Clone)]
pub struct JobDirs {
    /// The workspace steps see: the snapshot's mount point (in the runtime dir).
    pub merged: PathBuf,
    /// On disk: the snapshot's upper dir, or the copy itself when there is no snapshot.
    pub upper: PathBuf,
    /// On disk: the snapshot's work dir.
    pub work: PathBuf,
}

impl JobDirs {
    /// Unmount the snapshot and remove all three if that is a handful of syscalls: true when
    /// done; false when the upper dir holds anything (a copied tree, what the job wrote),
    /// which `remove` then deletes, however long that takes.
    pub fn remove_if_small(&self) -> io::Result<bool> {
        super::snapshot::unmount_snapshot(&self.merged)?;
        match fs::remove_dir(&self.upper) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(_) => return Ok(false),
        }
        // overlayfs' work dir only ever holds a few entries of its own (`work/`, and
        // `work/incompat/volatile/` after a volatile mount).
        remove_tree(&self.work)?;
        remove_tree(&self.merged)?;
        Ok(true)
    }

    /// Unmount the snapshot if there is one and remove all three.
    pub fn remove(&self) -> io::Result<()> {
        super::snapshot::unmount_snapshot(&self.merged)?;
        remove_tree(&self.upper)?;
        remove_tree(&self.work)?;
        remove_tree(&self.merged)
    }
}

/// Name of the file in a run's directory that holds its `<data-dir>/exec` path.
const DATA_POINTER: &str = "data-dir";

impl RunDir {
    pub fn create(runtime_dir: &Path, data_dir: &Path, run_id: &str) -> anyhow::Result<RunDir> {
        let path = exec_root(runtime_dir).join(run_id);
        fs::create_dir_all(&path)
            .with_context(|| format!("cannot create the run directory {}", path.display()))?;
        let Some(lock) = try_lock(File::create(path.join("lock"))?)? else {
            anyhow::bail!(
                "run directory {} is locked by another runner",
                path.display()
            );
        };
        let data_exec = std::path::absolute(exec_root(data_dir))?;
        fs::create_dir_all(&data_exec)
            .with_context(|| format!("cannot create {}", data_exec.display()))?;
        fs::write(
            path.join(DATA_POINTER),
            data_exec.as_os_str().as_encoded_bytes(),
        )?;
        Ok(RunDir {
            path,
            data_exec,
            run_id: run_id.to_string(),
            _lock: lock,
        })
    }

    /// Fresh, empty places for one attempt of one job (the directories are created by the
    /// snapshot or the copy).
    pub fn job_dirs(&self, job_index: usize, attempt: u32) -> anyhow::Result<JobDirs> {
        let job = format!("job{job_index}-{attempt}");
        let on_disk = |what: &str| self.data_exec.join(format!("{}.{job}.{what}", self.run_id));
        let dirs = JobDirs {
            merged: self.path.join(&job),
            upper: on_disk("upper"),
            work: on_disk("work"),
        };
        // Only ever there if a job index and attempt were used twice: start clean.
        if dirs.merged.exists() || dirs.upper.exists() {
            dirs.remove()?;
        }
        Ok(dirs)
    }

    /// Remove the run's directory (the lock goes with it) and its on-disk parts, unmounting
    /// what is left first. Jobs unmount and remove their own directories; only when one is
    /// left (its job could not clean up) is the mount table scanned for what may still be
    /// mounted below.
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
            .and_then(|()| remove_data_parts(&self.data_exec, &self.run_id))
            .and_then(|()| remove_tree(&self.path))
            .with_context(|| format!("cannot remove the run directory {}", self.path.display()))
    }
}

/// `<dir>/exec`, in the runtime dir (run directories) and in the data dir (their on-disk
/// parts).
pub fn exec_root(dir: &Path) -> PathBuf {
    dir.join("exec")
}

/// Remove the on-disk parts of run `run_id` from `data_exec`.
fn remove_data_parts(data_exec: &Path, run_id: &str) -> io::Result<()> {
    let entries = match fs::read_dir(data_exec) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries.flatten() {
        if run_of(&entry.file_name().to_string_lossy()) == run_id {
            remove_tree(&entry.path())?;
        }
    }
    Ok(())
}

/// The run an on-disk part belongs to: its name up to the first `.`.
fn run_of(name: &str) -> &str {
    name.split('.').next().unwrap_or(name)
}

/// Remove what runs that died left behind: first every run in the runtime dir whose lock can
/// be taken (`before_remove` is called with its directory first, while this process holds its
/// lock, to tear down its sandboxes), with its on-disk parts; then on-disk parts in the data
/// dir whose run has no directory any more. Returns how many runs were removed.
pub fn reconcile(
    runtime_dir: &Path,
    data_dir: &Path,
    mut before_remove: impl FnMut(&Path) -> anyhow::Result<()>,
) -> anyhow::Result<usize> {
    let runs = exec_root(runtime_dir);
    let mut removed = 0;
    let entries = match fs::read_dir(&runs) {
        Ok(e) => Some(e),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", runs.display())),
    };
    for entry in entries.into_iter().flatten() {
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
            let run_id = path.file_name().unwrap_or_default().to_string_lossy();
            let gone = super::snapshot::unmount_under(&path).and_then(|()| {
                match fs::read(path.join(DATA_POINTER)) {
                    Ok(p) => remove_data_parts(Path::new(std::ffi::OsStr::from_bytes(&p)), &run_id),
                    Err(_) => Ok(()),
                }
            });
            gone.and_then(|()| remove_tree(&path))
                .with_context(|| format!("cannot remove stale run {}", path.display()))?;
            removed += 1;
        }
    }
    // On-disk parts of runs that are gone (a reboot empties the runtime dir). A live run
    // creates its locked directory before any part, so a part without one is stale.
    let data_exec = exec_root(data_dir);
    let parts = match fs::read_dir(&data_exec) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(removed),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", data_exec.display())),
    };
    for entry in parts {
        let path = entry?.path();
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        if runs.join(run_of(&name)).join("lock").exists() {
            continue;
        }
        // A run directory of the layout before the runtime dir holds its own state.
        if path.join("lock").exists() {
            before_remove(&path)?;
        }
        super::snapshot::unmount_under(&path)
            .and_then(|()| remove_tree(&path))
            .with_context(|| format!("cannot remove stale {}", path.display()))?;
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

    fn job_dirs_in(root: &Path) -> JobDirs {
        let dirs = JobDirs {
            merged: root.join("merged"),
            upper: root.join("upper"),
            work: root.join("work"),
        };
        // What a volatile overlay mount leaves in its work dir.
        fs::create_dir_all(dirs.work.join("work/incompat/volatile")).unwrap();
        fs::write(dirs.work.join("work/incompat/volatile/dirty"), b"").unwrap();
        fs::create_dir_all(&dirs.upper).unwrap();
        fs::create_dir_all(&dirs.merged).unwrap();
        dirs
    }

    #[test]
    fn an_untouched_workspace_is_removed_in_place_a_written_one_is_left_to_remove() {
        let tmp = tempfile::tempdir().unwrap();
        let clean = job_dirs_in(&tmp.path().join("clean"));
        assert!(clean.remove_if_small().unwrap());
        for d in [&clean.merged, &clean.upper, &clean.work] {
            assert!(!d.exists(), "{} left", d.display());
        }

        let written = job_dirs_in(&tmp.path().join("written"));
        fs::create_dir_all(written.upper.join("target/debug")).unwrap();
        fs::write(written.upper.join("target/debug/app"), b"binary").unwrap();
        assert!(!written.remove_if_small().unwrap());
        assert!(written.upper.join("target/debug/app").exists());
        written.remove().unwrap();
        for d in [&written.merged, &written.upper, &written.work] {
            assert!(!d.exists(), "{} left", d.display());
        }
    }

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
        let (runtime, data) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (rt, dd) = (runtime.path(), data.path());
        let live = RunDir::create(rt, dd, "live").unwrap();
        let live_job = live.job_dirs(0, 1).unwrap();
        fs::create_dir_all(&live_job.upper).unwrap();
        // A run that died: its (unlocked) directory, and a job's parts on disk.
        let dead = exec_root(rt).join("dead");
        fs::create_dir_all(dead.join("job0-0")).unwrap();
        fs::write(dead.join("lock"), b"").unwrap();
        let data_exec = std::path::absolute(exec_root(dd)).unwrap();
        fs::write(
            dead.join(DATA_POINTER),
            data_exec.as_os_str().as_encoded_bytes(),
        )
        .unwrap();
        let dead_upper = data_exec.join("dead.job0-0.upper");
        fs::create_dir_all(dead_upper.join("sub")).unwrap();
        // A read-only directory a step left behind must not stop the clean-up.
        fs::set_permissions(dead_upper.join("sub"), fs::Permissions::from_mode(0o500)).unwrap();
        // Parts of a run from before a reboot: no run directory at all any more.
        let rebooted = data_exec.join("old.job1-1.work");
        fs::create_dir_all(rebooted.join("work")).unwrap();

        let mut seen = Vec::new();
        let removed = reconcile(rt, dd, |p| {
            seen.push(p.to_path_buf());
            Ok(())
        });
        assert_eq!(removed.unwrap(), 1);
        assert_eq!(seen, vec![dead.clone()]);
        assert!(!dead.exists() && !dead_upper.exists() && !rebooted.exists());
        assert!(live.path.exists() && live_job.upper.exists());
        live.remove().unwrap();
        assert_eq!(fs::read_dir(exec_root(rt)).unwrap().count(), 0);
        assert_eq!(fs::read_dir(exec_root(dd)).unwrap().count(), 0);
    }

    #[testkit::needs(root)]
    #[test]
    fn reconcile_unmounts_a_dead_runs_snapshot_before_removing_it() {
        let src = tempfile::tempdir().unwrap();
        fs::write(src.path().join("precious"), b"keep me").unwrap();
        let (runtime, data) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (rt, dd) = (runtime.path(), data.path());
        let run = RunDir::create(rt, dd, "dead").unwrap();
        let dirs = run.job_dirs(0, 1).unwrap();
        let ws = super::super::snapshot::mount_snapshot(src.path(), &dirs).unwrap();
        assert!(ws.join("precious").exists());
        // The run dies without cleaning up: its lock goes with it.
        drop(run);
        assert_eq!(reconcile(rt, dd, |_| Ok(())).unwrap(), 1);
        assert!(!ws.exists() && !dirs.upper.exists() && !dirs.work.exists());
        assert!(super::super::snapshot::mounts_under(rt).unwrap().is_empty());
        assert_eq!(fs::read(src.path().join("precious")).unwrap(), b"keep me");
        assert_eq!(fs::read_dir(exec_root(dd)).unwrap().count(), 0);
    }
}
