//! `guest-agent`: PID 1 of a throwaway VM.
//!
//! Boot: mount /proc, /sys, /dev; load the virtio drivers shipped in the initramfs; mount the
//! image's read-only root disk under a tmpfs overlay (every write is thrown away with the VM);
//! open the host channel and say `Hello`. Then wait for one `Run`: unpack the workspace the
//! host sends, run the step chrooted into the image root with its env and workdir, stream its
//! output, send the workspace back and the exit status, and power off.

mod step;
mod sys;

use std::fs::{self, File};
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use guest_agent::protocol::{self, Hello, Kind, ProtocolError, Run, PROTOCOL_VERSION};
use nix::mount::MsFlags;

/// Where the image root is assembled (and the step chrooted into).
const NEWROOT: &str = "/newroot";

#[derive(Debug, thiserror::Error)]
enum AgentError {
    #[error(transparent)]
    Sys(#[from] sys::SysError),
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    #[error("{0}")]
    Step(String),
}

fn main() {
    if std::process::id() != 1 {
        eprintln!("guest-agent is the init of a runner VM; it does not run on a host");
        std::process::exit(2);
    }
    let mut chan: Option<File> = None;
    if let Err(e) = agent(&mut chan) {
        let msg = e.to_string();
        sys::kmsg(&msg);
        if let Some(c) = chan.as_mut() {
            let _ = protocol::write_frame(c, Kind::Error, msg.as_bytes());
        }
    }
    sys::power_off()
}

fn agent(chan: &mut Option<File>) -> Result<(), AgentError> {
    let (cmdline, init_ms) = boot()?;
    let root_dev = param(&cmdline, "runner.root").unwrap_or("/dev/vda");
    mount_image_root(root_dev)?;
    let path = sys::find_channel(&cmdline, Duration::from_secs(10))?;
    let c = chan.insert(sys::open_channel(&path)?);
    protocol::write_json(
        c,
        Kind::Hello,
        &Hello {
            version: PROTOCOL_VERSION,
            uptime_ms: uptime_ms(),
            init_ms,
            kernel: fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim()
                .to_string(),
        },
    )?;
    let run: Run = match protocol::read_frame(c)? {
        Some((Kind::Run, payload)) => protocol::decode(Kind::Run, &payload)?,
        Some((got, _)) => {
            return Err(ProtocolError::Unexpected {
                expected: Kind::Run,
                got,
            }
            .into())
        }
        None => {
            return Err(AgentError::Step(
                "host closed the channel before Run".into(),
            ))
        }
    };
    let exit = step::run_step(c, &run, Path::new(NEWROOT))?;
    protocol::write_json(c, Kind::Exit, &exit)?;
    Ok(())
}

/// Mount the kernel's file systems and load drivers; returns the kernel command line.
fn boot() -> Result<(String, u64), AgentError> {
    let safe = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    sys::mount_fs("proc", Path::new("/proc"), "proc", safe, None)?;
    let init_ms = uptime_ms();
    let cmdline = fs::read_to_string("/proc/cmdline").unwrap_or_default();
    if cmdline.split_whitespace().any(|w| w == "runner.bare") {
        // Benchmark baseline: the same kernel and initramfs, powered off as soon as init runs.
        sys::power_off();
    }
    sys::mount_fs("sysfs", Path::new("/sys"), "sysfs", safe, None)?;
    sys::mount_fs(
        "devtmpfs",
        Path::new("/dev"),
        "devtmpfs",
        MsFlags::MS_NOSUID,
        None,
    )?;
    sys::load_modules(Path::new("/lib/modules/load.order"))?;
    sys::configure_interface("lo", None)?;
    Ok((cmdline, init_ms))
}

/// The image root: its read-only disk as the lower layer, a tmpfs upper for the step's writes.
fn mount_image_root(dev: &str) -> Result<(), AgentError> {
    let lower = Path::new("/mnt/lower");
    let rw = Path::new("/mnt/rw");
    // The root disk appears once its driver probed; give it a moment like the channel.
    let start = std::time::Instant::now();
    while !Path::new(dev).exists() && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(2));
    }
    sys::mount_fs(dev, lower, "ext4", MsFlags::MS_RDONLY, Some("noload"))?;
    sys::mount_fs("tmpfs", rw, "tmpfs", MsFlags::empty(), Some("mode=0755"))?;
    for d in ["upper", "work"] {
        fs::create_dir_all(rw.join(d)).map_err(|e| AgentError::Step(format!("tmpfs: {e}")))?;
    }
    let opts = "lowerdir=/mnt/lower,upperdir=/mnt/rw/upper,workdir=/mnt/rw/work";
    sys::mount_fs(
        "overlay",
        Path::new(NEWROOT),
        "overlay",
        MsFlags::empty(),
        Some(opts),
    )?;
    let root = PathBuf::from(NEWROOT);
    let safe = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    sys::mount_fs("proc", &root.join("proc"), "proc", safe, None)?;
    sys::mount_fs(
        "sysfs",
        &root.join("sys"),
        "sysfs",
        safe | MsFlags::MS_RDONLY,
        None,
    )?;
    sys::mount_fs(
        "devtmpfs",
        &root.join("dev"),
        "devtmpfs",
        MsFlags::MS_NOSUID,
        None,
    )?;
    sys::mount_fs(
        "devpts",
        &root.join("dev/pts"),
        "devpts",
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666"),
    )?;
    sys::mount_fs("tmpfs", &root.join("dev/shm"), "tmpfs", safe, None)?;
    sys::mount_fs(
        "tmpfs",
        &root.join("tmp"),
        "tmpfs",
        MsFlags::MS_NOSUID,
        Some("mode=1777"),
    )?;
    // Read the shells into the page cache now, while the VM waits for its step (in the warm
    // pool, off the clock): the step's first exec then faults nothing in from the disk.
    for sh in ["bin/sh", "bin/bash"] {
        if let Ok(mut f) = File::open(root.join(sh)) {
            let _ = std::io::copy(&mut f, &mut std::io::sink());
        }
    }
    Ok(())
}

fn param<'a>(cmdline: &'a str, key: &str) -> Option<&'a str> {
    cmdline
        .split_whitespace()
        .find_map(|w| w.strip_prefix(key).and_then(|rest| rest.strip_prefix('=')))
}

fn uptime_ms() -> u64 {
    let mut s = String::new();
    let _ = File::open("/proc/uptime").and_then(|mut f| f.read_to_string(&mut s));
    let secs: f64 = s
        .split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    (secs * 1000.0) as u64
}
