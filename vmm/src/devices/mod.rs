//! The legacy devices a microVM needs, on the port I/O bus: the 8250 serial console (COM1)
//! and optionally a second UART for a guest agent (COM2), the i8042 (only so the guest can
//! reset, which ends the VM), the boot-timer marker port, and optionally a read-only virtio
//! block device (virtio-mmio) for the root disk.
//!
//! The PIC, IOAPIC and PIT live in KVM; port I/O reaching us is for these devices or nobody.

pub mod block;
pub mod boot_timer;
pub mod i8042;
pub mod serial;
pub mod virtio_mmio;

use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use kvm_ioctls::VmFd;

use crate::memory::GuestMemory;
use thiserror::Error;

pub use boot_timer::{BootTimer, BootTimerReading, BOOT_TIMER_MAGIC, BOOT_TIMER_PORT};
pub use serial::{InputError, SerialInput, SerialPort, COM1_IRQ, COM1_PORT, COM2_IRQ, COM2_PORT};

/// Errors setting up devices.
#[derive(Debug, Error)]
pub enum Error {
    /// A serial interrupt could not be wired.
    #[error("cannot set up a serial port: {0}")]
    Serial(#[from] serial::Error),
    /// The disk image could not be opened.
    #[error(transparent)]
    Block(#[from] block::Error),
    /// The virtio transport could not be set up.
    #[error("cannot set up the virtio block device: {0}")]
    Virtio(#[from] virtio_mmio::Error),
}

/// Guest-physical base of the virtio block device's registers (in the MMIO gap).
pub const VIRTIO_BLOCK_BASE: u64 = crate::memory::MMIO_GAP_START;
/// Its interrupt (GSI; KVM routes GSI n to IOAPIC pin n).
pub const VIRTIO_BLOCK_GSI: u32 = 5;

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
    console: Arc<SerialPort>,
    agent: Option<Arc<SerialPort>>,
    i8042: Mutex<i8042::ResetPort>,
    boot_timer: BootTimer,
    block: Option<Mutex<virtio_mmio::VirtioMmio>>,
}

/// What devices to create besides the console, i8042 and boot timer.
pub struct DeviceConfig<'a> {
    /// Console (COM1) output.
    pub console_out: Box<dyn Write + Send>,
    /// Agent UART (COM2) output, if wanted.
    pub agent_out: Option<Box<dyn Write + Send>>,
    /// Read-only root disk image, if wanted.
    pub root_disk: Option<&'a Path>,
}

impl Devices {
    /// Creates the devices; `created` is the instant the VM creation started.
    pub fn new(
        vm: &VmFd,
        mem: &GuestMemory,
        config: DeviceConfig<'_>,
        created: Instant,
    ) -> Result<Self, Error> {
        let console = Arc::new(SerialPort::new(
            vm,
            COM1_PORT,
            COM1_IRQ,
            config.console_out,
        )?);
        let agent = match config.agent_out {
            Some(out) => Some(Arc::new(SerialPort::new(vm, COM2_PORT, COM2_IRQ, out)?)),
            None => None,
        };
        let block = match config.root_disk {
            Some(path) => {
                let disk = block::Block::open(path)?;
                let dev = virtio_mmio::VirtioMmio::new(vm, disk, mem.clone(), VIRTIO_BLOCK_GSI)?;
                Some(Mutex::new(dev))
            }
            None => None,
        };
        Ok(Devices {
            console,
            agent,
            i8042: Mutex::new(i8042::ResetPort::new()),
            boot_timer: BootTimer::new(created),
            block,
        })
    }

    /// The block device and the offset into its window, if `addr` falls in it.
    fn block_at(&self, addr: u64) -> Option<(&Mutex<virtio_mmio::VirtioMmio>, u64)> {
        let block = self.block.as_ref()?;
        let offset = addr.checked_sub(VIRTIO_BLOCK_BASE)?;
        (offset < virtio_mmio::WINDOW).then_some((block, offset))
    }

    /// Handles an MMIO read: the block device's registers, or all ones for nothing there.
    pub fn mmio_read(&self, addr: u64, data: &mut [u8]) {
        match self.block_at(addr) {
            Some((dev, offset)) => lock(dev).read(offset, data),
            None => data.fill(0xff),
        }
    }

