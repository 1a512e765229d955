//! `runner doctor`: what this host can do. Each check prints one line; the exit code is 1 if
//! any check needed by a sandbox backend failed, so scripts can gate on it.

use std::path::Path;

use executors::vm::KvmKind;

use super::Context;
use crate::config::Config;

#[derive(Debug, clap::Args)]
pub struct Args {}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Level {
    Ok,
    /// Works, with a limit worth knowing.
    Note,
    Fail,
}

struct Check {
    level: Level,
    what: &'static str,
    detail: String,
}

pub async fn run(ctx: &Context, _args: Args) -> anyhow::Result<u8> {
    let config = Config::load(&ctx.paths.config_file)?;
    let vm = config.vm.to_vm_config(&ctx.paths.data_dir)?;
    let mut checks = vec![
        namespaces(),
        cgroups(&read("/proc/mounts")),
        overlayfs(&read("/proc/filesystems")),
        kvm(KvmKind::detect()),
        qemu(&vm.qemu).await,
    ];
    checks.push(runtime_dir(
        &ctx.paths.runtime_dir,
        on_tmpfs(&ctx.paths.runtime_dir),
    ));
    checks.push(guest_kernel(&vm.kernel_dir));
    checks.push(match std::fs::metadata(&vm.agent) {
        Ok(_) => ok("guest agent", vm.agent.display().to_string()),
        Err(e) => fail(
            "guest agent",
            format!(
                "{}: {e} (deploy/setup-vm-kernel.sh builds it)",
                vm.agent.display()
            ),
        ),
    });
    let mut failed = false;
    for c in &checks {
        let mark = match c.level {
            Level::Ok => "ok  ",
            Level::Note => "note",
            Level::Fail => "FAIL",
        };
        failed |= c.level == Level::Fail;
        println!("{mark}  {:<13} {}", c.what, c.detail);
    }
    Ok(u8::from(failed))
}

fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

fn ok(what: &'static str, detail: impl Into<String>) -> Check {
    Check {
        level: Level::Ok,
        what,
        detail: detail.into(),
    }
}

fn fail(what: &'static str, detail: impl Into<String>) -> Check {
    Check {
        level: Level::Fail,
        what,
        detail: detail.into(),
    }
}

fn namespaces() -> Check {
    let wanted = ["mnt", "pid", "net", "uts", "ipc", "user", "cgroup"];
    let missing: Vec<_> = wanted
        .iter()
        .filter(|n| !Path::new("/proc/self/ns").join(n).exists())
        .collect();
    if missing.is_empty() {
        ok("namespaces", wanted.join(" "))
    } else {
        fail("namespaces", format!("missing: {missing:?}"))
    }
}

/// cgroup layout from `/proc/mounts`: v2 only, v1 only, or hybrid (v1 controllers plus a v2
/// tree, which then usually lacks the memory and pids controllers).
fn cgroups(mounts: &str) -> Check {
    let mut v1 = Vec::new();
    let mut v2 = None;
    for l in mounts.lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        match f.as_slice() {
            [_, dir, "cgroup2", ..] => v2 = Some(dir.to_string()),
            [_, _, "cgroup", opts, ..] => v1.extend(
                opts.split(',')
                    .filter(|o| {
                        [
                            "cpu", "cpuacct", "memory", "pids", "cpuset", "blkio", "io", "devices",
                            "freezer",
                        ]
                        .contains(o)
                    })
                    .map(str::to_string),
            ),
            _ => {}
        }
    }
    let v2_ctrls = v2
        .as_ref()
        .map(|d| read(&format!("{d}/cgroup.controllers")).trim().to_string());
    match (v1.is_empty(), v2) {
        (true, None) => fail("cgroups", "no cgroup file system mounted"),
        (true, Some(d)) => ok(
            "cgroups",
            format!("v2 at {d} (controllers: {})", v2_ctrls.unwrap_or_default()),
        ),
        (false, None) => ok("cgroups", format!("v1 (controllers: {})", v1.join(" "))),
        (false, Some(d)) => Check {
            level: Level::Note,
            what: "cgroups",
            detail: format!(
                "hybrid: v1 controllers {}; v2 at {d} with [{}]",
                v1.join(" "),
                v2_ctrls.unwrap_or_default()
            ),
        },
    }
}

fn overlayfs(filesystems: &str) -> Check {
    if filesystems
        .lines()
        .any(|l| l.split_whitespace().last() == Some("overlay"))
    {
        ok("overlayfs", "available")
    } else {
        // It may still be a loadable module.
        Check {
            level: Level::Note,
            what: "overlayfs",
            detail: "not registered yet (modprobe overlay)".into(),
        }
    }
}

