//! PVH boot structures (xen/include/public/arch-x86/hvm/start_info.h): the guest kernel enters
//! 32-bit protected mode at its PVH entry point with `%ebx` pointing at an `hvm_start_info`
//! that gives it the command line, the memory map and the initramfs.

use linux_loader::configurator::pvh::PvhBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use vm_memory::{Address, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use super::layout::{
    CMDLINE_START, EBDA_END, HIMEM_START, MEMMAP_START, MPTABLE_START, PVH_INFO_START,
    PVH_MODLIST_START,
};

/// `hvm_start_info.magic` ("xEn3" with its top bit flipped, per start_info.h).
const XEN_HVM_START_MAGIC: u32 = 0x336e_c578;
/// Version 1 of the start info adds the memory map.
const START_INFO_VERSION: u32 = 1;
/// E820 type of usable RAM.
const E820_RAM: u32 = 1;
/// E820 type of reserved memory.
const E820_RESERVED: u32 = 2;

/// Where the initramfs was loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InitrdRegion {
    /// Guest physical address.
    pub addr: GuestAddress,
    /// Size in bytes.
    pub size: u64,
}

/// Why the boot structures could not be written.
#[derive(Debug, thiserror::Error)]
#[error("cannot write the PVH boot structures to guest memory")]
pub struct Error(#[source] linux_loader::configurator::Error);

/// The memory map the guest sees: RAM, with the MP table's KiB and the legacy holes reserved.
pub fn memory_map(mem: &GuestMemoryMmap) -> Vec<hvm_memmap_table_entry> {
    let entry = |addr: u64, size: u64, type_| hvm_memmap_table_entry {
        addr,
        size,
        type_,
        reserved: 0,
    };
    let mut map = vec![
        entry(0, MPTABLE_START.0, E820_RAM),
        entry(MPTABLE_START.0, EBDA_END - MPTABLE_START.0, E820_RESERVED),
    ];
    for region in mem.iter() {
        let start = region.start_addr().raw_value().max(HIMEM_START.0);
        let end = region.start_addr().raw_value() + region.len();
        if end > start {
            map.push(entry(start, end - start, E820_RAM));
        }
    }
    map
}

/// Writes `hvm_start_info`, the memory map and the module list into guest memory.
pub fn write_start_info(mem: &GuestMemoryMmap, initrd: Option<InitrdRegion>) -> Result<(), Error> {
    let memmap = memory_map(mem);
    let modules: Vec<hvm_modlist_entry> = initrd
        .into_iter()
        .map(|i| hvm_modlist_entry {
            paddr: i.addr.0,
            size: i.size,
            ..Default::default()
        })
        .collect();
    let start_info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC,
        version: START_INFO_VERSION,
        cmdline_paddr: CMDLINE_START.0,
        memmap_paddr: MEMMAP_START.0,
        memmap_entries: memmap.len() as u32,
        nr_modules: modules.len() as u32,
        modlist_paddr: if modules.is_empty() {
            0
        } else {
            PVH_MODLIST_START.0
        },
        ..Default::default()
    };

    let mut params = BootParams::new::<hvm_start_info>(&start_info, PVH_INFO_START);
    params.set_sections::<hvm_memmap_table_entry>(&memmap, MEMMAP_START);
    if !modules.is_empty() {
        params.set_modules::<hvm_modlist_entry>(&modules, PVH_MODLIST_START);
    }
    PvhBootConfigurator::write_bootparams::<GuestMemoryMmap>(&params, mem).map_err(Error)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::Bytes;

    #[test]
    fn memory_map_reserves_the_mp_table_and_skips_legacy_holes() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 64 << 20)]).unwrap();
        let map = memory_map(&mem);
        assert_eq!(map.len(), 3);
        assert_eq!((map[0].addr, map[0].type_), (0, E820_RAM));
        assert_eq!(
            (map[1].addr, map[1].type_),
            (MPTABLE_START.0, E820_RESERVED)
        );
        assert_eq!(
            (map[2].addr, map[2].size),
            (HIMEM_START.0, (64 << 20) - HIMEM_START.0)
        );
    }

    #[test]
    fn start_info_points_at_the_initrd_module() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 64 << 20)]).unwrap();
        let initrd = InitrdRegion {
            addr: GuestAddress(0x200_0000),
            size: 4096,
        };
        write_start_info(&mem, Some(initrd)).unwrap();
        let info: hvm_start_info = mem.read_obj(PVH_INFO_START).unwrap();
        assert_eq!(info.magic, XEN_HVM_START_MAGIC);
        assert_eq!(info.nr_modules, 1);
        let module: hvm_modlist_entry = mem.read_obj(GuestAddress(info.modlist_paddr)).unwrap();
        assert_eq!((module.paddr, module.size), (0x200_0000, 4096));
    }
}
