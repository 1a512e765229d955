//! The boot GDT: the flat 64-bit code and data segments (and a TSS descriptor) the guest starts
//! with, and the `kvm_segment` forms of the same descriptors for the segment registers.
//!
//! Descriptor layout: Intel SDM vol. 3, 3.4.5 "Segment Descriptors".

use kvm_bindings::kvm_segment;

/// Access/flags word of a 64-bit code segment: present, ring 0, executable, readable,
/// accessed; long mode (L), 4 KiB granularity.
pub const CODE64: u16 = 0xa09b;
/// Access/flags word of a data segment: present, ring 0, writable, accessed; 32-bit default
/// size, 4 KiB granularity.
pub const DATA: u16 = 0xc093;
/// Access/flags word of a busy 64-bit TSS: present, type 0xb, 4 KiB granularity.
pub const TSS: u16 = 0x808b;

/// Selector (byte offset) of the code segment: `__BOOT_CS`, which the Linux boot protocol
/// (Documentation/arch/x86/boot.rst, "64-bit Boot Protocol") says CS must hold at entry.
pub const CODE_SELECTOR: u16 = 0x10;
/// Selector of the data segment: `__BOOT_DS`, for DS, ES and SS at entry.
pub const DATA_SELECTOR: u16 = 0x18;
/// Selector of the TSS (a 16-byte system descriptor in long mode: two slots).
pub const TSS_SELECTOR: u16 = 0x20;

/// Encodes one 8-byte descriptor. `flags` packs the access byte (bits 0-7) and the flags
/// nibble (bits 12-15), as the words above do.
pub const fn entry(flags: u16, base: u32, limit: u32) -> u64 {
    let base = base as u64;
    let limit = limit as u64;
    let flags = flags as u64;
    ((base & 0xff00_0000) << 32)
        | ((flags & 0xf0ff) << 40)
        | ((limit & 0x000f_0000) << 32)
        | ((base & 0x00ff_ffff) << 16)
        | (limit & 0x0000_ffff)
}

/// The table, indexed by selector / 8: null, unused, code, data, TSS (low and high half).
pub fn table() -> [u64; 6] {
    [
        0,
        0,
        entry(CODE64, 0, 0xfffff),
        entry(DATA, 0, 0xfffff),
        entry(TSS, 0, 0xfffff),
        0,
    ]
}

/// The descriptor a selector points at.
pub fn descriptor(selector: u16) -> u64 {
    table()[usize::from(selector / 8)]
}

/// The segment-register form of descriptor `raw` at `selector`.
pub fn segment(raw: u64, selector: u16) -> kvm_segment {
    let bit = |n: u32| ((raw >> n) & 1) as u8;
    let limit_raw = ((raw & 0xffff) | ((raw >> 32) & 0x000f_0000)) as u32;
    let granular = bit(55) == 1;
    kvm_segment {
        base: ((raw >> 16) & 0x00ff_ffff) | ((raw >> 32) & 0xff00_0000),
        // With 4 KiB granularity the limit counts pages: scale it to bytes for KVM.
        limit: if granular {
            (limit_raw << 12) | 0xfff
        } else {
            limit_raw
        },
        selector,
        type_: ((raw >> 40) & 0xf) as u8,
        present: bit(47),
        dpl: ((raw >> 45) & 0x3) as u8,
        db: bit(54),
        s: bit(44),
        l: bit(53),
        g: bit(55),
        avl: bit(52),
        unusable: if bit(47) == 1 { 0 } else { 1 },
        padding: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_the_well_known_flat_descriptors() {
        // The values every x86-64 boot loader uses for flat 64-bit code and 32-bit data.
        assert_eq!(entry(CODE64, 0, 0xfffff), 0x00af_9b00_0000_ffff);
        assert_eq!(entry(DATA, 0, 0xfffff), 0x00cf_9300_0000_ffff);
        assert_eq!(
            entry(0, 0x1234_5678, 0x9_abcd) & 0xff00_00ff_ffff_0000,
            0x1200_0034_5678_0000
        );
    }

    #[test]
    fn code_segment_round_trips_to_a_long_mode_kvm_segment() {
        let cs = segment(descriptor(CODE_SELECTOR), CODE_SELECTOR);
        assert_eq!((cs.base, cs.limit, cs.selector), (0, 0xffff_ffff, 0x10));
        assert_eq!((cs.type_, cs.present, cs.dpl, cs.s), (0xb, 1, 0, 1));
        assert_eq!((cs.l, cs.db, cs.g, cs.unusable), (1, 0, 1, 0));
    }

    #[test]
    fn data_and_tss_segments_decode() {
        let ds = segment(descriptor(DATA_SELECTOR), DATA_SELECTOR);
        assert_eq!(ds.selector, 0x18);
        assert_eq!((ds.type_, ds.db, ds.l, ds.s), (0x3, 1, 0, 1));
        let tss = segment(descriptor(TSS_SELECTOR), TSS_SELECTOR);
        assert_eq!(
            (tss.type_, tss.s, tss.g, tss.limit),
            (0xb, 0, 1, 0xffff_ffff)
        );
        let null = segment(0, 0);
        assert_eq!(null.unusable, 1);
    }
}
