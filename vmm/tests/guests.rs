//! Real VMs on this host's /dev/kvm, running tiny guest programs assembled here by hand.
//!
//! Every guest is entered by the VMM exactly like a Linux kernel's 64-bit entry: long mode,
//! our GDT and identity-mapped page tables, RSI pointing at the zero page our loader wrote.
//! Instructions only valid in 64-bit mode (REX.W `movabs`) prove the mode was right: in 32-bit
//! mode the same bytes decode to other instructions and the markers would come out wrong.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vmm::{GuestImage, RunReport, Vm, VmConfig, VmEnd, BOOT_TIMER_MAGIC, BOOT_TIMER_PORT};

/// A tiny x86-64 assembler: just the instructions these guests use, encoded per the SDM.
#[derive(Default)]
struct Asm(Vec<u8>);

impl Asm {
    fn bytes(mut self, b: &[u8]) -> Self {
        self.0.extend_from_slice(b);
        self
    }
    /// mov al, imm8
    fn mov_al(self, v: u8) -> Self {
        self.bytes(&[0xb0, v])
    }
    /// mov dx, imm16
    fn mov_dx(self, v: u16) -> Self {
        let [lo, hi] = v.to_le_bytes();
        self.bytes(&[0x66, 0xba, lo, hi])
    }
    /// out dx, al
    fn out_dx_al(self) -> Self {
        self.bytes(&[0xee])
    }
    /// out imm8, al
    fn out_imm_al(self, port: u8) -> Self {
        self.bytes(&[0xe6, port])
    }
    /// Writes the boot-timer magic byte.
    fn boot_marker(self) -> Self {
        self.mov_al(BOOT_TIMER_MAGIC)
            .mov_dx(BOOT_TIMER_PORT)
            .out_dx_al()
    }
    /// Prints 8 bytes to COM1 from a 64-bit immediate: movabs rax, imm64; mov ecx, 8;
    /// again: out dx, al; shr rax, 8; dec ecx; jnz again.
    fn print8(self, text: &[u8; 8]) -> Self {
        self.mov_dx(0x3f8)
            .bytes(&[0x48, 0xb8])
            .bytes(text)
            .bytes(&[0xb9, 8, 0, 0, 0])
            .bytes(&[0xee, 0x48, 0xc1, 0xe8, 0x08, 0xff, 0xc9, 0x75, 0xf7])
    }
    /// Pulses the reset line through the i8042: mov al, 0xfe; out 0x64, al.
    fn i8042_reset(self) -> Self {
        self.mov_al(0xfe).out_imm_al(0x64)
    }
    /// hlt; jmp back to the hlt (in case an interrupt wakes it).
    fn halt_forever(self) -> Self {
        self.bytes(&[0xf4, 0xeb, 0xfd])
    }
}

/// Serial output collected in memory.
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

