//! One step in one sandbox: set up, clone, wait (or kill), tear down.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::Instant;

use nix::sched::CloneFlags;
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::Pid;
use tokio::io::unix::AsyncFd;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::cgroup::Cgroup;
use super::child::{child_main, ChildPlan, OLD_ROOT};
use super::mounts::{cstr, overlay_data, tree, TreeSpec};
use super::network::veth_name;
use super::policy::DEFAULT_PATH;
use super::state::{start_time, SandboxRecord};
use super::{ContainerError, ContainerExecutor};
use crate::executor::{ImageSpec, JobSpec, LogChunk, Network, Shell, StepResult, StepSpec};

const CHILD_STACK: usize = 256 * 1024;

/// The root filesystem and environment of a step.
pub struct Rootfs {
    pub layers: Vec<PathBuf>,
    pub env: Vec<String>,
    pub host: bool,
    /// Keeps the layers from being pruned until the sandbox is gone.
    pub _lease: crate::executor::LayerLease,
}

fn pipe() -> Result<(OwnedFd, OwnedFd), ContainerError> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| ContainerError::Spawn(format!("pipe: {e}")))
}

/// A running sandbox: removed from the host when dropped, whatever happened.
struct Guard<'a> {
    exec: &'a ContainerExecutor,
    record: SandboxRecord,
    cgroup: Option<Box<dyn Cgroup>>,
    pid: Option<Pid>,
}

impl Drop for Guard<'_> {
    fn drop(&mut self) {
        if let Some(pid) = self.pid {
            // Still ours and not yet reaped: kill the namespace's init (the kernel kills the
            // rest) and reap it.
            if let Some(cg) = &self.cgroup {
                let _ = cg.kill();
            }
            let _ = kill(pid, Signal::SIGKILL);
            let _ = waitpid(pid, None);
        }
        if let Err(e) = self.exec.state.destroy(&self.record) {
            tracing::error!(sandbox = %self.record.name, "cleanup failed: {e}");
        }
    }
}

