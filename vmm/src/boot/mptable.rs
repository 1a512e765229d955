//! The Intel MultiProcessor Specification (1.4) table: without ACPI, it is how Linux learns how
//! many CPUs there are, where the IOAPIC is, and how ISA interrupts reach it. Without it a
//! Linux guest boots on one CPU with the PIC only.
//!
//! Layout: a 16-byte floating pointer ("_MP_") that Linux finds by scanning 0xf0000-0xfffff,
//! pointing at the configuration table ("PCMP"): a header, then one entry per processor, the
//! ISA bus, the IOAPIC, one entry per ISA interrupt line, and the two local interrupt pins.

use thiserror::Error;
use vm_memory::{Bytes, GuestAddress};

use crate::memory::GuestMemory;

/// Where the floating pointer goes: the BIOS area Linux scans, never listed as RAM in e820.
pub const MPTABLE_ADDRESS: u64 = 0xf0000;
/// Physical address of every LAPIC.
const LAPIC_ADDRESS: u32 = 0xfee0_0000;
/// Physical address of the IOAPIC.
const IOAPIC_ADDRESS: u32 = 0xfec0_0000;
/// LAPIC version reported for each CPU (integrated APIC).
const LAPIC_VERSION: u8 = 0x14;
/// IOAPIC version (82093AA-compatible, as KVM's emulation).
const IOAPIC_VERSION: u8 = 0x11;
/// ISA interrupt lines routed through the IOAPIC, as KVM's default routing maps them (GSI n to
/// pin n).
const ISA_IRQS: u8 = 16;

const ENTRY_PROCESSOR: u8 = 0;
const ENTRY_BUS: u8 = 1;
const ENTRY_IOAPIC: u8 = 2;
const ENTRY_IO_INTERRUPT: u8 = 3;
const ENTRY_LOCAL_INTERRUPT: u8 = 4;
const INT_TYPE_INT: u8 = 0;
const INT_TYPE_NMI: u8 = 1;
const INT_TYPE_EXTINT: u8 = 3;
const CPU_ENABLED: u8 = 1;
const CPU_BOOT_PROCESSOR: u8 = 2;
/// CPUID signature of a family-6 CPU, and its FPU + APIC feature flags.
const CPU_SIGNATURE: u32 = 0x600;
const CPU_FEATURES: u32 = (1 << 0) | (1 << 9);

/// Errors building or writing the table.
#[derive(Debug, Error)]
pub enum Error {
    /// Too many CPUs for one table in the scanned area.
    #[error("an MP table describes at most {max} vCPUs, not {0}", max = max_cpus())]
    TooManyCpus(u8),
    /// Writing to guest memory failed.
    #[error("cannot write the MP table: {0}")]
    Write(#[source] vm_memory::GuestMemoryError),
}

/// Most CPUs whose table still fits the 64 KiB BIOS area (APIC IDs stay below the IOAPIC's).
pub const fn max_cpus() -> u8 {
    254
}

/// Sum-to-zero checksum byte for `bytes`.
fn checksum(bytes: &[u8]) -> u8 {
    0u8.wrapping_sub(bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b)))
}

/// The configuration table entries for `cpus` CPUs; returns (bytes, entry count).
fn entries(cpus: u8) -> (Vec<u8>, u16) {
    let ioapic_id = cpus; // APIC IDs 0..cpus are the CPUs'; the IOAPIC takes the next.
    let mut out = Vec::new();
    let mut count = 0u16;
    for id in 0..cpus {
        let flags = CPU_ENABLED | if id == 0 { CPU_BOOT_PROCESSOR } else { 0 };
        out.extend_from_slice(&[ENTRY_PROCESSOR, id, LAPIC_VERSION, flags]);
        out.extend_from_slice(&CPU_SIGNATURE.to_le_bytes());
        out.extend_from_slice(&CPU_FEATURES.to_le_bytes());
        out.extend_from_slice(&[0; 8]);
        count += 1;
    }
    out.extend_from_slice(&[ENTRY_BUS, 0]);
    out.extend_from_slice(b"ISA   ");
    out.extend_from_slice(&[ENTRY_IOAPIC, ioapic_id, IOAPIC_VERSION, 1]);
    out.extend_from_slice(&IOAPIC_ADDRESS.to_le_bytes());
    count += 2;
    for irq in 0..ISA_IRQS {
        // Flags 0: polarity and trigger mode conform to the ISA bus (active high, edge).
        out.extend_from_slice(&[
            ENTRY_IO_INTERRUPT,
            INT_TYPE_INT,
            0,
            0,
            0,
            irq,
            ioapic_id,
            irq,
        ]);
        count += 1;
    }
    // LINT0 takes the PIC's ExtINT, LINT1 takes NMI, on every LAPIC (0xff).
    out.extend_from_slice(&[ENTRY_LOCAL_INTERRUPT, INT_TYPE_EXTINT, 0, 0, 0, 0, 0xff, 0]);
    out.extend_from_slice(&[ENTRY_LOCAL_INTERRUPT, INT_TYPE_NMI, 0, 0, 0, 0, 0xff, 1]);
    count += 2;
    (out, count)
}

