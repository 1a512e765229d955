//! The code that runs in the sandbox's first process, between `clone` and `execve`.
//!
//! The runner is multi-threaded, so the clone child may only make raw syscalls: another thread
//! could have held the allocator's lock at the moment of `clone`, and that lock is never
//! released in the child. Everything here therefore works on a [`ChildPlan`] built (and
//! allocated) in the parent beforehand, reports errors through a pipe with static strings and
//! an errno, and never allocates, panics or unwinds.
//!
//! Usually the child shares the runner's memory until its `execve` (`CLONE_VM|CLONE_VFORK`,
//! like `posix_spawn`): copying the runner's page tables for a fork cost more than the rest of
//! the clone. It then runs on a stack of its own while the cloning thread is suspended, so it
//! must not write to any memory but that stack: the rules above already guarantee that.

use std::ffi::{c_char, c_ulong, CStr, CString};
use std::os::fd::RawFd;
use std::ptr;

use seccompiler::BpfProgram;

/// Directory inside the new root where the host's root sits between `pivot_root` and its
/// unmount; bind sources are prefixed with it.
pub const OLD_ROOT: &str = "/.runner-oldroot";

/// What to create at a mount target before mounting on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Create {
    Nothing,
    Dir,
    File,
}

/// One step of building the sandbox's file tree, after `pivot_root` (paths are inside it).
#[derive(Debug, Clone)]
pub enum MountOp {
    /// `mount(source, target, fstype, flags, data)`. With `or_empty`, a failure mounts an
    /// empty read-only tmpfs instead (sysfs cannot be mounted in a user namespace that does
    /// not own the network namespace).
    Mount {
        source: CString,
        target: CString,
        fstype: CString,
        flags: c_ulong,
        data: Option<CString>,
        create: Create,
        or_empty: bool,
    },
    /// Bind `source` on `target`, then remount with `flags` (e.g. read-only, nosuid) if any.
    Bind {
        source: CString,
        target: CString,
        flags: c_ulong,
        create: Create,
    },
    /// Hide `target` if it exists: a directory under an empty read-only tmpfs, a file under
    /// `/dev/null`.
    Mask { target: CString },
    /// Make `target` read-only if it exists.
    ReadOnly { target: CString },
    /// Create the symlink `link` -> `target`.
    Symlink { target: CString, link: CString },
}

/// Everything the child needs, prepared by the parent.
#[derive(Debug)]
pub struct ChildPlan {
    /// Read end: one byte arrives once the parent has placed us in cgroups and written our
    /// id maps (awaited first thing with a user namespace, else right before dropping
    /// privileges). EOF means the parent gave up. Only read with `parent_sync`.
    pub sync_fd: RawFd,
    /// Whether the parent still has work to do after the clone (cgroups, id maps, network)
    /// that the child must wait for on `sync_fd`. Never with `CLONE_VFORK`: the parent is
    /// suspended until the child's `execve`.
    pub parent_sync: bool,
    /// `cgroup.procs` files (opened for writing) the child writes itself into first thing.
    pub join_cgroups: Vec<RawFd>,
    /// Write end (close-on-exec): setup errors are written here; EOF at exec means success.
    pub err_fd: RawFd,
    pub stdin_fd: RawFd,
    pub stdout_fd: RawFd,
    pub stderr_fd: RawFd,
    /// Switch to uid/gid 0 of a fresh user namespace.
    pub userns: bool,
    /// Where the child mounts a tmpfs for the overlay's upper and work dirs and its mount
    /// point (`scratch_dirs`, all inside it): what a step writes outside its workspace is
    /// scratch, charged to the step's memory cgroup and gone with its mount namespace, and
    /// the host has no per-step directories to create and delete (on ext4 the deletes alone
    /// cost more than the step's whole file tree). One directory serves every sandbox: each
    /// covers it in its own mount namespace only.
    pub scratch: CString,
    pub scratch_dirs: Vec<CString>,
    /// Mount the tmpfs and create `scratch_dirs` on it; `false`: they are host directories
    /// the parent made (`Scratch::Disk`).
    pub scratch_tmpfs: bool,
    /// Overlay mount of the root: (data) on `root`.
    pub overlay_data: CString,
    pub root: CString,
    pub old_root: CString,
    pub ops: Vec<MountOp>,
    pub hostname: CString,
    /// Bring up `lo` (own network namespace).
    pub loopback_up: bool,
    pub workdir: CString,
    pub kept_caps: u64,
    pub last_cap: u32,
    pub seccomp: Vec<BpfProgram>,
    pub exe: CString,
    pub argv: Vec<*const c_char>,
    pub envp: Vec<*const c_char>,
    /// Owners of the strings `argv` and `envp` point into.
    pub _strings: Vec<CString>,
}

