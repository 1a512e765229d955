//! The local APIC's LINT0/LINT1 pins wired as on a PC: LINT0 takes the legacy PIC's interrupts
//! (ExtINT), LINT1 takes NMIs. Linux expects firmware to have done this (the "virtual wire"
//! mode of the MP specification).

use kvm_bindings::kvm_lapic_state;

/// Offset of the LVT LINT0 register in the APIC register page.
const APIC_LVT0: usize = 0x350;
/// Offset of the LVT LINT1 register.
const APIC_LVT1: usize = 0x360;
/// Delivery mode ExtINT (bits 8-10 = 0b111).
const DELIVERY_EXTINT: u32 = 0x7;
/// Delivery mode NMI (0b100).
const DELIVERY_NMI: u32 = 0x4;

fn get(state: &kvm_lapic_state, offset: usize) -> u32 {
    let b = &state.regs[offset..offset + 4];
    u32::from_le_bytes([b[0] as u8, b[1] as u8, b[2] as u8, b[3] as u8])
}

fn set(state: &mut kvm_lapic_state, offset: usize, value: u32) {
    for (i, byte) in value.to_le_bytes().iter().enumerate() {
        state.regs[offset + i] = *byte as _;
    }
}

fn with_delivery_mode(reg: u32, mode: u32) -> u32 {
    (reg & !0x700) | (mode << 8)
}

/// Sets LINT0 to ExtINT and LINT1 to NMI, leaving the other bits (masks, vectors) as KVM had.
pub fn wire_lint_pins(state: &mut kvm_lapic_state) {
    let lvt0 = get(state, APIC_LVT0);
    set(state, APIC_LVT0, with_delivery_mode(lvt0, DELIVERY_EXTINT));
    let lvt1 = get(state, APIC_LVT1);
    set(state, APIC_LVT1, with_delivery_mode(lvt1, DELIVERY_NMI));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lint_pins_get_extint_and_nmi_and_keep_other_bits() {
        let mut s = kvm_lapic_state::default();
        set(&mut s, APIC_LVT0, 0x0001_0000 | 0x300);
        set(&mut s, APIC_LVT1, 0x0001_0000);
        wire_lint_pins(&mut s);
        assert_eq!(get(&s, APIC_LVT0), 0x0001_0700);
        assert_eq!(get(&s, APIC_LVT1), 0x0001_0400);
    }
}
