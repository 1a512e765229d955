//! The model-specific registers a vCPU starts with.

use kvm_bindings::{kvm_msr_entry, Msrs};

use super::Error;

const MSR_IA32_SYSENTER_CS: u32 = 0x174;
const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
const MSR_IA32_TSC: u32 = 0x10;
const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_CSTAR: u32 = 0xc000_0083;
const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;

/// IA32_MISC_ENABLE bit 0: fast-string operations (rep movs/stos), as firmware leaves it.
const MISC_ENABLE_FAST_STRING: u64 = 1;
/// MTRRdefType: MTRRs enabled (bit 11), default memory type write-back (6), so that the guest
/// does not run uncached: there is no firmware to program the MTRRs.
const MTRR_ENABLE_WRITE_BACK: u64 = (1 << 11) | 6;

/// The (index, value) pairs a vCPU boots with: syscall/sysenter entry points cleared (the
/// kernel installs its own), TSC at zero, fast strings and write-back memory enabled.
pub fn boot_msrs() -> Vec<(u32, u64)> {
    vec![
        (MSR_IA32_SYSENTER_CS, 0),
        (MSR_IA32_SYSENTER_ESP, 0),
        (MSR_IA32_SYSENTER_EIP, 0),
        (MSR_STAR, 0),
        (MSR_CSTAR, 0),
        (MSR_KERNEL_GS_BASE, 0),
        (MSR_SYSCALL_MASK, 0),
        (MSR_LSTAR, 0),
        (MSR_IA32_TSC, 0),
        (MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
        (MSR_MTRR_DEF_TYPE, MTRR_ENABLE_WRITE_BACK),
    ]
}

/// The boot MSRs in the form KVM_SET_MSRS takes.
pub fn boot_msr_entries() -> Result<Msrs, Error> {
    let entries: Vec<kvm_msr_entry> = boot_msrs()
        .into_iter()
        .map(|(index, data)| kvm_msr_entry {
            index,
            data,
            ..Default::default()
        })
        .collect();
    Msrs::from_entries(&entries).map_err(|_| Error::MsrList)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_msrs_are_unique_and_enable_write_back_caching() {
        let msrs = boot_msrs();
        let mut idx: Vec<u32> = msrs.iter().map(|m| m.0).collect();
        idx.sort();
        idx.dedup();
        assert_eq!(idx.len(), msrs.len());
        let mtrr = msrs.iter().find(|m| m.0 == MSR_MTRR_DEF_TYPE).unwrap().1;
        assert_eq!(mtrr & 0xff, 6);
        assert_ne!(mtrr & (1 << 11), 0);
        assert_eq!(boot_msr_entries().unwrap().as_slice().len(), msrs.len());
    }
}
