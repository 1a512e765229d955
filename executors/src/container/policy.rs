//! What a step's sandbox may see and do, as plain data: the capability set it keeps, the
//! syscalls it is denied, the device nodes it gets and the paths that are hidden or read-only.
//! Tests read these tables directly; `child.rs` and `seccomp.rs` only execute them.

/// Linux capability numbers (`linux/capability.h`), by name.
pub const CAPABILITIES: &[(&str, u32)] = &[
    ("CAP_CHOWN", 0),
    ("CAP_DAC_OVERRIDE", 1),
    ("CAP_DAC_READ_SEARCH", 2),
    ("CAP_FOWNER", 3),
    ("CAP_FSETID", 4),
    ("CAP_KILL", 5),
    ("CAP_SETGID", 6),
    ("CAP_SETUID", 7),
    ("CAP_SETPCAP", 8),
    ("CAP_LINUX_IMMUTABLE", 9),
    ("CAP_NET_BIND_SERVICE", 10),
    ("CAP_NET_BROADCAST", 11),
    ("CAP_NET_ADMIN", 12),
    ("CAP_NET_RAW", 13),
    ("CAP_IPC_LOCK", 14),
    ("CAP_IPC_OWNER", 15),
    ("CAP_SYS_MODULE", 16),
    ("CAP_SYS_RAWIO", 17),
    ("CAP_SYS_CHROOT", 18),
    ("CAP_SYS_PTRACE", 19),
    ("CAP_SYS_PACCT", 20),
    ("CAP_SYS_ADMIN", 21),
    ("CAP_SYS_BOOT", 22),
    ("CAP_SYS_NICE", 23),
    ("CAP_SYS_RESOURCE", 24),
    ("CAP_SYS_TIME", 25),
    ("CAP_SYS_TTY_CONFIG", 26),
    ("CAP_MKNOD", 27),
    ("CAP_LEASE", 28),
    ("CAP_AUDIT_WRITE", 29),
    ("CAP_AUDIT_CONTROL", 30),
    ("CAP_SETFCAP", 31),
    ("CAP_MAC_OVERRIDE", 32),
    ("CAP_MAC_ADMIN", 33),
    ("CAP_SYSLOG", 34),
    ("CAP_WAKE_ALARM", 35),
    ("CAP_BLOCK_SUSPEND", 36),
    ("CAP_AUDIT_READ", 37),
    ("CAP_PERFMON", 38),
    ("CAP_BPF", 39),
    ("CAP_CHECKPOINT_RESTORE", 40),
];

/// The capabilities a step keeps: Docker's default set minus `CAP_MKNOD`. Docker can afford
/// `CAP_MKNOD` because its device cgroup refuses to open the nodes a container creates; we have
/// no device cgroup on cgroup v2 without a BPF program, so a step may not create device nodes at
/// all (and every writable mount is `nodev` as well).
pub const KEPT_CAPABILITIES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// Bit mask of [`KEPT_CAPABILITIES`].
pub fn kept_capability_mask() -> u64 {
    KEPT_CAPABILITIES
        .iter()
        .filter_map(|name| CAPABILITIES.iter().find(|(n, _)| n == name))
        .fold(0u64, |mask, (_, bit)| mask | (1u64 << bit))
}

/// How a denied syscall fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denial {
    /// Always fails with `EPERM`.
    Always,
    /// Fails with `EPERM` when its flags argument (index `arg`) asks for a new namespace.
    NamespaceFlags { arg: u8 },
    /// Fails with `ENOSYS`, so that libc falls back to an older call we can inspect
    /// (`clone3` passes its flags in memory, which seccomp cannot read).
    NotImplemented,
}

