//! The guest physical memory map.
//!
//! ```text
//! 0x0000_0500  GDT used for the 32-bit PVH entry
//! 0x0000_6000  PVH start info, its module list right after
//! 0x0000_7000  PVH memory map (e820 entries)
//! 0x0002_0000  kernel command line
//! 0x0009_fc00  MP table (last KiB of base memory, where Linux scans for it)
//! 0x0010_0000  kernel (vmlinux loads at its ELF physical addresses, from 1 MiB)
//!   ...        RAM; the initramfs sits at the top of low RAM
//! 0xc000_0000  MMIO gap: virtio-mmio devices, then IOAPIC and LAPIC
//! 0x1_0000_0000 RAM above the gap, for guests larger than 3 GiB
//! ```

use vm_memory::GuestAddress;

/// GDT for the 32-bit protected-mode PVH entry.
pub const GDT_START: GuestAddress = GuestAddress(0x500);
/// The PVH `hvm_start_info` structure.
pub const PVH_INFO_START: GuestAddress = GuestAddress(0x6000);
/// The PVH module list (the initramfs), after the 56-byte start info.
pub const PVH_MODLIST_START: GuestAddress = GuestAddress(0x6040);
/// The PVH memory map.
pub const MEMMAP_START: GuestAddress = GuestAddress(0x7000);
/// The kernel command line.
pub const CMDLINE_START: GuestAddress = GuestAddress(0x2_0000);
/// Largest command line the guest accepts, NUL included (Linux x86 `COMMAND_LINE_SIZE`).
pub const CMDLINE_MAX_SIZE: usize = 2048;
/// The MP floating pointer and table.
pub const MPTABLE_START: GuestAddress = GuestAddress(0x9_fc00);
/// End of conventional memory (640 KiB).
pub const EBDA_END: u64 = 0xa_0000;
/// Where the kernel is loaded: 1 MiB, above the legacy holes.
pub const HIMEM_START: GuestAddress = GuestAddress(0x10_0000);

/// Start of the 1 GiB MMIO gap below 4 GiB.
pub const MMIO_GAP_START: u64 = 0xc000_0000;
/// End of the MMIO gap.
pub const MMIO_GAP_END: u64 = 0x1_0000_0000;

/// First virtio-mmio device; each takes [`VIRTIO_MMIO_SIZE`] bytes.
pub const VIRTIO_MMIO_START: u64 = 0xd000_0000;
/// Size of one virtio-mmio device's register window.
pub const VIRTIO_MMIO_SIZE: u64 = 0x1000;
/// First IRQ for virtio-mmio devices (0-4 belong to the PIT, keyboard, cascade and COM ports).
pub const VIRTIO_IRQ_START: u32 = 5;
/// Last IRQ of the IOAPIC's 24 pins.
pub const IRQ_MAX: u32 = 23;

/// Local APIC registers, as the MP table declares them.
pub const APIC_START: u32 = 0xfee0_0000;
/// IOAPIC registers.
pub const IOAPIC_START: u32 = 0xfec0_0000;
/// KVM's identity-map page and TSS, inside the gap, out of the guest's way.
pub const KVM_TSS_ADDRESS: usize = 0xfffb_d000;

// The boot structures must not overlap one another: checked when the crate compiles.
const _: () = {
    let start_info_size = 56;
    let modlist_entry_size = 32;
    assert!(PVH_INFO_START.0 + start_info_size <= PVH_MODLIST_START.0);
    assert!(PVH_MODLIST_START.0 + modlist_entry_size <= MEMMAP_START.0);
    assert!(CMDLINE_START.0 + CMDLINE_MAX_SIZE as u64 <= MPTABLE_START.0);
    assert!(MPTABLE_START.0 < EBDA_END && EBDA_END <= HIMEM_START.0);
};

/// The guest RAM ranges for `size` bytes of memory: below the MMIO gap, then above 4 GiB.
pub fn ram_ranges(size: u64) -> Vec<(GuestAddress, usize)> {
    if size <= MMIO_GAP_START {
        vec![(GuestAddress(0), size as usize)]
    } else {
        vec![
            (GuestAddress(0), MMIO_GAP_START as usize),
            (GuestAddress(MMIO_GAP_END), (size - MMIO_GAP_START) as usize),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_guests_have_one_range() {
        assert_eq!(ram_ranges(256 << 20), vec![(GuestAddress(0), 256 << 20)]);
    }

    #[test]
    fn large_guests_skip_the_mmio_gap() {
        let ranges = ram_ranges(4 << 30);
        assert_eq!(ranges[0], (GuestAddress(0), MMIO_GAP_START as usize));
        assert_eq!(ranges[1], (GuestAddress(MMIO_GAP_END), (1 << 30) as usize));
    }
}
