//! Turns the syscall policy of `policy.rs` into a seccomp BPF program (written out here; the
//! types and `apply_filter` are `seccompiler`'s, the rust-vmm crate Firecracker uses: see
//! [`default_filter`] for why not its rule builder). The program is built once per executor
//! and installed in each sandbox right before `execve`.

use seccompiler::{sock_filter, BpfProgram};

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
///
/// Written as BPF here rather than through `seccompiler`'s rule builder (whose types and
/// `apply_filter` we use): its code for this policy was 300 instructions in two programs,
/// and the kernel compiles a filter at every install, once per step, so the 0.2 ms that cost
/// went on every step's start; this one is ~60 in one program. And a rule builder keyed on
/// exact syscall numbers cannot say "every number with the x32 bit": on x86-64 kernels built
/// with the x32 ABI, `mount | 0x4000_0000` is `mount` too, and a deny list without that
/// range check does not deny it.
///
/// The program: a foreign architecture (say i386 through `int 0x80`, with other numbers)
/// kills the process; an x32 call fails with `ENOSYS`; then one comparison per denied
/// syscall, jumping to its answer; everything else is allowed.
pub fn default_filter() -> Result<Vec<BpfProgram>, ContainerError> {
    let arch = audit_arch()?;
    let mut denied: Vec<(i64, Denial)> = DENIED_SYSCALLS
        .iter()
        .filter_map(|(name, d)| syscall_number(name).map(|nr| (nr, *d)))
        .collect();
    denied.sort_by_key(|(nr, _)| *nr);
    denied.dedup_by_key(|(nr, _)| *nr);
    // Namespace flags all live in the low 32 bits of the flags argument.
    let ns_mask = NAMESPACE_CLONE_FLAGS.iter().fold(0u64, |m, f| m | f);
    if ns_mask > u64::from(u32::MAX) {
        return Err(ContainerError::Seccomp(
            "namespace flags beyond the low 32 bits".into(),
        ));
    }
    let flag_args: Vec<u8> = {
        let mut a: Vec<u8> = denied
            .iter()
            .filter_map(|(_, d)| match d {
                Denial::NamespaceFlags { arg } => Some(*arg),
                _ => None,
            })
            .collect();
        a.sort_unstable();
        a.dedup();
        a
    };

    // Layout (BPF jumps only go forward): header, one `jeq` per denied syscall, a jump to
    // "allow" for the rest, one flags check per flags argument, then the three answers.
    let header = if cfg!(target_arch = "x86_64") { 5 } else { 4 };
    let chain_at = header;
    let ja_at = chain_at + denied.len();
    let flags_at =
        |arg: u8| ja_at + 1 + 2 * flag_args.iter().position(|a| *a == arg).unwrap_or_default();
    let allow_at = ja_at + 1 + 2 * flag_args.len();
    let (eperm_at, enosys_at) = (allow_at + 1, allow_at + 2);
    let off = |from: usize, to: usize| -> Result<u8, ContainerError> {
        u8::try_from(to - from - 1)
            .map_err(|_| ContainerError::Seccomp("filter too long for a BPF jump".into()))
    };

    let mut prog: Vec<sock_filter> = vec![
        stmt(BPF_LD | BPF_W | BPF_ABS, DATA_ARCH),
        jump(BPF_JEQ | BPF_K, arch, 1, 0),
        stmt(BPF_RET | BPF_K, libc::SECCOMP_RET_KILL_PROCESS),
        stmt(BPF_LD | BPF_W | BPF_ABS, DATA_NR),
    ];
    if cfg!(target_arch = "x86_64") {
        prog.push(jump(
            BPF_JGE | BPF_K,
            X32_SYSCALL_BIT,
            off(4, enosys_at)?,
            0,
        ));
    }
    for (nr, denial) in &denied {
        let target = match denial {
            Denial::Always => eperm_at,
            Denial::NotImplemented => enosys_at,
            Denial::NamespaceFlags { arg } => flags_at(*arg),
        };
        let nr = u32::try_from(*nr)
            .map_err(|_| ContainerError::Seccomp(format!("syscall number {nr}")))?;
        prog.push(jump(BPF_JEQ | BPF_K, nr, off(prog.len(), target)?, 0));
    }
    let ja = (allow_at - ja_at - 1) as u32;
    prog.push(stmt(BPF_JMP | BPF_JA, ja));
    for arg in &flag_args {
        // The low word of argument `arg` (little-endian): any namespace flag -> EPERM.
        prog.push(stmt(
            BPF_LD | BPF_W | BPF_ABS,
            DATA_ARGS + 8 * u32::from(*arg),
        ));
        let at = prog.len();
        prog.push(jump(
            BPF_JSET | BPF_K,
            ns_mask as u32,
            off(at, eperm_at)?,
            off(at, allow_at)?,
        ));
    }
    prog.push(stmt(BPF_RET | BPF_K, libc::SECCOMP_RET_ALLOW));
    prog.push(stmt(BPF_RET | BPF_K, errno(libc::EPERM)));
    prog.push(stmt(BPF_RET | BPF_K, errno(libc::ENOSYS)));
    debug_assert_eq!(prog.len(), enosys_at + 1);
    Ok(vec![prog])
}

