//! The file tree of a sandbox, as a list of [`MountOp`]s computed in the parent: pure data that
//! tests can inspect, executed by `child.rs` after `pivot_root`.

use std::ffi::{c_ulong, CString};
use std::path::{Path, PathBuf};

use super::child::{Create, MountOp, OLD_ROOT};
use super::policy::{DEVICES, DEV_SYMLINKS, HOST_MASKED_PATHS, MASKED_PATHS, READONLY_PATHS};
use super::ContainerError;

/// What the file tree depends on.
#[derive(Debug, Clone)]
pub struct TreeSpec<'a> {
    /// Host directory of the job's workspace.
    pub workspace: &'a Path,
    /// Where it appears inside (absolute).
    pub workdir: &'a str,
    /// The root is the host's own (`image: host`): hide its secrets.
    pub host_image: bool,
    /// Extra host paths to hide (the runner's config and data directories).
    pub masked: &'a [PathBuf],
    /// The step has a network: give an image root the host's resolver configuration.
    pub dns: bool,
}

pub(crate) fn cstr(s: impl AsRef<[u8]>) -> Result<CString, ContainerError> {
    CString::new(s.as_ref().to_vec())
        .map_err(|_| ContainerError::InvalidSpec("a path contains a NUL byte".into()))
}

fn host_path(p: &Path) -> Result<CString, ContainerError> {
    cstr(format!("{OLD_ROOT}{}", p.display()))
}

const NOSUID: c_ulong = libc::MS_NOSUID;
const NODEV: c_ulong = libc::MS_NODEV;
const NOEXEC: c_ulong = libc::MS_NOEXEC;

fn mount(
    source: &str,
    target: &str,
    fstype: &str,
    flags: c_ulong,
    data: Option<&str>,
    create: Create,
) -> Result<MountOp, ContainerError> {
    Ok(MountOp::Mount {
        source: cstr(source)?,
        target: cstr(target)?,
        fstype: cstr(fstype)?,
        flags,
        data: data.map(cstr).transpose()?,
        create,
        or_empty: false,
    })
}

/// The mounts of one sandbox, in order.
pub fn tree(spec: &TreeSpec<'_>) -> Result<Vec<MountOp>, ContainerError> {
    if !spec.workdir.starts_with('/') || spec.workdir.split('/').any(|c| c == "..") {
        return Err(ContainerError::InvalidSpec(format!(
            "workdir {:?} must be an absolute path without '..'",
            spec.workdir
        )));
    }
    let mut ops = vec![
        mount(
            "proc",
            "/proc",
            "proc",
            NOSUID | NODEV | NOEXEC,
            None,
            Create::Dir,
        )?,
        mount(
            "tmpfs",
            "/dev",
            "tmpfs",
            NOSUID | NOEXEC,
            Some("mode=755,size=65536k"),
            Create::Dir,
        )?,
    ];
    for dev in DEVICES {
        ops.push(MountOp::Bind {
            source: cstr(format!("{OLD_ROOT}/dev/{dev}"))?,
            target: cstr(format!("/dev/{dev}"))?,
            flags: 0,
            create: Create::File,
        });
    }
    ops.push(mount(
        "devpts",
        "/dev/pts",
        "devpts",
        NOSUID | NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=0620"),
        Create::Dir,
    )?);
    ops.push(mount(
        "shm",
        "/dev/shm",
        "tmpfs",
        NOSUID | NODEV | NOEXEC,
        Some("mode=1777,size=65536k"),
        Create::Dir,
    )?);
    for (link, target) in DEV_SYMLINKS {
        ops.push(MountOp::Symlink {
            target: cstr(target)?,
            link: cstr(format!("/dev/{link}"))?,
        });
    }
    let mut sys = mount(
        "sysfs",
        "/sys",
        "sysfs",
        libc::MS_RDONLY | NOSUID | NODEV | NOEXEC,
        None,
        Create::Dir,
    )?;
    if let MountOp::Mount { or_empty, .. } = &mut sys {
        *or_empty = true;
    }
    ops.push(sys);
    ops.push(mount(
        "tmpfs",
        "/tmp",
        "tmpfs",
        NOSUID | NODEV,
        Some("mode=1777"),
        Create::Dir,
    )?);
    if spec.host_image {
        // The host's /run holds sockets (docker.sock, dbus) and runtime secrets.
        ops.push(mount(
            "tmpfs",
            "/run",
            "tmpfs",
            NOSUID | NODEV,
            Some("mode=755"),
            Create::Dir,
        )?);
        for p in HOST_MASKED_PATHS {
            ops.push(MountOp::Mask { target: cstr(p)? });
        }
        for p in spec.masked {
            ops.push(MountOp::Mask {
                target: cstr(p.as_os_str().as_encoded_bytes())?,
            });
        }
    }
    if spec.dns && !spec.host_image && Path::new("/etc/resolv.conf").exists() {
        ops.push(MountOp::Bind {
            source: cstr(format!("{OLD_ROOT}/etc/resolv.conf"))?,
            target: cstr("/etc/resolv.conf")?,
            flags: libc::MS_RDONLY | NOSUID | NODEV | NOEXEC,
            create: Create::File,
        });
    }
    ops.push(MountOp::Bind {
        source: host_path(spec.workspace)?,
        target: cstr(spec.workdir)?,
        flags: NOSUID | NODEV,
        create: Create::Dir,
    });
    for p in MASKED_PATHS {
        ops.push(MountOp::Mask { target: cstr(p)? });
    }
    for p in READONLY_PATHS {
        ops.push(MountOp::ReadOnly { target: cstr(p)? });
    }
    Ok(ops)
}

