//! Running the one step: workspace in, process with streamed output, workspace out.

use std::fs::{self, File};
use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Command, Stdio};

use guest_agent::protocol::{self, Exit, FrameReader, FrameWriter, Kind, Run};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use crate::sys;
use crate::AgentError;

/// User-mode NAT (QEMU's slirp) hands out fixed addresses; no DHCP client needed.
const GUEST_IP: [u8; 4] = [10, 0, 2, 15];
const NETMASK: [u8; 4] = [255, 255, 255, 0];
const GATEWAY: [u8; 4] = [10, 0, 2, 2];
const DNS: &str = "10.0.2.3";

fn step_err(what: &str) -> impl FnOnce(std::io::Error) -> AgentError + '_ {
    move |e| AgentError::Step(format!("{what}: {e}"))
}

pub fn run_step(chan: &mut File, run: &Run, root: &Path) -> Result<Exit, AgentError> {
    let _ = nix::unistd::sethostname(&run.hostname);
    let _ = fs::write(root.join("etc/hostname"), format!("{}\n", run.hostname));
    let _ = fs::write(
        root.join("etc/hosts"),
        format!("127.0.0.1\tlocalhost\n127.0.1.1\t{}\n", run.hostname),
    );
    if run.network {
        sys::load_module(Path::new("/lib/modules/net/failover.ko"))?;
        sys::load_module(Path::new("/lib/modules/net/net_failover.ko"))?;
        sys::load_module(Path::new("/lib/modules/net/virtio_net.ko"))?;
        wait_for(Path::new("/sys/class/net/eth0"));
        sys::configure_interface("eth0", Some((GUEST_IP, NETMASK)))?;
        sys::add_default_route(GATEWAY)?;
        let _ = fs::write(root.join("etc/resolv.conf"), format!("nameserver {DNS}\n"));
    }
    let ws = root.join(run.workdir.trim_start_matches('/'));
    fs::create_dir_all(&ws).map_err(step_err("create workspace"))?;
    if run.workspace {
        let mut reader = FrameReader::new(chan, Kind::WorkspaceIn, Kind::WorkspaceInEnd);
        let mut ar = tar::Archive::new(&mut reader);
        ar.set_preserve_permissions(true);
        ar.set_preserve_ownerships(true);
        ar.set_overwrite(true);
        ar.unpack(&ws).map_err(step_err("unpack workspace"))?;
        reader.drain().map_err(step_err("workspace stream"))?;
    }
    let exit = spawn_and_stream(chan, run, root)?;
    // Whatever the step left running dies now, before the workspace is read back.
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(-1), nix::sys::signal::SIGKILL);
    send_workspace(chan, &ws)?;
    Ok(exit)
}

fn wait_for(path: &Path) {
    let start = std::time::Instant::now();
    while !path.exists() && start.elapsed().as_secs() < 10 {
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
}

fn spawn_and_stream(chan: &mut File, run: &Run, root: &Path) -> Result<Exit, AgentError> {
    let Some((prog, args)) = run.argv.split_first() else {
        return Err(AgentError::Step("empty command".into()));
    };
    let root_c = std::ffi::CString::new(root.as_os_str().as_encoded_bytes())
        .map_err(|_| AgentError::Step("bad root path".into()))?;
    let workdir_c = std::ffi::CString::new(run.workdir.as_bytes())
        .map_err(|_| AgentError::Step("workdir contains a NUL byte".into()))?;
    let mut cmd = Command::new(prog);
    cmd.args(args)
        .env_clear()
        .envs(&run.env)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: the closure only makes async-signal-safe syscalls (chroot, chdir, setsid) on
    // strings allocated before the fork.
    unsafe {
        cmd.pre_exec(move || {
            nix::unistd::chroot(root_c.as_c_str())?;
            nix::unistd::chdir(workdir_c.as_c_str())?;
            nix::unistd::setsid()?;
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| AgentError::Step(format!("cannot start {prog}: {e}")))?;
    let out: OwnedFd = child
        .stdout
        .take()
        .map(Into::into)
        .ok_or_else(|| AgentError::Step("no stdout".into()))?;
    let err: OwnedFd = child
        .stderr
        .take()
        .map(Into::into)
        .ok_or_else(|| AgentError::Step("no stderr".into()))?;
    let mut open = [Some((out, Kind::Stdout)), Some((err, Kind::Stderr))];
    let mut buf = vec![0u8; protocol::CHUNK];
    let mut status = None;
    while open.iter().any(Option::is_some) {
        let mut fds: Vec<PollFd> = open
            .iter()
            .flatten()
            .map(|(fd, _)| PollFd::new(fd.as_fd(), PollFlags::POLLIN))
            .collect();
        // Once the shell has exited, output still held open by a background process is
        // drained only while it keeps flowing.
        let timeout = if status.is_some() { 200u16 } else { 100u16 };
        let n = match poll(&mut fds, PollTimeout::from(timeout)) {
            Ok(n) => n,
            Err(nix::Error::EINTR) => continue,
            Err(e) => return Err(AgentError::Step(format!("poll: {e}"))),
        };
        let ready: Vec<bool> = fds
            .iter()
            .map(|f| f.revents().is_some_and(|r| !r.is_empty()))
            .collect();
        drop(fds);
        if n == 0 {
            if status.is_some() {
                break;
            }
            status = child.try_wait().map_err(step_err("wait"))?;
            continue;
        }
        let mut idx = 0;
        for slot in open.iter_mut() {
            let Some((fd, kind)) = slot else { continue };
            let is_ready = ready[idx];
            idx += 1;
            if !is_ready {
                continue;
            }
            match nix::unistd::read(fd.as_fd(), &mut buf) {
                Ok(0) => *slot = None,
                Ok(n) => protocol::write_frame(chan, *kind, &buf[..n])?,
                Err(nix::Error::EINTR | nix::Error::EAGAIN) => {}
                Err(_) => *slot = None,
            }
        }
    }
    let status = match status {
        Some(s) => s,
        None => child.wait().map_err(step_err("wait"))?,
    };
    Ok(Exit {
        code: status.code(),
        signal: status.signal(),
    })
}

fn send_workspace(chan: &mut File, ws: &Path) -> Result<(), AgentError> {
    {
        let mut w = FrameWriter::new(chan, Kind::WorkspaceOut);
        let mut b = tar::Builder::new(&mut w);
        b.follow_symlinks(false);
        b.mode(tar::HeaderMode::Complete);
        b.append_dir_all(".", ws)
            .map_err(step_err("pack workspace"))?;
        b.into_inner()
            .and_then(|w| w.flush())
            .map_err(step_err("send workspace"))?;
    }
    protocol::write_frame(chan, Kind::WorkspaceOutEnd, &[])?;
    Ok(())
}
