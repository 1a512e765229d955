//! ACPI tables, built with rust-vmm's `acpi_tables`: how a modern Linux (Debian's cloud kernel
//! has no MP-table parser, `CONFIG_X86_MPPARSE` off) learns its CPUs, the IOAPIC and the legacy
//! devices.
//!
//! The platform is "hardware-reduced" ACPI, as Firecracker and Cloud Hypervisor use: no PM
//! timer, SCI or PIC; interrupts go through the IOAPIC (ISA IRQ n = GSI n, KVM's default
//! routing). Tables: RSDP -> XSDT -> {FADT -> DSDT, MADT}. The DSDT declares the UARTs and the
//! i8042 so that Linux's PNP drivers find them.

use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::madt::{
    EnabledStatus, IoApic, LocalInterruptController, ProcessorLocalApic, MADT,
};
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use acpi_tables::{aml, Aml};
use thiserror::Error;
use vm_memory::{Bytes, GuestAddress};

use super::Platform;
use crate::devices::{
    COM1_IRQ, COM1_PORT, COM2_IRQ, COM2_PORT, VIRTIO_BLOCK_BASE, VIRTIO_BLOCK_GSI,
};
use crate::memory::GuestMemory;

/// Where the RSDP goes: inside the 0xe0000-0xfffff range Linux scans when the zero page does
/// not say (we also put it in `boot_params.acpi_rsdp_addr`). The other tables follow it; the
/// MP table starts at 0xf0000.
pub const RSDP_ADDRESS: u64 = 0xe0000;
/// End of the room for ACPI tables.
const ACPI_AREA_END: u64 = 0xf0000;
const OEM_ID: [u8; 6] = *b"RUNNER";
const OEM_TABLE_ID: [u8; 8] = *b"MICROVM ";
const LAPIC_ADDRESS: u32 = 0xfee0_0000;
const IOAPIC_ADDRESS: u32 = 0xfec0_0000;
/// IAPC_BOOT_ARCH: no VGA (bit 2), no MSI (bit 3), no CMOS RTC (bit 5). The 8042 flag is left
/// clear so Linux does not probe a keyboard; `reboot=k` still writes the reset to port 0x64.
const IAPC_BOOT_ARCH: u16 = (1 << 2) | (1 << 3) | (1 << 5);

