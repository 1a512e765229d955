//! Guest physical memory: where RAM goes, where the VMM puts its boot structures, and the e820
//! map that tells the guest kernel which ranges are usable.
//!
//! RAM is split around the 32-bit MMIO gap (3 GiB to 4 GiB), the hole a PC keeps for device
//! windows, the APIC, the TSS KVM needs and the firmware. All guest memory is anonymous private
//! mmap, so pages the guest never touches cost the host nothing.

use thiserror::Error;
use vm_memory::{GuestAddress, GuestMemoryMmap};

/// Guest memory as the VMM sees it (no dirty-page bitmap: we do not snapshot or migrate).
pub type GuestMemory = GuestMemoryMmap<()>;

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// Start of the 32-bit MMIO gap; no RAM is mapped between here and 4 GiB.
pub const MMIO_GAP_START: u64 = 3 * GIB;
/// End of the 32-bit MMIO gap (exclusive); RAM beyond 3 GiB continues from here.
pub const MMIO_GAP_END: u64 = 4 * GIB;

/// The three pages of the TSS Intel's VT-x needs for real-mode emulation, inside the gap.
pub const KVM_TSS_ADDRESS: u64 = 0xfffb_d000;
/// The one page of identity-mapped page table VT-x needs in unrestricted mode, just below.
pub const KVM_IDENTITY_MAP_ADDRESS: u64 = 0xfffb_c000;

/// Where the GDT lives (low memory, below anything the loader writes).
pub const GDT_ADDRESS: u64 = 0x500;
/// Where an empty IDT lives: the guest installs its own before enabling interrupts.
pub const IDT_ADDRESS: u64 = 0x540;
/// The Linux zero page (`struct boot_params`); RSI points here at the 64-bit entry.
pub const ZERO_PAGE_ADDRESS: u64 = 0x7000;
/// Top of the boot stack (grows down, below the page tables).
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Level-4 page table (PML4) of the boot identity map.
pub const PML4_ADDRESS: u64 = 0x9000;
/// Page-directory-pointer table of the boot identity map.
pub const PDPT_ADDRESS: u64 = 0xa000;
/// The four page directories of the boot identity map (2 MiB pages), one page each.
pub const PD_ADDRESS: u64 = 0xb000;
/// The kernel command line, NUL terminated.
pub const CMDLINE_ADDRESS: u64 = 0x20000;
/// Largest command line we accept, including the NUL (the kernel's own limit is 2 KiB+).
pub const CMDLINE_MAX_SIZE: usize = 4096;
/// Start of the EBDA: conventional memory ends here on a PC.
pub const EBDA_START: u64 = 0x9fc00;
/// Start of high memory, where the protected-mode kernel (or a raw guest) is loaded.
pub const HIMEM_START: u64 = 0x10_0000;

/// Smallest guest we build: the boot structures and a raw program need little, a kernel more.
pub const MIN_MEM_MIB: u64 = 2;

/// e820 entry type for usable RAM.
pub const E820_RAM: u32 = 1;

/// Errors in laying out or allocating guest memory.
#[derive(Debug, Error)]
pub enum Error {
    /// The requested size is too small to hold the boot structures.
    #[error("guest memory of {0} MiB is too small: at least {MIN_MEM_MIB} MiB is needed")]
    TooSmall(u64),
    /// The requested size overflows the guest address space.
    #[error("guest memory of {0} MiB does not fit the guest address space")]
    TooLarge(u64),
    /// mmap of the guest RAM failed.
    #[error("could not allocate guest memory: {0}")]
    Allocate(#[from] vm_memory::mmap::FromRangesError),
}

/// RAM regions (start, size) for a guest of `mem_mib` MiB: one below the MMIO gap and, for
/// guests larger than 3 GiB, the rest from 4 GiB up.
pub fn ram_regions(mem_mib: u64) -> Result<Vec<(GuestAddress, usize)>, Error> {
    if mem_mib < MIN_MEM_MIB {
        return Err(Error::TooSmall(mem_mib));
    }
    let size = mem_mib.checked_mul(MIB).ok_or(Error::TooLarge(mem_mib))?;
    let to_usize = |n: u64| usize::try_from(n).map_err(|_| Error::TooLarge(mem_mib));
    if size <= MMIO_GAP_START {
        return Ok(vec![(GuestAddress(0), to_usize(size)?)]);
    }
    let high = size - MMIO_GAP_START;
    MMIO_GAP_END
        .checked_add(high)
        .ok_or(Error::TooLarge(mem_mib))?;
    Ok(vec![
        (GuestAddress(0), to_usize(MMIO_GAP_START)?),
        (GuestAddress(MMIO_GAP_END), to_usize(high)?),
    ])
}

/// Allocates (maps) the guest's RAM.
pub fn allocate(mem_mib: u64) -> Result<GuestMemory, Error> {
    Ok(GuestMemory::from_ranges(&ram_regions(mem_mib)?)?)
}

/// One usable-RAM range of the e820 map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct E820Entry {
    /// First byte.
    pub addr: u64,
    /// Length in bytes.
    pub size: u64,
    /// Entry type (`E820_RAM`).
    pub kind: u32,
}