impl Capture {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

fn config(code: Asm, cmdline: &str) -> (VmConfig, Capture) {
    let serial = Capture::default();
    let mut cfg = VmConfig::new(GuestImage::Raw(code.0));
    cfg.cmdline = cmdline.into();
    cfg.mem_mib = 16;
    cfg.serial = Box::new(serial.clone());
    // A guard so a broken guest fails the test instead of hanging it.
    cfg.timeout = Some(Duration::from_secs(10));
    (cfg, serial)
}

fn run(cfg: VmConfig) -> RunReport {
    Vm::new(cfg).expect("build VM").run().expect("run VM")
}

#[testkit::needs(kvm)]
#[test]
fn long_mode_guest_writes_a_marker_to_serial() {
    let code = Asm::default()
        .boot_marker()
        .print8(b"LONGMODE")
        .print8(b" OK!\r\n\0\0")
        .i8042_reset()
        .halt_forever();
    let (cfg, serial) = config(code, "");
    let report = run(cfg);
    assert_eq!(report.end, VmEnd::Reset, "serial: {:?}", serial.text());
    assert!(
        serial.text().starts_with("LONGMODE OK!\r\n"),
        "{:?}",
        serial.text()
    );
}

#[testkit::needs(kvm)]
#[test]
fn i8042_reset_ends_the_vm_at_once() {
    let (cfg, serial) = config(Asm::default().i8042_reset().halt_forever(), "");
    let started = Instant::now();
    let report = run(cfg);
    assert_eq!(report.end, VmEnd::Reset);
    assert!(serial.text().is_empty());
    // Far below the 10 s guard: the reset, not the timeout, ended it.
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

#[testkit::needs(kvm)]
#[test]
fn guest_reads_the_boot_params_our_loader_wrote() {
    // e820 entry count as a digit, ':', then the command line from cmd_line_ptr.
    let code = Asm::default()
        .mov_dx(0x3f8)
        .bytes(&[0x8a, 0x86, 0xe8, 0x01, 0, 0]) // mov al, [rsi + 0x1e8] (e820_entries)
        .bytes(&[0x04, b'0']) // add al, '0'
        .out_dx_al()
        .mov_al(b':')
        .out_dx_al()
        .bytes(&[0x8b, 0xb6, 0x28, 0x02, 0, 0]) // mov esi, [rsi + 0x228] (cmd_line_ptr)
        .bytes(&[0xac, 0x84, 0xc0, 0x74, 0x03, 0xee, 0xeb, 0xf8]) // lodsb; test; jz; out; jmp
        .i8042_reset()
        .halt_forever();
    let cmdline = "console=ttyS0 reboot=k runner.step=42";
    let (cfg, serial) = config(code, cmdline);
    let report = run(cfg);
    assert_eq!(report.end, VmEnd::Reset);
    // A 16 MiB guest has two e820 RAM ranges: below the EBDA and from 1 MiB.
    assert_eq!(serial.text(), format!("2:{cmdline}"));
}

#[testkit::needs(kvm)]
#[test]
fn boot_timer_records_the_first_guest_instruction() {
    let code = Asm::default()
        .boot_marker()
        .mov_al(7) // not the magic: ignored
        .mov_dx(BOOT_TIMER_PORT)
        .out_dx_al()
        .boot_marker()
        .i8042_reset();
    let (cfg, _) = config(code, "");
    let report = run(cfg);
    assert_eq!(report.end, VmEnd::Reset);
    assert_eq!(report.boot_times.len(), 2, "{:?}", report.boot_times);
    let first = report.boot_times[0];
    assert!(first.since_create >= report.build_time, "{report:?}");
    assert!(first.since_create <= report.total_time);
    assert!(report.boot_times[1].since_create >= first.since_create);
    assert!(first.process_cpu > Duration::ZERO);
}

#[testkit::needs(kvm)]
#[test]
fn a_spinning_guest_is_stopped_by_timeout_and_by_stop_handle() {
    let spin = || Asm::default().bytes(&[0xeb, 0xfe]); // jmp $
    let (mut cfg, _) = config(spin(), "");
    cfg.timeout = Some(Duration::from_millis(200));
    let started = Instant::now();
    assert_eq!(run(cfg).end, VmEnd::TimedOut);
    assert!(started.elapsed() < Duration::from_secs(5));

    let (mut cfg, _) = config(spin(), "");
    cfg.timeout = None;
    let vm = Vm::new(cfg).unwrap();
    let stop = vm.stop_handle();
    let stopper = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(100));
        stop.stop();
    });
    assert_eq!(vm.run().unwrap().end, VmEnd::Stopped);
    stopper.join().unwrap();
}

#[testkit::needs(kvm)]
#[test]
fn two_vcpus_end_together_when_the_boot_cpu_resets() {
    // vCPU 1 waits for a startup IPI that never comes; the VM must still end and tear down.
    let (mut cfg, serial) = config(Asm::default().print8(b"SMP-BSP\n").i8042_reset(), "");
    cfg.vcpus = 2;
    let report = run(cfg);
    assert_eq!(report.end, VmEnd::Reset);
    assert_eq!(serial.text(), "SMP-BSP\n");
}

