//! 16550-style UARTs emulated by `vm-superio`: COM1 (0x3f8, IRQ 4) is the console, COM2
//! (0x2f8, IRQ 3) an optional channel for a guest agent. Interrupts reach the in-kernel
//! PIC/IOAPIC through an irqfd, so raising one costs no exit. Host-to-guest bytes go through a
//! [`SerialInput`] that waits while the guest's 64-byte receive FIFO is full.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use kvm_ioctls::VmFd;
use thiserror::Error;
use vm_superio::serial::SerialEvents;
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

/// Base port of COM1.
pub const COM1_PORT: u16 = 0x3f8;
/// COM1's interrupt line.
pub const COM1_IRQ: u32 = 4;
/// Base port of COM2.
pub const COM2_PORT: u16 = 0x2f8;
/// COM2's interrupt line.
pub const COM2_IRQ: u32 = 3;
/// A UART has eight registers.
const REGISTERS: u16 = 8;

type Uart = Serial<IrqTrigger, Arc<RoomSignal>, Box<dyn Write + Send>>;

/// Errors wiring a serial port.
#[derive(Debug, Error)]
pub enum Error {
    /// eventfd creation failed.
    #[error("eventfd: {0}")]
    EventFd(#[source] std::io::Error),
    /// KVM_IRQFD failed.
    #[error("KVM_IRQFD for IRQ {0}: {1}")]
    Irqfd(u32, #[source] kvm_ioctls::Error),
}

/// Errors feeding input to the guest.
#[derive(Debug, Error)]
pub enum InputError {
    /// The VM has ended; nobody will read.
    #[error("the VM has ended; its serial port takes no more input")]
    VmEnded,
}

/// Raises the serial IRQ by writing to an eventfd KVM listens on.
#[derive(Debug)]
pub struct IrqTrigger(EventFd);

impl Trigger for IrqTrigger {
    type E = std::io::Error;

    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}

/// Wakes writers of [`SerialInput`] when the guest has read from the receive FIFO.
#[derive(Debug, Default)]
pub struct RoomSignal {
    lock: Mutex<()>,
    room: Condvar,
}

impl SerialEvents for RoomSignal {
    fn buffer_read(&self) {
        let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        self.room.notify_all();
    }
    fn out_byte(&self) {}
    fn tx_lost_byte(&self) {}
    fn in_buffer_empty(&self) {}
}

/// One UART on the port bus.
pub struct SerialPort {
    base: u16,
    uart: Mutex<Uart>,
    room: Arc<RoomSignal>,
}

impl SerialPort {
    /// Creates the UART at `base` on `irq`, writing guest output to `out`.
    pub fn new(vm: &VmFd, base: u16, irq: u32, out: Box<dyn Write + Send>) -> Result<Self, Error> {
        let evt = EventFd::new(libc::EFD_NONBLOCK).map_err(Error::EventFd)?;
        vm.register_irqfd(&evt, irq)
            .map_err(|e| Error::Irqfd(irq, e))?;
        let room = Arc::new(RoomSignal::default());
        Ok(SerialPort {
            base,
            uart: Mutex::new(Serial::with_events(IrqTrigger(evt), room.clone(), out)),
            room,
        })
    }

    /// Register offset of `port` if it belongs to this UART.
    pub fn offset(&self, port: u16) -> Option<u8> {
        register_offset(self.base, port)
    }

    /// A guest write. A failed write to the sink (a closed pipe, say) loses output but must not
    /// stop the guest, so it is dropped.
    pub fn write(&self, offset: u8, value: u8) {
        let _ = self.lock().write(offset, value);
    }

    /// A guest read.
    pub fn read(&self, offset: u8) -> u8 {
        self.lock().read(offset)
    }

    /// Flushes the output sink.
    pub fn flush(&self) {
        let _ = self.lock().writer_mut().flush();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Uart> {
        // Plain registers: still consistent if a vCPU thread panicked holding the lock.
        self.uart.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Offset of `port` within the UART at `base`.
pub fn register_offset(base: u16, port: u16) -> Option<u8> {
    (base..base + REGISTERS)
        .contains(&port)
        .then(|| (port - base) as u8)
}

/// Feeds bytes to the guest through a UART's receive FIFO.
#[derive(Clone)]
pub struct SerialInput {
    port: Arc<SerialPort>,
    ended: Arc<AtomicBool>,
}

impl std::fmt::Debug for SerialInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SerialInput({:#x})", self.port.base)
    }
}

impl SerialInput {
    /// An input for `port` that gives up once `ended` is set.
    pub fn new(port: Arc<SerialPort>, ended: Arc<AtomicBool>) -> Self {
        SerialInput { port, ended }
    }

    /// Queues all of `data` for the guest, waiting while its FIFO is full; fails once the VM
    /// has ended.
    pub fn write_all(&self, mut data: &[u8]) -> Result<(), InputError> {
        while !data.is_empty() {
            if self.ended.load(Ordering::SeqCst) {
                return Err(InputError::VmEnded);
            }
            let queued = self.port.lock().enqueue_raw_bytes(data).unwrap_or(0);
            data = &data[queued..];
            if queued == 0 {
                // Full: wait for the guest to read. The timeout covers a wake-up that came
                // between the attempt and the wait, and lets us notice the VM ending.
                let guard = self
                    .port
                    .room
                    .lock
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                let _ = self
                    .port
                    .room
                    .room
                    .wait_timeout(guard, Duration::from_millis(5));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_uart_spans_eight_ports() {
        assert_eq!(register_offset(COM1_PORT, 0x3f8), Some(0));
        assert_eq!(register_offset(COM1_PORT, 0x3ff), Some(7));
        assert_eq!(register_offset(COM1_PORT, 0x3f7), None);
        assert_eq!(register_offset(COM2_PORT, 0x2f9), Some(1));
        assert_eq!(register_offset(COM2_PORT, 0x300), None);
    }
}