fn kvm(kind: KvmKind) -> Check {
    let backend = if kind.can_boot_linux() {
        "VMs use QEMU with KVM"
    } else {
        "VMs use QEMU with TCG (slower)"
    };
    Check {
        level: if kind.can_boot_linux() {
            Level::Ok
        } else {
            Level::Note
        },
        what: "kvm",
        detail: format!("{}: {backend}", kind.describe()),
    }
}

async fn qemu(binary: &Path) -> Check {
    match tokio::process::Command::new(binary)
        .arg("--version")
        .output()
        .await
    {
        Ok(o) if o.status.success() => ok(
            "qemu",
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or_default()
                .to_string(),
        ),
        Ok(o) => fail(
            "qemu",
            format!("{} --version exited with {}", binary.display(), o.status),
        ),
        Err(e) => fail(
            "qemu",
            format!("{}: {e} (install qemu-system-x86)", binary.display()),
        ),
    }
}

/// Whether `path` (or, if it does not exist yet, its nearest existing parent) is on a tmpfs;
/// `None` if that cannot be told.
fn on_tmpfs(path: &Path) -> Option<bool> {
    let existing = path.ancestors().find(|p| p.exists())?;
    let fs = nix::sys::statfs::statfs(existing).ok()?;
    Some(fs.filesystem_type() == nix::sys::statfs::TMPFS_MAGIC)
}

/// The runtime dir holds the locks, sandbox records and mount points of live runs: on a disk
/// every run pays for creating and deleting them.
fn runtime_dir(dir: &Path, tmpfs: Option<bool>) -> Check {
    match tmpfs {
        Some(true) => ok("runtime dir", format!("{} (tmpfs)", dir.display())),
        Some(false) => Check {
            level: Level::Note,
            what: "runtime dir",
            detail: format!(
                "{} is not on tmpfs: each `runner exec` creates and deletes its run directory \
                 on disk (~0.3 ms more per run on ext4); --runtime-dir or RUNNER_RUNTIME_DIR \
                 can point at a tmpfs (/run is one on systemd hosts)",
                dir.display()
            ),
        },
        None => Check {
            level: Level::Note,
            what: "runtime dir",
            detail: format!("{}: cannot tell which filesystem it is on", dir.display()),
        },
    }
}

fn guest_kernel(dir: &Path) -> Check {
    match executors::vm::kernel::GuestKernel::find(dir) {
        Ok(k) => ok(
            "guest kernel",
            format!("{} in {}", k.release, dir.display()),
        ),
        Err(e) => fail("guest kernel", e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_layouts() {
        let hybrid = "cgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\n\
                      cgroup /sys/fs/cgroup/memory cgroup rw,nosuid,memory 0 0\n\
                      cgroup /sys/fs/cgroup/pids cgroup rw,pids 0 0\n";
        let c = cgroups(hybrid);
        assert_eq!(c.level, Level::Note);
        assert!(
            c.detail.starts_with("hybrid: v1 controllers memory pids"),
            "{}",
            c.detail
        );
        let v2 = cgroups("cgroup2 /sys/fs/cgroup cgroup2 rw 0 0\n");
        assert_eq!(v2.level, Level::Ok);
        assert!(v2.detail.starts_with("v2 at /sys/fs/cgroup"));
        assert_eq!(cgroups("proc /proc proc rw 0 0\n").level, Level::Fail);
    }

    #[test]
    fn runtime_dir_lines() {
        let dir = Path::new("/run/runner");
        assert_eq!(runtime_dir(dir, Some(true)).level, Level::Ok);
        let disk = runtime_dir(dir, Some(false));
        assert_eq!(disk.level, Level::Note);
        assert!(disk.detail.contains("--runtime-dir"), "{}", disk.detail);
        assert_eq!(runtime_dir(dir, None).level, Level::Note);
        // /dev/shm is a tmpfs on every Linux host; / here is not (ext4 in CI).
        assert_eq!(on_tmpfs(Path::new("/dev/shm/surely/not/there")), Some(true));
    }

    #[test]
    fn overlay_and_kvm_lines() {
        assert_eq!(overlayfs("nodev\tproc\nnodev\toverlay\n").level, Level::Ok);
        assert_eq!(overlayfs("nodev\tproc\n").level, Level::Note);
        let k = kvm(KvmKind::Pvm);
        assert!(
            k.detail.contains("PVM") && k.detail.contains("TCG"),
            "{}",
            k.detail
        );
        assert_eq!(kvm(KvmKind::Hardware("kvm_intel")).level, Level::Ok);
    }
}