// SAFETY: the raw pointers in `argv`/`envp` point into `_strings`, owned by the same struct and
// never mutated; the plan is only read (by the clone child, in its copy of memory or, under
// CLONE_VM, in ours while the cloning thread waits).
unsafe impl Send for ChildPlan {}
// SAFETY: as above: shared access is read-only.
unsafe impl Sync for ChildPlan {}

/// A failed setup step: what we were doing, and the errno.
type Failure = (&'static str, i32);

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

fn check(ret: libc::c_int, what: &'static str) -> Result<(), Failure> {
    if ret < 0 {
        Err((what, errno()))
    } else {
        Ok(())
    }
}

/// Entry point of the clone child. Never returns on success (the step's shell replaces it).
pub fn child_main(plan: &ChildPlan) -> isize {
    let (what, err) = match setup_and_exec(plan) {
        Ok(never) => match never {},
        Err(f) => f,
    };
    report(plan.err_fd, what, err);
    // SAFETY: `_exit` ends the process without running atexit handlers or flushing stdio
    // buffers that belong to the parent's copy of memory.
    unsafe { libc::_exit(127) }
}

fn report(fd: RawFd, what: &str, err: i32) {
    let desc = nix::errno::Errno::from_raw(err).desc();
    for part in [what.as_bytes(), b": ", desc.as_bytes()] {
        // SAFETY: writing a valid buffer to a file descriptor we own; errors are ignored
        // because there is nowhere left to report them.
        unsafe { libc::write(fd, part.as_ptr().cast(), part.len()) };
    }
}

enum Never {}

fn setup_and_exec(plan: &ChildPlan) -> Result<Never, Failure> {
    stdio_and_signals(plan)?;
    for &fd in &plan.join_cgroups {
        // SAFETY: writing a two-byte buffer to a descriptor the parent opened for us; "0"
        // means the writing process.
        let n = unsafe { libc::write(fd, c"0".as_ptr().cast(), 1) };
        check(n as libc::c_int, "join the step's cgroup")?;
    }
    if plan.userns {
        // Nothing works as root in a user namespace before the parent wrote the id maps.
        wait_for_parent(plan.sync_fd)?;
        become_root()?;
    }
    // SAFETY: setsid has no memory effects; failure (already a leader) is harmless.
    unsafe { libc::setsid() };
    build_root(plan)?;
    // SAFETY: sethostname reads `len` bytes from a valid C string.
    let ret = unsafe { libc::sethostname(plan.hostname.as_ptr(), plan.hostname.as_bytes().len()) };
    check(ret, "sethostname")?;
    if plan.loopback_up {
        loopback_up()?;
    }
    // SAFETY: chdir reads a valid C string.
    let ret = unsafe { libc::chdir(plan.workdir.as_ptr()) };
    check(ret, "chdir to the workdir")?;
    if plan.parent_sync && !plan.userns {
        // The file tree is built while the parent does its bookkeeping; the step's own code
        // must not start before the parent placed us in the limiting cgroups.
        wait_for_parent(plan.sync_fd)?;
    }
    // Now that we are in the step's cgroups, make them the root of what the step sees.
    // SAFETY: unshare with a flag only affects this process.
    let ret = unsafe { libc::unshare(libc::CLONE_NEWCGROUP) };
    check(ret, "unshare cgroup namespace")?;
    drop_privileges(plan)?;
    // SAFETY: argv and envp are NULL-terminated arrays of pointers to C strings owned by the
    // plan, which outlives this call (execve either replaces the process or returns).
    unsafe { libc::execve(plan.exe.as_ptr(), plan.argv.as_ptr(), plan.envp.as_ptr()) };
    Err(("execve of the step's shell", errno()))
}

fn stdio_and_signals(plan: &ChildPlan) -> Result<(), Failure> {
    for (from, to) in [(plan.stdin_fd, 0), (plan.stdout_fd, 1), (plan.stderr_fd, 2)] {
        // SAFETY: dup2 on descriptors the parent opened for us.
        check(unsafe { libc::dup2(from, to) }, "dup2 stdio")?;
    }
    // Everything else the runner had open must not reach the step.
    // SAFETY: close_range only changes descriptor flags of this process.
    unsafe {
        libc::syscall(
            libc::SYS_close_range,
            3u32,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    // The runner ignores SIGPIPE (Rust does by default) and ignored signals survive execve.
    for sig in 1..=64 {
        if sig != libc::SIGKILL && sig != libc::SIGSTOP {
            // SAFETY: resetting a disposition to default; invalid numbers just fail.
            unsafe { libc::signal(sig, libc::SIG_DFL) };
        }
    }
    // SAFETY: an empty, initialised signal set unblocks everything.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigprocmask(libc::SIG_SETMASK, &set, ptr::null_mut());
    }
    Ok(())
}

fn wait_for_parent(fd: RawFd) -> Result<(), Failure> {
    let mut byte = 0u8;
    loop {
        // SAFETY: reading one byte into a valid stack buffer.
        let n = unsafe { libc::read(fd, (&mut byte as *mut u8).cast(), 1) };
        match n {
            1 => break,
            0 => return Err(("the runner went away before the step started", 0)),
            _ if errno() == libc::EINTR => continue,
            _ => return Err(("waiting for the runner", errno())),
        }
    }
    // SAFETY: closing our copy of the sync pipe.
    unsafe { libc::close(fd) };
    Ok(())
}

fn become_root() -> Result<(), Failure> {
    // SAFETY: plain credential syscalls on this process.
    let ret = unsafe { libc::setresgid(0, 0, 0) };
    check(ret, "setresgid in the user namespace")?;
    // SAFETY: as above.
    let ret = unsafe { libc::setresuid(0, 0, 0) };
    check(ret, "setresuid in the user namespace")
}

fn mount(
    src: *const c_char,
    target: &CStr,
    fstype: *const c_char,
    flags: c_ulong,
    data: *const c_char,
    what: &'static str,
) -> Result<(), Failure> {
    // SAFETY: every pointer is NULL or points at a NUL-terminated string owned by the plan.
    check(
        unsafe { libc::mount(src, target.as_ptr(), fstype, flags, data.cast()) },
        what,
    )
}

fn build_root(plan: &ChildPlan) -> Result<(), Failure> {
    let null = ptr::null();
    // Nothing we mount may propagate back to the host.
    mount(
        null,
        c"/",
        null,
        libc::MS_REC | libc::MS_PRIVATE,
        null,
        "make / private",
    )?;
    if plan.scratch_tmpfs {
        mount(
            c"tmpfs".as_ptr(),
            &plan.scratch,
            c"tmpfs".as_ptr(),
            libc::MS_NODEV | libc::MS_NOSUID,
            c"mode=0755".as_ptr(),
            "mount the sandbox's scratch tmpfs",
        )?;
        for dir in &plan.scratch_dirs {
            // SAFETY: mkdir of a valid C string owned by the plan.
            let ret = unsafe { libc::mkdir(dir.as_ptr(), 0o755) };
            check(ret, "mkdir on the scratch tmpfs")?;
        }
    }
    mount(
        c"overlay".as_ptr(),
        &plan.root,
        c"overlay".as_ptr(),
        libc::MS_NODEV | libc::MS_NOSUID,
        plan.overlay_data.as_ptr(),
        "mount the overlay root filesystem",
    )?;
    // SAFETY: chdir into the new root (a valid C string).
    let ret = unsafe { libc::chdir(plan.root.as_ptr()) };
    check(ret, "chdir to the new root")?;
    let old_rel = &plan.old_root.to_bytes()[1..]; // without the leading '/'
    let mut buf = [0u8; 64];
    let old_rel =
        cstr_in(&mut buf, old_rel).ok_or(("old root path too long", libc::ENAMETOOLONG))?;
    // SAFETY: mkdir of a valid relative path; EEXIST is fine.
    if unsafe { libc::mkdir(old_rel.as_ptr(), 0o700) } < 0 && errno() != libc::EEXIST {
        return Err(("mkdir the old root mount point", errno()));
    }
    // SAFETY: pivot_root takes two valid C strings.
    let ret =
        unsafe { libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), old_rel.as_ptr()) } as i32;
    check(ret, "pivot_root")?;
    // SAFETY: chdir to "/" of the new root.
    let ret = unsafe { libc::chdir(c"/".as_ptr()) };
    check(ret, "chdir /")?;
    for op in &plan.ops {
        apply(op)?;
    }
    // SAFETY: detach the host's root from our namespace; valid C string.
    let ret = unsafe { libc::umount2(plan.old_root.as_ptr(), libc::MNT_DETACH) };
    check(ret, "unmount the host root")?;
    // SAFETY: rmdir of a valid C string; a leftover empty directory would only be cosmetic.
    unsafe { libc::rmdir(plan.old_root.as_ptr()) };
    Ok(())
}

