//! Guest memory: anonymous host mappings, registered with KVM as memory slots.
//!
//! Each region is mapped at a 2 MiB-aligned host address. Guest-physical and host-virtual
//! addresses then agree modulo 2 MiB, which KVM needs before it maps a transparent huge page of
//! the host as one huge page of the guest: one nested page fault and one TLB entry instead of
//! 512. Kernels before 6.7 place large anonymous mappings anywhere page-aligned; measured in
//! the nested harness, the misaligned guest booted its kernel at half the speed (2.0 s against
//! 1.0 s to `/init`, most of it in the early boot's first touches of memory).

use std::io;

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VmFd;
use vm_memory::mmap::{FromRangesError, MmapRegionBuilder, MmapRegionError};
use vm_memory::{Address, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion, GuestRegionMmap};

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

/// The host page size KVM can map guest RAM with when the host backs it with huge pages.
const HUGE_PAGE: usize = 2 << 20;

/// Maps `mib` MiB of guest RAM around the MMIO gap, each region 2 MiB-aligned.
///
/// The mappings stay for the life of the process: vm-memory does not unmap memory it did not
/// map itself, and a process runs one VM, whose memory its exit (or the reaper) takes down.
/// [`release`] gives the pages back when a VM ends earlier.
pub fn create(mib: u64) -> Result<GuestMemoryMmap, Error> {
    let map_err = |source| Error::Map { mib, source };
    let mut regions = Vec::new();
    for (start, size) in layout::ram_ranges(mib << 20) {
        let region = map_aligned(size)
            .and_then(|addr| {
                // SAFETY: `addr` starts a private anonymous mapping of `size` bytes made just
                // above, which nothing else refers to and which is never unmapped.
                unsafe { MmapRegionBuilder::new(size).with_raw_mmap_pointer(addr) }
                    .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
                    .with_mmap_flags(MAP_FLAGS)
                    .build()
            })
            .map_err(|e| map_err(FromRangesError::MmapRegion(e)))?;
        let region = GuestRegionMmap::new(region, start)
            .ok_or_else(|| map_err(FromRangesError::InvalidGuestRegion))?;
        regions.push(region);
    }
    GuestMemoryMmap::from_regions(regions).map_err(|e| map_err(e.into()))
}

/// Guest RAM: private, anonymous, and not charged against the commit limit until touched.
const MAP_FLAGS: i32 = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE;

/// Maps `size` bytes at a [`HUGE_PAGE`]-aligned address: maps a huge page more than asked, then
/// unmaps the head below the first aligned address and the tail past `size`.
fn map_aligned(size: usize) -> Result<*mut u8, MmapRegionError> {
    let padded = size
        .checked_add(HUGE_PAGE)
        .ok_or(MmapRegionError::InvalidOffsetLength)?;
    // SAFETY: a fresh anonymous mapping at an address of the kernel's choosing touches no
    // existing memory.
    let base = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            padded,
            libc::PROT_READ | libc::PROT_WRITE,
            MAP_FLAGS,
            -1,
            0,
        )
    };
    if base == libc::MAP_FAILED {
        return Err(MmapRegionError::Mmap(io::Error::last_os_error()));
    }
    let base = base as usize;
    let aligned = base.next_multiple_of(HUGE_PAGE);
    let head = aligned - base;
    let tail = padded - head - size;
    // SAFETY: both ranges lie inside the mapping made above, outside the part kept; munmap of a
    // page-aligned range of a private anonymous mapping cannot fail but for a zero length.
    unsafe {
        if head > 0 {
            libc::munmap(base as *mut libc::c_void, head);
        }
        if tail > 0 {
            libc::munmap((aligned + size) as *mut libc::c_void, tail);
        }
    }
    // Huge pages even where the host's policy is `madvise` (Ubuntu's and this project's
    // development host's): without them the guest took 3.2 s to its agent against 1.8 s with
    // them (nested harness, interleaved). The cost is guest RSS in 2 MiB steps. A host without
    // transparent huge pages says EINVAL, and small pages it is.
    // SAFETY: advice on a mapping this function owns; it changes no memory.
    unsafe { libc::madvise(aligned as *mut libc::c_void, size, libc::MADV_HUGEPAGE) };
    Ok(aligned as *mut u8)
}

/// Gives the host back every page of guest RAM the guest touched, once the VM has ended; the
/// mappings stay, reading as zeros (see [`create`]).
pub fn release(mem: &GuestMemoryMmap) {
    for region in mem.iter() {
        // SAFETY: the region is a live private anonymous mapping of exactly `len` bytes; dropping
        // its pages only makes later reads return zeros.
        unsafe {
            libc::madvise(
                region.as_ptr().cast(),
                region.len() as usize,
                libc::MADV_DONTNEED,
            )
        };
    }
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

#[cfg(test)]
mod tests {
    use vm_memory::{Bytes, GuestAddress};

    use super::*;

    #[test]
    fn every_region_is_huge_page_aligned_on_the_host() {
        let thp = std::path::Path::new("/sys/kernel/mm/transparent_hugepage").exists();
        // 4 GiB has RAM on both sides of the MMIO gap; untouched, it costs nothing. 129 MiB is
        // not a whole number of huge pages: kernels from 6.7 on align only mappings that are, so
        // it is misaligned there too without map_aligned.
        for mib in [128, 129, 256, 4096] {
            let mem = create(mib).unwrap();
            let total: u64 = mem.iter().map(|r| r.len()).sum();
            assert_eq!(total, mib << 20);
            for region in mem.iter() {
                assert_eq!(region.as_ptr() as usize % HUGE_PAGE, 0, "{mib} MiB");
                // Guest-physical and host addresses agree modulo a huge page.
                assert_eq!(region.start_addr().raw_value() % HUGE_PAGE as u64, 0);
                if thp {
                    assert!(
                        advised_huge(region.as_ptr() as usize),
                        "{mib} MiB not advised"
                    );
                }
            }
        }
    }

    /// Whether this process's mapping starting at `addr` carries MADV_HUGEPAGE (`hg`).
    fn advised_huge(addr: usize) -> bool {
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let start = format!("{addr:x}-");
        let mut lines = smaps.lines().skip_while(|l| !l.starts_with(&start));
        lines
            .find_map(|l| l.strip_prefix("VmFlags:"))
            .is_some_and(|flags| flags.split_whitespace().any(|f| f == "hg"))
    }

    #[test]
    fn release_gives_back_what_the_guest_wrote() {
        let mem = create(64).unwrap();
        let addr = GuestAddress(5 << 20);
        mem.write_obj(0xfeed_u64, addr).unwrap();
        assert_eq!(mem.read_obj::<u64>(addr).unwrap(), 0xfeed);
        release(&mem);
        assert_eq!(mem.read_obj::<u64>(addr).unwrap(), 0);
    }
}
