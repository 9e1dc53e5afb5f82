//! The KVM objects of a VM: the VM itself with its guest memory, and the vCPUs.

pub mod memory;
pub mod vcpu;
pub mod vm;