impl ContainerExecutor {
    pub(crate) async fn run_sandbox(
        &self,
        job: &JobSpec,
        step: &StepSpec,
        rootfs: Rootfs,
        output: mpsc::Sender<LogChunk>,
        cancel: CancellationToken,
    ) -> Result<StepResult, ContainerError> {
        let started = Instant::now();
        let name = self.new_name(&job.id);
        let dir = self.state.sandbox_dir(&name);
        std::fs::create_dir(&dir).map_err(ContainerError::io(&dir))?;
        // By default the upper dir lives on a tmpfs the child mounts in its own mount
        // namespace (see child.rs): nothing to create or delete on the host, gone with the
        // sandbox. On disk, it is a directory of the sandbox's, removed with it.
        let on_disk = self.config.scratch == super::Scratch::Disk;
        let scratch = if on_disk {
            dir.clone()
        } else {
            self.state.scratch_dir()
        };
        let (upper, work, merged) = (
            scratch.join("upper"),
            scratch.join("work"),
            scratch.join("root"),
        );
        if on_disk {
            for d in [&upper, &work, &merged] {
                std::fs::create_dir(d).map_err(ContainerError::io(d))?;
            }
            if let Some(map) = &self.config.userns {
                for d in [&upper, &work] {
                    std::os::unix::fs::chown(d, Some(map.host_id), Some(map.host_id))
                        .map_err(ContainerError::io(d))?;
                }
            }
        }
        let mut guard = Guard {
            exec: self,
            record: SandboxRecord {
                name: name.clone(),
                job_id: job.id.clone(),
                ..Default::default()
            },
            cgroup: None,
            pid: None,
        };
        phase(&started, "dirs");
        let cgroup = self.cgroups.create(&name, &step.resources)?;
        guard.record.cgroups = cgroup.dirs();
        guard.cgroup = Some(cgroup);
        let mut lease = None;
        if step.network == Network::Bridge {
            self.config.bridge.ensure()?;
            let (ip, path) = self.config.bridge.lease(&self.config.leases_dir(), &name)?;
            guard.record.lease = Some(path);
            lease = Some(ip);
        }
        // The record is written once, after clone: a crash before that leaves only the directory,
        // whose name is enough for `reconcile` to find the cgroups.
        phase(&started, "cgroup");
        let (sync_r, sync_w) = pipe()?;
        let (err_r, err_w) = pipe()?;
        let (out_r, out_w) = pipe()?;
        let (errout_r, errout_w) = pipe()?;
        let devnull =
            std::fs::File::open("/dev/null").map_err(ContainerError::io("/dev/null".as_ref()))?;
        // The bind source must be absolute and free of symlinks a step could swap.
        let mut workspace =
            std::fs::canonicalize(&job.workspace).map_err(ContainerError::io(&job.workspace))?;
        // User namespace: the layers become idmapped mounts under the sandbox dir, present
        // in the child's copy of our mount namespace and unmounted from ours after the clone.
        // The workspace too, so that host root's files there are the step's root's, and what
        // the step writes lands on the host as root's, as without a user namespace.
        let mut idmapped = Vec::new();
        let mut rootfs = rootfs;
        if let Some(mapping) = &self.mapping {
            let mut sources = rootfs.layers.clone();
            sources.push(workspace.clone());
            for (i, source) in sources.iter().enumerate() {
                let target = dir.join(format!("{}{i}", super::state::LOWER_PREFIX));
                std::fs::create_dir(&target).map_err(ContainerError::io(&target))?;
                // Recorded before mounting: a failure unmounts what is there.
                idmapped.push(target.clone());
                mapping.mount_idmapped(source, &target)?;
            }
            workspace = idmapped.pop().unwrap_or(workspace);
            rootfs.layers = idmapped.clone();
            idmapped.push(workspace.clone());
        }
        let mut plan = self.plan(
            job,
            step,
            &rootfs,
            [&sync_r, &err_w, &out_w, &errout_w].map(|f| f.as_raw_fd()),
            devnull.as_raw_fd(),
            (&scratch, [&upper, &work, &merged], &workspace),
        )?;
        let mut flags = CloneFlags::CLONE_NEWNS
            | CloneFlags::CLONE_NEWPID
            | CloneFlags::CLONE_NEWUTS
            | CloneFlags::CLONE_NEWIPC;
        if step.network != Network::Host {
            flags |= CloneFlags::CLONE_NEWNET;
        }
        if self.config.userns.is_some() {
            flags |= CloneFlags::CLONE_NEWUSER;
        }
        phase(&started, "plan");
        let clone_target = guard
            .cgroup
            .as_ref()
            .and_then(|c| c.clone_target().map(Path::to_path_buf));
        // Without a user namespace or a bridge, the parent has nothing to do between the
        // clone and the step: the child joins its other cgroups itself, and the runner's
        // memory is shared with it instead of copied (see `spawn`).
        let vfork = self.config.userns.is_none() && lease.is_none();
        let mut join = Vec::new();
        if let (true, Some(cg)) = (vfork, &guard.cgroup) {
            for file in cg.procs_files(clone_target.as_deref()) {
                let f = std::fs::OpenOptions::new()
                    .write(true)
                    .open(&file)
                    .map_err(ContainerError::io(&file))?;
                join.push(f);
            }
        }
        plan.join_cgroups = join.iter().map(|f| f.as_raw_fd()).collect();
        let spawned = spawn(&mut plan, flags, clone_target.as_deref(), vfork)?;
        let pid = spawned.pid;
        guard.pid = Some(pid);
        drop((sync_r, err_w, out_w, errout_w, devnull, join));
        for target in &idmapped {
            let _ = nix::mount::umount2(target, nix::mount::MntFlags::MNT_DETACH);
        }
        guard.record.pid = Some(pid.as_raw());
        guard.record.pid_start = start_time(pid.as_raw());
        let veth = veth_name(&name);
        if lease.is_some() {
            guard.record.veth = Some(veth.clone());
        }
        self.state.save(&guard.record)?;
        phase(&started, "clone+save");
        if !spawned.vforked {
            // Everything the child waits for before it may run the step.
            if let Some(cg) = &guard.cgroup {
                cg.add(pid.as_raw(), spawned.placed.as_deref())?;
            }
            if let Some(map) = &self.config.userns {
                map.write(pid.as_raw())?;
            }
            if let Some(ip) = &lease {
                self.config.bridge.attach(&veth, pid.as_raw(), ip)?;
            }
            phase(&started, "cgadd");
            // A child that already failed its setup has closed the pipe; its reason arrives
            // on the error pipe below.
            let _ = nix::unistd::write(&sync_w, &[1]);
        }
        drop(sync_w);

        let pump = tokio::spawn(super::logs::pump(out_r, errout_r, output));
        let exited = watch_exit(spawned.pidfd)?;
        let (mut timed_out, mut cancelled) = (false, false);
        tokio::select! {
            r = exited.readable() => { drop(r); }
            _ = tokio::time::sleep(step.timeout) => timed_out = true,
            _ = cancel.cancelled() => cancelled = true,
        }
        if timed_out || cancelled {
            if let Some(cg) = &guard.cgroup {
                let _ = cg.kill();
            }
            let _ = kill(pid, Signal::SIGKILL);
        }
        phase(&started, "exited");
        let status = reap(pid, &exited).await?;
        guard.pid = None;
        phase(&started, "waitpid");
        let _ = pump.await;
        phase(&started, "pump");
        let setup_error = read_all(err_r);
        let oom_killed = guard.cgroup.as_ref().is_some_and(|c| c.oom_killed());
        drop(guard);
        phase(&started, "destroy");
        if !setup_error.is_empty() {
            return Err(ContainerError::Setup(setup_error));
        }
        let (exit_code, signal) = match status {
            WaitStatus::Exited(_, code) => (Some(code), None),
            WaitStatus::Signaled(_, sig, _) => (None, Some(sig as i32)),
            _ => (None, None),
        };
        Ok(StepResult {
            exit_code,
            signal,
            oom_killed,
            timed_out,
            cancelled,
            duration: started.elapsed(),
        })
    }

