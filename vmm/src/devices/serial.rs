//! COM1: a 16550-style UART at 0x3f8 on IRQ 4, emulated by `vm-superio`. Its interrupt reaches
//! the in-kernel PIC/IOAPIC through an irqfd, so raising it costs no exit.

use std::io::Write;

use kvm_ioctls::VmFd;
use thiserror::Error;
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

/// Base port of COM1.
pub const COM1_PORT: u16 = 0x3f8;
/// COM1's interrupt line.
pub const COM1_IRQ: u32 = 4;
/// The UART has eight registers.
const REGISTERS: u16 = 8;

/// The console device.
pub type Console = Serial<IrqTrigger, vm_superio::serial::NoEvents, Box<dyn Write + Send>>;

/// Errors wiring the serial port.
#[derive(Debug, Error)]
pub enum Error {
    /// eventfd creation failed.
    #[error("eventfd: {0}")]
    EventFd(#[source] std::io::Error),
    /// KVM_IRQFD failed.
    #[error("KVM_IRQFD for IRQ {COM1_IRQ}: {0}")]
    Irqfd(#[source] kvm_ioctls::Error),
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

/// Creates COM1 writing to `out`, with its IRQ wired.
pub fn console(vm: &VmFd, out: Box<dyn Write + Send>) -> Result<Console, Error> {
    let evt = EventFd::new(libc::EFD_NONBLOCK).map_err(Error::EventFd)?;
    vm.register_irqfd(&evt, COM1_IRQ).map_err(Error::Irqfd)?;
    Ok(Serial::new(IrqTrigger(evt), out))
}

/// Register offset of `port` if it belongs to COM1.
pub fn offset(port: u16) -> Option<u8> {
    (COM1_PORT..COM1_PORT + REGISTERS)
        .contains(&port)
        .then(|| (port - COM1_PORT) as u8)
}

/// A guest write to a UART register. A failed write to the sink (a closed pipe, say) loses
/// console output but must not stop the guest, so it is dropped.
pub fn write(console: &mut Console, offset: u8, value: u8) {
    let _ = console.write(offset, value);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn com1_spans_eight_ports() {
        assert_eq!(offset(0x3f8), Some(0));
        assert_eq!(offset(0x3ff), Some(7));
        assert_eq!(offset(0x3f7), None);
        assert_eq!(offset(0x400), None);
    }
}
