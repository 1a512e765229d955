//! The boot page tables: an identity map of the first GiB with 2 MiB pages, enough for the
//! 64-bit entry of Linux (which builds its own tables at once) and for our small guests.

use vm_memory::{Bytes, GuestAddress};

use super::Error;
use crate::memory::{GuestMemory, PDPT_ADDRESS, PD_ADDRESS, PML4_ADDRESS};

/// Page-table entry bits: present and writable.
const PRESENT_RW: u64 = 0x3;
/// Page-directory entry bit: this entry maps a 2 MiB page.
const PAGE_SIZE_2M: u64 = 0x80;

/// The 512 page-directory entries mapping 0..1 GiB one to one.
pub fn identity_pd() -> [u64; 512] {
    std::array::from_fn(|i| ((i as u64) << 21) | PRESENT_RW | PAGE_SIZE_2M)
}

/// Writes PML4 -> PDPT -> PD into guest memory; returns the value for CR3.
pub fn write_identity_map(mem: &GuestMemory) -> Result<u64, Error> {
    let write = |addr: u64, value: u64| {
        mem.write_obj(value, GuestAddress(addr))
            .map_err(Error::PageTables)
    };
    write(PML4_ADDRESS, PDPT_ADDRESS | PRESENT_RW)?;
    write(PDPT_ADDRESS, PD_ADDRESS | PRESENT_RW)?;
    for (i, pde) in identity_pd().iter().enumerate() {
        write(PD_ADDRESS + i as u64 * 8, *pde)?;
    }
    Ok(PML4_ADDRESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_the_first_gib_one_to_one_with_2m_pages() {
        let pd = identity_pd();
        assert_eq!(pd[0], 0x83);
        assert_eq!(pd[1], 0x20_0083);
        assert_eq!(pd[511] & !0xfff, (1 << 30) - (2 << 20));
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
