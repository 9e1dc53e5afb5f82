//! moat's virtual machine monitor: one micro-VM per container workload, on the rust-vmm crates.
//!
//! The crate is a library; the `moat` binary is a thin command layer over [`Vmm`]. The map:
//!
//! * [`host`]: what kind of KVM this host offers, checked before anything is created;
//! * [`vstate`]: the KVM objects: the VM, guest memory and vCPUs (the only modules that issue
//!   KVM ioctls);
//! * [`arch`]: x86_64 boot: memory layout, PVH start info, MP table, CPUID and registers;
//! * [`devices`]: the buses and every device model: serial console, i8042 reset, the agent's
//!   control port, and virtio-mmio devices (virtio-blk);
//! * [`builder`]: the named steps that turn a [`VmConfig`] into a running [`Vmm`];
//! * [`timeline`]: the boot-time phases, measured from process start.

#![deny(missing_docs)]

pub mod arch;
pub mod builder;
pub mod devices;
pub mod host;
pub mod timeline;
pub mod vstate;

mod config;
mod reaper;
mod stop;
mod vmm;

pub use builder::boot;
pub use config::{DiskConfig, VmConfig, VsockConfig, MAX_VCPUS, MIN_MEMORY_MIB};
pub use stop::{VcpuFault, VmOutcome};
pub use vmm::{Error, VmHandle, Vmm};

/// The stack of every thread a VMM process starts (vCPUs, and the CLI's stream copiers): far
/// more than they use, and less than a 2 MiB huge page. A host whose transparent huge pages are
/// `always` backs a 2 MiB stack that happens to be 2 MiB-aligned (Rust's default size) with a
/// whole huge page as soon as its top is touched: measured in the nested harness, 2 MiB more
/// RSS for the one stack placed right below the (aligned) guest memory.
pub const THREAD_STACK_SIZE: usize = 256 << 10;