    fn plan(
        &self,
        job: &JobSpec,
        step: &StepSpec,
        rootfs: &Rootfs,
        [sync_fd, err_fd, stdout_fd, stderr_fd]: [RawFd; 4],
        stdin_fd: RawFd,
        (scratch, [upper, work, merged], workspace): (&Path, [&PathBuf; 3], &Path),
    ) -> Result<ChildPlan, ContainerError> {
        let mut masked = self.config.masked_paths.clone();
        masked.push(self.config.state_dir.clone());
        let ops = tree(&TreeSpec {
            workspace,
            workdir: &step.workdir,
            host_image: rootfs.host,
            masked: &masked,
            dns: step.network != Network::None,
        })?;
        if job.hostname.is_empty() || job.hostname.len() > 64 {
            return Err(ContainerError::InvalidSpec(format!(
                "hostname {:?} must be 1 to 64 bytes",
                job.hostname
            )));
        }
        let exe = match step.shell {
            Shell::Sh => "/bin/sh",
            Shell::Bash => "/bin/bash",
        };
        let mut strings = vec![cstr(exe)?, cstr("-e")?, cstr("-c")?, cstr(&step.script)?];
        let argc = strings.len();
        for kv in environment(job, step, rootfs) {
            strings.push(cstr(kv)?);
        }
        let mut argv: Vec<_> = strings[..argc].iter().map(|s| s.as_ptr()).collect();
        argv.push(std::ptr::null());
        let mut envp: Vec<_> = strings[argc..].iter().map(|s| s.as_ptr()).collect();
        envp.push(std::ptr::null());
        Ok(ChildPlan {
            sync_fd,
            parent_sync: true,
            join_cgroups: Vec::new(),
            err_fd,
            stdin_fd,
            stdout_fd,
            stderr_fd,
            userns: self.config.userns.is_some(),
            scratch_tmpfs: self.config.scratch == super::Scratch::Memory,
            scratch: cstr(scratch.as_os_str().as_encoded_bytes())?,
            scratch_dirs: [upper, work, merged]
                .map(|d| cstr(d.as_os_str().as_encoded_bytes()))
                .into_iter()
                .collect::<Result<Vec<_>, _>>()?,
            overlay_data: overlay_data(&rootfs.layers, upper, work, self.config.userns.is_some())?,
            root: cstr(merged.as_os_str().as_encoded_bytes())?,
            old_root: cstr(OLD_ROOT)?,
            ops,
            hostname: cstr(&job.hostname)?,
            loopback_up: step.network != Network::Host,
            workdir: cstr(&step.workdir)?,
            kept_caps: super::policy::kept_capability_mask(),
            last_cap: self.last_cap,
            seccomp: self.seccomp.as_ref().clone(),
            exe: cstr(exe)?,
            argv,
            envp,
            _strings: strings,
        })
    }
}