    /// Handles an MMIO write (dropped where no device is).
    pub fn mmio_write(&self, addr: u64, data: &[u8]) {
        if let Some((dev, offset)) = self.block_at(addr) {
            lock(dev).write(offset, data);
        }
    }

    /// The UART owning `port`, and the register offset.
    fn uart(&self, port: u16) -> Option<(&SerialPort, u8)> {
        std::iter::once(&self.console)
            .chain(self.agent.as_ref())
            .find_map(|u| u.offset(port).map(|o| (u.as_ref(), o)))
    }

    /// Handles `out` to `port`. `data` holds every byte of the access: more than one for a
    /// string instruction (`rep outsb`, which KVM batches into one exit).
    pub fn pio_write(&self, port: u16, data: &[u8]) -> PortAction {
        let Some(&value) = data.first() else {
            return PortAction::Continue;
        };
        if let Some((uart, offset)) = self.uart(port) {
            for byte in data {
                uart.write(offset, *byte);
            }
        } else if let Some(offset) = i8042::offset(port) {
            if lock(&self.i8042).write(offset, value) {
                return PortAction::Reset;
            }
        } else if port == BOOT_TIMER_PORT {
            for byte in data {
                self.boot_timer.write(*byte);
            }
        }
        PortAction::Continue
    }

    /// Handles `in` from `port`: no device there reads as all ones, as on a real bus.
    pub fn pio_read(&self, port: u16, data: &mut [u8]) {
        data.fill(0xff);
        if let Some((uart, offset)) = self.uart(port) {
            for byte in data.iter_mut() {
                *byte = uart.read(offset);
            }
        } else if let Some(offset) = i8042::offset(port) {
            if let Some(first) = data.first_mut() {
                *first = lock(&self.i8042).read(offset);
            }
        }
    }

    /// The console UART.
    pub fn console(&self) -> &Arc<SerialPort> {
        &self.console
    }

    /// The agent UART, if configured.
    pub fn agent(&self) -> Option<&Arc<SerialPort>> {
        self.agent.as_ref()
    }

    /// Boot-timer readings so far.
    pub fn boot_times(&self) -> Vec<BootTimerReading> {
        self.boot_timer.readings()
    }

    /// Flushes the serial sinks (at the end of a run).
    pub fn flush_serial(&self) {
        self.console.flush();
        if let Some(agent) = &self.agent {
            agent.flush();
        }
    }
}

/// Locks a device; a vCPU thread that panicked while holding it left a device that is still
/// usable (its state is plain registers), so poisoning is ignored.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

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

    fn devices(console: Capture) -> Devices {
        let kvm = crate::kvm::open().unwrap();
        let mem = crate::memory::allocate(2).unwrap();
        let vm = crate::vm::create(&kvm, &mem).unwrap();
        let config = DeviceConfig {
            console_out: Box::new(console),
            agent_out: None,
            root_disk: None,
        };
        Devices::new(&vm, &mem, config, Instant::now()).unwrap()
    }

    #[testkit::needs(kvm)]
    #[test]
    fn a_batched_string_write_delivers_every_byte() {
        // What KVM hands over for `rep outsb` when it batches: all bytes in one exit.
        let out = Capture::default();
        let dev = devices(out.clone());
        assert_eq!(dev.pio_write(COM1_PORT, b"abc"), PortAction::Continue);
        dev.pio_write(BOOT_TIMER_PORT, &[0, BOOT_TIMER_MAGIC, 1]);
        assert_eq!(&out.0.lock().unwrap()[..], b"abc");
        assert_eq!(dev.boot_times().len(), 1);
        assert_eq!(dev.pio_write(0x64, &[0xfe]), PortAction::Reset);
    }

    #[testkit::needs(kvm)]
    #[test]
    fn nothing_there_reads_as_all_ones_and_mmio_without_a_disk_too() {
        let dev = devices(Capture::default());
        let mut data = [0u8; 4];
        dev.pio_read(0x2f8, &mut data); // no agent UART configured
        assert_eq!(data, [0xff; 4]);
        dev.mmio_read(VIRTIO_BLOCK_BASE, &mut data);
        assert_eq!(data, [0xff; 4]);
        // The UART's line status register: transmitter empty, nothing received.
        let mut lsr = [0u8; 1];
        dev.pio_read(COM1_PORT + 5, &mut lsr);
        assert_eq!(lsr[0] & 0x61, 0x60);
    }
}
