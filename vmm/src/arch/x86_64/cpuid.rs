//! The CPUID a vCPU reports: what KVM supports, with this vCPU's identity and topology.

use kvm_bindings::CpuId;

/// Leaf 1 ECX bit 31: running under a hypervisor.
const LEAF1_ECX_HYPERVISOR: u32 = 1 << 31;
/// Leaf 1 EDX bit 28: EBX[23:16] holds the count of logical processor IDs.
const LEAF1_EDX_HTT: u32 = 1 << 28;
/// Leaf 1 ECX bit 24: the local APIC timer takes a TSC deadline.
const LEAF1_ECX_TSC_DEADLINE: u32 = 1 << 24;
/// The leaves that hold the processor's brand string, 16 bytes each.
const BRAND_LEAVES: [u32; 3] = [0x8000_0002, 0x8000_0003, 0x8000_0004];

/// Announces what KVM emulates but leaves out of its supported CPUID for the VMM to decide, and
/// the host's processor name where KVM gives none.
///
/// The TSC-deadline timer matters most: a guest that has it needs neither the PIT nor a
/// calibration of its APIC timer against it, which Linux otherwise spends tens of milliseconds
/// of boot on (and much more under emulation).
pub fn announce(cpuid: &mut CpuId, tsc_deadline: bool) {
    for entry in cpuid.as_mut_slice() {
        if entry.function == 0x1 && tsc_deadline {
            entry.ecx |= LEAF1_ECX_TSC_DEADLINE;
        }
    }
    fill_brand(cpuid, |leaf| {
        let regs = std::arch::x86_64::__cpuid(leaf);
        [regs.eax, regs.ebx, regs.ecx, regs.edx]
    });
}

/// Fills the brand string leaves from `host` when KVM returned them empty, so that the guest's
/// `/proc/cpuinfo` names the processor.
fn fill_brand(cpuid: &mut CpuId, host: impl Fn(u32) -> [u32; 4]) {
    let empty = |e: &kvm_bindings::kvm_cpuid_entry2| [e.eax, e.ebx, e.ecx, e.edx] == [0; 4];
    let brand: Vec<_> = cpuid
        .as_slice()
        .iter()
        .filter(|e| BRAND_LEAVES.contains(&e.function))
        .collect();
    if brand.len() != BRAND_LEAVES.len() || !brand.iter().all(|e| empty(e)) {
        return;
    }
    for entry in cpuid.as_mut_slice() {
        if BRAND_LEAVES.contains(&entry.function) {
            [entry.eax, entry.ebx, entry.ecx, entry.edx] = host(entry.function);
        }
    }
}

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

    fn leaf(function: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            ..Default::default()
        }
    }

    #[test]
    fn the_tsc_deadline_timer_is_announced_only_when_kvm_has_it() {
        let mut with = CpuId::from_entries(&[leaf(1)]).unwrap();
        let mut without = with.clone();
        announce(&mut with, true);
        announce(&mut without, false);
        assert_ne!(with.as_slice()[0].ecx & LEAF1_ECX_TSC_DEADLINE, 0);
        assert_eq!(without.as_slice()[0].ecx & LEAF1_ECX_TSC_DEADLINE, 0);
    }

    #[test]
    fn an_empty_brand_string_comes_from_the_host_and_a_given_one_stays() {
        let host = |function: u32| [function, 1, 2, 3];
        let mut empty =
            CpuId::from_entries(&[leaf(0x8000_0002), leaf(0x8000_0003), leaf(0x8000_0004)])
                .unwrap();
        fill_brand(&mut empty, host);
        assert_eq!(empty.as_slice()[2].eax, 0x8000_0004);
        assert_eq!(empty.as_slice()[0].edx, 3);

        let mut given = empty.clone();
        given.as_mut_slice()[0].eax = 7;
        fill_brand(&mut given, |_| [9; 4]);
        assert_eq!(given.as_slice()[0].eax, 7);
        assert_eq!(given.as_slice()[1].ebx, 1);
    }

    #[test]
    fn missing_brand_leaves_are_not_invented() {
        let mut cpuid = CpuId::from_entries(&[leaf(0x8000_0002)]).unwrap();
        fill_brand(&mut cpuid, |_| [9; 4]);
        assert_eq!(cpuid.as_slice()[0].eax, 0);
    }
}