/// The step's environment: image env, then step env, then defaults for what is still unset.
fn environment(job: &JobSpec, step: &StepSpec, rootfs: &Rootfs) -> Vec<String> {
    let mut env: Vec<(String, String)> = Vec::new();
    let mut set = |k: &str, v: &str| {
        env.retain(|(key, _)| key != k);
        env.push((k.to_string(), v.to_string()));
    };
    for kv in &rootfs.env {
        if let Some((k, v)) = kv.split_once('=') {
            set(k, v);
        }
    }
    for (k, v) in &step.env {
        set(k, v);
    }
    for (k, v) in [
        ("PATH", DEFAULT_PATH),
        ("HOME", "/root"),
        ("HOSTNAME", job.hostname.as_str()),
    ] {
        if !env.iter().any(|(key, _)| key == k) {
            env.push((k.to_string(), v.to_string()));
        }
    }
    env.into_iter().map(|(k, v)| format!("{k}={v}")).collect()
}

/// `struct clone_args` of clone3(2).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

const CLONE_PIDFD: u64 = 0x1000;
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// The sandbox's first process: its pid, a pidfd that is readable once it exited, the
/// cgroup directory it was cloned into, if any, and whether it was cloned with `CLONE_VFORK`
/// (so it has already exec'd the step or failed, and the parent has nothing left to do).
struct Spawned {
    pid: Pid,
    pidfd: OwnedFd,
    placed: Option<PathBuf>,
    vforked: bool,
}

