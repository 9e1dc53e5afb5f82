//! The CPUID a vCPU reports: what KVM supports, with this vCPU's identity and topology.

use kvm_bindings::CpuId;

/// Leaf 1 ECX bit 31: running under a hypervisor.
const LEAF1_ECX_HYPERVISOR: u32 = 1 << 31;
/// Leaf 1 EDX bit 28: EBX[23:16] holds the count of logical processor IDs.
const LEAF1_EDX_HTT: u32 = 1 << 28;

/// Fills in vCPU `index`'s APIC IDs and the package's CPU count.
pub fn patch(cpuid: &mut CpuId, index: u8, vcpus: u8) {
    for entry in cpuid.as_mut_slice() {
        match entry.function {
            0x1 => {
                // EBX[31:24] initial APIC ID, EBX[23:16] logical processors per package.
                entry.ebx =
                    (entry.ebx & 0x0000_ffff) | (u32::from(index) << 24) | (u32::from(vcpus) << 16);
                entry.ecx |= LEAF1_ECX_HYPERVISOR;
                if vcpus > 1 {
                    entry.edx |= LEAF1_EDX_HTT;
                }
            }
            // Extended topology: EDX is the x2APIC ID on every subleaf.
            0xb | 0x1f => entry.edx = u32::from(index),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvm_bindings::kvm_cpuid_entry2;

    #[test]
    fn apic_ids_and_counts_are_this_vcpus() {
        let entries = [
            kvm_cpuid_entry2 {
                function: 1,
                ebx: 0xffff_0800,
                ..Default::default()
            },
            kvm_cpuid_entry2 {
                function: 0xb,
                index: 1,
                edx: 7,
                ..Default::default()
            },
        ];
        let mut cpuid = CpuId::from_entries(&entries).unwrap();
        patch(&mut cpuid, 3, 4);
        let leaf1 = cpuid.as_slice()[0];
        assert_eq!(leaf1.ebx, (3 << 24) | (4 << 16) | 0x0800);
        assert_ne!(leaf1.ecx & LEAF1_ECX_HYPERVISOR, 0);
        assert_eq!(cpuid.as_slice()[1].edx, 3);
    }
}
