//! The legacy devices a microVM needs, on the port I/O bus: the 8250 serial console, the i8042
//! (only so the guest can reset, which ends the VM), and the boot-timer marker port.
//!
//! The PIC, IOAPIC and PIT live in KVM; port I/O reaching us is for these devices or nobody.

pub mod boot_timer;
pub mod i8042;
pub mod serial;

use std::io::Write;
use std::sync::Mutex;
use std::time::Instant;

use kvm_ioctls::VmFd;
use thiserror::Error;

pub use boot_timer::{BootTimer, BootTimerReading, BOOT_TIMER_MAGIC, BOOT_TIMER_PORT};
pub use serial::{COM1_IRQ, COM1_PORT};

/// Errors setting up devices.
#[derive(Debug, Error)]
pub enum Error {
    /// The serial interrupt could not be wired.
    #[error("cannot wire the serial port's interrupt: {0}")]
    Serial(#[from] serial::Error),
}

/// What a port write asks of the VM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PortAction {
    /// Keep running.
    Continue,
    /// The guest asked the i8042 for a CPU reset: the VM ends.
    Reset,
}

/// All port-mapped devices of one VM, shared by its vCPU threads.
pub struct Devices {
    serial: Mutex<serial::Console>,
    i8042: Mutex<i8042::ResetPort>,
    boot_timer: BootTimer,
}

impl Devices {
    /// Creates the devices; `created` is the instant the VM creation started.
    pub fn new(
        vm: &VmFd,
        serial_out: Box<dyn Write + Send>,
        created: Instant,
    ) -> Result<Self, Error> {
        Ok(Devices {
            serial: Mutex::new(serial::console(vm, serial_out)?),
            i8042: Mutex::new(i8042::ResetPort::new()),
            boot_timer: BootTimer::new(created),
        })
    }

    /// Handles `out` to `port`.
    pub fn pio_write(&self, port: u16, data: &[u8]) -> PortAction {
        let Some(&value) = data.first() else {
            return PortAction::Continue;
        };
        if let Some(offset) = serial::offset(port) {
            serial::write(&mut lock(&self.serial), offset, value);
        } else if let Some(offset) = i8042::offset(port) {
            if lock(&self.i8042).write(offset, value) {
                return PortAction::Reset;
            }
        } else if port == BOOT_TIMER_PORT {
            self.boot_timer.write(value);
        }
        PortAction::Continue
    }

    /// Handles `in` from `port`: no device there reads as all ones, as on a real bus.
    pub fn pio_read(&self, port: u16, data: &mut [u8]) {
        data.fill(0xff);
        if let Some(offset) = serial::offset(port) {
            data[0] = lock(&self.serial).read(offset);
        } else if let Some(offset) = i8042::offset(port) {
            data[0] = lock(&self.i8042).read(offset);
        }
    }

    /// Boot-timer readings so far.
    pub fn boot_times(&self) -> Vec<BootTimerReading> {
        self.boot_timer.readings()
    }

    /// Flushes the serial sink (at the end of a run).
    pub fn flush_serial(&self) {
        let _ = lock(&self.serial).writer_mut().flush();
    }
}

/// Locks a device; a vCPU thread that panicked while holding it left a device that is still
/// usable (its state is plain registers), so poisoning is ignored.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