/// Errors writing the tables.
#[derive(Debug, Error)]
pub enum Error {
    /// The tables outgrew their area.
    #[error("ACPI tables for {0} vCPUs do not fit below the MP table")]
    TooLarge(u8),
    /// Writing to guest memory failed.
    #[error("cannot write the ACPI tables: {0}")]
    Write(#[source] vm_memory::GuestMemoryError),
}

fn bytes(table: &dyn Aml) -> Vec<u8> {
    let mut out = Vec::new();
    table.to_aml_bytes(&mut out);
    out
}

/// A UART as an ACPI device: 8 I/O ports and an edge-triggered ISA interrupt.
fn uart(path: &str, uid: u8, port: u16, irq: u32) -> Vec<u8> {
    let hid = aml::EISAName::new("PNP0501");
    let irq = aml::Interrupt::new(true, true, false, false, irq);
    let io = aml::IO::new(port, port, 1, 8);
    let crs = aml::ResourceTemplate::new(vec![&irq, &io]);
    let (hid, uid, crs) = (
        aml::Name::new("_HID".into(), &hid),
        aml::Name::new("_UID".into(), &uid),
        aml::Name::new("_CRS".into(), &crs),
    );
    bytes(&aml::Device::new(path.into(), vec![&hid, &uid, &crs]))
}

/// The i8042 as an ACPI device (data port 0x60, command port 0x64, IRQ 1).
fn i8042() -> Vec<u8> {
    let hid = aml::EISAName::new("PNP0303");
    let data = aml::IO::new(0x60, 0x60, 1, 1);
    let cmd = aml::IO::new(0x64, 0x64, 1, 1);
    let irq = aml::Interrupt::new(true, true, false, false, 1);
    let crs = aml::ResourceTemplate::new(vec![&data, &cmd, &irq]);
    let (hid, crs) = (
        aml::Name::new("_HID".into(), &hid),
        aml::Name::new("_CRS".into(), &crs),
    );
    bytes(&aml::Device::new("_SB_.PS2_".into(), vec![&hid, &crs]))
}

/// A virtio-mmio device as Linux's virtio_mmio driver finds it under ACPI: `LNRO0005` with
/// its register window and interrupt.
fn virtio_mmio(path: &str, uid: u8, base: u64, gsi: u32) -> Vec<u8> {
    let hid = aml::Name::new("_HID".into(), &"LNRO0005");
    let uid = aml::Name::new("_UID".into(), &uid);
    let window = aml::Memory32Fixed::new(true, base as u32, 0x1000);
    let irq = aml::Interrupt::new(true, true, false, false, gsi);
    let crs = aml::ResourceTemplate::new(vec![&window, &irq]);
    let crs = aml::Name::new("_CRS".into(), &crs);
    bytes(&aml::Device::new(path.into(), vec![&hid, &uid, &crs]))
}

/// The DSDT: the devices this VM has.
fn dsdt(platform: &Platform) -> Vec<u8> {
    let mut table = Sdt::new(*b"DSDT", 36, 6, OEM_ID, OEM_TABLE_ID, 1);
    table.append_slice(&uart("_SB_.COM1", 0, COM1_PORT, COM1_IRQ));
    if platform.agent_uart {
        table.append_slice(&uart("_SB_.COM2", 1, COM2_PORT, COM2_IRQ));
    }
    table.append_slice(&i8042());
    if platform.block_device {
        let dev = virtio_mmio("_SB_.VBLK", 0, VIRTIO_BLOCK_BASE, VIRTIO_BLOCK_GSI);
        table.append_slice(&dev);
    }
    table.as_slice().to_vec()
}

/// The MADT: one enabled local APIC per vCPU (APIC ID = vCPU id) and the IOAPIC.
fn madt(cpus: u8) -> Vec<u8> {
    let mut table = MADT::new(
        OEM_ID,
        OEM_TABLE_ID,
        1,
        LocalInterruptController::Address(LAPIC_ADDRESS),
    );
    for id in 0..cpus {
        table.add_structure(ProcessorLocalApic::new(id, id, EnabledStatus::Enabled));
    }
    // APIC IDs 0..cpus are the vCPUs'; the IOAPIC takes the next, as in the MP table.
    table.add_structure(IoApic::new(cpus, IOAPIC_ADDRESS, 0));
    bytes(&table)
}

/// The FADT: hardware-reduced, pointing at the DSDT.
fn fadt(dsdt_addr: u64) -> Vec<u8> {
    let mut builder = FADTBuilder::new(OEM_ID, OEM_TABLE_ID, 1)
        .dsdt_64(dsdt_addr)
        .flag(Flags::HwReducedAcpi)
        .flag(Flags::PwrButton)
        .flag(Flags::SlpButton);
    builder.iapc_boot_arch = IAPC_BOOT_ARCH.into();
    bytes(&builder.finalize())
}

fn align16(addr: u64) -> u64 {
    (addr + 15) & !15
}

/// All tables with their guest addresses, RSDP first.
pub fn build(platform: &Platform) -> Result<Vec<(u64, Vec<u8>)>, Error> {
    let cpus = platform.cpus;
    let dsdt_addr = align16(RSDP_ADDRESS + Rsdp::len() as u64);
    let dsdt = dsdt(platform);
    let fadt_addr = align16(dsdt_addr + dsdt.len() as u64);
    let fadt = fadt(dsdt_addr);
    let madt_addr = align16(fadt_addr + fadt.len() as u64);
    let madt = madt(cpus);
    let xsdt_addr = align16(madt_addr + madt.len() as u64);
    let mut xsdt = XSDT::new(OEM_ID, OEM_TABLE_ID, 1);
    xsdt.add_entry(fadt_addr);
    xsdt.add_entry(madt_addr);
    let xsdt = bytes(&xsdt);
    if xsdt_addr + xsdt.len() as u64 > ACPI_AREA_END {
        return Err(Error::TooLarge(cpus));
    }
    let rsdp = bytes(&Rsdp::new(OEM_ID, xsdt_addr));
    Ok(vec![
        (RSDP_ADDRESS, rsdp),
        (dsdt_addr, dsdt),
        (fadt_addr, fadt),
        (madt_addr, madt),
        (xsdt_addr, xsdt),
    ])
}

/// Writes the tables; returns the RSDP address for the zero page.
pub fn write(mem: &GuestMemory, platform: &Platform) -> Result<u64, Error> {
    for (addr, table) in build(platform)? {
        mem.write_slice(&table, GuestAddress(addr))
            .map_err(Error::Write)?;
    }
    Ok(RSDP_ADDRESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(cpus: u8, agent_uart: bool) -> Result<Vec<(u64, Vec<u8>)>, Error> {
        super::build(&Platform {
            mem_mib: 64,
            cpus,
            agent_uart,
            block_device: agent_uart,
        })
    }

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
    }

    fn u32_at(b: &[u8], off: usize) -> u32 {
        u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
    }

    fn u64_at(b: &[u8], off: usize) -> u64 {
        u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
    }

    #[test]
    fn every_table_has_its_signature_length_and_checksum() {
        let tables = build(2, true).unwrap();
        let rsdp = &tables[0].1;
        assert_eq!(&rsdp[..8], b"RSD PTR ");
        assert_eq!(sum(&rsdp[..20]), 0, "ACPI 1.0 checksum");
        assert_eq!(sum(rsdp), 0, "extended checksum");
        for ((_, t), sig) in tables[1..].iter().zip([b"DSDT", b"FACP", b"APIC", b"XSDT"]) {
            assert_eq!(&t[..4], sig);
            assert_eq!(u32_at(t, 4) as usize, t.len(), "{sig:?} length");
            assert_eq!(sum(t), 0, "{sig:?} checksum");
        }
    }

    #[test]
    fn pointers_chain_rsdp_to_xsdt_to_fadt_madt_and_dsdt() {
        let tables = build(2, false).unwrap();
        let at = |addr: u64| &tables.iter().find(|(a, _)| *a == addr).unwrap().1;
        let xsdt = at(u64_at(&tables[0].1, 24));
        assert_eq!(&xsdt[..4], b"XSDT");
        let fadt = at(u64_at(xsdt, 36));
        let madt = at(u64_at(xsdt, 44));
        assert_eq!((&fadt[..4], &madt[..4]), (&b"FACP"[..], &b"APIC"[..]));
        // FADT X_DSDT at offset 140; flags at 112 include HW_REDUCED_ACPI (bit 20).
        assert_eq!(&at(u64_at(fadt, 140))[..4], b"DSDT");
        assert_ne!(u32_at(fadt, 112) & (1 << 20), 0);
        assert_eq!(u16::from_le_bytes([fadt[109], fadt[110]]), IAPC_BOOT_ARCH);
        for (addr, t) in &tables {
            assert!(*addr >= RSDP_ADDRESS && addr + t.len() as u64 <= ACPI_AREA_END);
        }
    }

    #[test]
    fn madt_lists_each_vcpu_then_the_ioapic() {
        let tables = build(3, false).unwrap();
        let madt = &tables[3].1;
        assert_eq!(u32_at(madt, 36), LAPIC_ADDRESS);
        let mut entries = Vec::new();
        let mut off = 44;
        while off < madt.len() {
            entries.push((madt[off], madt[off + 2], madt[off + 3]));
            off += usize::from(madt[off + 1]);
        }
        // (type, id/uid, apic id): three local APICs, then the IOAPIC (type 1, id 3).
        assert_eq!(entries, vec![(0, 0, 0), (0, 1, 1), (0, 2, 2), (1, 3, 0)]);
    }

    #[test]
    fn dsdt_declares_the_uarts_and_the_i8042() {
        let with = &build(1, true).unwrap()[1].1;
        let without = &build(1, false).unwrap()[1].1;
        let has = |t: &[u8], name: &[u8]| t.windows(name.len()).any(|w| w == name);
        assert!(has(with, b"COM1") && has(with, b"COM2") && has(with, b"PS2_"));
        assert!(has(with, b"VBLK") && has(with, b"LNRO0005"));
        assert!(has(without, b"COM1") && !has(without, b"COM2") && !has(without, b"VBLK"));
    }

    #[test]
    fn the_largest_vm_still_fits() {
        assert!(build(crate::MAX_VCPUS, true).is_ok());
    }
}
