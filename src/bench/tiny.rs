//! The tiny guest: a minimal PVH ELF that is no Linux at all, only the few port and MMIO writes
//! a boot is measured by, so that a VMM's own start and end are measured on any KVM, PVM
//! included.
//!
//! The guest starts at its PVH entry in 32-bit protected mode with paging off and interrupts
//! masked, and takes no exception or interrupt on the way (a PVM host cannot deliver one to a
//! guest that has no IDT):
//!
//! 1. moat's agent-ready marker on the control port;
//! 2. Firecracker's boot-timer signal (its "Guest-boot-time" log line);
//! 3. the workload's exit status 0 on the control port, which ends a moat VM;
//! 4. a reset through the i8042, which ends Firecracker and QEMU (`-no-reboot`);
//! 5. `hlt` in a loop, should the VMM let the vCPU run on.
//!
//! The file is generated here, byte by byte, so no assembler is needed to build it.

use std::path::Path;

use moat_agent_protocol::{ControlEvent, CONTROL_PORT};

/// Where the ELF's one segment is loaded: 1 MiB, the lowest address a PVH kernel may use (moat
/// and Firecracker both refuse an ELF that loads below it).
pub const LOAD_ADDRESS: u64 = 0x10_0000;

/// Firecracker's boot-timer device on x86_64: a byte register at the start of its 32-bit MMIO
/// window (4 GiB - 1 GiB); writing [`BOOT_TIMER_MAGIC`] there makes it log the boot time.
pub const FIRECRACKER_BOOT_TIMER: u32 = 0xc000_0000;
/// The value Firecracker's boot timer waits for.
pub const BOOT_TIMER_MAGIC: u8 = 123;

/// The i8042 command port and its "pulse the reset line" command.
const I8042_COMMAND_PORT: u8 = 0x64;
const I8042_RESET: u8 = 0xfe;

/// `XEN_ELFNOTE_PHYS32_ENTRY` (Xen's `public/elfnote.h`): the note whose descriptor is the
/// 32-bit physical entry point of the PVH boot ABI.
const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;

/// Sizes fixed by the ELF64 format (System V gABI): file header and one program header.
const EHDR_SIZE: usize = 64;
const PHDR_SIZE: usize = 56;
const PT_LOAD: u32 = 1;
const PT_NOTE: u32 = 4;
const PF_R: u32 = 4;
const PF_X: u32 = 1;
const ET_EXEC: u16 = 2;
const EM_X86_64: u16 = 62;

/// The note: namesz, descsz, type, "Xen\0", then the entry address in 8 bytes, as Linux's own
/// note has it in a 64-bit kernel (QEMU reads 8; loaders that read 4 get the low half).
const NOTE_SIZE: usize = 12 + 4 + 8;
const NOTE_OFFSET: usize = EHDR_SIZE + 2 * PHDR_SIZE;
const CODE_OFFSET: usize = NOTE_OFFSET + NOTE_SIZE;

/// The guest's code, 32-bit protected mode, hand-encoded (Intel SDM Vol. 2 opcodes).
fn code() -> Vec<u8> {
    let mut code = Vec::new();
    out_control(&mut code, ControlEvent::AgentReady.encode());
    // mov byte [FIRECRACKER_BOOT_TIMER], BOOT_TIMER_MAGIC (C6 /0, ModRM 05 = disp32)
    code.extend([0xc6, 0x05]);
    code.extend(FIRECRACKER_BOOT_TIMER.to_le_bytes());
    code.push(BOOT_TIMER_MAGIC);
    out_control(&mut code, ControlEvent::WorkloadExited(0).encode());
    // mov al, I8042_RESET; out I8042_COMMAND_PORT, al
    code.extend([0xb0, I8042_RESET, 0xe6, I8042_COMMAND_PORT]);
    // hlt; jmp back to the hlt (a 2-byte jump, so -3 from the next instruction)
    code.extend([0xf4, 0xeb, 0xfd]);
    code
}

/// Appends `mov dx, CONTROL_PORT; mov eax, word; out dx, eax`.
fn out_control(code: &mut Vec<u8>, word: u32) {
    // The 0x66 prefix makes `mov dx` 16-bit in 32-bit code.
    code.extend([0x66, 0xba]);
    code.extend(CONTROL_PORT.to_le_bytes());
    code.push(0xb8);
    code.extend(word.to_le_bytes());
    code.push(0xef);
}

/// The guest-physical entry point: the first byte of code.
pub fn entry_point() -> u64 {
    LOAD_ADDRESS + CODE_OFFSET as u64
}