/// Syscalls a step may not make, and why. Everything else is allowed: the capability set
/// already stops most privileged calls; this list closes those that capabilities do not cover
/// (or that are kernel attack surface a build never needs).
pub const DENIED_SYSCALLS: &[(&str, Denial)] = &[
    // Mount table: a step must not change what it sees or unmask hidden paths.
    ("mount", Denial::Always),
    ("umount2", Denial::Always),
    ("pivot_root", Denial::Always),
    ("fsopen", Denial::Always),
    ("fsconfig", Denial::Always),
    ("fsmount", Denial::Always),
    ("fspick", Denial::Always),
    ("move_mount", Denial::Always),
    ("open_tree", Denial::Always),
    ("mount_setattr", Denial::Always),
    // New namespaces would give a step a fresh full capability set (user namespaces).
    ("unshare", Denial::Always),
    ("setns", Denial::Always),
    ("clone", Denial::NamespaceFlags { arg: 0 }),
    ("clone3", Denial::NotImplemented),
    // Kernel code and the kernel's own state.
    ("kexec_load", Denial::Always),
    ("kexec_file_load", Denial::Always),
    ("init_module", Denial::Always),
    ("finit_module", Denial::Always),
    ("delete_module", Denial::Always),
    ("bpf", Denial::Always),
    ("perf_event_open", Denial::Always),
    ("userfaultfd", Denial::Always),
    ("reboot", Denial::Always),
    ("swapon", Denial::Always),
    ("swapoff", Denial::Always),
    ("syslog", Denial::Always),
    ("acct", Denial::Always),
    ("quotactl", Denial::Always),
    ("iopl", Denial::Always),
    ("ioperm", Denial::Always),
    ("settimeofday", Denial::Always),
    ("clock_settime", Denial::Always),
    ("clock_adjtime", Denial::Always),
    ("adjtimex", Denial::Always),
    // Kernel keyrings are not namespaced: keys could leak between steps and the host.
    ("keyctl", Denial::Always),
    ("add_key", Denial::Always),
    ("request_key", Denial::Always),
    // Looking into other processes.
    ("ptrace", Denial::Always),
    ("process_vm_readv", Denial::Always),
    ("process_vm_writev", Denial::Always),
    ("kcmp", Denial::Always),
    // File handles bypass path-based confinement (the "shocker" escape).
    ("open_by_handle_at", Denial::Always),
    ("name_to_handle_at", Denial::Always),
    ("uselib", Denial::Always),
    ("vhangup", Denial::Always),
];

/// Namespace flags that `clone` may not carry.
pub const NAMESPACE_CLONE_FLAGS: &[u64] = &[
    libc::CLONE_NEWNS as u64,
    libc::CLONE_NEWUTS as u64,
    libc::CLONE_NEWIPC as u64,
    libc::CLONE_NEWUSER as u64,
    libc::CLONE_NEWPID as u64,
    libc::CLONE_NEWNET as u64,
    libc::CLONE_NEWCGROUP as u64,
    0x80, // CLONE_NEWTIME
];

/// Device nodes bind-mounted from the host into the sandbox's `/dev` (a fresh tmpfs).
/// `/dev/kvm`, disks and everything else stay invisible.
pub const DEVICES: &[&str] = &["null", "zero", "full", "random", "urandom", "tty"];

/// Symlinks created in the sandbox's `/dev`: (link, target).
pub const DEV_SYMLINKS: &[(&str, &str)] = &[
    ("ptmx", "pts/ptmx"),
    ("fd", "/proc/self/fd"),
    ("stdin", "/proc/self/fd/0"),
    ("stdout", "/proc/self/fd/1"),
    ("stderr", "/proc/self/fd/2"),
];

/// Paths hidden inside the sandbox (files covered by `/dev/null`, directories by an empty
/// read-only tmpfs): kernel memory, keys, timers that leak host activity, firmware.
pub const MASKED_PATHS: &[&str] = &[
    "/proc/asound",
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/proc/sysrq-trigger",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
    "/sys/kernel/debug",
    "/sys/kernel/security",
];

/// Paths made read-only inside the sandbox (kernel tunables).
pub const READONLY_PATHS: &[&str] = &["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys"];

/// Host paths hidden when a step runs on the host's own root (`image: host`), on top of the
/// runner's own config and data directories: home directories and the host's credentials.
pub const HOST_MASKED_PATHS: &[&str] = &[
    "/root",
    "/home",
    "/etc/shadow",
    "/etc/gshadow",
    "/etc/shadow-",
    "/etc/gshadow-",
    "/etc/ssh",
    "/etc/sudoers",
    "/etc/sudoers.d",
    "/var/lib/docker",
    "/var/lib/containers",
    // Every runner's default config and data dirs, whichever ones this runner uses: another
    // runner or the coordinator on the same host keeps tokens and secrets there.
    "/etc/runner",
    "/var/lib/runner",
    // systemd's DynamicUser= state (the coordinator unit keeps its SQLite store, secrets
    // included, under /var/lib/private/runner-coordinator).
    "/var/lib/private",
];

/// Default `PATH` when neither the image nor the step sets one.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_capabilities_are_known_and_exclude_admin() {
        for name in KEPT_CAPABILITIES {
            assert!(CAPABILITIES.iter().any(|(n, _)| n == name), "{name}");
        }
        let mask = kept_capability_mask();
        assert_eq!(mask.count_ones() as usize, KEPT_CAPABILITIES.len());
        for forbidden in [21u32, 16, 19, 12, 27, 17, 39] {
            assert_eq!(mask & (1 << forbidden), 0, "capability {forbidden} kept");
        }
    }

    #[test]
    fn denied_syscalls_cover_the_escape_routes() {
        for name in [
            "mount",
            "unshare",
            "setns",
            "keyctl",
            "init_module",
            "finit_module",
        ] {
            assert!(DENIED_SYSCALLS.iter().any(|(n, _)| *n == name), "{name}");
        }
        assert!(MASKED_PATHS.contains(&"/proc/kcore"));
        assert!(!DEVICES.contains(&"kvm"));
    }
}
