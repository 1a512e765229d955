//! Per-vCPU architectural state: CPUID, MSRs, registers for the 64-bit entry, the LAPIC.

pub mod cpuid;
pub mod gdt;
pub mod lapic;
pub mod msrs;
pub mod paging;
pub mod regs;

use kvm_ioctls::{Kvm, VcpuFd};
use thiserror::Error;

use crate::memory::GuestMemory;

/// Errors setting up a vCPU's state.
#[derive(Debug, Error)]
pub enum Error {
    /// KVM_GET_SUPPORTED_CPUID failed.
    #[error("KVM_GET_SUPPORTED_CPUID failed: {0}")]
    SupportedCpuid(#[source] kvm_ioctls::Error),
    /// KVM_SET_CPUID2 failed.
    #[error("KVM_SET_CPUID2 failed: {0}")]
    SetCpuid(#[source] kvm_ioctls::Error),
    /// The MSR list could not be built.
    #[error("too many boot MSRs for KVM_SET_MSRS")]
    MsrList,
    /// KVM_SET_MSRS failed or set fewer MSRs than asked.
    #[error("KVM_SET_MSRS set {set} of {wanted} boot MSRs")]
    SetMsrs {
        /// How many KVM accepted.
        set: usize,
        /// How many we asked for.
        wanted: usize,
    },
    /// A register ioctl failed.
    #[error("{0} failed: {1}")]
    Registers(&'static str, #[source] kvm_ioctls::Error),
    /// Writing the page tables into guest memory failed.
    #[error("writing the boot page tables failed: {0}")]
    PageTables(#[source] vm_memory::GuestMemoryError),
    /// Writing the GDT/IDT into guest memory failed.
    #[error("writing the boot GDT/IDT failed: {0}")]
    DescriptorTables(#[source] vm_memory::GuestMemoryError),
}

/// Writes the boot structures every vCPU shares (GDT, IDT, page tables); returns CR3.
pub fn write_boot_tables(mem: &GuestMemory) -> Result<u64, Error> {
    regs::write_descriptor_tables(mem)?;
    paging::write_identity_map(mem)
}

/// Configures vCPU `id` of `count` to start in long mode at `entry` with page tables at `cr3`.
pub fn configure(
    kvm: &Kvm,
    vcpu: &VcpuFd,
    id: u8,
    count: u8,
    entry: u64,
    cr3: u64,
) -> Result<(), Error> {
    let cpuid = cpuid::for_vcpu(kvm, id, count)?;
    vcpu.set_cpuid2(&cpuid).map_err(Error::SetCpuid)?;

    let msrs = msrs::boot_msr_entries()?;
    let wanted = msrs.as_slice().len();
    let set = vcpu
        .set_msrs(&msrs)
        .map_err(|e| Error::Registers("KVM_SET_MSRS", e))?;
    if set != wanted {
        return Err(Error::SetMsrs { set, wanted });
    }

    let sregs = vcpu
        .get_sregs()
        .map_err(|e| Error::Registers("KVM_GET_SREGS", e))?;
    vcpu.set_sregs(&regs::long_mode_sregs(sregs, cr3))
        .map_err(|e| Error::Registers("KVM_SET_SREGS", e))?;
    vcpu.set_regs(&regs::boot_regs(entry))
        .map_err(|e| Error::Registers("KVM_SET_REGS", e))?;
    vcpu.set_fpu(&regs::boot_fpu())
        .map_err(|e| Error::Registers("KVM_SET_FPU", e))?;

    let mut lapic = vcpu
        .get_lapic()
        .map_err(|e| Error::Registers("KVM_GET_LAPIC", e))?;
    lapic::wire_lint_pins(&mut lapic);
    vcpu.set_lapic(&lapic)
        .map_err(|e| Error::Registers("KVM_SET_LAPIC", e))
}
