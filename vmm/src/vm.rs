//! Creating the KVM virtual machine: the VM-wide state that must exist before any vCPU.

use kvm_bindings::{kvm_pit_config, kvm_userspace_memory_region, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Kvm, VmFd};
use thiserror::Error;
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

use crate::memory::{GuestMemory, KVM_IDENTITY_MAP_ADDRESS, KVM_TSS_ADDRESS};

/// Errors creating the VM.
#[derive(Debug, Error)]
pub enum Error {
    /// KVM_CREATE_VM failed.
    #[error("KVM_CREATE_VM failed: {0}")]
    Create(#[source] kvm_ioctls::Error),
    /// KVM_SET_TSS_ADDR failed.
    #[error("KVM_SET_TSS_ADDR failed: {0}")]
    Tss(#[source] kvm_ioctls::Error),
    /// KVM_SET_IDENTITY_MAP_ADDR failed.
    #[error("KVM_SET_IDENTITY_MAP_ADDR failed: {0}")]
    IdentityMap(#[source] kvm_ioctls::Error),
    /// KVM_CREATE_IRQCHIP failed.
    #[error("KVM_CREATE_IRQCHIP failed: {0}")]
    Irqchip(#[source] kvm_ioctls::Error),
    /// KVM_CREATE_PIT2 failed.
    #[error("KVM_CREATE_PIT2 failed: {0}")]
    Pit(#[source] kvm_ioctls::Error),
    /// KVM_SET_USER_MEMORY_REGION failed.
    #[error("registering guest memory slot {slot} with KVM failed: {source}")]
    MemorySlot {
        /// The slot number.
        slot: u32,
        /// The ioctl error.
        source: kvm_ioctls::Error,
    },
    /// More memory regions than KVM has slots.
    #[error("guest memory has {0} regions, more than KVM's {1} slots")]
    TooManyRegions(usize, usize),
}

/// Creates a VM with the VM-wide devices and the guest's memory registered.
///
/// Order matters: the TSS and identity-map addresses must be set before the first vCPU exists
/// (VT-x uses them for real-mode emulation), and the in-kernel irqchip (PIC, IOAPIC, LAPICs) and
/// the PIT must exist before vCPUs are created, since KVM wires each new vCPU's LAPIC to the
/// irqchip at creation, and Linux calibrates its timer against the PIT early in boot.
pub fn create(kvm: &Kvm, mem: &GuestMemory) -> Result<VmFd, Error> {
    let vm = kvm.create_vm().map_err(Error::Create)?;
    vm.set_tss_address(KVM_TSS_ADDRESS as usize)
        .map_err(Error::Tss)?;
    vm.set_identity_map_address(KVM_IDENTITY_MAP_ADDRESS)
        .map_err(Error::IdentityMap)?;
    vm.create_irq_chip().map_err(Error::Irqchip)?;
    // The dummy speaker port keeps port 0x61 (which Linux pokes for PIT channel 2) in the kernel.
    let pit = kvm_pit_config {
        flags: KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    };
    vm.create_pit2(pit).map_err(Error::Pit)?;
    register_memory(kvm, &vm, mem)?;
    Ok(vm)
}

/// Tells KVM where each guest RAM region lives in our address space.
fn register_memory(kvm: &Kvm, vm: &VmFd, mem: &GuestMemory) -> Result<(), Error> {
    let max_slots = kvm.get_nr_memslots();
    if mem.num_regions() > max_slots {
        return Err(Error::TooManyRegions(mem.num_regions(), max_slots));
    }
    for (slot, region) in mem.iter().enumerate() {
        let slot = slot as u32;
        let region_desc = kvm_userspace_memory_region {
            slot,
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: region.as_ptr() as u64,
            flags: 0,
        };
        // SAFETY: the host range is a live mmap owned by `mem`, which the caller keeps alive
        // (the `Vm` holds both) for as long as the VM fd exists, and the guest range comes from
        // the same non-overlapping region list, so KVM maps exactly memory we own.
        unsafe { vm.set_user_memory_region(region_desc) }
            .map_err(|source| Error::MemorySlot { slot, source })?;
    }
    Ok(())
}
