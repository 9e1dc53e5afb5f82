//! Guest memory: anonymous host mappings, registered with KVM as memory slots.

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VmFd;
use vm_memory::{Address, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use crate::arch::x86_64::layout;

/// Why guest memory could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The host refused the mapping.
    #[error("cannot map {mib} MiB of guest memory")]
    Map {
        /// Requested size.
        mib: u64,
        /// Why.
        #[source]
        source: vm_memory::mmap::FromRangesError,
    },
    /// KVM refused a memory slot.
    #[error("cannot register guest memory slot {slot} with KVM")]
    Register {
        /// The slot.
        slot: u32,
        /// Why.
        #[source]
        source: kvm_ioctls::Error,
    },
}

/// Maps `mib` MiB of guest RAM around the MMIO gap.
pub fn create(mib: u64) -> Result<GuestMemoryMmap, Error> {
    let ranges = layout::ram_ranges(mib << 20);
    GuestMemoryMmap::from_ranges(&ranges).map_err(|source| Error::Map { mib, source })
}

/// Registers every region of `mem` with the VM, one slot each.
pub fn register(vm: &VmFd, mem: &GuestMemoryMmap) -> Result<(), Error> {
    for (slot, region) in (0u32..).zip(mem.iter()) {
        let host_addr = region.as_ptr() as u64;
        let kvm_region = kvm_userspace_memory_region {
            slot,
            flags: 0,
            guest_phys_addr: region.start_addr().raw_value(),
            memory_size: region.len(),
            userspace_addr: host_addr,
        };
        // SAFETY: the region is a live mapping of exactly `memory_size` bytes owned by `mem`,
        // which the VM keeps alive for as long as the VM fd exists.
        unsafe { vm.set_user_memory_region(kvm_region) }
            .map_err(|source| Error::Register { slot, source })?;
    }
    Ok(())
}
