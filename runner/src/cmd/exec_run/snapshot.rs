//! A job's workspace as an overlayfs snapshot of the source tree: the tree is the read-only
//! lower layer, the job writes into its own upper dir. Taking it costs one `mount(2)` whatever
//! the size of the tree (a Rust checkout with a 1 GiB `target/` included), where a copy costs
//! seconds; a file is copied only when a step first writes to it. The user's tree is never
//! written to (overlayfs does not write to lower layers).
//!
//! Used when the runner is root and the runner's data dir is not inside the source tree (the
//! snapshot would show it); otherwise, or if the mount fails (a filesystem that cannot be a
//! lower layer, say), the workspace is a plain copy. As with any overlay, changing the source
//! tree while a job runs gives that job an unspecified mix of old and new.
//!
//! Mounts are removed when the job ends, and by `reconcile` for runs that died.

use std::io;
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};

use super::workspace::JobDirs;

/// Mount the snapshot of `source` on `dirs.merged`, with its upper and work dirs where
/// `dirs` says (all three are created); returns the merged directory (the workspace).
pub fn mount_snapshot(source: &Path, dirs: &JobDirs) -> io::Result<PathBuf> {
    for d in [&dirs.upper, &dirs.work, &dirs.merged] {
        std::fs::create_dir_all(d)?;
    }
    let data = format!(
        "lowerdir={},upperdir={},workdir={}",
        escape(source)?,
        escape(&dirs.upper)?,
        escape(&dirs.work)?
    );
    // `volatile` (Linux 5.10+): the upper dir is thrown away with the job, so overlayfs need
    // not sync it to disk when it is unmounted (a journal commit and a disk flush per job).
    let mount_with = |data: &str| {
        mount(
            Some("runner-workspace"),
            &dirs.merged,
            Some("overlay"),
            MsFlags::MS_NODEV,
            Some(data),
        )
    };
    match mount_with(&format!("{data},volatile")) {
        Err(nix::errno::Errno::EINVAL) => mount_with(&data).map_err(io::Error::from)?,
        other => other.map_err(io::Error::from)?,
    }
    Ok(dirs.merged.clone())
}

/// Unmount the snapshot `mount_snapshot` made on `merged`, if it is there, without scanning
/// the mount table. Errors if `merged` is still a mount point afterwards, so that the caller
/// never deletes through a mount.
pub fn unmount_snapshot(merged: &Path) -> io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    match umount2(merged, MntFlags::MNT_DETACH) {
        // EINVAL: not a mount point (a copied workspace); ENOENT: never created.
        Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
        Err(e) => return Err(io::Error::from(e)),
    }
    let inner = match std::fs::symlink_metadata(merged) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    // A directory on its parent's filesystem is no longer a mount point of another one.
    let parent = merged.parent().unwrap_or(Path::new("/"));
    if inner.dev() != std::fs::symlink_metadata(parent)?.dev() {
        return Err(io::Error::other(format!(
            "{} is still mounted after unmounting it",
            merged.display()
        )));
    }
    Ok(())
}

/// Overlay options are split at `,` and lower dirs at `:`; a path holding either (or a
/// backslash) is escaped with a backslash.
fn escape(p: &Path) -> io::Result<String> {
    let s = p
        .to_str()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path is not valid UTF-8"))?;
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, ',' | ':' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    Ok(out)
}

/// Unmount everything mounted at or below `dir` (deepest first). Errors if something stays
/// mounted, so that the caller never deletes through a mount.
pub fn unmount_under(dir: &Path) -> io::Result<()> {
    let mut points = mounts_under(dir)?;
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for p in &points {
        // Detach: a process still inside (there should be none) must not keep it alive.
        let _ = umount2(p, MntFlags::MNT_DETACH);
    }
    let left = mounts_under(dir)?;
    if left.is_empty() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "still mounted after unmounting: {}",
            left.iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )))
    }
}

/// Mount points at or below `dir`, from `/proc/self/mountinfo`.
pub fn mounts_under(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let info = executors::procfs::read("/proc/self/mountinfo")?;
    Ok(info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(unescape_mountinfo(p)))
        .filter(|p| p.starts_with(dir))
        .collect())
}

/// mountinfo writes space, tab, newline and backslash as `\ooo` octal escapes.
fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_are_decoded() {
        assert_eq!(unescape_mountinfo(r"/a\040b\134c"), "/a b\\c");
        assert_eq!(unescape_mountinfo(r"/plain"), "/plain");
        assert_eq!(unescape_mountinfo(r"/trail\04"), r"/trail\04");
    }

    fn dirs_in(dir: &Path) -> JobDirs {
        JobDirs {
            merged: dir.join("ws"),
            upper: dir.join("upper"),
            work: dir.join("work"),
        }
    }

    #[test]
    fn option_separators_are_escaped() {
        assert_eq!(escape(Path::new("/a,b:c\\d")).unwrap(), r"/a\,b\:c\\d");
    }

    #[testkit::needs(root)]
    #[test]
    fn a_snapshot_shows_the_source_keeps_writes_private_and_unmounts_cleanly() {
        let src = tempfile::tempdir().unwrap();
        std::fs::write(src.path().join("file"), "original").unwrap();
        std::fs::create_dir(src.path().join("dir")).unwrap();
        let job = tempfile::tempdir().unwrap();
        let ws = mount_snapshot(src.path(), &dirs_in(job.path())).unwrap();
        assert_eq!(
            std::fs::read_to_string(ws.join("file")).unwrap(),
            "original"
        );
        std::fs::write(ws.join("file"), "changed").unwrap();
        std::fs::write(ws.join("new"), "new").unwrap();
        std::fs::remove_dir(ws.join("dir")).unwrap();
        assert_eq!(std::fs::read_to_string(ws.join("file")).unwrap(), "changed");
        // The source is untouched.
        assert_eq!(
            std::fs::read_to_string(src.path().join("file")).unwrap(),
            "original"
        );
        assert!(!src.path().join("new").exists());
        assert!(src.path().join("dir").is_dir());
        assert_eq!(mounts_under(job.path()).unwrap(), vec![ws.clone()]);
        unmount_snapshot(&ws).unwrap();
        assert!(mounts_under(job.path()).unwrap().is_empty());
        assert!(!ws.join("file").exists());
        // Nothing mounted any more (or a copied workspace): nothing to do, no error.
        unmount_snapshot(&ws).unwrap();
    }

    #[testkit::needs(root)]
    #[test]
    fn unmount_snapshot_refuses_when_the_workspace_stays_mounted() {
        let src = tempfile::tempdir().unwrap();
        let job = tempfile::tempdir().unwrap();
        let ws = mount_snapshot(src.path(), &dirs_in(job.path())).unwrap();
        // Two mounts stacked on the workspace: one unmount leaves the other.
        let second = mount_snapshot(src.path(), &dirs_in(&job.path().join("second"))).unwrap();
        mount(
            Some(second.as_path()),
            &ws,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .unwrap();
        let err = unmount_snapshot(&ws).unwrap_err();
        assert!(err.to_string().contains("still mounted"), "{err}");
        unmount_under(job.path()).unwrap();
        assert!(mounts_under(job.path()).unwrap().is_empty());
    }
}
