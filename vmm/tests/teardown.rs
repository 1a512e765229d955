//! Nothing outlives a VM: no file descriptor (KVM VM and vCPU fds, eventfds, the disk), no
//! thread, no guest memory mapping. One test in its own binary, so no other test's VMs disturb the
//! counts.

use std::time::Duration;

use vmm::{GuestImage, Vm, VmConfig, VmEnd};

fn fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

fn threads() -> usize {
    std::fs::read_dir("/proc/self/task").unwrap().count()
}

/// Virtual size of the process in kB.
fn vm_size_kb() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmSize:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn one_vm(code: Vec<u8>, timeout: Duration) -> VmEnd {
    let disk = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(disk.path(), [0u8; 4096]).unwrap();
    let mut cfg = VmConfig::new(GuestImage::Raw(code));
    cfg.root_disk = Some(disk.path().to_owned());
    cfg.mem_mib = 512;
    cfg.vcpus = 2;
    cfg.agent = Some(Box::new(std::io::sink()));
    cfg.timeout = Some(timeout);
    Vm::new(cfg).unwrap().run().unwrap().end
}

#[testkit::needs(kvm)]
#[test]
fn repeated_vms_leave_no_fds_threads_or_memory_behind() {
    // Warm up once: the first VM installs the kick signal handler and the std runtime may
    // allocate its own bookkeeping.
    let reset = vec![0xb0, 0xfe, 0xe6, 0x64]; // mov al, 0xfe; out 0x64, al
    let spin = vec![0xeb, 0xfe]; // jmp $
    assert_eq!(one_vm(reset.clone(), Duration::from_secs(10)), VmEnd::Reset);
    let (fds0, threads0, size0) = (fds(), threads(), vm_size_kb());
    for i in 0..10 {
        // Both ways a VM ends: the guest resets, or the VMM stops a running guest.
        let end = if i % 2 == 0 {
            one_vm(reset.clone(), Duration::from_secs(10))
        } else {
            one_vm(spin.clone(), Duration::from_millis(50))
        };
        assert!(matches!(end, VmEnd::Reset | VmEnd::TimedOut), "{end:?}");
    }
    assert_eq!(fds(), fds0, "file descriptors leaked");
    assert_eq!(threads(), threads0, "threads leaked");
    // One leaked guest adds 512 MiB (ten would add 5 GiB). glibc may map a new 64 MiB malloc
    // arena for the vCPU threads of a later VM, so allow a few arenas but less than one guest.
    let grown = vm_size_kb().saturating_sub(size0);
    assert!(grown < 256 * 1024, "virtual size grew by {grown} kB");
}
