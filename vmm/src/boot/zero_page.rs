//! The zero page (`struct boot_params`): how the guest learns its command line, initrd and
//! memory map. Filled from the kernel's own setup header when there is one.

use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};

use crate::memory::E820Entry;

/// "HdrS".
const HDRS_MAGIC: u32 = 0x5372_6448;
/// Boot sector signature.
const BOOT_FLAG: u16 = 0xaa55;
/// type_of_loader: "undefined" boot loader (no registered ID).
const LOADER_UNDEFINED: u8 = 0xff;
/// Kernel alignment assumed for images without a header (16 MiB, as x86-64 kernels use).
const DEFAULT_KERNEL_ALIGNMENT: u32 = 0x100_0000;

/// What goes into the zero page.
#[derive(Clone, Debug, Default)]
pub struct ZeroPageInputs {
    /// The kernel's setup header (bzImage), or none (ELF vmlinux, raw program).
    pub header: Option<setup_header>,
    /// Guest address of the command line.
    pub cmdline_addr: u64,
    /// Its length without the NUL.
    pub cmdline_len: usize,
    /// Initrd (address, size).
    pub initrd: Option<(u64, u64)>,
    /// Usable RAM.
    pub e820: Vec<E820Entry>,
    /// Address of the ACPI RSDP, if there are ACPI tables (boot protocol 2.14+).
    pub acpi_rsdp: Option<u64>,
}

/// Builds `boot_params`. The e820 table holds at most 128 entries; ours has three at most.
pub fn build_zero_page(inputs: &ZeroPageInputs) -> boot_params {
    let mut params = boot_params::default();
    match inputs.header {
        Some(hdr) => params.hdr = hdr,
        None => {
            params.hdr.header = HDRS_MAGIC;
            params.hdr.boot_flag = BOOT_FLAG;
            params.hdr.kernel_alignment = DEFAULT_KERNEL_ALIGNMENT;
        }
    }
    params.hdr.type_of_loader = LOADER_UNDEFINED;
    params.hdr.cmd_line_ptr = inputs.cmdline_addr as u32;
    params.ext_cmd_line_ptr = (inputs.cmdline_addr >> 32) as u32;
    params.hdr.cmdline_size = inputs.cmdline_len as u32 + 1;
    if let Some((addr, size)) = inputs.initrd {
        params.hdr.ramdisk_image = addr as u32;
        params.ext_ramdisk_image = (addr >> 32) as u32;
        params.hdr.ramdisk_size = size as u32;
        params.ext_ramdisk_size = (size >> 32) as u32;
    }
    let n = inputs.e820.len().min(params.e820_table.len());
    for (slot, e) in params.e820_table.iter_mut().zip(&inputs.e820[..n]) {
        *slot = boot_e820_entry {
            addr: e.addr,
            size: e.size,
            r#type: e.kind,
        };
    }
    params.e820_entries = n as u8;
    params.acpi_rsdp_addr = inputs.acpi_rsdp.unwrap_or(0);
    params
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory;
    use vm_memory::ByteValued;

    fn u32_at(bytes: &[u8], off: usize) -> u32 {
        u32::from_le_bytes(bytes[off..off + 4].try_into().unwrap())
    }

    #[test]
    fn fields_sit_at_the_offsets_the_boot_protocol_documents() {
        let params = build_zero_page(&ZeroPageInputs {
            header: None,
            cmdline_addr: 0x20000,
            cmdline_len: 11,
            initrd: Some((0x3f0_0000, 0x1234)),
            e820: memory::e820_map(64).unwrap(),
            acpi_rsdp: Some(0xe0000),
        });
        let b = params.as_slice();
        assert_eq!(b.len(), 4096);
        // Offsets from Documentation/arch/x86/zero-page.rst and boot.rst.
        assert_eq!(u32_at(b, 0x202), HDRS_MAGIC);
        assert_eq!(u16::from_le_bytes([b[0x1fe], b[0x1ff]]), BOOT_FLAG);
        assert_eq!(b[0x210], LOADER_UNDEFINED);
        assert_eq!(u32_at(b, 0x228), 0x20000);
        assert_eq!(u32_at(b, 0x238), 12);
        assert_eq!(u32_at(b, 0x218), 0x3f0_0000);
        assert_eq!(u32_at(b, 0x21c), 0x1234);
        assert_eq!(b[0x1e8], 2, "e820_entries");
        assert_eq!(
            u64::from_le_bytes(b[0x70..0x78].try_into().unwrap()),
            0xe0000
        );
        // Second e820 entry (20 bytes each from 0x2d0): 1 MiB .. 64 MiB, RAM.
        let e1 = 0x2d0 + 20;
        assert_eq!(
            u64::from_le_bytes(b[e1..e1 + 8].try_into().unwrap()),
            0x10_0000
        );
        assert_eq!(
            u64::from_le_bytes(b[e1 + 8..e1 + 16].try_into().unwrap()),
            63 << 20
        );
        assert_eq!(u32_at(b, e1 + 16), 1);
    }

    #[test]
    fn the_kernels_own_header_is_kept() {
        let hdr = setup_header {
            setup_sects: 27,
            version: 0x20f,
            header: HDRS_MAGIC,
            ..Default::default()
        };
        let params = build_zero_page(&ZeroPageInputs {
            header: Some(hdr),
            ..Default::default()
        });
        let (sects, version) = (params.hdr.setup_sects, params.hdr.version);
        assert_eq!((sects, version), (27, 0x20f));
        assert_eq!(params.hdr.type_of_loader, LOADER_UNDEFINED);
    }
}