#[test]
fn bad_configs_get_clear_errors() {
    let (mut cfg, _) = config(Asm::default(), "");
    cfg.vcpus = 0;
    let err = Vm::new(cfg).unwrap_err().to_string();
    assert!(err.contains("vCPUs"), "{err}");

    let (mut cfg, _) = config(Asm::default(), "");
    cfg.mem_mib = 1;
    let err = Vm::new(cfg).unwrap_err().to_string();
    assert!(err.contains("too small"), "{err}");

    let (cfg, _) = config(Asm::default(), &"x".repeat(5000));
    let err = Vm::new(cfg).unwrap_err().to_string();
    assert!(err.contains("command line"), "{err}");
}

#[testkit::needs(kvm)]
#[test]
fn a_guest_halted_with_interrupts_off_is_reported_as_halt_not_timeout() {
    // cli; hlt: nothing can wake it. The in-kernel LAPIC keeps it asleep, so the VMM finds out
    // when the timeout kicks it, and reports a halt.
    let (mut cfg, _) = config(Asm::default().bytes(&[0xfa]).halt_forever(), "");
    cfg.timeout = Some(Duration::from_millis(300));
    assert_eq!(run(cfg).end, VmEnd::Halt);

    // sti; hlt: an interrupt could still come, so this is a timeout.
    let (mut cfg, _) = config(Asm::default().bytes(&[0xfb]).halt_forever(), "");
    cfg.timeout = Some(Duration::from_millis(300));
    assert_eq!(run(cfg).end, VmEnd::TimedOut);
}

#[testkit::needs(kvm)]
#[test]
fn guest_finds_the_mp_table_where_linux_scans_for_it() {
    // mov esi, [0xf0004] (the floating pointer's table address); print 4 signature bytes.
    let code = Asm::default()
        .mov_dx(0x3f8)
        .bytes(&[0x8b, 0x34, 0x25, 0x04, 0x00, 0x0f, 0x00])
        .bytes(&[0xac, 0xee, 0xac, 0xee, 0xac, 0xee, 0xac, 0xee])
        .i8042_reset();
    let (mut cfg, serial) = config(code, "");
    cfg.vcpus = 3;
    assert_eq!(run(cfg).end, VmEnd::Reset);
    assert_eq!(serial.text(), "PCMP");
}

#[testkit::needs(kvm)]
#[test]
fn agent_uart_carries_bytes_both_ways_with_flow_control() {
    // loop: wait for COM2 data ready (LSR bit 0), read the byte, echo it to COM2, and stop
    // after a newline. 300 bytes exceed the 64-byte FIFO, so the host must wait for the guest.
    let code = Asm::default()
        .mov_dx(0x2fd)
        .bytes(&[0xec, 0xa8, 0x01, 0x74, 0xfb]) // in al, dx; test al, 1; jz back to in
        .mov_dx(0x2f8)
        .bytes(&[0xec, 0xee, 0x3c, 0x0a, 0x75, 0xed]) // in; out; cmp al, '\n'; jne loop
        .i8042_reset();
    let (mut cfg, console) = config(code, "");
    let agent = Capture::default();
    cfg.agent = Some(Box::new(agent.clone()));
    let vm = Vm::new(cfg).unwrap();
    let input = vm.agent_input().expect("agent UART configured");
    let message: Vec<u8> = (0..299)
        .map(|i| b'a' + (i % 26) as u8)
        .chain(*b"\n")
        .collect();
    let sent = message.clone();
    let feeder = std::thread::spawn(move || input.write_all(&sent));
    let report = vm.run().unwrap();
    feeder.join().unwrap().expect("all input accepted");
    assert_eq!(report.end, VmEnd::Reset);
    assert_eq!(agent.text().as_bytes(), &message[..]);
    assert!(
        console.text().is_empty(),
        "agent bytes stay off the console"
    );
}