/// Copy `bytes` plus a NUL into `buf`.
fn cstr_in<'a>(buf: &'a mut [u8], bytes: &[u8]) -> Option<&'a CStr> {
    if bytes.len() >= buf.len() {
        return None;
    }
    buf[..bytes.len()].copy_from_slice(bytes);
    buf[bytes.len()] = 0;
    CStr::from_bytes_with_nul(&buf[..=bytes.len()]).ok()
}

/// `mkdir -p` without allocating.
fn mkdir_p(path: &CStr) -> Result<(), Failure> {
    let bytes = path.to_bytes();
    let mut buf = [0u8; 4096];
    if bytes.len() >= buf.len() {
        return Err(("mount target path too long", libc::ENAMETOOLONG));
    }
    for end in (1..=bytes.len()).filter(|&i| i == bytes.len() || bytes[i] == b'/') {
        buf[..end].copy_from_slice(&bytes[..end]);
        buf[end] = 0;
        // SAFETY: buf holds a NUL-terminated prefix of the path.
        if unsafe { libc::mkdir(buf.as_ptr().cast(), 0o755) } < 0 && errno() != libc::EEXIST {
            return Err(("mkdir of a mount target", errno()));
        }
    }
    Ok(())
}

fn parent_of(path: &CStr, buf: &mut [u8; 4096]) -> Option<usize> {
    let bytes = path.to_bytes();
    let cut = bytes.iter().rposition(|&b| b == b'/')?;
    if cut == 0 || cut >= buf.len() {
        return None;
    }
    buf[..cut].copy_from_slice(&bytes[..cut]);
    buf[cut] = 0;
    Some(cut)
}