/// The whole ELF file: header, a PT_LOAD that maps the file itself at [`LOAD_ADDRESS`], and a
/// PT_NOTE with the PVH entry.
pub fn elf() -> Vec<u8> {
    let code = code();
    let file_size = (CODE_OFFSET + code.len()) as u64;
    let mut elf = Vec::with_capacity(file_size as usize);
    elf_header(&mut elf);
    program_header(
        &mut elf,
        PT_LOAD,
        PF_R | PF_X,
        (0, LOAD_ADDRESS),
        file_size,
        PAGE,
    );
    let note_address = LOAD_ADDRESS + NOTE_OFFSET as u64;
    program_header(
        &mut elf,
        PT_NOTE,
        PF_R,
        (NOTE_OFFSET as u64, note_address),
        NOTE_SIZE as u64,
        NOTE_ALIGN,
    );
    pvh_note(&mut elf);
    elf.extend(code);
    elf
}

/// Writes [`elf`] to `path`.
pub fn write(path: &Path) -> std::io::Result<()> {
    std::fs::write(path, elf())
}

fn elf_header(out: &mut Vec<u8>) {
    // Magic, ELFCLASS64, ELFDATA2LSB, EV_CURRENT, System V ABI, padding to 16 bytes.
    out.extend(b"\x7fELF");
    out.extend([2, 1, 1, 0]);
    out.extend([0; 8]);
    out.extend(ET_EXEC.to_le_bytes());
    out.extend(EM_X86_64.to_le_bytes());
    out.extend(1u32.to_le_bytes()); // e_version
    out.extend(entry_point().to_le_bytes()); // e_entry
    out.extend((EHDR_SIZE as u64).to_le_bytes()); // e_phoff
    out.extend(0u64.to_le_bytes()); // e_shoff: no section headers
    out.extend(0u32.to_le_bytes()); // e_flags
    out.extend((EHDR_SIZE as u16).to_le_bytes());
    out.extend((PHDR_SIZE as u16).to_le_bytes());
    out.extend(2u16.to_le_bytes()); // e_phnum
    out.extend([0; 6]); // e_shentsize, e_shnum, e_shstrndx
}

/// A segment's alignment: a page for code.
const PAGE: u64 = 0x1000;

/// A note segment's alignment: QEMU pads the note's name to it, so it must be the 4 bytes
/// ELF notes are padded to.
const NOTE_ALIGN: u64 = 4;

/// One program header; `at` is the segment's file offset and its guest-physical address.
fn program_header(out: &mut Vec<u8>, kind: u32, flags: u32, at: (u64, u64), size: u64, align: u64) {
    let (offset, addr) = at;
    out.extend(kind.to_le_bytes());
    out.extend(flags.to_le_bytes());
    out.extend(offset.to_le_bytes());
    out.extend(addr.to_le_bytes()); // p_vaddr
    out.extend(addr.to_le_bytes()); // p_paddr: where PVH loaders put it
    out.extend(size.to_le_bytes()); // p_filesz
    out.extend(size.to_le_bytes()); // p_memsz
    out.extend(align.to_le_bytes());
}

fn pvh_note(out: &mut Vec<u8>) {
    let entry = entry_point();
    out.extend(4u32.to_le_bytes()); // n_namesz: "Xen\0"
    out.extend(8u32.to_le_bytes()); // n_descsz: the entry address
    out.extend(XEN_ELFNOTE_PHYS32_ENTRY.to_le_bytes());
    out.extend(b"Xen\0");
    out.extend(entry.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use linux_loader::loader::elf::{Elf, PvhBootCapability};
    use linux_loader::loader::KernelLoader;
    use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

    use super::*;

    /// Guest memory large enough for the ELF at 1 MiB.
    fn guest_memory() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 2 << 20)]).unwrap()
    }

    #[test]
    fn the_loader_finds_the_pvh_entry() {
        let mem = guest_memory();

        let loaded = Elf::load(
            &mem,
            None,
            &mut Cursor::new(elf()),
            Some(GuestAddress(LOAD_ADDRESS)),
        )
        .unwrap();

        assert_eq!(
            loaded.pvh_boot_cap,
            PvhBootCapability::PvhEntryPresent(GuestAddress(entry_point()))
        );
    }

    #[test]
    fn the_code_is_loaded_at_the_entry() {
        let mem = guest_memory();

        Elf::load(&mem, None, &mut Cursor::new(elf()), None).unwrap();

        let mut loaded = vec![0u8; code().len()];
        mem.read_slice(&mut loaded, GuestAddress(entry_point()))
            .unwrap();
        assert_eq!(loaded, code());
    }

    #[test]
    fn the_code_reports_ready_then_exit_status_zero() {
        let code = code();
        let ready = ControlEvent::AgentReady.encode().to_le_bytes();
        let exited = ControlEvent::WorkloadExited(0).encode().to_le_bytes();

        let at = |needle: &[u8]| code.windows(needle.len()).position(|w| w == needle);

        assert!(at(&ready).unwrap() < at(&exited).unwrap());
    }

    #[test]
    fn the_guest_ends_in_a_halt_loop() {
        // hlt, then a jump of -3 bytes back onto it.
        assert!(code().ends_with(&[0xf4, 0xeb, 0xfd]));
    }
}
