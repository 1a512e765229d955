//! The i8042 keyboard controller at 0x60-0x64, emulated by `vm-superio` only as far as its
//! "pulse reset line" command (0xfe to port 0x64): that is how Linux reboots with `reboot=k`,
//! and for a throwaway VM a reboot means the end.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use vm_superio::{I8042Device, Trigger};

/// First port of the controller (data); the command/status port is 0x64.
const I8042_PORT: u16 = 0x60;
/// Ports 0x60..=0x64.
const PORTS: u16 = 5;

/// Records that the guest asked for a reset.
#[derive(Clone, Debug, Default)]
pub struct ResetFlag(Arc<AtomicBool>);

impl Trigger for ResetFlag {
    type E = std::convert::Infallible;

    fn trigger(&self) -> Result<(), Self::E> {
        self.0.store(true, Ordering::SeqCst);
        Ok(())
    }
}

/// The controller and its reset line.
pub struct ResetPort {
    device: I8042Device<ResetFlag>,
    reset: ResetFlag,
}

impl Default for ResetPort {
    fn default() -> Self {
        Self::new()
    }
}

impl ResetPort {
    /// A controller whose reset line is not yet pulled.
    pub fn new() -> Self {
        let reset = ResetFlag::default();
        ResetPort {
            device: I8042Device::new(reset.clone()),
            reset,
        }
    }

    /// A guest write; true when it pulled the reset line.
    pub fn write(&mut self, offset: u8, value: u8) -> bool {
        let _ = self.device.write(offset, value);
        self.reset.0.load(Ordering::SeqCst)
    }

    /// A guest read.
    pub fn read(&mut self, offset: u8) -> u8 {
        self.device.read(offset)
    }
}

/// Offset of `port` within the controller, if it is one of its ports.
pub fn offset(port: u16) -> Option<u8> {
    (I8042_PORT..I8042_PORT + PORTS)
        .contains(&port)
        .then(|| (port - I8042_PORT) as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_reset_command_on_the_command_port_resets() {
        let mut dev = ResetPort::new();
        assert!(
            !dev.write(offset(0x60).unwrap(), 0xfe),
            "0xfe as data is not a command"
        );
        assert!(
            !dev.write(offset(0x64).unwrap(), 0xaa),
            "self-test is not a reset"
        );
        assert!(dev.write(offset(0x64).unwrap(), 0xfe));
        assert_eq!(offset(0x61), Some(1));
        assert_eq!(offset(0x65), None);
    }
}
