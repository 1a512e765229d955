//! Reading a bzImage's setup header (Documentation/arch/x86/boot.rst) without loading it: the
//! boot protocol version, whether it has a 64-bit entry, and its limits.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use linux_loader::loader::bootparam::setup_header;
use thiserror::Error;
use vm_memory::ByteValued;

/// Offset of the setup header in the image.
const SETUP_HEADER_OFFSET: u64 = 0x1f1;
/// "HdrS", the magic of boot protocol 2.00+.
const HDRS_MAGIC: u32 = 0x5372_6448;
/// The boot sector signature.
const BOOT_FLAG: u16 = 0xaa55;
/// xloadflags bit 0: the kernel has the 64-bit entry at 0x200.
const XLF_KERNEL_64: u16 = 1;
/// loadflags bit 0: the protected-mode code is loaded at 1 MiB (a bzImage, not a zImage).
const LOADED_HIGH: u8 = 1;

/// Errors reading the header.
#[derive(Debug, Error)]
pub enum Error {
    /// I/O failure.
    #[error("cannot read kernel header of {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Not a bzImage.
    #[error("{0} is not a bzImage (no \"HdrS\" boot header at 0x202 or no 0xaa55 boot flag)")]
    NotBzImage(PathBuf),
}

/// The parts of the setup header the VMM and its users care about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BzImageHeader {
    /// Boot protocol version, e.g. 0x20f.
    pub protocol: u16,
    /// Number of 512-byte setup sectors.
    pub setup_sects: u8,
    /// loadflags.
    pub loadflags: u8,
    /// xloadflags.
    pub xloadflags: u16,
    /// Highest address the initrd may end at.
    pub initrd_addr_max: u32,
    /// Longest command line the kernel accepts (without the NUL).
    pub cmdline_size: u32,
    /// Whether the kernel can run from any suitably aligned address.
    pub relocatable: bool,
    /// Memory the kernel needs from its load address during decompression.
    pub init_size: u32,
    /// The kernel version string ("6.1.0-... (debian-kernel@...) #1 SMP ...").
    pub version: String,
}

impl BzImageHeader {
    /// Whether the 64-bit entry point (used by this VMM) exists.
    pub fn has_64bit_entry(&self) -> bool {
        self.xloadflags & XLF_KERNEL_64 != 0
    }

    /// Whether this is a bzImage loaded high (as opposed to an old zImage).
    pub fn loaded_high(&self) -> bool {
        self.loadflags & LOADED_HIGH != 0
    }
}

/// Reads and checks the setup header of the bzImage at `path`.
pub fn read_bzimage_header(path: &Path) -> Result<BzImageHeader, Error> {
    let io = |source| Error::Io {
        path: path.to_owned(),
        source,
    };
    let mut file = File::open(path).map_err(io)?;
    let mut hdr = setup_header::default();
    file.seek(SeekFrom::Start(SETUP_HEADER_OFFSET))
        .map_err(io)?;
    file.read_exact(hdr.as_mut_slice()).map_err(io)?;
    let (magic, flag) = (hdr.header, hdr.boot_flag);
    if magic != HDRS_MAGIC || flag != BOOT_FLAG {
        return Err(Error::NotBzImage(path.to_owned()));
    }
    // kernel_version is an offset from 0x200 to a NUL-terminated string (protocol 2.00+).
    let mut version = String::new();
    if hdr.kernel_version != 0 {
        let mut buf = [0u8; 256];
        file.seek(SeekFrom::Start(0x200 + u64::from(hdr.kernel_version)))
            .map_err(io)?;
        let n = file.read(&mut buf).map_err(io)?;
        let end = buf[..n].iter().position(|b| *b == 0).unwrap_or(n);
        version = String::from_utf8_lossy(&buf[..end]).into_owned();
    }
    Ok(BzImageHeader {
        protocol: hdr.version,
        setup_sects: hdr.setup_sects,
        loadflags: hdr.loadflags,
        xloadflags: hdr.xloadflags,
        initrd_addr_max: hdr.initrd_addr_max,
        cmdline_size: hdr.cmdline_size,
        relocatable: hdr.relocatable_kernel != 0,
        init_size: hdr.init_size,
        version,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_without_the_magic_is_not_a_bzimage() {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), vec![0u8; 4096]).unwrap();
        let err = read_bzimage_header(f.path()).unwrap_err();
        assert!(matches!(err, Error::NotBzImage(_)), "{err}");
    }

    #[test]
    fn a_short_file_is_an_io_error_not_a_panic() {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), b"MZ").unwrap();
        assert!(matches!(
            read_bzimage_header(f.path()),
            Err(Error::Io { .. })
        ));
    }
}
