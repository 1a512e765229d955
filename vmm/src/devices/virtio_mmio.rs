//! The virtio-mmio transport (virtio spec 1.x, section 4.2, version 2 register layout) for the
//! block device: the guest finds it through the ACPI DSDT (`LNRO0005`), negotiates features,
//! hands over its queue addresses, and kicks the queue by writing `QueueNotify`. Requests are
//! served right there on the vCPU thread; completion raises the device's interrupt through an
//! irqfd.

use kvm_ioctls::VmFd;
use thiserror::Error;
use virtio_bindings::virtio_ids::VIRTIO_ID_BLOCK;
use virtio_bindings::virtio_mmio::*;
use virtio_queue::{Queue, QueueT};
use vmm_sys_util::eventfd::EventFd;

use super::block::Block;
use crate::memory::GuestMemory;

/// "virt", the magic value at offset 0.
const MAGIC: u32 = 0x7472_6976;
/// Vendor ID we report ("RUNR").
const VENDOR: u32 = 0x524e_5552;
/// Entries in the request queue.
pub const QUEUE_SIZE: u16 = 256;
/// Size of the register window.
pub const WINDOW: u64 = 0x1000;

/// Errors setting the transport up.
#[derive(Debug, Error)]
pub enum Error {
    /// eventfd creation failed.
    #[error("eventfd for the virtio interrupt: {0}")]
    EventFd(#[source] std::io::Error),
    /// KVM_IRQFD failed.
    #[error("KVM_IRQFD for virtio GSI {0}: {1}")]
    Irqfd(u32, #[source] kvm_ioctls::Error),
    /// virtio-queue refused the queue size.
    #[error("virtio queue: {0}")]
    Queue(String),
}

/// A virtio block device behind its MMIO registers.
pub struct VirtioMmio {
    device: Block,
    mem: GuestMemory,
    queue: Queue,
    irq: EventFd,
    status: u32,
    interrupt_status: u32,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    queue_sel: u32,
}

impl VirtioMmio {
    /// Wraps `device`, raising `gsi` on completions.
    pub fn new(vm: &VmFd, device: Block, mem: GuestMemory, gsi: u32) -> Result<Self, Error> {
        let irq = EventFd::new(libc::EFD_NONBLOCK).map_err(Error::EventFd)?;
        vm.register_irqfd(&irq, gsi)
            .map_err(|e| Error::Irqfd(gsi, e))?;
        Self::with_irq(device, mem, irq)
    }

    fn with_irq(device: Block, mem: GuestMemory, irq: EventFd) -> Result<Self, Error> {
        Ok(VirtioMmio {
            device,
            mem,
            queue: Queue::new(QUEUE_SIZE).map_err(|e| Error::Queue(e.to_string()))?,
            irq,
            status: 0,
            interrupt_status: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            queue_sel: 0,
        })
    }

    /// A guest read of `data.len()` bytes at `offset` into the window.
    pub fn read(&self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if offset >= u64::from(VIRTIO_MMIO_CONFIG) {
            let config = self.device.config();
            let start = (offset - u64::from(VIRTIO_MMIO_CONFIG)) as usize;
            for (i, b) in data.iter_mut().enumerate() {
                *b = config.get(start + i).copied().unwrap_or(0);
            }
            return;
        }
        if data.len() != 4 {
            return; // Registers are 32-bit; other widths read as zero.
        }
        let value = match offset as u32 {
            VIRTIO_MMIO_MAGIC_VALUE => MAGIC,
            VIRTIO_MMIO_VERSION => 2,
            VIRTIO_MMIO_DEVICE_ID => VIRTIO_ID_BLOCK,
            VIRTIO_MMIO_VENDOR_ID => VENDOR,
            VIRTIO_MMIO_DEVICE_FEATURES => match self.device_features_sel {
                0 => self.device.features() as u32,
                1 => (self.device.features() >> 32) as u32,
                _ => 0,
            },
            VIRTIO_MMIO_QUEUE_NUM_MAX if self.queue_sel == 0 => u32::from(QUEUE_SIZE),
            VIRTIO_MMIO_QUEUE_READY if self.queue_sel == 0 => u32::from(self.queue.ready()),
            VIRTIO_MMIO_INTERRUPT_STATUS => self.interrupt_status,
            VIRTIO_MMIO_STATUS => self.status,
            VIRTIO_MMIO_CONFIG_GENERATION => 0,
            _ => 0,
        };
        data.copy_from_slice(&value.to_le_bytes());
    }

    /// A guest write at `offset` into the window.
    pub fn write(&mut self, offset: u64, data: &[u8]) {
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            return; // The config space is read-only; registers are 32-bit.
        };
        let v = u32::from_le_bytes(bytes);
        let queue = self.queue_sel == 0;
        match offset as u32 {
            VIRTIO_MMIO_DEVICE_FEATURES_SEL => self.device_features_sel = v,
            VIRTIO_MMIO_DRIVER_FEATURES_SEL => self.driver_features_sel = v,
            VIRTIO_MMIO_DRIVER_FEATURES => {
                let shift = match self.driver_features_sel {
                    0 => 0,
                    1 => 32,
                    _ => return,
                };
                let mask = !(0xffff_ffffu64 << shift);
                let offered = self.device.features() & (0xffff_ffffu64 << shift);
                self.driver_features =
                    (self.driver_features & mask) | ((u64::from(v) << shift) & offered);
            }
            VIRTIO_MMIO_QUEUE_SEL => self.queue_sel = v,
            VIRTIO_MMIO_QUEUE_NUM if queue => self.queue.set_size(v as u16),
            VIRTIO_MMIO_QUEUE_READY if queue => self.queue.set_ready(v == 1),
            VIRTIO_MMIO_QUEUE_DESC_LOW if queue => self.queue.set_desc_table_address(Some(v), None),
            VIRTIO_MMIO_QUEUE_DESC_HIGH if queue => {
                self.queue.set_desc_table_address(None, Some(v))
            }
            VIRTIO_MMIO_QUEUE_AVAIL_LOW if queue => {
                self.queue.set_avail_ring_address(Some(v), None)
            }
            VIRTIO_MMIO_QUEUE_AVAIL_HIGH if queue => {
                self.queue.set_avail_ring_address(None, Some(v))
            }
            VIRTIO_MMIO_QUEUE_USED_LOW if queue => self.queue.set_used_ring_address(Some(v), None),
            VIRTIO_MMIO_QUEUE_USED_HIGH if queue => self.queue.set_used_ring_address(None, Some(v)),
            VIRTIO_MMIO_QUEUE_NOTIFY if v == 0 => self.process_queue(),
            VIRTIO_MMIO_INTERRUPT_ACK => self.interrupt_status &= !v,
            VIRTIO_MMIO_STATUS if v == 0 => self.reset(),
            VIRTIO_MMIO_STATUS => self.status = v,
            _ => {}
        }
    }

    /// Back to the state before the driver touched the device.
    fn reset(&mut self) {
        self.queue.reset();
        self.status = 0;
        self.interrupt_status = 0;
        self.driver_features = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.queue_sel = 0;
    }

    /// Serves every request the guest has made available, then interrupts it once.
    fn process_queue(&mut self) {
        if !self.queue.ready() || !self.queue.is_valid(&self.mem) {
            return;
        }
        let mut served = false;
        while let Some(chain) = self.queue.pop_descriptor_chain(&self.mem) {
            let head = chain.head_index();
            let descs: Vec<_> = chain.collect();
            let used = self.device.handle(&self.mem, &descs).unwrap_or(0);
            if self.queue.add_used(&self.mem, head, used).is_err() {
                break;
            }
            served = true;
        }
        if served && self.queue.needs_notification(&self.mem).unwrap_or(true) {
            self.interrupt_status |= VIRTIO_MMIO_INT_VRING;
            let _ = self.irq.write(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_bindings::virtio_blk::{VIRTIO_BLK_F_RO, VIRTIO_BLK_T_IN};
    use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
    use virtio_queue::desc::{split::Descriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Bytes, GuestAddress};

    fn reg(dev: &VirtioMmio, offset: u32) -> u32 {
        let mut b = [0u8; 4];
        dev.read(u64::from(offset), &mut b);
        u32::from_le_bytes(b)
    }

    fn set(dev: &mut VirtioMmio, offset: u32, v: u32) {
        dev.write(u64::from(offset), &v.to_le_bytes());
    }

    /// Drives the device the way Linux's virtio_mmio and virtio_blk drivers do: identify,
    /// negotiate, set up queue 0, queue one read, notify; then check the data, the used ring
    /// and the interrupt.
    #[test]
    fn a_driver_reads_a_sector_through_the_registers() {
        let image: Vec<u8> = (0..2048u32).map(|i| (i / 512) as u8 + 0x40).collect();
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), &image).unwrap();
        let mem = crate::memory::allocate(4).unwrap();
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let irq_seen = irq.try_clone().unwrap();
        let block = Block::open(file.path()).unwrap();
        let mut dev = VirtioMmio::with_irq(block, mem.clone(), irq).unwrap();

        assert_eq!(reg(&dev, VIRTIO_MMIO_MAGIC_VALUE), MAGIC);
        assert_eq!(reg(&dev, VIRTIO_MMIO_VERSION), 2);
        assert_eq!(reg(&dev, VIRTIO_MMIO_DEVICE_ID), VIRTIO_ID_BLOCK);
        let mut cap = [0u8; 8];
        dev.read(u64::from(VIRTIO_MMIO_CONFIG), &mut cap);
        assert_eq!(u64::from_le_bytes(cap), 4, "capacity in sectors");
        set(&mut dev, VIRTIO_MMIO_STATUS, 1 | 2);
        set(&mut dev, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 0);
        let low = reg(&dev, VIRTIO_MMIO_DEVICE_FEATURES);
        assert_ne!(low & (1 << VIRTIO_BLK_F_RO), 0);
        set(&mut dev, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 1);
        assert_eq!(
            reg(&dev, VIRTIO_MMIO_DEVICE_FEATURES),
            1,
            "VIRTIO_F_VERSION_1"
        );
        set(&mut dev, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
        set(&mut dev, VIRTIO_MMIO_DRIVER_FEATURES, 1);
        set(&mut dev, VIRTIO_MMIO_STATUS, 1 | 2 | 8);

        // The queue lives at 0x10000; request header at 0x1000, data at 0x2000, status 0x3000.
        let vq = MockSplitQueue::create(&mem, GuestAddress(0x10000), 16);
        mem.write_obj(VIRTIO_BLK_T_IN, GuestAddress(0x1000))
            .unwrap();
        mem.write_obj(3u64, GuestAddress(0x1008)).unwrap();
        let (next, write) = (VRING_DESC_F_NEXT as u16, VRING_DESC_F_WRITE as u16);
        let descs = [
            Descriptor::new(0x1000, 16, next, 1),
            Descriptor::new(0x2000, 512, next | write, 2),
            Descriptor::new(0x3000, 1, write, 0),
        ];
        for (i, d) in descs.iter().enumerate() {
            vq.desc_table()
                .store(i as u16, RawDescriptor::from(*d))
                .unwrap();
        }
        vq.avail().ring().ref_at(0).unwrap().store(0u16.to_le());
        vq.avail().idx().store(1u16.to_le());

        set(&mut dev, VIRTIO_MMIO_QUEUE_SEL, 0);
        assert_eq!(reg(&dev, VIRTIO_MMIO_QUEUE_NUM_MAX), u32::from(QUEUE_SIZE));
        set(&mut dev, VIRTIO_MMIO_QUEUE_NUM, 16);
        let (d, a, u) = (vq.desc_table_addr(), vq.avail_addr(), vq.used_addr());
        set(&mut dev, VIRTIO_MMIO_QUEUE_DESC_LOW, d.0 as u32);
        set(&mut dev, VIRTIO_MMIO_QUEUE_DESC_HIGH, (d.0 >> 32) as u32);
        set(&mut dev, VIRTIO_MMIO_QUEUE_AVAIL_LOW, a.0 as u32);
        set(&mut dev, VIRTIO_MMIO_QUEUE_AVAIL_HIGH, (a.0 >> 32) as u32);
        set(&mut dev, VIRTIO_MMIO_QUEUE_USED_LOW, u.0 as u32);
        set(&mut dev, VIRTIO_MMIO_QUEUE_USED_HIGH, (u.0 >> 32) as u32);
        set(&mut dev, VIRTIO_MMIO_QUEUE_READY, 1);
        set(&mut dev, VIRTIO_MMIO_STATUS, 1 | 2 | 8 | 4);
        set(&mut dev, VIRTIO_MMIO_QUEUE_NOTIFY, 0);

        let mut sector = vec![0u8; 512];
        mem.read_slice(&mut sector, GuestAddress(0x2000)).unwrap();
        assert!(sector.iter().all(|b| *b == 0x43), "sector 3 copied");
        assert_eq!(
            mem.read_obj::<u8>(GuestAddress(0x3000)).unwrap(),
            0,
            "status OK"
        );
        assert_eq!(u16::from_le(vq.used().idx().load()), 1);
        let used = vq.used().ring().ref_at(0).unwrap().load();
        assert_eq!((used.id(), used.len()), (0, 513));
        assert_eq!(
            reg(&dev, VIRTIO_MMIO_INTERRUPT_STATUS),
            VIRTIO_MMIO_INT_VRING
        );
        assert_eq!(irq_seen.read().unwrap(), 1, "interrupt raised");
        set(&mut dev, VIRTIO_MMIO_INTERRUPT_ACK, VIRTIO_MMIO_INT_VRING);
        assert_eq!(reg(&dev, VIRTIO_MMIO_INTERRUPT_STATUS), 0);

        set(&mut dev, VIRTIO_MMIO_STATUS, 0);
        assert_eq!(
            reg(&dev, VIRTIO_MMIO_QUEUE_READY),
            0,
            "reset clears the queue"
        );
    }
}
