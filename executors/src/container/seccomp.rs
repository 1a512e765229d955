//! Turns the syscall policy of `policy.rs` into a seccomp BPF program (with `seccompiler`, the
//! rust-vmm crate Firecracker uses). The program is compiled once per executor and installed in
//! each sandbox right before `execve`.

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

use super::policy::{Denial, DENIED_SYSCALLS, NAMESPACE_CLONE_FLAGS};
use super::ContainerError;

/// Syscall numbers present on every architecture we build for.
const SYSCALLS: &[(&str, i64)] = &[
    ("mount", libc::SYS_mount),
    ("umount2", libc::SYS_umount2),
    ("pivot_root", libc::SYS_pivot_root),
    ("fsopen", libc::SYS_fsopen),
    ("fsconfig", libc::SYS_fsconfig),
    ("fsmount", libc::SYS_fsmount),
    ("fspick", libc::SYS_fspick),
    ("move_mount", libc::SYS_move_mount),
    ("open_tree", libc::SYS_open_tree),
    ("mount_setattr", libc::SYS_mount_setattr),
    ("unshare", libc::SYS_unshare),
    ("setns", libc::SYS_setns),
    ("clone", libc::SYS_clone),
    ("clone3", libc::SYS_clone3),
    ("kexec_load", libc::SYS_kexec_load),
    ("kexec_file_load", libc::SYS_kexec_file_load),
    ("init_module", libc::SYS_init_module),
    ("finit_module", libc::SYS_finit_module),
    ("delete_module", libc::SYS_delete_module),
    ("bpf", libc::SYS_bpf),
    ("perf_event_open", libc::SYS_perf_event_open),
    ("userfaultfd", libc::SYS_userfaultfd),
    ("reboot", libc::SYS_reboot),
    ("swapon", libc::SYS_swapon),
    ("swapoff", libc::SYS_swapoff),
    ("syslog", libc::SYS_syslog),
    ("acct", libc::SYS_acct),
    ("quotactl", libc::SYS_quotactl),
    ("settimeofday", libc::SYS_settimeofday),
    ("clock_settime", libc::SYS_clock_settime),
    ("clock_adjtime", libc::SYS_clock_adjtime),
    ("adjtimex", libc::SYS_adjtimex),
    ("keyctl", libc::SYS_keyctl),
    ("add_key", libc::SYS_add_key),
    ("request_key", libc::SYS_request_key),
    ("ptrace", libc::SYS_ptrace),
    ("process_vm_readv", libc::SYS_process_vm_readv),
    ("process_vm_writev", libc::SYS_process_vm_writev),
    ("kcmp", libc::SYS_kcmp),
    ("open_by_handle_at", libc::SYS_open_by_handle_at),
    ("name_to_handle_at", libc::SYS_name_to_handle_at),
    ("vhangup", libc::SYS_vhangup),
];

/// The syscall number of `name` on this architecture, if it exists here.
pub fn syscall_number(name: &str) -> Option<i64> {
    SYSCALLS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, nr)| *nr)
        .or_else(|| arch_specific(name))
}

/// Syscalls that exist only on some architectures.
fn arch_specific(name: &str) -> Option<i64> {
    #[cfg(target_arch = "x86_64")]
    {
        match name {
            "iopl" => return Some(libc::SYS_iopl),
            "ioperm" => return Some(libc::SYS_ioperm),
            "uselib" => return Some(libc::SYS_uselib),
            _ => {}
        }
    }
    let _ = name;
    None
}

/// Compile the default filter: allow everything but [`DENIED_SYSCALLS`].
pub fn default_filter() -> Result<Vec<BpfProgram>, ContainerError> {
    let arch = TargetArch::try_from(std::env::consts::ARCH)
        .map_err(|e| ContainerError::Seccomp(format!("unsupported architecture: {e}")))?;
    let err = |e: seccompiler::BackendError| ContainerError::Seccomp(e.to_string());
    // seccompiler applies one action on a match; ENOSYS-denials get their own filter below.
    let mut eperm: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    let mut enosys: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for (name, denial) in DENIED_SYSCALLS {
        let Some(nr) = syscall_number(name) else {
            continue;
        };
        match denial {
            Denial::Always => {
                eperm.insert(nr, Vec::new());
            }
            Denial::NotImplemented => {
                enosys.insert(nr, Vec::new());
            }
            Denial::NamespaceFlags { arg } => {
                let rules = NAMESPACE_CLONE_FLAGS
                    .iter()
                    .map(|flag| {
                        let cond = SeccompCondition::new(
                            *arg,
                            SeccompCmpArgLen::Qword,
                            SeccompCmpOp::MaskedEq(*flag),
                            *flag,
                        )?;
                        SeccompRule::new(vec![cond])
                    })
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(err)?;
                eperm.insert(nr, rules);
            }
        }
    }
    // seccompiler gives one action per filter, so the ENOSYS cases are a second filter; the
    // kernel runs every installed filter and an errno result beats "allow".
    let mut programs = Vec::new();
    for (rules, errno) in [(eperm, libc::EPERM), (enosys, libc::ENOSYS)] {
        if rules.is_empty() {
            continue;
        }
        let filter = SeccompFilter::new(
            rules,
            SeccompAction::Allow,
            SeccompAction::Errno(errno as u32),
            arch,
        )
        .map_err(err)?;
        programs.push(filter.try_into().map_err(err)?);
    }
    Ok(programs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_denied_syscall_resolves_on_this_arch() {
        for (name, _) in DENIED_SYSCALLS {
            #[cfg(target_arch = "x86_64")]
            assert!(syscall_number(name).is_some(), "{name}");
            let _ = name;
        }
        assert_eq!(syscall_number("mount"), Some(libc::SYS_mount));
    }

    #[test]
    fn filter_compiles() {
        let progs = default_filter().unwrap();
        assert_eq!(progs.len(), 2);
        assert!(progs[0].len() > DENIED_SYSCALLS.len());
    }
}
