//! Workspace transfer: the job's workspace goes into the VM as a tar stream before the step and
//! comes back the same way after it. The guest works on its own copy, so a VM never shares a
//! live file system with the host; the copy back replaces the host workspace only once the
//! whole archive unpacked cleanly, so a broken transfer never loses the earlier state.

use std::fs;
use std::io;
use std::path::Path;

/// Tar of everything under `dir` (symlinks kept as links, owners and modes preserved).
pub fn pack(dir: &Path) -> io::Result<Vec<u8>> {
    let mut b = tar::Builder::new(Vec::new());
    b.follow_symlinks(false);
    b.mode(tar::HeaderMode::Complete);
    b.append_dir_all(".", dir)?;
    b.into_inner()
}

/// Replace the contents of `dir` with `archive`. The archive is unpacked into a staging
/// directory inside `dir` first (tar-rs refuses entries that would escape it), then swapped in
/// with renames. Inside, not beside: the workspace may be a mount point of its own (an overlay
/// snapshot), and renames do not cross file systems.
pub fn restore(dir: &Path, archive: &[u8]) -> io::Result<()> {
    let staging = tempfile::Builder::new()
        .prefix(".runner-vm-restore-")
        .tempdir_in(dir)?;
    let mut ar = tar::Archive::new(archive);
    // The archive comes from the guest, which is not trusted: keep rwx bits and owners, but
    // no setuid/setgid bit reaches the host's file system.
    ar.set_preserve_permissions(false);
    ar.set_preserve_ownerships(true);
    ar.set_overwrite(true);
    ar.unpack(staging.path())?;
    for e in fs::read_dir(dir)? {
        let p = e?.path();
        if p == staging.path() {
            continue;
        }
        if p.is_dir() && !p.is_symlink() {
            fs::remove_dir_all(&p)?;
        } else {
            fs::remove_file(&p)?;
        }
    }
    for e in fs::read_dir(staging.path())? {
        let e = e?;
        fs::rename(e.path(), dir.join(e.file_name()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn round_trip_replaces_contents() {
        let d = tempfile::tempdir().unwrap();
        let a = d.path().join("a");
        fs::create_dir_all(a.join("sub")).unwrap();
        fs::write(a.join("sub/f"), "one").unwrap();
        fs::write(a.join("x.sh"), "#!/bin/sh").unwrap();
        fs::set_permissions(a.join("x.sh"), fs::Permissions::from_mode(0o750)).unwrap();
        std::os::unix::fs::symlink("sub/f", a.join("link")).unwrap();
        let tar = pack(&a).unwrap();

        let b = d.path().join("b");
        fs::create_dir_all(&b).unwrap();
        fs::write(b.join("stale"), "removed by restore").unwrap();
        restore(&b, &tar).unwrap();
        assert_eq!(fs::read_to_string(b.join("sub/f")).unwrap(), "one");
        assert_eq!(fs::read_link(b.join("link")).unwrap(), Path::new("sub/f"));
        let mode = fs::metadata(b.join("x.sh")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o750);
        assert!(!b.join("stale").exists());
        let inside: Vec<_> = fs::read_dir(&b)
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(inside.len(), 3, "no staging dir left inside: {inside:?}");
        // Nothing is left beside the workspace.
        let names: Vec<_> = fs::read_dir(d.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
    }

    #[test]
    fn restores_into_a_workspace_that_is_its_own_mount() {
        // `runner exec` hands out overlay snapshots: the workspace is a mount point, and a
        // staging dir beside it would be on another file system (rename: EXDEV).
        use nix::mount::{mount, umount, MsFlags};
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("src");
        fs::create_dir_all(&src).unwrap();
        fs::write(src.join("f"), "data").unwrap();
        let tar = pack(&src).unwrap();
        let ws = d.path().join("ws");
        fs::create_dir_all(&ws).unwrap();
        mount(
            Some("tmpfs"),
            &ws,
            Some("tmpfs"),
            MsFlags::empty(),
            None::<&str>,
        )
        .expect("tests run as root");
        let r = restore(&ws, &tar);
        let content = fs::read_to_string(ws.join("f"));
        umount(&ws).unwrap();
        r.unwrap();
        assert_eq!(content.unwrap(), "data");
    }

    #[test]
    fn setuid_bits_from_the_guest_are_dropped() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("src");
        fs::create_dir_all(&src).unwrap();
        fs::write(src.join("suid"), "x").unwrap();
        fs::set_permissions(src.join("suid"), fs::Permissions::from_mode(0o4755)).unwrap();
        let tar = pack(&src).unwrap();
        let ws = d.path().join("ws");
        fs::create_dir_all(&ws).unwrap();
        restore(&ws, &tar).unwrap();
        let mode = fs::metadata(ws.join("suid")).unwrap().permissions().mode();
        assert_eq!(mode & 0o7777, 0o755);
    }

    #[test]
    fn broken_archive_keeps_the_workspace() {
        let d = tempfile::tempdir().unwrap();
        let ws = d.path().join("ws");
        fs::create_dir_all(&ws).unwrap();
        fs::write(ws.join("keep"), "precious").unwrap();
        let mut tar = pack(&ws).unwrap();
        tar.truncate(600); // Header plus a cut-off file.
        assert!(restore(&ws, &tar).is_err());
        assert_eq!(fs::read_to_string(ws.join("keep")).unwrap(), "precious");
        assert_eq!(fs::read_dir(&ws).unwrap().count(), 1, "staging dir removed");
    }
}
