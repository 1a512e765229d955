//! Idmapped layers for user-namespaced steps: image layers are owned by host uid 0, which a
//! user namespace does not map, so root in the step would see them as `nobody` and could not
//! change `/etc`. Each layer is instead given to overlayfs as an idmapped mount (kernel >= 5.19)
//! that shows host uid 0 as the mapped root: no copy, no chown, one `open_tree` and one
//! `mount_setattr` per layer per step.
//!
//! An idmapped mount needs a user namespace that carries the mapping *before* the sandbox is
//! cloned (see `mount_idmapped`), so the executor keeps one: created once by a helper process
//! that exits right away.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

use nix::sched::CloneFlags;
use nix::sys::wait::waitpid;

use super::{ContainerError, IdMap};

const OPEN_TREE_CLONE: libc::c_uint = 1;
const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;

/// `struct mount_attr` of mount_setattr(2).
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// A user namespace holding the step mapping, kept open by its descriptor.
#[derive(Debug)]
pub struct MappingNs {
    fd: OwnedFd,
}

fn err(what: &str) -> ContainerError {
    ContainerError::Spawn(format!(
        "user namespace: {what}: {}",
        std::io::Error::last_os_error()
    ))
}

impl MappingNs {
    pub fn new(map: &IdMap) -> Result<Self, ContainerError> {
        let (wait_r, wait_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .map_err(|e| ContainerError::Spawn(format!("pipe: {e}")))?;
        let (wait_fd, hold_fd) = (wait_r.as_raw_fd(), wait_w.as_raw_fd());
        let mut stack = vec![0u8; 16 * 1024];
        // SAFETY: the child only makes raw syscalls (close, read, _exit) on descriptors it
        // inherited; no allocation or locking (the runner is multi-threaded), and its single
        // frame fits the 16 KiB stack. It has its own copy of memory (no CLONE_VM).
        let pid = unsafe {
            nix::sched::clone(
                Box::new(|| {
                    // Its own copy of the write end would keep the read below from ever
                    // seeing EOF.
                    libc::close(hold_fd);
                    let mut b = 0u8;
                    libc::read(wait_fd, (&mut b as *mut u8).cast(), 1);
                    libc::_exit(0)
                }),
                &mut stack,
                CloneFlags::CLONE_NEWUSER,
                Some(libc::SIGCHLD),
            )
        }
        .map_err(|e| ContainerError::Spawn(format!("clone a user namespace: {e}")))?;
        let result = map.write(pid.as_raw()).and_then(|()| {
            let path = format!("/proc/{}/ns/user", pid.as_raw());
            std::fs::File::open(&path)
                .map(OwnedFd::from)
                .map_err(ContainerError::io(Path::new(&path)))
        });
        drop(wait_w);
        drop(wait_r);
        let _ = waitpid(pid, None);
        Ok(MappingNs { fd: result? })
    }

    /// Mount an idmapped bind of `dir` at `target` (an empty directory). overlayfs in the
    /// step's user namespace only accepts lower layers mounted in its own mount namespace,
    /// which is a copy of ours taken at clone: so the layer is mounted here before the clone and
    /// unmounted (`unmount`) right after it.
    pub fn mount_idmapped(&self, dir: &Path, target: &Path) -> Result<(), ContainerError> {
        let fd = self.idmapped(dir)?;
        let target_c = super::mounts::cstr(target.as_os_str().as_encoded_bytes())?;
        // SAFETY: move_mount attaches the detached mount `fd` at a valid C string path.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_move_mount,
                fd.as_raw_fd(),
                c"".as_ptr(),
                libc::AT_FDCWD,
                target_c.as_ptr(),
                MOVE_MOUNT_F_EMPTY_PATH,
            )
        };
        if ret < 0 {
            return Err(err(&format!("attach the idmapped {}", dir.display())));
        }
        Ok(())
    }

    /// A detached, idmapped bind mount of `dir` (close-on-exec).
    fn idmapped(&self, dir: &Path) -> Result<OwnedFd, ContainerError> {
        let path = super::mounts::cstr(dir.as_os_str().as_encoded_bytes())?;
        // SAFETY: open_tree reads a valid C string and returns a new descriptor or -1.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_open_tree,
                libc::AT_FDCWD,
                path.as_ptr(),
                OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint,
            )
        };
        if fd < 0 {
            return Err(err(&format!("open_tree {}", dir.display())));
        }
        // SAFETY: `fd` is a fresh descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        let attr = MountAttr {
            attr_set: MOUNT_ATTR_IDMAP,
            attr_clr: 0,
            propagation: 0,
            userns_fd: self.fd.as_raw_fd() as u64,
        };
        // SAFETY: mount_setattr reads `attr` (size given) and the empty path; `fd` is valid.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_mount_setattr,
                fd.as_raw_fd(),
                c"".as_ptr(),
                libc::AT_EMPTY_PATH,
                &attr as *const MountAttr,
                std::mem::size_of::<MountAttr>(),
            )
        };
        if ret < 0 {
            return Err(err(&format!(
                "idmap {} (needs a kernel >= 5.19 and a filesystem that supports idmapped mounts)",
                dir.display()
            )));
        }
        Ok(fd)
    }
}
