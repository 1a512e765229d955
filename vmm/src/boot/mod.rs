//! Putting a guest into memory: the kernel (bzImage or ELF vmlinux, via `linux-loader`) or a
//! raw 64-bit program, the command line, the initrd, and the zero page that describes them.

pub mod acpi;
mod header;
mod initrd;
pub mod mptable;
mod zero_page;

pub use header::{read_bzimage_header, BzImageHeader};
pub use initrd::place_initrd;
pub use zero_page::{build_zero_page, ZeroPageInputs};

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use linux_loader::cmdline::Cmdline;
use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::{boot_params, setup_header};
use linux_loader::loader::{self, BzImage, Elf, KernelLoader};
use thiserror::Error;
use vm_memory::{Bytes, GuestAddress};

use crate::memory::{self, GuestMemory, CMDLINE_ADDRESS, CMDLINE_MAX_SIZE, HIMEM_START};

/// Offset of the 64-bit entry point (`startup_64`) from the start of a bzImage's protected-mode
/// code, fixed by the boot protocol.
const BZIMAGE_64BIT_ENTRY_OFFSET: u64 = 0x200;

/// What the guest runs.
#[derive(Clone, Debug)]
pub enum GuestImage {
    /// A Linux kernel file: bzImage or uncompressed ELF vmlinux, told apart by content.
    Kernel(PathBuf),
    /// A raw 64-bit program, loaded at 1 MiB and entered there in long mode with RSI pointing
    /// at the zero page, exactly like a kernel's 64-bit entry (used by tests and benchmarks).
    Raw(Vec<u8>),
}