#[testkit::needs(kvm)]
#[test]
fn serial_input_fails_cleanly_once_the_vm_is_gone() {
    let (cfg, _) = config(Asm::default().i8042_reset(), "");
    let vm = Vm::new(cfg).unwrap();
    let input = vm.console_input();
    assert!(vm.agent_input().is_none());
    assert_eq!(vm.run().unwrap().end, VmEnd::Reset);
    // Nobody reads any more: more than a FIFO's worth must fail, not hang.
    let err = input.write_all(&[b'x'; 1000]).unwrap_err();
    assert!(err.to_string().contains("ended"), "{err}");
}

#[testkit::needs(kvm)]
#[test]
fn guest_walks_the_acpi_tables_from_the_rsdp() {
    // rbx = XSDT address from the RSDP (0xe0000 + 24); print the XSDT signature, then the
    // signatures of the tables its first two entries point at, then the MADT's first entry
    // type and APIC ID of each vCPU's local APIC (three vCPUs: 0, 1, 2).
    let print4 = [0xac, 0xee, 0xac, 0xee, 0xac, 0xee, 0xac, 0xee]; // (lodsb; out dx, al) x 4
    let code = Asm::default()
        .mov_dx(0x3f8)
        .bytes(&[0x48, 0x8b, 0x1c, 0x25, 0x18, 0x00, 0x0e, 0x00]) // mov rbx, [0xe0018]
        .bytes(&[0x48, 0x89, 0xde]) // mov rsi, rbx
        .bytes(&print4)
        .bytes(&[0x48, 0x8b, 0x73, 0x24]) // mov rsi, [rbx + 36]
        .bytes(&print4)
        .bytes(&[0x48, 0x8b, 0x73, 0x2c]) // mov rsi, [rbx + 44]
        .bytes(&print4)
        .bytes(&[0x48, 0x83, 0xc6, 0x28]) // add rsi, 40: first MADT entry (header 44)
        .bytes(&[0xac, 0x04, b'0', 0xee]) // lodsb (type) ; add al, '0' ; out
        .bytes(&[0x48, 0x83, 0xc6, 0x02, 0xac, 0x04, b'0', 0xee]) // skip to APIC ID; print
        .bytes(&[0x48, 0x83, 0xc6, 0x07, 0xac, 0x04, b'0', 0xee]) // next entry's APIC ID
        .bytes(&[0x48, 0x83, 0xc6, 0x07, 0xac, 0x04, b'0', 0xee]) // and the next
        .i8042_reset();
    let (mut cfg, serial) = config(code, "");
    cfg.vcpus = 3;
    assert_eq!(run(cfg).end, VmEnd::Reset);
    assert_eq!(serial.text(), "XSDTFACPAPIC0012");
}

/// mov dword [rbx + off], value (rbx holds the virtio device's register base).
fn mmio_store(asm: Asm, off: u32, value: u32) -> Asm {
    let asm = if off < 0x80 {
        asm.bytes(&[0xc7, 0x43, off as u8])
    } else {
        asm.bytes(&[0xc7, 0x83]).bytes(&off.to_le_bytes())
    };
    asm.bytes(&value.to_le_bytes())
}