/// Clone the sandbox's first process into fresh namespaces (and straight into `cgroup` when
/// given, with clone3).
///
/// With `vfork`, the child shares our memory until it execs and this thread waits for that
/// (`CLONE_VM|CLONE_VFORK`, as `posix_spawn` does): a fork would copy the page tables of the
/// whole runner (about 0.8 ms for `runner exec`, more for a busy agent) and then fault on
/// every page either side writes. Without it (user namespaces and bridges need the parent
/// between clone and exec, and so does a kernel without clone3), a fork, and the child waits
/// on the sync pipe.
fn spawn(
    plan: &mut ChildPlan,
    flags: CloneFlags,
    cgroup: Option<&Path>,
    vfork: bool,
) -> Result<Spawned, ContainerError> {
    let cgroup_dir = match cgroup {
        Some(dir) => Some(std::fs::File::open(dir).map_err(ContainerError::io(dir))?),
        None => None,
    };
    let mut pidfd: libc::c_int = -1;
    let mut args = CloneArgs {
        flags: flags.bits() as u64 | CLONE_PIDFD,
        pidfd: &mut pidfd as *mut libc::c_int as u64,
        exit_signal: libc::SIGCHLD as u64,
        ..Default::default()
    };
    if let Some(dir) = &cgroup_dir {
        args.flags |= CLONE_INTO_CGROUP;
        args.cgroup = dir.as_raw_fd() as u64;
    }
    plan.parent_sync = !(vfork && VFORK_SUPPORTED);
    let ret = if plan.parent_sync {
        plan.join_cgroups.clear();
        // SAFETY: clone3 without CLONE_VM and without a new stack behaves like fork: the
        // child continues here on its own copy of the stack and memory. It only calls
        // `child_main`, which makes raw syscalls on data the plan already holds (no
        // allocation, no locks: see child.rs) and never returns. `args` and `pidfd` are
        // valid for the call.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_clone3,
                &mut args as *mut CloneArgs,
                std::mem::size_of::<CloneArgs>(),
            )
        };
        if ret == 0 {
            child_main(plan);
            // SAFETY: not reached (child_main execs or exits); _exit is always safe to call.
            unsafe { libc::_exit(127) };
        }
        ret
    } else {
        let ret = clone_vfork(&mut args, plan);
        if ret < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ENOSYS) {
            // No clone3: the fork-style fallback below, with the parent's help.
            plan.parent_sync = true;
            plan.join_cgroups.clear();
        }
        ret
    };
    if ret > 0 {
        // SAFETY: CLONE_PIDFD stored a fresh descriptor that we now own.
        let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
        return Ok(Spawned {
            pid: Pid::from_raw(ret as i32),
            pidfd,
            placed: cgroup.map(Path::to_path_buf),
            vforked: !plan.parent_sync,
        });
    }
    let err = std::io::Error::last_os_error();
    if err.raw_os_error() != Some(libc::ENOSYS) {
        return Err(ContainerError::Spawn(format!("clone3: {err}")));
    }
    let mut stack = vec![0u8; CHILD_STACK];
    let plan = &*plan;
    // SAFETY: as for clone3 above; the child runs on `stack`, which its few small frames
    // cannot overflow, in its own copy of memory (no CLONE_VM).
    let pid = unsafe {
        nix::sched::clone(
            Box::new(|| child_main(plan)),
            &mut stack,
            flags,
            Some(libc::SIGCHLD),
        )
    }
    .map_err(|e| ContainerError::Spawn(format!("clone: {e}")))?;
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid.as_raw(), 0) };
    if fd < 0 {
        let err = std::io::Error::last_os_error();
        let _ = kill(pid, Signal::SIGKILL);
        let _ = waitpid(pid, None);
        return Err(ContainerError::Spawn(format!("pidfd_open: {err}")));
    }
    Ok(Spawned {
        pid,
        // SAFETY: `fd` is a fresh descriptor we own.
        pidfd: unsafe { OwnedFd::from_raw_fd(fd as RawFd) },
        placed: None,
        vforked: false,
    })
}

/// Whether [`clone_vfork`] is implemented for this architecture.
const VFORK_SUPPORTED: bool = cfg!(target_arch = "x86_64");

