//! Debian's cloud kernel (unpacked by deploy/setup.sh): its bzImage header, loading it into
//! guest memory, and, where KVM is hardware-backed, a full boot to a busybox init.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use vm_memory::{Bytes, GuestAddress};
use vmm::boot::{self, read_bzimage_header, GuestImage};
use vmm::kvm::{self, KvmKind};
use vmm::memory::{self, CMDLINE_ADDRESS, HIMEM_START, ZERO_PAGE_ADDRESS};
use vmm::{Vm, VmConfig, VmEnd};

/// The kernel `deploy/setup-vm-kernel.sh` unpacked for the VM executor:
/// `boot/vmlinuz-*` in `testkit::kernel_dir()` (`$RUNNER_VM_KERNEL_DIR`, `$VMM_TEST_KERNEL_DIR`, or
/// `${RUNNER_DATA_DIR:-/var/lib/runner}/vm/kernel`).
fn debian_kernel() -> PathBuf {
    let dir = testkit::kernel_dir();
    let boot = dir.join("boot");
    std::fs::read_dir(&boot)
        .ok()
        .and_then(|entries| {
            entries.filter_map(Result::ok).map(|e| e.path()).find(|p| {
                p.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with("vmlinuz-")
            })
        })
        .unwrap_or_else(|| {
            panic!(
                "no vmlinuz-* in {}: run deploy/setup.sh first",
                boot.display()
            )
        })
}

#[testkit::needs(guest_kernel)]
#[test]
fn debian_cloud_kernel_header_parses() {
    let path = debian_kernel();
    let hdr = read_bzimage_header(&path).unwrap();
    // Release from the file name, e.g. "6.1.0-56-cloud-amd64".
    let release = path.file_name().unwrap().to_string_lossy()["vmlinuz-".len()..].to_owned();
    assert!(
        hdr.version.starts_with(&release),
        "{:?} vs {release}",
        hdr.version
    );
    assert!(hdr.protocol >= 0x20c, "boot protocol {:#x}", hdr.protocol);
    assert!(hdr.has_64bit_entry(), "xloadflags {:#x}", hdr.xloadflags);
    assert!(hdr.loaded_high() && hdr.relocatable);
    assert!(hdr.setup_sects > 0);
    assert!(hdr.cmdline_size >= 2047, "{}", hdr.cmdline_size);
    assert_eq!(hdr.initrd_addr_max, 0x7fff_ffff);
    assert!(hdr.init_size > 8 << 20, "init_size {}", hdr.init_size);
}

#[testkit::needs(guest_kernel)]
#[test]
fn debian_kernel_and_initrd_load_where_the_boot_protocol_wants_them() {
    let path = debian_kernel();
    let hdr = read_bzimage_header(&path).unwrap();
    let initrd = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(initrd.path(), vec![0x5a; 100_000]).unwrap();
    let mem_mib = 256;
    let mem = memory::allocate(mem_mib).unwrap();
    let image = GuestImage::Kernel(path.clone());
    let cmdline = "console=ttyS0 reboot=k";
    let platform = boot::Platform {
        mem_mib,
        cpus: 2,
        agent_uart: false,
        block_device: false,
    };
    let loaded = boot::load(&mem, platform, &image, cmdline, Some(initrd.path())).unwrap();
    assert_eq!(
        loaded.entry,
        HIMEM_START + 0x200,
        "64-bit entry of the protected-mode code"
    );

    // The protected-mode code is the file after the setup sectors, copied to 1 MiB.
    let file = std::fs::read(&path).unwrap();
    let setup = (usize::from(hdr.setup_sects) + 1) * 512;
    let mut head = vec![0u8; 4096];
    mem.read_slice(&mut head, GuestAddress(HIMEM_START))
        .unwrap();
    assert_eq!(head, file[setup..setup + 4096]);
    assert_eq!(loaded.image_end, HIMEM_START + (file.len() - setup) as u64);

    let zp = ZERO_PAGE_ADDRESS;
    let read_u32 = |off: u64| mem.read_obj::<u32>(GuestAddress(zp + off)).unwrap();
    let sects: u8 = mem.read_obj(GuestAddress(zp + 0x1f1)).unwrap();
    assert_eq!(
        sects, hdr.setup_sects,
        "the kernel's own setup header is kept"
    );
    assert_eq!(read_u32(0x202), 0x5372_6448);
    assert_eq!(read_u32(0x228), CMDLINE_ADDRESS as u32);
    let ramdisk = u64::from(read_u32(0x218));
    assert_eq!(read_u32(0x21c), 100_000);
    assert_eq!(ramdisk % 4096, 0);
    assert!(ramdisk > loaded.image_end && ramdisk + 100_000 <= 256 << 20);
    assert!(
        (256 << 20) - (ramdisk + 100_000) < 4096,
        "initrd at the top of low memory"
    );
    let mut byte = [0u8; 1];
    mem.read_slice(&mut byte, GuestAddress(ramdisk + 99_999))
        .unwrap();
    assert_eq!(byte[0], 0x5a);
    let mut cl = vec![0u8; cmdline.len() + 1];
    mem.read_slice(&mut cl, GuestAddress(CMDLINE_ADDRESS))
        .unwrap();
    assert_eq!(&cl[..cmdline.len()], cmdline.as_bytes());
    assert_eq!(cl[cmdline.len()], 0);
}

/// The kernel's own virtio modules, which the initramfs loads (Debian builds them as modules).
const VIRTIO_MODULES: &[&str] = &[
    "drivers/virtio/virtio.ko",
    "drivers/virtio/virtio_ring.ko",
    "drivers/virtio/virtio_mmio.ko",
    "drivers/block/virtio_blk.ko",
];

