//! What kind of KVM this host offers, and opening it.
//!
//! Hardware KVM (`kvm_intel` / `kvm_amd`) runs an unmodified Linux guest. PVM (`kvm_pvm`) is
//! KVM implemented without VT-x/AMD-V, for hosts that are themselves VMs: it runs small
//! hand-made guests, but an unmodified Linux kernel cannot boot on it, so booting Linux there is
//! refused up front instead of failing after a long, silent boot.

use std::path::Path;

use kvm_ioctls::{Cap, Kvm};
use thiserror::Error;

/// The KVM implementations we tell apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KvmKind {
    /// Intel VT-x (`kvm_intel`).
    Intel,
    /// AMD-V (`kvm_amd`).
    Amd,
    /// PVM (`kvm_pvm`): software-assisted KVM without hardware virtualization.
    Pvm,
    /// `/dev/kvm` exists but no known vendor module is loaded (e.g. built in without sysfs).
    Unknown,
}

impl KvmKind {
    /// Whether an unmodified Linux guest can boot on this kind of KVM.
    pub fn boots_linux(self) -> bool {
        matches!(self, KvmKind::Intel | KvmKind::Amd)
    }
}

impl std::fmt::Display for KvmKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            KvmKind::Intel => "hardware (kvm_intel)",
            KvmKind::Amd => "hardware (kvm_amd)",
            KvmKind::Pvm => "PVM (kvm_pvm, no hardware virtualization)",
            KvmKind::Unknown => "unknown (no kvm_intel, kvm_amd or kvm_pvm module found)",
        })
    }
}

/// Errors in finding or opening KVM.
#[derive(Debug, Error)]
pub enum Error {
    /// `/dev/kvm` is missing.
    #[error("/dev/kvm does not exist: load kvm_intel or kvm_amd, or use the qemu backend")]
    NoDevice,
    /// Opening `/dev/kvm` failed (permissions, usually).
    #[error("cannot open /dev/kvm: {0} (the runner needs read/write access to it)")]
    Open(#[source] kvm_ioctls::Error),
    /// The KVM API version is not the stable one.
    #[error("/dev/kvm speaks KVM API version {0}, expected 12")]
    ApiVersion(i32),
    /// A capability the VMM relies on is missing.
    #[error("KVM lacks a capability the microVM needs: {0}")]
    MissingCap(&'static str),
    /// A Linux guest was asked for on a KVM that cannot run one.
    #[error(
        "the microvm backend cannot boot a Linux guest on this host: /dev/kvm is {0}; \
         use the qemu backend (TCG) here"
    )]
    CannotBootLinux(KvmKind),
}

/// Detects the KVM kind from the loaded modules under `sys_module` (normally `/sys/module`).
pub fn detect_in(sys_module: &Path) -> KvmKind {
    // PVM first: a PVM host may have kvm_intel present but unusable, never the other way round.
    if sys_module.join("kvm_pvm").exists() {
        KvmKind::Pvm
    } else if sys_module.join("kvm_intel").exists() {
        KvmKind::Intel
    } else if sys_module.join("kvm_amd").exists() {
        KvmKind::Amd
    } else {
        KvmKind::Unknown
    }
}

/// Detects this host's KVM: `None` when there is no `/dev/kvm` at all.
pub fn detect() -> Option<KvmKind> {
    Path::new("/dev/kvm")
        .exists()
        .then(|| detect_in(Path::new("/sys/module")))
}

/// Refuses a Linux guest on a KVM that cannot boot one, with the reason.
pub fn check_boots_linux() -> Result<KvmKind, Error> {
    let kind = detect().ok_or(Error::NoDevice)?;
    if kind.boots_linux() {
        Ok(kind)
    } else {
        Err(Error::CannotBootLinux(kind))
    }
}

/// Capabilities the VMM uses, with the names errors report.
const REQUIRED_CAPS: &[(Cap, &str)] = &[
    (Cap::Irqchip, "KVM_CAP_IRQCHIP"),
    (Cap::Ioeventfd, "KVM_CAP_IOEVENTFD"),
    (Cap::Irqfd, "KVM_CAP_IRQFD"),
    (Cap::Pit2, "KVM_CAP_PIT2"),
    (Cap::SetTssAddr, "KVM_CAP_SET_TSS_ADDR"),
    (Cap::UserMemory, "KVM_CAP_USER_MEMORY"),
    (Cap::ExtCpuid, "KVM_CAP_EXT_CPUID"),
];

/// Opens `/dev/kvm` and checks the API version and the capabilities we rely on.
pub fn open() -> Result<Kvm, Error> {
    if !Path::new("/dev/kvm").exists() {
        return Err(Error::NoDevice);
    }
    let kvm = Kvm::new().map_err(Error::Open)?;
    let version = kvm.get_api_version();
    if version != 12 {
        return Err(Error::ApiVersion(version));
    }
    for (cap, name) in REQUIRED_CAPS {
        if !kvm.check_extension(*cap) {
            return Err(Error::MissingCap(name));
        }
    }
    Ok(kvm)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn modules(names: &[&str]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for n in names {
            std::fs::create_dir(dir.path().join(n)).unwrap();
        }
        dir
    }

    #[test]
    fn detects_each_kind_from_loaded_modules() {
        let cases: &[(&[&str], KvmKind)] = &[
            (&["kvm", "kvm_intel"], KvmKind::Intel),
            (&["kvm", "kvm_amd"], KvmKind::Amd),
            (&["kvm", "kvm_pvm"], KvmKind::Pvm),
            (&["kvm", "kvm_pvm", "kvm_intel"], KvmKind::Pvm),
            (&["kvm"], KvmKind::Unknown),
        ];
        for (mods, want) in cases {
            assert_eq!(detect_in(modules(mods).path()), *want, "{mods:?}");
        }
    }

    #[test]
    fn only_hardware_kvm_boots_linux_and_the_refusal_says_why() {
        assert!(KvmKind::Intel.boots_linux() && KvmKind::Amd.boots_linux());
        assert!(!KvmKind::Pvm.boots_linux() && !KvmKind::Unknown.boots_linux());
        let msg = Error::CannotBootLinux(KvmKind::Pvm).to_string();
        assert!(msg.contains("kvm_pvm") && msg.contains("qemu"), "{msg}");
    }

    #[test]
    fn this_host_matches_its_modules() {
        // Real check against this machine: the answer must agree with /sys/module.
        let kind = detect();
        assert_eq!(kind.is_some(), Path::new("/dev/kvm").exists());
        if let Some(kind) = kind {
            assert_eq!(
                kind == KvmKind::Pvm,
                Path::new("/sys/module/kvm_pvm").exists()
            );
            assert_eq!(check_boots_linux().is_ok(), kind.boots_linux());
        }
    }
}