/// The floating pointer followed by the configuration table, for placement at `base`.
pub fn build(cpus: u8, base: u64) -> Result<Vec<u8>, Error> {
    if cpus == 0 || cpus > max_cpus() {
        return Err(Error::TooManyCpus(cpus));
    }
    let table_addr = base + 16;
    let mut fp = Vec::with_capacity(16);
    fp.extend_from_slice(b"_MP_");
    fp.extend_from_slice(&(table_addr as u32).to_le_bytes());
    fp.extend_from_slice(&[1, 4, 0, 0, 0, 0, 0, 0]); // length 1 x 16 B, spec 1.4, checksum
    fp[10] = checksum(&fp);

    let (body, count) = entries(cpus);
    let mut table = Vec::with_capacity(44 + body.len());
    table.extend_from_slice(b"PCMP");
    table.extend_from_slice(&((44 + body.len()) as u16).to_le_bytes());
    table.extend_from_slice(&[4, 0]); // spec 1.4, checksum
    table.extend_from_slice(b"RUNNERVM");
    table.extend_from_slice(b"MICROVM     ");
    table.extend_from_slice(&[0; 4]); // no OEM table
    table.extend_from_slice(&[0; 2]);
    table.extend_from_slice(&count.to_le_bytes());
    table.extend_from_slice(&LAPIC_ADDRESS.to_le_bytes());
    table.extend_from_slice(&[0; 4]); // no extended table
    table.extend_from_slice(&body);
    table[7] = checksum(&table);

    fp.extend_from_slice(&table);
    Ok(fp)
}

/// Writes the MP table for `cpus` CPUs at `MPTABLE_ADDRESS`.
pub fn write(mem: &GuestMemory, cpus: u8) -> Result<(), Error> {
    let bytes = build(cpus, MPTABLE_ADDRESS)?;
    mem.write_slice(&bytes, GuestAddress(MPTABLE_ADDRESS))
        .map_err(Error::Write)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
    }

    #[test]
    fn pointer_and_table_check_out() {
        let b = build(4, MPTABLE_ADDRESS).unwrap();
        assert_eq!(&b[0..4], b"_MP_");
        assert_eq!(sum(&b[..16]), 0, "floating pointer checksum");
        let ptr = u32::from_le_bytes(b[4..8].try_into().unwrap());
        assert_eq!(u64::from(ptr), MPTABLE_ADDRESS + 16);
        let table = &b[16..];
        assert_eq!(&table[0..4], b"PCMP");
        let len = u16::from_le_bytes([table[4], table[5]]) as usize;
        assert_eq!(len, table.len());
        assert_eq!(sum(table), 0, "configuration table checksum");
        let count = u16::from_le_bytes([table[34], table[35]]);
        assert_eq!(count, 4 + 2 + 16 + 2);
        // 4 processor entries of 20 bytes, then 20 entries of 8.
        assert_eq!(len, 44 + 4 * 20 + 20 * 8);
    }

    #[test]
    fn only_cpu_zero_is_the_boot_processor_and_the_ioapic_id_is_free() {
        let b = build(3, MPTABLE_ADDRESS).unwrap();
        let e = &b[16 + 44..];
        let flags: Vec<u8> = (0..3).map(|i| e[i * 20 + 3]).collect();
        assert_eq!(flags, vec![3, 1, 1]);
        let ioapic = &e[3 * 20 + 8..3 * 20 + 16];
        assert_eq!(ioapic[0], ENTRY_IOAPIC);
        assert_eq!(ioapic[1], 3, "IOAPIC id after the CPUs' APIC ids");
        assert_eq!(
            u32::from_le_bytes(ioapic[4..8].try_into().unwrap()),
            IOAPIC_ADDRESS
        );
    }

    #[test]
    fn fits_the_bios_area_and_refuses_nonsense_counts() {
        let b = build(max_cpus(), MPTABLE_ADDRESS).unwrap();
        assert!(MPTABLE_ADDRESS + b.len() as u64 <= 0x10_0000);
        assert!(build(0, MPTABLE_ADDRESS).is_err());
        assert!(build(255, MPTABLE_ADDRESS).is_err());
    }

    #[test]
    fn lands_in_guest_memory() {
        let mem = crate::memory::allocate(2).unwrap();
        write(&mem, 2).unwrap();
        let mut sig = [0u8; 4];
        mem.read_slice(&mut sig, GuestAddress(MPTABLE_ADDRESS + 16))
            .unwrap();
        assert_eq!(&sig, b"PCMP");
    }
}