/// The e820 map for a guest of `mem_mib` MiB: conventional memory below the EBDA, then RAM from
/// 1 MiB to the gap (the legacy VGA/BIOS hole between them stays unlisted, as on a PC), then RAM
/// above 4 GiB.
pub fn e820_map(mem_mib: u64) -> Result<Vec<E820Entry>, Error> {
    let regions = ram_regions(mem_mib)?;
    let ram = |addr: u64, end: u64| E820Entry {
        addr,
        size: end - addr,
        kind: E820_RAM,
    };
    let low_end = regions[0].0 .0 + regions[0].1 as u64;
    let mut map = vec![ram(0, EBDA_START.min(low_end))];
    if low_end > HIMEM_START {
        map.push(ram(HIMEM_START, low_end));
    }
    if let Some((start, size)) = regions.get(1) {
        map.push(ram(start.0, start.0 + *size as u64));
    }
    Ok(map)
}

/// End (exclusive) of the RAM below the MMIO gap: where "low memory" stops.
pub fn low_memory_end(mem_mib: u64) -> Result<u64, Error> {
    let regions = ram_regions(mem_mib)?;
    Ok(regions[0].0 .0 + regions[0].1 as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_guest_is_one_region_from_zero() {
        let r = ram_regions(128).unwrap();
        assert_eq!(r, vec![(GuestAddress(0), 128 << 20)]);
    }

    #[test]
    fn exactly_three_gib_stays_below_the_gap() {
        let r = ram_regions(3072).unwrap();
        assert_eq!(r, vec![(GuestAddress(0), 3 << 30)]);
    }

    #[test]
    fn large_guest_is_split_around_the_mmio_gap() {
        let r = ram_regions(4096).unwrap();
        assert_eq!(
            r,
            vec![(GuestAddress(0), 3 << 30), (GuestAddress(4 << 30), 1 << 30)]
        );
        // No RAM inside the gap, and the KVM TSS/identity map pages are in the gap.
        for (start, size) in r {
            let end = start.0 + size as u64;
            assert!(end <= MMIO_GAP_START || start.0 >= MMIO_GAP_END);
        }
        for addr in [
            KVM_TSS_ADDRESS,
            KVM_TSS_ADDRESS + 3 * 4096 - 1,
            KVM_IDENTITY_MAP_ADDRESS,
        ] {
            assert!((MMIO_GAP_START..MMIO_GAP_END).contains(&addr));
        }
    }

    #[test]
    fn too_small_or_too_large_is_refused() {
        assert!(matches!(ram_regions(1), Err(Error::TooSmall(1))));
        assert!(matches!(ram_regions(u64::MAX), Err(Error::TooLarge(_))));
    }

    #[test]
    fn e820_of_small_guest_skips_the_legacy_hole() {
        let map = e820_map(64).unwrap();
        assert_eq!(
            map,
            vec![
                E820Entry {
                    addr: 0,
                    size: EBDA_START,
                    kind: E820_RAM
                },
                E820Entry {
                    addr: HIMEM_START,
                    size: (64 << 20) - HIMEM_START,
                    kind: E820_RAM
                },
            ]
        );
    }

    #[test]
    fn e820_of_large_guest_lists_ram_above_4g_and_nothing_in_the_gap() {
        let map = e820_map(5 * 1024).unwrap();
        assert_eq!(map.len(), 3);
        assert_eq!(map[1].addr + map[1].size, MMIO_GAP_START);
        assert_eq!(
            map[2],
            E820Entry {
                addr: 4 << 30,
                size: 2 << 30,
                kind: E820_RAM
            }
        );
        let total: u64 = map.iter().map(|e| e.size).sum();
        // Everything but the legacy hole between the EBDA and 1 MiB is usable.
        assert_eq!(total, (5u64 << 30) - (HIMEM_START - EBDA_START));
    }

    #[test]
    fn boot_structures_do_not_overlap() {
        let mut areas = [
            (GDT_ADDRESS, 6 * 8),
            (IDT_ADDRESS, 8),
            (ZERO_PAGE_ADDRESS, 4096),
            (BOOT_STACK_POINTER - 0x800, 0x800),
            (PML4_ADDRESS, 4096),
            (PDPT_ADDRESS, 4096),
            (PD_ADDRESS, 4 * 4096),
            (CMDLINE_ADDRESS, CMDLINE_MAX_SIZE as u64),
        ];
        areas.sort();
        for w in areas.windows(2) {
            assert!(
                w[0].0 + w[0].1 <= w[1].0,
                "{:x?} overlaps {:x?}",
                w[0],
                w[1]
            );
        }
        assert!(CMDLINE_ADDRESS + CMDLINE_MAX_SIZE as u64 <= EBDA_START);
    }

    #[test]
    fn allocate_maps_the_regions() {
        use vm_memory::GuestMemoryBackend;
        let mem = allocate(16).unwrap();
        assert_eq!(mem.num_regions(), 1);
        assert_eq!(mem.last_addr(), GuestAddress((16 << 20) - 1));
    }
}