/// A newc initramfs with static busybox as /init's shell and the virtio modules: it prints a
/// marker on the console, loads the modules, prints the start of /dev/vda (our virtio block
/// device, found through ACPI), writes to the agent UART (/dev/ttyS1), and reboots, which with
/// `reboot=k` is an i8042 reset.
fn busybox_initramfs(dir: &Path, kernel: &Path) -> PathBuf {
    let root = dir.join("root");
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::create_dir_all(root.join("m")).unwrap();
    std::fs::copy("/bin/busybox", root.join("bin/busybox"))
        .expect("/bin/busybox (busybox-static, installed by deploy/setup.sh)");
    let release = kernel.file_name().unwrap().to_string_lossy()["vmlinuz-".len()..].to_owned();
    let modules = kernel
        .parent()
        .unwrap()
        .join("../lib/modules")
        .join(&release)
        .join("kernel");
    let mut list = String::from(".\nbin\nbin/busybox\ninit\nm\n");
    let mut load = String::new();
    for m in VIRTIO_MODULES {
        let name = Path::new(m)
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        std::fs::copy(modules.join(m), root.join("m").join(&name)).unwrap();
        list.push_str(&format!("m/{name}\n"));
        load.push_str(&format!("/bin/busybox insmod /m/{name}\n"));
    }
    let init = root.join("init");
    std::fs::write(
        &init,
        format!(
            "#!/bin/busybox sh\n/bin/busybox echo VMM-LINUX-BOOTED\n{load}\
             /bin/busybox mkdir -p /dev\n/bin/busybox mount -t devtmpfs dev /dev\n\
             /bin/busybox sleep 1\n/bin/busybox head -c 9 /dev/vda\n/bin/busybox echo\n\
             /bin/busybox echo AGENT-CHANNEL-OK > /dev/ttyS1\n/bin/busybox reboot -f\n"
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&init, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = dir.join("initramfs.cpio");
    let mut cpio = Command::new("cpio")
        .args(["-o", "-H", "newc", "--quiet"])
        .current_dir(&root)
        .stdin(Stdio::piped())
        .stdout(std::fs::File::create(&out).unwrap())
        .spawn()
        .expect("cpio (installed by deploy/setup.sh)");
    cpio.stdin
        .take()
        .unwrap()
        .write_all(list.as_bytes())
        .unwrap();
    assert!(cpio.wait().unwrap().success());
    out
}

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The boot both tests below start: Debian's kernel, a busybox initramfs, a 1 MiB root disk
/// beginning `VMM-DISK!`, two vCPUs; with the serial console and the agent UART captured.
fn linux_boot(dir: &Path) -> (VmConfig, Capture, Capture) {
    let kernel = debian_kernel();
    let mut cfg = VmConfig::new(GuestImage::Kernel(kernel.clone()));
    cfg.cmdline = "console=ttyS0 reboot=k panic=-1 pci=off rdinit=/init".into();
    cfg.mem_mib = 256;
    cfg.vcpus = 2;
    cfg.timeout = Some(Duration::from_secs(30));
    let serial = Capture::default();
    cfg.serial = Box::new(serial.clone());
    let agent = Capture::default();
    cfg.agent = Some(Box::new(agent.clone()));
    cfg.initrd = Some(busybox_initramfs(dir, &kernel));
    let disk = dir.join("root.img");
    let mut image = b"VMM-DISK!".to_vec();
    image.resize(1 << 20, 0);
    std::fs::write(&disk, image).unwrap();
    cfg.root_disk = Some(disk);
    (cfg, serial, agent)
}

/// Where KVM cannot run an unmodified Linux guest (PVM), the refusal is what this host can
/// check: clear, immediate, naming the KVM kind. The boot itself is the test below.
#[testkit::needs(kvm, guest_kernel)]
#[testkit::host(no_hardware_kvm)]
#[test]
fn linux_is_refused_at_once_where_kvm_cannot_boot_it() {
    let kind = kvm::detect().expect("/dev/kvm is needed for this suite");
    let dir = tempfile::tempdir().unwrap();
    let (cfg, _, _) = linux_boot(dir.path());
    let err = Vm::new(cfg).unwrap_err().to_string();
    assert!(
        err.contains("cannot boot a Linux guest") && err.contains("qemu"),
        "{err}"
    );
    if kind == KvmKind::Pvm {
        assert!(err.contains("kvm_pvm"), "{err}");
    }
}

/// On hardware KVM, a full boot to a busybox init; elsewhere the refusal above is tested.
#[testkit::needs(kvm, guest_kernel)]
#[testkit::host(hardware_kvm)]
#[test]
fn linux_boots_to_init_on_hardware_kvm() {
    let dir = tempfile::tempdir().unwrap();
    let (cfg, serial, agent) = linux_boot(dir.path());
    let report = Vm::new(cfg).unwrap().run().unwrap();
    let out = String::from_utf8_lossy(&serial.0.lock().unwrap()).into_owned();
    assert_eq!(report.end, VmEnd::Reset, "serial console:\n{out}");
    assert!(out.contains("Linux version"), "{out}");
    assert!(out.contains("VMM-LINUX-BOOTED"), "{out}");
    // Both vCPUs came up: Linux read our ACPI MADT (Debian's kernel has no MP-table parser).
    assert!(out.contains("Brought up 1 node, 2 CPUs"), "{out}");
    // The virtio block device, found through the DSDT, served the disk's first bytes.
    assert!(out.contains("VMM-DISK!"), "{out}");
    let agent_out = String::from_utf8_lossy(&agent.0.lock().unwrap()).into_owned();
    assert!(
        agent_out.contains("AGENT-CHANNEL-OK"),
        "agent UART: {agent_out:?}\n{out}"
    );
}
