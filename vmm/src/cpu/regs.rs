//! Registers for a direct 64-bit entry: long mode with paging already on, as the Linux x86-64
//! boot protocol's 64-bit entry expects (Documentation/arch/x86/boot.rst, "64-bit Boot
//! Protocol"): flat segments, identity-mapped page tables, RSI pointing at the zero page.

use kvm_bindings::{kvm_fpu, kvm_regs, kvm_sregs};
use vm_memory::{Bytes, GuestAddress};

use super::{gdt, Error};
use crate::memory::{GuestMemory, BOOT_STACK_POINTER, GDT_ADDRESS, IDT_ADDRESS, ZERO_PAGE_ADDRESS};

const CR0_PE: u64 = 1 << 0;
const CR0_ET: u64 = 1 << 4;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

/// General registers at entry: RIP at the entry point, a small stack, RSI = zero page, and
/// RFLAGS with only the always-one bit 1 (interrupts off).
pub fn boot_regs(entry: u64) -> kvm_regs {
    kvm_regs {
        rip: entry,
        rsp: BOOT_STACK_POINTER,
        rbp: BOOT_STACK_POINTER,
        rsi: ZERO_PAGE_ADDRESS,
        rflags: 0x2,
        ..Default::default()
    }
}

/// x87 and SSE control words as after FNINIT / reset.
pub fn boot_fpu() -> kvm_fpu {
    kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    }
}

/// Writes the GDT and an empty IDT into guest memory.
pub fn write_descriptor_tables(mem: &GuestMemory) -> Result<(), Error> {
    for (i, desc) in gdt::table().iter().enumerate() {
        mem.write_obj(*desc, GuestAddress(GDT_ADDRESS + i as u64 * 8))
            .map_err(Error::DescriptorTables)?;
    }
    mem.write_obj(0u64, GuestAddress(IDT_ADDRESS))
        .map_err(Error::DescriptorTables)
}

/// Turns KVM's reset-state special registers into long mode: our GDT and segments, CR3 at our
/// page tables, PAE, LME/LMA, and protection plus paging on.
pub fn long_mode_sregs(mut sregs: kvm_sregs, cr3: u64) -> kvm_sregs {
    let table = gdt::table();
    sregs.gdt.base = GDT_ADDRESS;
    sregs.gdt.limit = (std::mem::size_of_val(&table) - 1) as u16;
    sregs.idt.base = IDT_ADDRESS;
    sregs.idt.limit = 7;
    let code = gdt::segment(gdt::descriptor(gdt::CODE_SELECTOR), gdt::CODE_SELECTOR);
    let data = gdt::segment(gdt::descriptor(gdt::DATA_SELECTOR), gdt::DATA_SELECTOR);
    sregs.cs = code;
    (sregs.ds, sregs.es, sregs.fs, sregs.gs, sregs.ss) = (data, data, data, data, data);
    sregs.tr = gdt::segment(gdt::descriptor(gdt::TSS_SELECTOR), gdt::TSS_SELECTOR);
    sregs.cr3 = cr3;
    sregs.cr4 |= CR4_PAE;
    sregs.efer |= EFER_LME | EFER_LMA;
    sregs.cr0 |= CR0_PE | CR0_ET | CR0_PG;
    sregs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_mode_bits_are_all_set() {
        let s = long_mode_sregs(kvm_sregs::default(), 0x9000);
        assert_eq!(s.cr3, 0x9000);
        assert_eq!(s.cr0 & (CR0_PE | CR0_PG), CR0_PE | CR0_PG);
        assert_ne!(s.cr4 & CR4_PAE, 0);
        assert_eq!(s.efer & (EFER_LME | EFER_LMA), EFER_LME | EFER_LMA);
        assert_eq!((s.cs.l, s.cs.selector, s.ss.selector), (1, 0x10, 0x18));
        assert_eq!((s.gdt.base, s.gdt.limit), (GDT_ADDRESS, 47));
    }

    #[test]
    fn entry_registers_follow_the_boot_protocol() {
        let r = boot_regs(0x100_0000);
        assert_eq!((r.rip, r.rsi, r.rflags), (0x100_0000, ZERO_PAGE_ADDRESS, 2));
    }

    #[test]
    fn descriptor_tables_are_written() {
        let mem = crate::memory::allocate(2).unwrap();
        write_descriptor_tables(&mem).unwrap();
        let code: u64 = mem.read_obj(GuestAddress(GDT_ADDRESS + 0x10)).unwrap();
        assert_eq!(code, gdt::entry(gdt::CODE64, 0, 0xfffff));
    }
}
