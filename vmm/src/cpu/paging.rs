//! The boot page tables: an identity map of the first 4 GiB with 2 MiB pages. Linux's 64-bit
//! entry needs its image, zero page and command line mapped (and builds its own tables at
//! once); small guests also reach the devices in the MMIO gap below 4 GiB through it.

use vm_memory::{Bytes, GuestAddress};

use super::Error;
use crate::memory::{GuestMemory, PDPT_ADDRESS, PD_ADDRESS, PML4_ADDRESS};

/// Page-table entry bits: present and writable.
const PRESENT_RW: u64 = 0x3;
/// Page-directory entry bit: this entry maps a 2 MiB page.
const PAGE_SIZE_2M: u64 = 0x80;

/// GiBs mapped: one page directory each.
pub const MAPPED_GIB: u64 = 4;

/// The 512 page-directory entries mapping GiB `gib` one to one.
pub fn identity_pd(gib: u64) -> [u64; 512] {
    std::array::from_fn(|i| (gib << 30) | ((i as u64) << 21) | PRESENT_RW | PAGE_SIZE_2M)
}

/// Writes PML4 -> PDPT -> PD into guest memory; returns the value for CR3.
pub fn write_identity_map(mem: &GuestMemory) -> Result<u64, Error> {
    let write = |addr: u64, value: u64| {
        mem.write_obj(value, GuestAddress(addr))
            .map_err(Error::PageTables)
    };
    write(PML4_ADDRESS, PDPT_ADDRESS | PRESENT_RW)?;
    for gib in 0..MAPPED_GIB {
        let pd = PD_ADDRESS + gib * 4096;
        write(PDPT_ADDRESS + gib * 8, pd | PRESENT_RW)?;
        for (i, pde) in identity_pd(gib).iter().enumerate() {
            write(pd + i as u64 * 8, *pde)?;
        }
    }
    Ok(PML4_ADDRESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_each_gib_one_to_one_with_2m_pages() {
        let pd = identity_pd(0);
        assert_eq!(pd[0], 0x83);
        assert_eq!(pd[1], 0x20_0083);
        assert_eq!(pd[511] & !0xfff, (1 << 30) - (2 << 20));
        assert_eq!(
            identity_pd(3)[0] & !0xfff,
            3 << 30,
            "the MMIO gap is mapped"
        );
    }

    #[test]
    fn tables_land_in_guest_memory() {
        let mem = crate::memory::allocate(4).unwrap();
        assert_eq!(write_identity_map(&mem).unwrap(), PML4_ADDRESS);
        let pml4: u64 = mem.read_obj(GuestAddress(PML4_ADDRESS)).unwrap();
        let pdpt: u64 = mem.read_obj(GuestAddress(PDPT_ADDRESS)).unwrap();
        let pd5: u64 = mem.read_obj(GuestAddress(PD_ADDRESS + 5 * 8)).unwrap();
        assert_eq!(
            (pml4, pdpt, pd5),
            (PDPT_ADDRESS | 3, PD_ADDRESS | 3, (5 << 21) | 0x83)
        );
    }
}