// Classic BPF as seccomp uses it (linux/filter.h, linux/seccomp.h).
const BPF_LD: u16 = 0x00;
const BPF_JMP: u16 = 0x05;
const BPF_RET: u16 = 0x06;
const BPF_W: u16 = 0x00;
const BPF_ABS: u16 = 0x20;
const BPF_JA: u16 = 0x00;
const BPF_JEQ: u16 = 0x10;
const BPF_JGE: u16 = 0x30;
const BPF_JSET: u16 = 0x40;
const BPF_K: u16 = 0x00;
/// Offsets in `struct seccomp_data`.
const DATA_NR: u32 = 0;
const DATA_ARCH: u32 = 4;
const DATA_ARGS: u32 = 16;
/// x32 syscalls are the x86-64 numbers with this bit set.
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

fn stmt(code: u16, k: u32) -> sock_filter {
    sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jump(op: u16, k: u32, jt: u8, jf: u8) -> sock_filter {
    sock_filter {
        code: BPF_JMP | op,
        jt,
        jf,
        k,
    }
}

fn errno(e: i32) -> u32 {
    libc::SECCOMP_RET_ERRNO | (e as u32 & libc::SECCOMP_RET_DATA)
}

/// `AUDIT_ARCH_*` of the architecture we run on.
fn audit_arch() -> Result<u32, ContainerError> {
    const LE_64: u32 = 0x8000_0000 | 0x4000_0000;
    match std::env::consts::ARCH {
        "x86_64" => Ok(62 | LE_64),
        "aarch64" => Ok(183 | LE_64),
        "riscv64" => Ok(243 | LE_64),
        other => Err(ContainerError::Seccomp(format!(
            "unsupported architecture: {other}"
        ))),
    }
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

    /// Run `prog` on one `seccomp_data` the way the kernel does (only the opcodes we emit).
    fn run(prog: &[sock_filter], arch: u32, nr: u32, args: [u64; 6]) -> u32 {
        let mut data = [0u8; 64];
        data[0..4].copy_from_slice(&nr.to_le_bytes());
        data[4..8].copy_from_slice(&arch.to_le_bytes());
        for (i, a) in args.iter().enumerate() {
            data[16 + 8 * i..24 + 8 * i].copy_from_slice(&a.to_le_bytes());
        }
        let (mut pc, mut acc) = (0usize, 0u32);
        loop {
            let ins = &prog[pc];
            pc += 1;
            match ins.code {
                c if c == BPF_LD | BPF_W | BPF_ABS => {
                    let k = ins.k as usize;
                    acc = u32::from_le_bytes(data[k..k + 4].try_into().unwrap());
                }
                c if c == BPF_RET | BPF_K => return ins.k,
                c if c == BPF_JMP | BPF_JA => pc += ins.k as usize,
                c => {
                    let taken = match c & !BPF_JMP {
                        BPF_JEQ => acc == ins.k,
                        BPF_JGE => acc >= ins.k,
                        BPF_JSET => acc & ins.k != 0,
                        other => panic!("opcode {other:#x} not emitted"),
                    };
                    pc += usize::from(if taken { ins.jt } else { ins.jf });
                }
            }
        }
    }

    #[test]
    fn the_filter_denies_what_the_policy_says_and_allows_the_rest() {
        let progs = default_filter().unwrap();
        assert_eq!(progs.len(), 1);
        let prog = &progs[0];
        assert!(prog.len() < 80, "{} instructions", prog.len());
        let arch = audit_arch().unwrap();
        let eperm = errno(libc::EPERM);
        let enosys = errno(libc::ENOSYS);
        let call = |nr: i64, a0: u64| run(prog, arch, nr as u32, [a0, 0, 0, 0, 0, 0]);
        for (name, denial) in DENIED_SYSCALLS {
            let Some(nr) = syscall_number(name) else {
                continue;
            };
            match denial {
                Denial::Always => assert_eq!(call(nr, 0), eperm, "{name}"),
                Denial::NotImplemented => assert_eq!(call(nr, 0), enosys, "{name}"),
                Denial::NamespaceFlags { .. } => {
                    for flag in NAMESPACE_CLONE_FLAGS {
                        assert_eq!(call(nr, *flag | 0x11), eperm, "{name} with {flag:#x}");
                    }
                    // fork(2) as glibc does it: clone(SIGCHLD|CLONE_CHILD_*), no namespace.
                    let fork = (libc::SIGCHLD
                        | libc::CLONE_CHILD_SETTID
                        | libc::CLONE_CHILD_CLEARTID) as u64;
                    assert_eq!(call(nr, fork), libc::SECCOMP_RET_ALLOW, "{name} (fork)");
                    let thread = (libc::CLONE_VM | libc::CLONE_THREAD | libc::CLONE_FS) as u64;
                    assert_eq!(call(nr, thread), libc::SECCOMP_RET_ALLOW, "{name} (thread)");
                }
            }
        }
        for nr in [
            libc::SYS_read,
            libc::SYS_write,
            libc::SYS_execve,
            libc::SYS_openat,
        ] {
            assert_eq!(call(nr, 0), libc::SECCOMP_RET_ALLOW, "{nr}");
        }
        // Another architecture's numbering (i386 through int 0x80) is not ours to judge.
        assert_eq!(
            run(prog, 3 | 0x4000_0000, 21, [0; 6]),
            libc::SECCOMP_RET_KILL_PROCESS
        );
        #[cfg(target_arch = "x86_64")]
        {
            // x32: the same calls with bit 30 set.
            let x32_mount = (libc::SYS_mount as u32) | X32_SYSCALL_BIT;
            assert_eq!(run(prog, arch, x32_mount, [0; 6]), enosys);
            let x32_read = X32_SYSCALL_BIT;
            assert_eq!(run(prog, arch, x32_read, [0; 6]), enosys);
        }
    }
}