/// Errors loading the guest.
#[derive(Debug, Error)]
pub enum Error {
    /// The kernel file could not be opened or read.
    #[error("cannot read kernel {path}: {source}")]
    KernelFile {
        /// The kernel path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// linux-loader refused the kernel.
    #[error("cannot load kernel {path}: {source}")]
    Load {
        /// The kernel path.
        path: PathBuf,
        /// The loader's reason.
        source: loader::Error,
    },
    /// A bzImage without the 64-bit entry point.
    #[error(
        "kernel {0} is not a 64-bit bzImage (no XLF_KERNEL_64): the microVM enters in long mode"
    )]
    Not64Bit(PathBuf),
    /// Reading the bzImage header failed.
    #[error(transparent)]
    Header(#[from] header::Error),
    /// The raw program does not fit.
    #[error("raw guest image of {0} bytes does not fit in guest memory")]
    RawTooLarge(usize),
    /// The command line is invalid or too long.
    #[error("invalid kernel command line: {0}")]
    Cmdline(linux_loader::cmdline::Error),
    /// Writing the command line failed.
    #[error("cannot write the command line into guest memory: {0}")]
    CmdlineWrite(loader::Error),
    /// The command line is longer than the kernel accepts.
    #[error("kernel command line is {len} bytes; this kernel accepts at most {max}")]
    CmdlineTooLong {
        /// Its length.
        len: usize,
        /// The kernel's limit.
        max: usize,
    },
    /// Placing or reading the initrd failed.
    #[error(transparent)]
    Initrd(#[from] initrd::Error),
    /// Memory layout problem.
    #[error(transparent)]
    Memory(#[from] memory::Error),
    /// Building or writing the ACPI tables failed.
    #[error(transparent)]
    Acpi(#[from] acpi::Error),
    /// Building or writing the MP table failed.
    #[error(transparent)]
    MpTable(#[from] mptable::Error),
    /// Writing the zero page failed.
    #[error("cannot write the zero page: {0}")]
    ZeroPage(linux_loader::configurator::Error),
}

/// Where execution starts, once everything is in memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Loaded {
    /// 64-bit entry point.
    pub entry: u64,
    /// First byte past the loaded image.
    pub image_end: u64,
}

/// The virtual hardware the firmware tables describe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Platform {
    /// Guest RAM in MiB.
    pub mem_mib: u64,
    /// Number of vCPUs.
    pub cpus: u8,
    /// Whether COM2 (the agent UART) exists.
    pub agent_uart: bool,
    /// Whether the virtio block device exists.
    pub block_device: bool,
}

/// Loads the image, command line and initrd into `mem`, then the tables describing `platform`:
/// the zero page (with the e820 map), ACPI, and an MP table for kernels without ACPI.
pub fn load(
    mem: &GuestMemory,
    platform: Platform,
    image: &GuestImage,
    cmdline: &str,
    initrd: Option<&Path>,
) -> Result<Loaded, Error> {
    let (loaded, header) = match image {
        GuestImage::Kernel(path) => load_kernel(mem, path)?,
        GuestImage::Raw(code) => (load_raw(mem, code)?, None),
    };
    let cmdline_len = write_cmdline(mem, cmdline, header.as_ref())?;
    let initrd = match initrd {
        Some(path) => Some(initrd::load(
            mem,
            platform.mem_mib,
            path,
            loaded.image_end,
            header.as_ref(),
        )?),
        None => None,
    };
    let rsdp = acpi::write(mem, &platform)?;
    mptable::write(mem, platform.cpus)?;
    let params: boot_params = build_zero_page(&ZeroPageInputs {
        header,
        cmdline_addr: CMDLINE_ADDRESS,
        cmdline_len,
        initrd,
        e820: memory::e820_map(platform.mem_mib)?,
        acpi_rsdp: Some(rsdp),
    });
    let params = BootParams::new(&params, GuestAddress(memory::ZERO_PAGE_ADDRESS));
    LinuxBootConfigurator::write_bootparams(&params, mem).map_err(Error::ZeroPage)?;
    Ok(loaded)
}

/// Loads a bzImage or ELF vmlinux; returns the entry and the bzImage setup header, if any.
fn load_kernel(mem: &GuestMemory, path: &Path) -> Result<(Loaded, Option<setup_header>), Error> {
    let io = |source| Error::KernelFile {
        path: path.to_owned(),
        source,
    };
    let mut file = File::open(path).map_err(io)?;
    let mut magic = [0u8; 4];
    file.read_exact(&mut magic).map_err(io)?;
    file.seek(SeekFrom::Start(0)).map_err(io)?;
    let load_err = |source| Error::Load {
        path: path.to_owned(),
        source,
    };
    if magic == *b"\x7fELF" {
        let r =
            Elf::load(mem, None, &mut file, Some(GuestAddress(HIMEM_START))).map_err(load_err)?;
        let loaded = Loaded {
            entry: r.kernel_load.0,
            image_end: r.kernel_end,
        };
        return Ok((loaded, None));
    }
    let info = read_bzimage_header(path)?;
    if !info.has_64bit_entry() {
        return Err(Error::Not64Bit(path.to_owned()));
    }
    let r =
        BzImage::load(mem, None, &mut file, Some(GuestAddress(HIMEM_START))).map_err(load_err)?;
    let loaded = Loaded {
        entry: r.kernel_load.0 + BZIMAGE_64BIT_ENTRY_OFFSET,
        image_end: r.kernel_end,
    };
    Ok((loaded, r.setup_header))
}

/// Copies a raw program to 1 MiB.
fn load_raw(mem: &GuestMemory, code: &[u8]) -> Result<Loaded, Error> {
    mem.write_slice(code, GuestAddress(HIMEM_START))
        .map_err(|_| Error::RawTooLarge(code.len()))?;
    Ok(Loaded {
        entry: HIMEM_START,
        image_end: HIMEM_START + code.len() as u64,
    })
}

/// Writes the NUL-terminated command line; returns its length without the NUL.
fn write_cmdline(
    mem: &GuestMemory,
    cmdline: &str,
    header: Option<&setup_header>,
) -> Result<usize, Error> {
    let mut cl = Cmdline::new(CMDLINE_MAX_SIZE).map_err(Error::Cmdline)?;
    if !cmdline.is_empty() {
        cl.insert_str(cmdline).map_err(Error::Cmdline)?;
    }
    let len = cl.as_cstring().map_err(Error::Cmdline)?.as_bytes().len();
    // Boot protocol 2.06+ states the kernel's limit; older ones mean 255.
    let max = match header {
        Some(h) if h.version >= 0x206 => h.cmdline_size as usize,
        Some(_) => 255,
        None => CMDLINE_MAX_SIZE - 1,
    };
    if len > max {
        return Err(Error::CmdlineTooLong { len, max });
    }
    loader::load_cmdline(mem, GuestAddress(CMDLINE_ADDRESS), &cl).map_err(Error::CmdlineWrite)?;
    Ok(len)
}
