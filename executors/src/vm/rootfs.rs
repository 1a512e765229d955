//! The VM's root disk: one read-only ext4 image per image digest, built once from the image's
//! unpacked layers and cached. Each VM mounts it read-only under a tmpfs overlay, so a step's
//! writes outside the workspace vanish with the VM and no per-step disk copy is needed.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::ResolvedImage;

use super::VmError;

/// Path of the cached disk of `digest` under `dir`.
pub fn disk_path(dir: &Path, digest: &str) -> PathBuf {
    let safe: String = digest
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    dir.join(format!("{safe}.ext4"))
}

/// Return the cached disk of `image`, building it first if needed. Blocking; callers
/// serialize builds (two builders of one digest would only waste time, not corrupt: the
/// result is renamed into place).
pub fn base_disk(image: &ResolvedImage, dir: &Path) -> Result<PathBuf, VmError> {
    let path = disk_path(dir, &image.digest);
    if path.exists() {
        return Ok(path);
    }
    if image.layers.is_empty() {
        return Err(VmError::RootDisk(format!(
            "image {} has no layers",
            image.digest
        )));
    }
    fs::create_dir_all(dir).map_err(|e| VmError::io(dir, e))?;
    let (bytes, files) = image
        .layers
        .iter()
        .map(|l| tree_size(l))
        .fold((0u64, 0u64), |a, b| (a.0 + b.0, a.1 + b.1));
    // ext4 metadata, directories and small-file slack: a quarter on top, plus a floor.
    let size_mib = bytes / (1 << 20) * 5 / 4 + 32;
    let inodes = files + files / 4 + 1024;
    let tmp = tempfile::Builder::new()
        .prefix(".disk-")
        .suffix(".tmp")
        .tempfile_in(dir)
        .map_err(|e| VmError::io(dir, e))?;
    let mut mkfs = Command::new("mkfs.ext4");
    mkfs.args(["-q", "-F", "-O", "^has_journal", "-m", "0", "-N"])
        .arg(inodes.to_string())
        .args(["-L", "rootfs", "-E", "root_owner=0:0", "-d"]);
    let out = if let [only] = image.layers.as_slice() {
        mkfs.arg(only).arg(tmp.path()).arg(format!("{size_mib}M"));
        mkfs.output()
    } else {
        // Several layers: merge them with a read-only overlay mount (which applies the
        // whiteouts), seen only by a thread of our own in a private mount namespace.
        let mnt = tempfile::Builder::new()
            .prefix(".merge-")
            .tempdir_in(dir)
            .map_err(|e| VmError::io(dir, e))?;
        mkfs.arg(mnt.path())
            .arg(tmp.path())
            .arg(format!("{size_mib}M"));
        merged(&image.layers, mnt.path(), mkfs)?
    }
    .map_err(|e| VmError::RootDisk(format!("cannot run mkfs.ext4: {e} (install e2fsprogs)")))?;
    if !out.status.success() {
        return Err(VmError::RootDisk(format!(
            "mkfs.ext4 failed for {}: {}",
            image.digest,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    tmp.persist(&path)
        .map_err(|e| VmError::io(&path, e.error))?;
    Ok(path)
}

/// Run `cmd` with `layers` mounted as one read-only overlay at `mnt`. The mount lives in a
/// mount namespace private to one short-lived thread (and the command it starts): it is gone
/// when the thread ends, so neither a crash nor an early return leaves it behind, and the
/// host's mount table never sees it.
fn merged(
    layers: &[PathBuf],
    mnt: &Path,
    mut cmd: Command,
) -> Result<std::io::Result<std::process::Output>, VmError> {
    use nix::mount::{mount, MsFlags};
    use nix::sched::{unshare, CloneFlags};

    let lower: Vec<String> = layers
        .iter()
        .rev()
        .map(|l| l.display().to_string())
        .collect();
    if lower.iter().any(|l| l.contains(':') || l.contains(',')) {
        return Err(VmError::RootDisk(
            "layer paths must not contain ':' or ','".into(),
        ));
    }
    let options = format!("lowerdir={}", lower.join(":"));
    let fail = |what: &str, e: nix::Error| VmError::RootDisk(format!("{what}: {e}"));
    std::thread::scope(|scope| {
        scope
            .spawn(move || {
                // CLONE_FS with CLONE_NEWNS: this thread alone gets the new namespace.
                unshare(CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_FS)
                    .map_err(|e| fail("cannot create a mount namespace", e))?;
                mount(
                    None::<&str>,
                    "/",
                    None::<&str>,
                    MsFlags::MS_REC | MsFlags::MS_PRIVATE,
                    None::<&str>,
                )
                .map_err(|e| fail("cannot make mounts private", e))?;
                mount(
                    Some("overlay"),
                    mnt,
                    Some("overlay"),
                    MsFlags::MS_RDONLY,
                    Some(options.as_str()),
                )
                .map_err(|e| fail("cannot merge the image layers (overlay mount)", e))?;
                Ok(cmd.output())
            })
            .join()
            .unwrap_or_else(|_| Err(VmError::RootDisk("the layer merge thread panicked".into())))
    })
}

/// Apparent size and entry count of a directory tree (symlinks not followed).
fn tree_size(root: &Path) -> (u64, u64) {
    let mut bytes = 0;
    let mut files = 0;
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            files += 1;
            let Ok(m) = e.metadata() else { continue };
            if m.is_dir() {
                stack.push(e.path());
            } else {
                bytes += m.len();
            }
        }
    }
    (bytes, files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_names_are_file_safe() {
        assert_eq!(
            disk_path(Path::new("/c"), "sha256:ab/c"),
            PathBuf::from("/c/sha256-ab-c.ext4")
        );
    }

    #[test]
    fn merges_layers_with_whiteouts_into_an_ext4_image() {
        let d = tempfile::tempdir().unwrap();
        let l0 = d.path().join("l0");
        let l1 = d.path().join("l1");
        fs::create_dir_all(l0.join("etc")).unwrap();
        fs::create_dir_all(&l1).unwrap();
        fs::write(l0.join("etc/keep"), "base").unwrap();
        fs::write(l0.join("gone"), "deleted by the upper layer").unwrap();
        fs::write(l1.join("new"), "top").unwrap();
        // An overlay whiteout: a 0/0 character device.
        nix::sys::stat::mknod(
            &l1.join("gone"),
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::empty(),
            0,
        )
        .unwrap();
        let img = ResolvedImage {
            digest: "sha256:test".into(),
            layers: vec![l0, l1],
            env: vec![],
            working_dir: None,
            lease: Default::default(),
        };
        let cache = d.path().join("cache");
        let disk = base_disk(&img, &cache).unwrap();
        assert_eq!(
            base_disk(&img, &cache).unwrap(),
            disk,
            "second call reuses the cache"
        );
        let ls = Command::new("debugfs")
            .args(["-R", "ls -l /"])
            .arg(&disk)
            .output()
            .expect("debugfs (e2fsprogs) is installed");
        let listing = String::from_utf8_lossy(&ls.stdout);
        assert!(
            listing.contains("new") && listing.contains("etc"),
            "{listing}"
        );
        assert!(!listing.contains("gone"), "whiteout applied: {listing}");
        // No temporary files or mount points are left in the cache.
        let left: Vec<_> = fs::read_dir(&cache)
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(left.len(), 1, "{left:?}");
    }
}