fn create(target: &CStr, kind: Create) -> Result<(), Failure> {
    match kind {
        Create::Nothing => Ok(()),
        Create::Dir => mkdir_p(target),
        Create::File => {
            let mut buf = [0u8; 4096];
            if let Some(len) = parent_of(target, &mut buf) {
                let parent = CStr::from_bytes_with_nul(&buf[..=len])
                    .map_err(|_| ("bad mount target", libc::EINVAL))?;
                mkdir_p(parent)?;
            }
            // SAFETY: open/close of a valid C string path.
            let fd = unsafe {
                libc::open(
                    target.as_ptr(),
                    libc::O_CREAT | libc::O_WRONLY | libc::O_CLOEXEC,
                    0o644,
                )
            };
            if fd < 0 {
                return Err(("create a mount target file", errno()));
            }
            // SAFETY: closing the descriptor just opened.
            unsafe { libc::close(fd) };
            Ok(())
        }
    }
}

/// `None` if the path does not exist, else whether it is a directory.
fn is_dir(path: &CStr) -> Result<Option<bool>, Failure> {
    // SAFETY: stat fills a zeroed, properly sized struct.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: valid C string and stat buffer.
    if unsafe { libc::stat(path.as_ptr(), &mut st) } < 0 {
        return match errno() {
            libc::ENOENT | libc::ENOTDIR => Ok(None),
            e => Err(("stat a path to mask", e)),
        };
    }
    Ok(Some(st.st_mode & libc::S_IFMT == libc::S_IFDIR))
}

const LOCKED: c_ulong = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;

