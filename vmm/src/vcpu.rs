//! One thread per vCPU: run it until the guest resets, halts, faults or the VM is stopped, and
//! handle its port I/O on the way.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;

use kvm_bindings::{KVM_MP_STATE_HALTED, KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN};
use kvm_ioctls::{VcpuExit, VcpuFd};
use vmm_sys_util::signal::{register_signal_handler, unblock_signal, Killable, SIGRTMIN};

use crate::devices::{Devices, PortAction};

/// How a vCPU, and so the VM, ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VmEnd {
    /// The guest reset the machine through the i8042 (Linux `reboot` with `reboot=k`) or a
    /// reset system event: for a throwaway VM, the normal way to finish.
    Reset,
    /// The guest powered off (a KVM shutdown system event).
    PowerOff,
    /// A triple fault: the guest crashed in a way the CPU could not report.
    TripleFault,
    /// The boot vCPU halted with interrupts disabled, so nothing can wake it: the guest is
    /// done (or hung). With the in-kernel LAPIC, KVM keeps such a vCPU asleep instead of
    /// exiting, so this is found when the timeout or a stop kicks the vCPU out (or reported at
    /// once where KVM does exit on HLT).
    Halt,
    /// The VM was stopped from outside (`StopHandle::stop`).
    Stopped,
    /// The configured timeout passed first.
    TimedOut,
    /// KVM or the guest failed; the reason says which.
    Error(String),
}

/// What a vCPU thread reports when it finishes.
#[derive(Debug)]
pub struct VcpuEnded {
    /// Which vCPU.
    pub id: u8,
    /// Why.
    pub end: VmEnd,
}

/// Messages to the thread that waits on the VM.
#[derive(Debug)]
pub enum Event {
    /// A vCPU finished.
    Ended(VcpuEnded),
    /// Someone asked the VM to stop.
    Stop,
}

/// The signal that kicks a vCPU thread out of KVM_RUN.
fn kick_signal() -> i32 {
    SIGRTMIN()
}

extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // Nothing to do: delivering the signal is enough to make KVM_RUN return EINTR.
}

/// Installs the (empty) kick handler once per process; every later call reports how that went.
pub fn install_kick_handler() -> Result<(), std::io::Error> {
    static INSTALLED: OnceLock<Result<(), i32>> = OnceLock::new();
    INSTALLED
        .get_or_init(|| register_signal_handler(kick_signal(), on_kick).map_err(|e| e.errno()))
        .map_err(std::io::Error::from_raw_os_error)
}

/// Interrupts a vCPU thread's KVM_RUN so that it sees the stop flag.
pub fn kick<T>(thread: &JoinHandle<T>) {
    let _ = thread.kill(kick_signal());
}

/// Runs vCPU `id` until the VM ends; reports the end on `events`.
pub fn run(
    id: u8,
    mut vcpu: VcpuFd,
    devices: Arc<Devices>,
    stop: Arc<AtomicBool>,
    events: Sender<Event>,
) {
    // The caller's signal mask is inherited; the kick must get through.
    let mut end = match unblock_signal(kick_signal()) {
        Ok(()) => run_loop(&mut vcpu, &devices, &stop),
        Err(e) => VmEnd::Error(format!("cannot unblock the vCPU kick signal: {e}")),
    };
    if end == VmEnd::Stopped && halted_for_good(&vcpu) {
        end = VmEnd::Halt;
    }
    stop.store(true, Ordering::SeqCst);
    let _ = events.send(Event::Ended(VcpuEnded { id, end }));
}

/// Whether the vCPU sleeps in HLT with interrupts off (RFLAGS.IF clear): only an NMI, which
/// nothing here sends, could wake it.
fn halted_for_good(vcpu: &VcpuFd) -> bool {
    const RFLAGS_IF: u64 = 1 << 9;
    let halted = vcpu
        .get_mp_state()
        .is_ok_and(|s| s.mp_state == KVM_MP_STATE_HALTED);
    halted && vcpu.get_regs().is_ok_and(|r| r.rflags & RFLAGS_IF == 0)
}

fn run_loop(vcpu: &mut VcpuFd, devices: &Devices, stop: &AtomicBool) -> VmEnd {
    loop {
        if stop.load(Ordering::SeqCst) {
            return VmEnd::Stopped;
        }
        match vcpu.run() {
            Ok(VcpuExit::IoOut(port, data)) => {
                if devices.pio_write(port, data) == PortAction::Reset {
                    return VmEnd::Reset;
                }
            }
            Ok(VcpuExit::IoIn(port, data)) => devices.pio_read(port, data),
            Ok(VcpuExit::MmioRead(addr, data)) => devices.mmio_read(addr, data),
            Ok(VcpuExit::MmioWrite(addr, data)) => devices.mmio_write(addr, data),
            Ok(VcpuExit::Hlt) => return VmEnd::Halt,
            Ok(VcpuExit::Shutdown) => return VmEnd::TripleFault,
            Ok(VcpuExit::SystemEvent(kind, _)) => {
                return match kind {
                    KVM_SYSTEM_EVENT_RESET => VmEnd::Reset,
                    KVM_SYSTEM_EVENT_SHUTDOWN => VmEnd::PowerOff,
                    other => VmEnd::Error(format!("unhandled KVM system event {other}")),
                };
            }
            Ok(VcpuExit::FailEntry(reason, cpu)) => {
                return VmEnd::Error(format!(
                    "KVM could not enter the guest (hardware reason {reason:#x}, cpu {cpu})"
                ));
            }
            Ok(VcpuExit::InternalError) => {
                return VmEnd::Error("KVM internal error (emulation failure)".into());
            }
            Ok(other) => return VmEnd::Error(format!("unexpected vCPU exit {other:?}")),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {}
            Err(e) => return VmEnd::Error(format!("KVM_RUN failed: {e}")),
        }
    }
}
