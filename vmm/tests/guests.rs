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
