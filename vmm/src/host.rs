//! What kind of KVM this host offers, told apart before a VM is built.
//!
//! Some hosts expose `/dev/kvm` without hardware virtualization: PVM (pagetable-based
//! virtualization) runs only guest kernels patched for it, and an ordinary Linux guest is
//! emulated instruction by instruction until it dies tens of seconds later. moat refuses such a
//! host up front with one line instead of hanging.

use std::path::Path;

/// The KVM a host offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvmKind {
    /// `/dev/kvm` backed by VT-x or AMD-V: ordinary guests boot.
    Hardware,
    /// `/dev/kvm` backed by PVM: only PVM-patched guest kernels boot.
    Pvm,
    /// No `/dev/kvm` at all.
    Missing,
}

const DEV_KVM: &str = "/dev/kvm";
/// Present when the PVM backend of KVM is loaded (built in or as a module).
const PVM_MODULE: &str = "/sys/module/kvm_pvm";

/// Tells which kind of KVM this host has.
pub fn kvm_kind() -> KvmKind {
    classify(
        Path::new(DEV_KVM).exists(),
        Path::new(PVM_MODULE).exists(),
        cpu_has_virtualization,
    )
}

/// The decision behind [`kvm_kind`], apart from the probing; the CPU flags are read only when
/// they matter.
fn classify(dev_kvm: bool, pvm_module: bool, cpu_virt: impl FnOnce() -> bool) -> KvmKind {
    match (dev_kvm, pvm_module) {
        (false, _) => KvmKind::Missing,
        (true, true) => KvmKind::Pvm,
        // /dev/kvm without VT-x or AMD-V can only be a software backend such as PVM.
        (true, false) if !cpu_virt() => KvmKind::Pvm,
        (true, false) => KvmKind::Hardware,
    }
}

/// Whether the CPU reports VT-x (leaf 1 ECX bit 5) or AMD-V (leaf 0x8000_0001 ECX bit 2).
///
/// Asked of the CPU directly: `/proc/cpuinfo` says the same, but building it costs the kernel a
/// visit to every CPU, which on a large host is milliseconds of every VM's start.
fn cpu_has_virtualization() -> bool {
    const LEAF1_ECX_VMX: u32 = 1 << 5;
    const EXT1_ECX_SVM: u32 = 1 << 2;
    let vmx = std::arch::x86_64::__cpuid(1).ecx & LEAF1_ECX_VMX != 0;
    let max_extended = std::arch::x86_64::__cpuid(0x8000_0000).eax;
    let svm = max_extended >= 0x8000_0001
        && std::arch::x86_64::__cpuid(0x8000_0001).ecx & EXT1_ECX_SVM != 0;
    vmx || svm
}

/// Whether this host is itself a QEMU TCG (software-emulated) VM.
///
/// QEMU's emulated SVM never intercepts XSETBV, so KVM inside it keeps a stale XCR0 for its
/// guests; moat then boots guests with `noxsave`.
pub fn is_qemu_tcg() -> bool {
    hypervisor_vendor().as_deref() == Some("TCGTCGTCGTCG")
}

/// The vendor string of CPUID leaf 0x4000_0000, when the CPU says a hypervisor is present.
fn hypervisor_vendor() -> Option<String> {
    const HYPERVISOR_BIT: u32 = 1 << 31;
    let leaf1 = std::arch::x86_64::__cpuid(1);
    if leaf1.ecx & HYPERVISOR_BIT == 0 {
        return None;
    }
    // Leaf 0x4000_0000 is defined once the hypervisor bit is set.
    let leaf = std::arch::x86_64::__cpuid(0x4000_0000);
    let bytes: Vec<u8> = [leaf.ebx, leaf.ecx, leaf.edx]
        .iter()
        .flat_map(|r| r.to_le_bytes())
        .collect();
    Some(String::from_utf8_lossy(&bytes).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_dev_kvm_is_missing_whatever_else() {
        assert_eq!(classify(false, true, || true), KvmKind::Missing);
    }

    #[test]
    fn the_pvm_module_means_pvm_even_on_a_vmx_cpu() {
        assert_eq!(classify(true, true, || true), KvmKind::Pvm);
    }

    #[test]
    fn dev_kvm_without_vmx_or_svm_is_not_hardware() {
        assert_eq!(classify(true, false, || false), KvmKind::Pvm);
    }

    #[test]
    fn dev_kvm_with_vmx_or_svm_is_hardware() {
        assert_eq!(classify(true, false, || true), KvmKind::Hardware);
    }
}
