//! What a test can need of this machine, and how to tell whether it is there.
//!
//! This file is compiled twice: into `testkit` (the check a test makes when it starts) and into
//! `testkit-macros` (the same check made when the test is compiled, to mark it ignored with the
//! reason). One source, so the two can never disagree about what "has root" means.

use std::path::{Path, PathBuf};

/// A capability of the machine a test cannot run without. Missing in strict mode (CI): the
/// test fails with the reason. Missing elsewhere: the test is reported as ignored, with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need<'a> {
    /// Effective uid 0: namespaces, mounts, cgroups, overlayfs.
    Root,
    /// `/dev/kvm`, openable for reading and writing (any kind: hardware or PVM).
    Kvm,
    /// The guest kernel `deploy/setup-vm-kernel.sh` unpacks (`boot/vmlinuz-*` in [`kernel_dir`]).
    GuestKernel,
    /// A Python 3 module (`python3 -c 'import NAME'` succeeds).
    PythonModule(&'a str),
}

impl Need<'_> {
    /// What the test needs and why, for a reader of the test summary.
    pub fn describe(&self) -> String {
        match self {
            Need::Root => "root (namespaces, mounts, cgroups)".into(),
            Need::Kvm => "/dev/kvm, readable and writable".into(),
            Need::GuestKernel => format!(
                "the guest kernel in {} (deploy/setup-vm-kernel.sh)",
                kernel_dir().display()
            ),
            Need::PythonModule(m) => format!("the Python module {m} (deploy/setup.sh installs it)"),
        }
    }

    /// `Err` says what this machine has instead.
    pub fn check(&self) -> Result<(), String> {
        match self {
            Need::Root => match euid() {
                Some(0) => Ok(()),
                Some(uid) => Err(format!("running as uid {uid}")),
                None => Err("the effective uid is unreadable from /proc/self/status".into()),
            },
            Need::Kvm => std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/kvm")
                .map(drop)
                .map_err(|e| format!("cannot open /dev/kvm: {e}")),
            Need::GuestKernel => {
                let boot = kernel_dir().join("boot");
                let found = std::fs::read_dir(&boot).ok().is_some_and(|mut entries| {
                    entries.any(|e| {
                        e.is_ok_and(|e| e.file_name().to_string_lossy().starts_with("vmlinuz-"))
                    })
                });
                if found {
                    Ok(())
                } else {
                    Err(format!("no vmlinuz-* in {}", boot.display()))
                }
            }
            Need::PythonModule(m) => {
                match std::process::Command::new("python3")
                    .args(["-c", &format!("import {m}")])
                    .stdin(std::process::Stdio::null())
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .status()
                {
                    Ok(s) if s.success() => Ok(()),
                    Ok(_) => Err(format!("python3 cannot import {m}")),
                    Err(e) => Err(format!("cannot run python3: {e}")),
                }
            }
        }
    }
}

/// A kind of host a test is about. Unlike a [`Need`], a host of another kind is no fault of the
/// machine, so such a test is ignored there even in strict mode: each of these tests has a
/// counterpart for the other kind of host (hardware KVM: a real boot; elsewhere: the refusal).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Host {
    /// KVM backed by VT-x/AMD-V (`kvm_intel` or `kvm_amd`): a stock Linux guest boots.
    HardwareKvm,
    /// No KVM that can boot a stock Linux guest: none at all, PVM, or an unknown backend.
    NoHardwareKvm,
    /// KVM backed by PVM (`kvm_pvm`): only hand-made guests run.
    PvmKvm,
    /// Hybrid cgroups: v1 controllers plus a v2 tree at `/sys/fs/cgroup/unified`. On a pure v2
    /// host the v2 driver is the host's own and every container test runs it.
    HybridCgroups,
}

impl Host {
    pub fn describe(&self) -> &'static str {
        match self {
            Host::HardwareKvm => "hosts with hardware KVM (kvm_intel or kvm_amd)",
            Host::NoHardwareKvm => "hosts without hardware KVM (none, PVM or unknown)",
            Host::PvmKvm => "PVM hosts (kvm_pvm)",
            Host::HybridCgroups => "hybrid cgroup hosts (v1 controllers + /sys/fs/cgroup/unified)",
        }
    }

    /// `Err` describes this host.
    pub fn check(&self) -> Result<(), String> {
        let kvm = kvm_kind();
        let ok = match self {
            Host::HardwareKvm => kvm.starts_with("hardware"),
            Host::NoHardwareKvm => !kvm.starts_with("hardware"),
            Host::PvmKvm => kvm == "PVM",
            Host::HybridCgroups => {
                return if Path::new("/sys/fs/cgroup/unified/cgroup.procs").exists() {
                    Ok(())
                } else {
                    Err("this host has no v2 tree at /sys/fs/cgroup/unified".into())
                };
            }
        };
        if ok {
            Ok(())
        } else {
            Err(format!("this host's KVM is {kvm}"))
        }
    }
}

/// This host's KVM, as the tests name it; decided as `executors::vm::KvmKind` does (from the
/// loaded modules), but on its own so that a test's applicability never depends on the code
/// under test.
pub fn kvm_kind() -> String {
    if !Path::new("/dev/kvm").exists() {
        return "absent".into();
    }
    let loaded = |m: &str| Path::new("/sys/module").join(m).exists();
    if loaded("kvm_pvm") {
        "PVM".into()
    } else if loaded("kvm_intel") {
        "hardware (kvm_intel)".into()
    } else if loaded("kvm_amd") {
        "hardware (kvm_amd)".into()
    } else {
        "of an unknown kind".into()
    }
}

/// Strict mode: a missing [`Need`] fails the test instead of leaving it ignored.
/// `RUNNER_TEST_STRICT=1` asks for it (deploy/test.sh sets it); failing that, a `CI` variable
/// that is set and not "", "0" or "false" (CI services set `CI=true`) does.
pub fn strict() -> bool {
    strict_given(
        std::env::var("RUNNER_TEST_STRICT").ok().as_deref(),
        std::env::var("CI").ok().as_deref(),
    )
}

/// [`strict`] for given values of `RUNNER_TEST_STRICT` and `CI`.
pub fn strict_given(runner_test_strict: Option<&str>, ci: Option<&str>) -> bool {
    let on = |v: &str| !matches!(v.trim().to_ascii_lowercase().as_str(), "" | "0" | "false");
    match runner_test_strict {
        Some(v) => on(v),
        None => ci.is_some_and(on),
    }
}

/// The effective uid of this process, from `/proc/self/status` (no libc needed here).
pub fn euid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

/// Where the guest kernel is: `$RUNNER_VM_KERNEL_DIR`, `$VMM_TEST_KERNEL_DIR`, or
/// `${RUNNER_DATA_DIR:-/var/lib/runner}/vm/kernel` (where deploy/setup-vm-kernel.sh puts it).
pub fn kernel_dir() -> PathBuf {
    for var in ["RUNNER_VM_KERNEL_DIR", "VMM_TEST_KERNEL_DIR"] {
        if let Some(d) = std::env::var_os(var).filter(|d| !d.is_empty()) {
            return PathBuf::from(d);
        }
    }
    let data = std::env::var_os("RUNNER_DATA_DIR")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/lib/runner"));
    data.join("vm/kernel")
}