fn apply(op: &MountOp) -> Result<(), Failure> {
    let null = ptr::null();
    match op {
        MountOp::Mount {
            source,
            target,
            fstype,
            flags,
            data,
            create: kind,
            or_empty,
        } => {
            create(target, *kind)?;
            let data = data.as_ref().map_or(null, |d| d.as_ptr());
            let res = mount(
                source.as_ptr(),
                target,
                fstype.as_ptr(),
                *flags,
                data,
                "mount",
            );
            match res {
                Err(_) if *or_empty => mount(
                    c"tmpfs".as_ptr(),
                    target,
                    c"tmpfs".as_ptr(),
                    libc::MS_RDONLY | LOCKED,
                    c"mode=755".as_ptr(),
                    "mount an empty tmpfs",
                ),
                other => other,
            }
        }
        MountOp::Bind {
            source,
            target,
            flags,
            create: kind,
        } => {
            create(target, *kind)?;
            mount(
                source.as_ptr(),
                target,
                null,
                libc::MS_BIND | libc::MS_REC,
                null,
                "bind mount",
            )?;
            if *flags != 0 {
                mount(
                    null,
                    target,
                    null,
                    libc::MS_BIND | libc::MS_REMOUNT | flags,
                    null,
                    "remount a bind mount",
                )?;
            }
            Ok(())
        }
        MountOp::Mask { target } => match is_dir(target)? {
            None => Ok(()),
            Some(true) => mount(
                c"tmpfs".as_ptr(),
                target,
                c"tmpfs".as_ptr(),
                libc::MS_RDONLY | LOCKED,
                c"mode=755,size=4k".as_ptr(),
                "mask a directory",
            ),
            Some(false) => mount(
                c"/dev/null".as_ptr(),
                target,
                null,
                libc::MS_BIND,
                null,
                "mask a file",
            ),
        },
        MountOp::ReadOnly { target } => {
            if is_dir(target)?.is_none() {
                return Ok(());
            }
            mount(
                target.as_ptr(),
                target,
                null,
                libc::MS_BIND | libc::MS_REC,
                null,
                "bind read-only path",
            )?;
            mount(
                null,
                target,
                null,
                libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY | LOCKED,
                null,
                "remount a path read-only",
            )
        }
        MountOp::Symlink { target, link } => {
            // SAFETY: symlink of two valid C strings.
            if unsafe { libc::symlink(target.as_ptr(), link.as_ptr()) } < 0
                && errno() != libc::EEXIST
            {
                return Err(("symlink in /dev", errno()));
            }
            Ok(())
        }
    }
}

fn loopback_up() -> Result<(), Failure> {
    // SAFETY: a plain datagram socket, closed below.
    let sock = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    check(sock, "socket for loopback")?;
    // SAFETY: ifreq is plain old data; zeroed is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as c_char;
    }
    // SAFETY: SIOCGIFFLAGS/SIOCSIFFLAGS read and write the flags member of a valid ifreq.
    let res = unsafe {
        if libc::ioctl(sock, libc::SIOCGIFFLAGS as _, &mut req) < 0 {
            -1
        } else {
            req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
            libc::ioctl(sock, libc::SIOCSIFFLAGS as _, &req)
        }
    };
    let err = errno();
    // SAFETY: closing the socket opened above.
    unsafe { libc::close(sock) };
    if res < 0 {
        return Err(("bring up the loopback interface", err));
    }
    Ok(())
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

fn drop_privileges(plan: &ChildPlan) -> Result<(), Failure> {
    for cap in 0..=plan.last_cap {
        if plan.kept_caps & (1u64 << cap) == 0 {
            // SAFETY: PR_CAPBSET_DROP takes a capability number; no memory is touched.
            let r = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as c_ulong, 0, 0, 0) };
            if r < 0 && errno() != libc::EINVAL {
                return Err(("drop a capability from the bounding set", errno()));
            }
        }
    }
    // SAFETY: clears the ambient set; no memory is touched.
    unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as c_ulong,
            0,
            0,
            0,
        )
    };
    let low = plan.kept_caps as u32;
    let high = (plan.kept_caps >> 32) as u32;
    let header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let data = [
        CapData {
            effective: low,
            permitted: low,
            inheritable: low,
        },
        CapData {
            effective: high,
            permitted: high,
            inheritable: high,
        },
    ];
    // SAFETY: capset reads a v3 header and two data structs, which is what we pass.
    let r = unsafe { libc::syscall(libc::SYS_capset, &header, data.as_ptr()) };
    check(r as i32, "capset")?;
    // SAFETY: sets a process flag; no memory is touched.
    let ret = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
    check(ret, "set no_new_privs")?;
    for prog in &plan.seccomp {
        seccompiler::apply_filter(prog).map_err(|e| match e {
            seccompiler::Error::Seccomp(io) | seccompiler::Error::Prctl(io) => {
                ("install the seccomp filter", io.raw_os_error().unwrap_or(0))
            }
            _ => ("install the seccomp filter", libc::EINVAL),
        })?;
    }
    Ok(())
}
