//! CPUID: the guest sees what KVM supports on this host, minus what would mislead it.
//!
//! KVM's supported set (KVM_GET_SUPPORTED_CPUID) already hides what KVM cannot virtualize; the
//! filter below only makes the topology true for our vCPU count, tells the guest it runs under
//! a hypervisor, and hides features a microVM does not provide.

use kvm_bindings::{kvm_cpuid_entry2, CpuId, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::Kvm;

use super::Error;

/// Leaf 1: feature information.
const LEAF_FEATURES: u32 = 0x1;
/// Leaf 4: deterministic cache parameters.
const LEAF_CACHE: u32 = 0x4;
/// Leaf 6: thermal and power management.
const LEAF_POWER: u32 = 0x6;
/// Leaf 0xa: architectural performance monitoring.
const LEAF_PMU: u32 = 0xa;
/// Leaf 0xb: extended topology.
const LEAF_TOPOLOGY: u32 = 0xb;

/// Leaf 1 ECX bit 31: running under a hypervisor.
const ECX_HYPERVISOR: u32 = 1 << 31;
/// Leaf 1 EDX bit 28: more than one logical processor per package.
const EDX_HTT: u32 = 1 << 28;
/// Leaf 6 ECX bit 3: performance-energy bias preference (an MSR we do not emulate).
const ECX_EPB: u32 = 1 << 3;

/// KVM's supported CPUID, filtered for vCPU `id` of `count`.
pub fn for_vcpu(kvm: &Kvm, id: u8, count: u8) -> Result<CpuId, Error> {
    let mut cpuid = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(Error::SupportedCpuid)?;
    filter(cpuid.as_mut_slice(), id, count);
    Ok(cpuid)
}

/// Rewrites the entries in place for vCPU `id` of `count` (one core per vCPU, one package).
pub fn filter(entries: &mut [kvm_cpuid_entry2], id: u8, count: u8) {
    let count = u32::from(count.max(1));
    // Bits needed to number the vCPUs: the APIC ID shift of the core level.
    let core_bits = u32::BITS - (count - 1).leading_zeros();
    for e in entries.iter_mut() {
        match e.function {
            LEAF_FEATURES => {
                e.ebx = (e.ebx & 0x0000_ffff) | (u32::from(id) << 24) | (count << 16);
                e.ecx |= ECX_HYPERVISOR;
                if count > 1 {
                    e.edx |= EDX_HTT;
                } else {
                    e.edx &= !EDX_HTT;
                }
            }
            LEAF_CACHE => {
                // EAX[31:26]: cores per package - 1; EAX[25:14]: threads sharing this cache - 1.
                e.eax &= 0x3fff;
                e.eax |= (count - 1) << 26;
                if e.eax & 0x1f != 0 && (e.eax >> 5) & 0x7 >= 3 {
                    // The last-level cache is shared by the whole package.
                    e.eax |= (count - 1) << 14;
                }
            }
            LEAF_POWER => e.ecx &= !ECX_EPB,
            LEAF_PMU => (e.eax, e.ebx, e.ecx, e.edx) = (0, 0, 0, 0),
            LEAF_TOPOLOGY => {
                e.edx = u32::from(id);
                (e.eax, e.ebx, e.ecx) = match e.index {
                    // SMT level: one thread per core.
                    0 => (0, 1, 1 << 8),
                    // Core level: every vCPU is a core of the one package.
                    1 => (core_bits, count, (2 << 8) | 1),
                    // No further levels.
                    n => (0, 0, n),
                };
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            ebx: 0xdead_0840,
            edx: EDX_HTT,
            eax: 0xffff_ffff,
            ecx: 0xff,
            ..Default::default()
        }
    }

    #[test]
    fn leaf1_gets_apic_id_count_and_hypervisor_bit() {
        let mut e = [entry(1, 0)];
        filter(&mut e, 3, 4);
        assert_eq!(e[0].ebx >> 24, 3);
        assert_eq!((e[0].ebx >> 16) & 0xff, 4);
        assert_eq!(
            e[0].ebx & 0xffff,
            0x0840,
            "CLFLUSH size and brand index kept"
        );
        assert_ne!(e[0].ecx & ECX_HYPERVISOR, 0);
        assert_ne!(e[0].edx & EDX_HTT, 0);
        let mut one = [entry(1, 0)];
        filter(&mut one, 0, 1);
        assert_eq!(one[0].edx & EDX_HTT, 0);
    }

    #[test]
    fn topology_leaf_describes_one_package_of_count_cores() {
        let mut e = [entry(0xb, 0), entry(0xb, 1), entry(0xb, 2)];
        filter(&mut e, 2, 3);
        assert!(e.iter().all(|e| e.edx == 2), "x2APIC id on every subleaf");
        assert_eq!((e[0].eax, e[0].ebx, e[0].ecx), (0, 1, 0x100));
        assert_eq!((e[1].eax, e[1].ebx, e[1].ecx), (2, 3, 0x201));
        assert_eq!((e[2].eax, e[2].ebx, e[2].ecx), (0, 0, 2));
    }

    #[test]
    fn pmu_and_energy_bias_are_hidden() {
        let mut e = [entry(0xa, 0), entry(6, 0)];
        filter(&mut e, 0, 1);
        assert_eq!((e[0].eax, e[0].ebx, e[0].ecx, e[0].edx), (0, 0, 0, 0));
        assert_eq!(e[1].ecx & ECX_EPB, 0);
    }

    #[test]
    fn other_leaves_are_left_alone() {
        let mut e = [entry(0x8000_0001, 0)];
        let before = e[0];
        filter(&mut e, 1, 2);
        assert_eq!(e[0], before);
    }

    #[testkit::needs(kvm)]
    #[test]
    fn real_kvm_supported_set_is_filtered() {
        let kvm = crate::kvm::open().expect("open /dev/kvm");
        let cpuid = for_vcpu(&kvm, 1, 2).unwrap();
        let leaf1 = cpuid.as_slice().iter().find(|e| e.function == 1).unwrap();
        assert_eq!(leaf1.ebx >> 24, 1);
        assert_ne!(leaf1.ecx & ECX_HYPERVISOR, 0);
    }
}