#[testkit::needs(kvm)]
#[test]
fn guest_driver_reads_the_root_disk_through_virtio_mmio() {
    // The guest is a minimal virtio driver: it programs the device's registers at
    // 0xc000_0000 (found in the MMIO gap the page tables map), points queue 0 at a descriptor
    // table, submits one read of sector 1, then prints 4 bytes of the data, the status byte and
    // the used index. The descriptors and request header are the program's static data.
    let mut image = vec![0u8; 4 * 512];
    image[512..516].copy_from_slice(b"DISK");
    let disk = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(disk.path(), &image).unwrap();

    let mut asm = Asm::default().bytes(&[0xbb, 0x00, 0x00, 0x00, 0xc0]); // mov ebx, 0xc0000000
    for (off, v) in [
        (0x70, 1 | 2),     // status: ACKNOWLEDGE | DRIVER
        (0x24, 1),         // driver features select: high word
        (0x20, 1),         // VIRTIO_F_VERSION_1
        (0x70, 1 | 2 | 8), // FEATURES_OK
        (0x30, 0),         // queue select 0
        (0x38, 8),         // queue size 8
        (0x80, 0x20_0000), // descriptor table
        (0x84, 0),
        (0x90, 0x20_1000), // available ring
        (0x94, 0),
        (0xa0, 0x20_2000), // used ring
        (0xa4, 0),
        (0x44, 1),             // queue ready
        (0x70, 1 | 2 | 8 | 4), // DRIVER_OK
        (0x50, 0),             // notify queue 0
    ] {
        asm = mmio_store(asm, off, v);
    }
    let code = asm
        .mov_dx(0x3f8)
        .bytes(&[0xbe, 0x00, 0x40, 0x20, 0x00]) // mov esi, 0x204000 (data)
        .bytes(&[0xac, 0xee, 0xac, 0xee, 0xac, 0xee, 0xac, 0xee])
        .bytes(&[0x8a, 0x04, 0x25, 0x00, 0x50, 0x20, 0x00]) // mov al, [0x205000] (status)
        .bytes(&[0x04, b'0', 0xee])
        .bytes(&[0x8a, 0x04, 0x25, 0x02, 0x20, 0x20, 0x00]) // mov al, [0x202002] (used idx)
        .bytes(&[0x04, b'0', 0xee])
        .i8042_reset();

    let (mut cfg, serial) = config(code, "");
    cfg.root_disk = Some(disk.path().to_owned());
    let vm = Vm::new(cfg).unwrap();
    let mem = vm.memory();
    use vm_memory::{Bytes, GuestAddress};
    let desc = |i: u64, addr: u64, len: u32, flags: u16, next: u16| {
        let at = GuestAddress(0x20_0000 + i * 16);
        mem.write_obj(addr, at).unwrap();
        mem.write_obj(len, GuestAddress(at.0 + 8)).unwrap();
        mem.write_obj(flags, GuestAddress(at.0 + 12)).unwrap();
        mem.write_obj(next, GuestAddress(at.0 + 14)).unwrap();
    };
    desc(0, 0x20_3000, 16, 1, 1); // header, NEXT
    desc(1, 0x20_4000, 512, 1 | 2, 2); // data, NEXT | WRITE
    desc(2, 0x20_5000, 1, 2, 0); // status, WRITE
    mem.write_obj(0u32, GuestAddress(0x20_3000)).unwrap(); // VIRTIO_BLK_T_IN
    mem.write_obj(1u64, GuestAddress(0x20_3008)).unwrap(); // sector 1
    mem.write_obj(0xffu8, GuestAddress(0x20_5000)).unwrap();
    mem.write_obj(1u16, GuestAddress(0x20_1002)).unwrap(); // avail idx 1, ring[0] = 0

    assert_eq!(vm.run().unwrap().end, VmEnd::Reset);
    assert_eq!(serial.text(), "DISK01", "data, status OK, one used entry");
}

#[testkit::needs(kvm)]
#[test]
fn string_port_output_reaches_the_console_byte_for_byte() {
    // mov esi, <text>; mov ecx, len; mov dx, 0x3f8; rep outsb; reset. KVM hands the whole
    // string over in one exit; every byte must come out.
    let text = b"rep outsb carries a whole string\n";
    let prefix = 5 + 5 + 4 + 2 + 4; // the instructions before the text
    let addr = 0x10_0000u32 + prefix;
    let code = Asm::default()
        .bytes(&[0xbe])
        .bytes(&addr.to_le_bytes())
        .bytes(&[0xb9])
        .bytes(&(text.len() as u32).to_le_bytes())
        .mov_dx(0x3f8)
        .bytes(&[0xf3, 0x6e])
        .i8042_reset()
        .bytes(text);
    assert_eq!(code.0.len(), prefix as usize + text.len());
    let (cfg, serial) = config(code, "");
    assert_eq!(run(cfg).end, VmEnd::Reset);
    assert_eq!(serial.text().as_bytes(), text);
}