/// clone3 with `CLONE_VM|CLONE_VFORK` on a stack of the child's own: returns the child's pid
/// (or -1 with errno set) once the child has exec'd or exited.
#[cfg(target_arch = "x86_64")]
fn clone_vfork(args: &mut CloneArgs, plan: &ChildPlan) -> libc::c_long {
    /// Where the child starts, on its own stack. Never returns.
    extern "C" fn child_entry(plan: *const ChildPlan) -> ! {
        // SAFETY: the plan outlives the child's use of it: the cloning thread, which owns
        // it, is suspended until the child execs or exits.
        child_main(unsafe { &*plan });
        // SAFETY: not reached (child_main execs or exits); _exit is always safe to call.
        unsafe { libc::_exit(127) }
    }

    let mut stack = vec![0u8; CHILD_STACK];
    // The x86-64 ABI wants the stack pointer 16-byte aligned at a call.
    let skip = stack.as_ptr().align_offset(16);
    let usable = (CHILD_STACK - skip) & !15;
    args.flags |= (libc::CLONE_VM | libc::CLONE_VFORK) as u64;
    args.stack = stack[skip..].as_mut_ptr() as u64;
    args.stack_size = usable as u64;
    // Signals stay blocked until the child has reset every disposition to the default
    // (child.rs): a handler of ours must not run in the child, on memory it shares with us.
    // SAFETY: a filled signal set; the old mask is restored below.
    let old = unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
        old
    };
    let ret: libc::c_long;
    // SAFETY: the raw clone3 syscall. In the parent, only rax (the result), rcx and r11
    // (clobbered by `syscall`) change. The child starts on `stack` (kernel-set rsp, aligned
    // above), with our registers: it clears the frame pointer and calls `child_entry(plan)`,
    // which never returns; `ud2` traps if it ever did. `stack` and `plan` outlive the child's
    // use of them since CLONE_VFORK suspends this thread until the child execs or exits, and
    // the child writes only to its own stack (child.rs).
    unsafe {
        std::arch::asm!(
            "syscall",
            "test rax, rax",
            "jnz 2f",
            "xor ebp, ebp",
            "mov rdi, r12",
            "call r13",
            "ud2",
            "2:",
            inlateout("rax") libc::SYS_clone3 => ret,
            in("rdi") args as *mut CloneArgs,
            in("rsi") std::mem::size_of::<CloneArgs>(),
            in("r12") plan as *const ChildPlan,
            in("r13") child_entry as extern "C" fn(*const ChildPlan) -> !,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    let err = (ret < 0).then(|| -ret as i32);
    // SAFETY: restoring the mask saved above.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut()) };
    drop(stack);
    match err {
        Some(e) => {
            nix::errno::Errno::set_raw(e);
            -1
        }
        None => ret,
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn clone_vfork(_: &mut CloneArgs, _: &ChildPlan) -> libc::c_long {
    unreachable!("VFORK_SUPPORTED is false on this architecture")
}

/// Watch a pidfd: it becomes readable when the process exits.
fn watch_exit(pidfd: OwnedFd) -> Result<AsyncFd<OwnedFd>, ContainerError> {
    // SAFETY: the AsyncFd owns the OwnedFd, so the descriptor stays open and the same for the
    // AsyncFd's whole life.
    unsafe { AsyncFd::register_with_interest(pidfd, tokio::io::Interest::READABLE) }
        .map_err(|e| ContainerError::Spawn(format!("watch the sandbox: {e}")))
}

/// Reap `pid` once its pidfd says it exited (after a kill, wait for that first).
async fn reap(pid: Pid, exited: &AsyncFd<OwnedFd>) -> Result<WaitStatus, ContainerError> {
    use nix::sys::wait::WaitPidFlag;
    loop {
        let mut ready = exited
            .readable()
            .await
            .map_err(|e| ContainerError::Spawn(format!("wait: {e}")))?;
        match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) => ready.clear_ready(),
            Ok(status) => return Ok(status),
            Err(e) => return Err(ContainerError::Spawn(format!("wait: {e}"))),
        }
    }
}

/// Read a pipe whose write ends are all closed.
fn read_all(fd: OwnedFd) -> String {
    use std::io::Read;
    let mut s = String::new();
    let _ = std::fs::File::from(fd).read_to_string(&mut s);
    s
}

/// The step's rootfs for `image`.
pub async fn resolve_rootfs(
    exec: &ContainerExecutor,
    image: &ImageSpec,
    output: &mpsc::Sender<LogChunk>,
) -> Result<Rootfs, ContainerError> {
    match image {
        ImageSpec::Host => Ok(Rootfs {
            layers: vec![PathBuf::from("/")],
            env: vec![],
            host: true,
            _lease: Default::default(),
        }),
        ImageSpec::Oci(reference) => {
            let resolved = exec
                .config
                .images
                .resolve(reference, output)
                .await
                .map_err(|e| ContainerError::Image(e.to_string()))?;
            Ok(Rootfs {
                layers: resolved.layers,
                env: resolved.env,
                host: false,
                _lease: resolved.lease,
            })
        }
    }
}

/// Step start-up is a benchmark figure: log where the time goes (`RUST_LOG=executors=trace`).
fn phase(t: &Instant, what: &str) {
    tracing::trace!(
        elapsed_us = t.elapsed().as_micros() as u64,
        "sandbox phase {what} done"
    );
}
