//! The KVM VM: opened, checked for the capabilities moat relies on, with an in-kernel irqchip
//! and PIT.

use kvm_bindings::{kvm_pit_config, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Cap, Kvm, VmFd};

use crate::arch::x86_64::layout::KVM_TSS_ADDRESS;

/// Why the VM could not be created.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// /dev/kvm could not be opened.
    #[error("cannot open /dev/kvm")]
    OpenKvm(#[source] kvm_ioctls::Error),
    /// KVM lacks a capability moat needs.
    #[error("KVM lacks the {0} capability")]
    MissingCap(&'static str),
    /// A KVM ioctl failed.
    #[error("cannot {what}")]
    Kvm {
        /// What was being done.
        what: &'static str,
        /// KVM's error.
        #[source]
        source: kvm_ioctls::Error,
    },
}

/// Capabilities the VMM relies on, with the names KVM's documentation uses.
const REQUIRED_CAPS: [(Cap, &str); 5] = [
    (Cap::Irqchip, "KVM_CAP_IRQCHIP"),
    (Cap::Ioeventfd, "KVM_CAP_IOEVENTFD"),
    (Cap::Irqfd, "KVM_CAP_IRQFD"),
    (Cap::UserMemory, "KVM_CAP_USER_MEMORY"),
    (Cap::Pit2, "KVM_CAP_PIT2"),
];

/// Opens KVM and checks its capabilities.
pub fn open_kvm() -> Result<Kvm, Error> {
    let kvm = Kvm::new().map_err(Error::OpenKvm)?;
    for (cap, name) in REQUIRED_CAPS {
        if !kvm.check_extension(cap) {
            return Err(Error::MissingCap(name));
        }
    }
    Ok(kvm)
}

/// Creates the VM with its TSS; the irqchip comes later, with [`create_irqchip`].
pub fn create(kvm: &Kvm) -> Result<VmFd, Error> {
    let vm = kvm.create_vm().map_err(kvm_err("create a KVM VM"))?;
    vm.set_tss_address(KVM_TSS_ADDRESS)
        .map_err(kvm_err("set the TSS address"))?;
    Ok(vm)
}

/// Creates the in-kernel irqchip (PIC + IOAPIC + LAPICs), before any vCPU.
///
/// Measured on a PVM host, registering 256 MiB of guest memory once the irqchip and PIT exist
/// takes about 6 ms instead of 0.2 ms; see `builder::boot` for when that order is used.
pub fn create_irqchip(vm: &VmFd) -> Result<(), Error> {
    vm.create_irq_chip()
        .map_err(kvm_err("create the in-kernel irqchip"))
}

/// Creates the in-kernel PIT, after the irqchip. Its timer thread makes this the slowest step
/// of VM creation on a busy host (0.1 to 3 ms).
pub fn create_pit(vm: &VmFd) -> Result<(), Error> {
    // The dummy speaker port 0x61 keeps guests' PC-speaker probes in the kernel.
    let pit = kvm_pit_config {
        flags: KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    };
    vm.create_pit2(pit)
        .map_err(kvm_err("create the in-kernel PIT"))
}

fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> Error {
    move |source| Error::Kvm { what, source }
}