/// overlayfs options for `layers` (bottom first) with a fresh upper and work dir.
pub fn overlay_data(
    layers: &[PathBuf],
    upper: &Path,
    work: &Path,
    userns: bool,
) -> Result<CString, ContainerError> {
    let mut lower = Vec::new();
    for l in layers.iter().rev() {
        let s = l.to_str().ok_or_else(|| {
            ContainerError::InvalidSpec(format!("layer path {} is not UTF-8", l.display()))
        })?;
        if s.contains([':', ',', '\\']) {
            return Err(ContainerError::InvalidSpec(format!(
                "layer path {s} contains ':', ',' or '\\', which overlayfs options cannot carry"
            )));
        }
        lower.push(s);
    }
    if lower.is_empty() {
        return Err(ContainerError::InvalidSpec("image has no layers".into()));
    }
    let mut data = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.join(":"),
        upper.display(),
        work.display()
    );
    if userns {
        // Inside a user namespace overlayfs may only use user.* xattrs.
        data.push_str(",userxattr");
    }
    // The kernel copies at most one page of mount options.
    if data.len() >= 4096 {
        return Err(ContainerError::InvalidSpec(format!(
            "image has too many layers for one overlay mount ({} bytes of options)",
            data.len()
        )));
    }
    cstr(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn targets(ops: &[MountOp]) -> Vec<String> {
        ops.iter()
            .map(|op| match op {
                MountOp::Mount { target, .. }
                | MountOp::Bind { target, .. }
                | MountOp::Mask { target }
                | MountOp::ReadOnly { target } => target.to_string_lossy().into_owned(),
                MountOp::Symlink { link, .. } => link.to_string_lossy().into_owned(),
            })
            .collect()
    }

    #[test]
    fn host_image_hides_home_and_runner_dirs() {
        let masked = [PathBuf::from("/var/lib/runner")];
        let spec = TreeSpec {
            workspace: Path::new("/srv/ws"),
            workdir: "/workspace",
            host_image: true,
            masked: &masked,
            dns: false,
        };
        let ops = tree(&spec).unwrap();
        let t = targets(&ops);
        for p in [
            "/root",
            "/home",
            "/var/lib/runner",
            "/proc/kcore",
            "/etc/shadow",
        ] {
            assert!(t.iter().any(|x| x == p), "{p} not masked");
        }
        assert!(!t.iter().any(|x| x == "/dev/kvm"));
        // /dev must be in place before anything is masked with /dev/null.
        let dev_null = t.iter().position(|x| x == "/dev/null").unwrap();
        let first_mask = ops
            .iter()
            .position(|o| matches!(o, MountOp::Mask { .. }))
            .unwrap();
        assert!(dev_null < first_mask);
    }

    #[test]
    fn image_root_does_not_mask_host_paths_and_rejects_bad_workdir() {
        let spec = TreeSpec {
            workspace: Path::new("/srv/ws"),
            workdir: "/workspace",
            host_image: false,
            masked: &[],
            dns: false,
        };
        assert!(!targets(&tree(&spec).unwrap()).iter().any(|x| x == "/root"));
        let bad = TreeSpec {
            workdir: "/../etc",
            ..spec
        };
        assert!(tree(&bad).is_err());
    }

    #[test]
    fn overlay_lists_top_layer_first() {
        let d = overlay_data(
            &[PathBuf::from("/l/base"), PathBuf::from("/l/top")],
            Path::new("/u"),
            Path::new("/w"),
            false,
        )
        .unwrap();
        assert_eq!(
            d.to_str().unwrap(),
            "lowerdir=/l/top:/l/base,upperdir=/u,workdir=/w"
        );
        assert!(overlay_data(
            &[PathBuf::from("/a:b")],
            Path::new("/u"),
            Path::new("/w"),
            false
        )
        .is_err());
    }
}
