//! What this host's virtualization can do: hardware KVM, PVM (KVM without VT-x/AMD-V, which
//! cannot boot an unmodified Linux guest) or none. Decided from the loaded KVM modules, so the
//! answer is instant and no VM has to fail to find out.

use std::path::Path;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvmKind {
    /// `kvm_intel` or `kvm_amd` is loaded and `/dev/kvm` exists.
    Hardware(&'static str),
    /// `kvm_pvm` backs `/dev/kvm`: only hand-made guests run, not a stock kernel.
    Pvm,
    /// `/dev/kvm` exists but no module we know backs it.
    Unknown,
    /// No `/dev/kvm`.
    Absent,
}

impl KvmKind {
    /// Read the state of this host (`/dev/kvm`, `/sys/module`).
    pub fn detect() -> KvmKind {
        Self::detect_in(Path::new("/"))
    }

    /// Same as [`detect`](Self::detect), under another root (for tests).
    pub fn detect_in(root: &Path) -> KvmKind {
        if !root.join("dev/kvm").exists() {
            return KvmKind::Absent;
        }
        let loaded = |m: &str| root.join("sys/module").join(m).exists();
        // PVM first: a PVM host may also have kvm_intel loaded without VMX being usable.
        if loaded("kvm_pvm") {
            KvmKind::Pvm
        } else if loaded("kvm_intel") {
            KvmKind::Hardware("kvm_intel")
        } else if loaded("kvm_amd") {
            KvmKind::Hardware("kvm_amd")
        } else {
            KvmKind::Unknown
        }
    }

    /// Whether an unmodified Linux guest can boot with KVM acceleration.
    pub fn can_boot_linux(self) -> bool {
        matches!(self, KvmKind::Hardware(_))
    }

    pub fn describe(self) -> String {
        match self {
            KvmKind::Hardware(m) => format!("hardware ({m})"),
            KvmKind::Pvm => "PVM (kvm_pvm): cannot boot an unmodified Linux guest".into(),
            KvmKind::Unknown => "present, backing module unknown".into(),
            KvmKind::Absent => "absent (no /dev/kvm)".into(),
        }
    }
}

/// The host's TSC frequency in kHz, if `/proc/cpuinfo` tells. Under TCG the guest's TSC runs at
/// the host's rate, and a guest without PIT/HPET (QEMU's microvm) cannot calibrate it itself:
/// without `tsc_early_khz` the Debian kernel hangs at boot.
pub fn host_tsc_khz() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    let mhz: f64 = info
        .lines()
        .find(|l| l.starts_with("cpu MHz"))?
        .split(':')
        .nth(1)?
        .trim()
        .parse()
        .ok()?;
    Some((mhz * 1000.0) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake(modules: &[&str], kvm: bool) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("dev")).unwrap();
        if kvm {
            std::fs::write(d.path().join("dev/kvm"), "").unwrap();
        }
        for m in modules {
            std::fs::create_dir_all(d.path().join("sys/module").join(m)).unwrap();
        }
        d
    }

    #[test]
    fn classifies_kvm_backends() {
        assert_eq!(
            KvmKind::detect_in(fake(&["kvm", "kvm_pvm"], true).path()),
            KvmKind::Pvm
        );
        assert_eq!(
            KvmKind::detect_in(fake(&["kvm", "kvm_intel"], true).path()),
            KvmKind::Hardware("kvm_intel")
        );
        assert_eq!(
            KvmKind::detect_in(fake(&["kvm_amd"], true).path()),
            KvmKind::Hardware("kvm_amd")
        );
        assert_eq!(
            KvmKind::detect_in(fake(&["kvm"], true).path()),
            KvmKind::Unknown
        );
        assert_eq!(
            KvmKind::detect_in(fake(&["kvm_intel"], false).path()),
            KvmKind::Absent
        );
        assert!(!KvmKind::Pvm.can_boot_linux());
        assert!(KvmKind::Hardware("kvm_amd").can_boot_linux());
    }

    #[test]
    fn this_host_is_classified() {
        // On the project machine this is PVM; elsewhere anything but a panic is fine.
        let k = KvmKind::detect();
        if Path::new("/sys/module/kvm_pvm").exists() {
            assert_eq!(k, KvmKind::Pvm);
        }
    }
}
