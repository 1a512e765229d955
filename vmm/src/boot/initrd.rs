//! The initrd goes at the top of low memory (below the MMIO gap and below the kernel's
//! `initrd_addr_max`), as far from the kernel as possible so that decompression cannot
//! overwrite it.

use std::fs::File;
use std::path::{Path, PathBuf};

use linux_loader::loader::bootparam::setup_header;
use thiserror::Error;
use vm_memory::{Bytes, GuestAddress};

use crate::memory::{self, GuestMemory};

const PAGE: u64 = 4096;
/// The limit old kernels (protocol < 2.03) imply when the header does not state one.
const DEFAULT_INITRD_ADDR_MAX: u64 = 0x37ff_ffff;

/// Errors placing or reading the initrd.
#[derive(Debug, Error)]
pub enum Error {
    /// The initrd file could not be read.
    #[error("cannot read initrd {path}: {source}")]
    File {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// No room for it.
    #[error(
        "initrd of {size} bytes does not fit between the kernel (ends at {image_end:#x}) and \
         {limit:#x}: give the VM more memory"
    )]
    NoRoom {
        /// Its size.
        size: u64,
        /// End of the kernel image.
        image_end: u64,
        /// The highest end allowed.
        limit: u64,
    },
    /// Copying it into guest memory failed.
    #[error("cannot copy initrd {path} into guest memory: {source}")]
    Copy {
        /// The file.
        path: PathBuf,
        /// The guest-memory error.
        source: vm_memory::GuestMemoryError,
    },
    /// Memory layout problem.
    #[error(transparent)]
    Memory(#[from] memory::Error),
}

/// Where an initrd of `size` bytes goes: page aligned, ending at or below both the top of low
/// memory and `addr_max + 1`, and above `image_end`.
pub fn place_initrd(
    size: u64,
    low_mem_end: u64,
    addr_max: u64,
    image_end: u64,
) -> Result<u64, Error> {
    let limit = low_mem_end.min(addr_max.saturating_add(1));
    let no_room = Error::NoRoom {
        size,
        image_end,
        limit,
    };
    let start = limit.checked_sub(size).ok_or(no_room)? & !(PAGE - 1);
    if start < image_end {
        return Err(Error::NoRoom {
            size,
            image_end,
            limit,
        });
    }
    Ok(start)
}

/// Loads the initrd at `path`; returns (address, size) for the zero page.
pub fn load(
    mem: &GuestMemory,
    mem_mib: u64,
    path: &Path,
    image_end: u64,
    header: Option<&setup_header>,
) -> Result<(u64, u64), Error> {
    let file_err = |source| Error::File {
        path: path.to_owned(),
        source,
    };
    let mut file = File::open(path).map_err(file_err)?;
    let size = file.metadata().map_err(file_err)?.len();
    let addr_max = match header.map(|h| h.initrd_addr_max) {
        Some(max) if max != 0 => u64::from(max),
        _ => DEFAULT_INITRD_ADDR_MAX,
    };
    let addr = place_initrd(size, memory::low_memory_end(mem_mib)?, addr_max, image_end)?;
    mem.read_exact_volatile_from(GuestAddress(addr), &mut file, size as usize)
        .map_err(|source| Error::Copy {
            path: path.to_owned(),
            source,
        })?;
    Ok((addr, size))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn goes_to_the_top_of_low_memory_page_aligned() {
        let addr = place_initrd(10_000, 64 << 20, 0x7fff_ffff, 0x20_0000).unwrap();
        assert_eq!(addr % PAGE, 0);
        assert!(addr + 10_000 <= 64 << 20);
        assert!((64 << 20) - (addr + 10_000) < PAGE);
    }

    #[test]
    fn respects_the_kernels_initrd_addr_max() {
        let addr = place_initrd(PAGE, 2 << 30, 0x37ff_ffff, 0x20_0000).unwrap();
        assert_eq!(addr, 0x3800_0000 - PAGE);
    }

    #[test]
    fn refuses_to_overlap_the_kernel() {
        let err = place_initrd(60 << 20, 64 << 20, 0x7fff_ffff, 8 << 20).unwrap_err();
        assert!(err.to_string().contains("more memory"), "{err}");
        assert!(place_initrd(u64::MAX, 64 << 20, 0x7fff_ffff, 0).is_err());
    }

    #[test]
    fn loads_the_file_bytes() {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), b"initrd-bytes").unwrap();
        let mem = memory::allocate(8).unwrap();
        let (addr, size) = load(&mem, 8, f.path(), 0x10_1000, None).unwrap();
        assert_eq!(size, 12);
        let mut buf = [0u8; 12];
        mem.read_slice(&mut buf, GuestAddress(addr)).unwrap();
        assert_eq!(&buf, b"initrd-bytes");
    }
}
