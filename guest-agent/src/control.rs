//! Reports [`ControlEvent`]s to the VMM through the control I/O port.

use std::sync::OnceLock;

use moat_agent_protocol::{ControlEvent, CONTROL_PORT, CONTROL_PORT_WIDTH};

/// Writes one event to the control port. Without port access (a guest of another VMM) the
/// event is dropped: the console output still tells the story.
pub fn report(event: ControlEvent) {
    if !port_granted() {
        return;
    }
    let word = event.encode();
    // SAFETY: ioperm granted this process access to CONTROL_PORT..+4; a 32-bit `out` there
    // exits to the VMM, which only records the value. No memory is touched.
    unsafe {
        std::arch::asm!("out dx, eax", in("dx") CONTROL_PORT, in("eax") word,
            options(nomem, nostack, preserves_flags));
    }
}

fn port_granted() -> bool {
    static GRANTED: OnceLock<bool> = OnceLock::new();
    *GRANTED.get_or_init(|| {
        // SAFETY: ioperm only changes this process's I/O permission bitmap.
        unsafe { libc::ioperm(u64::from(CONTROL_PORT), CONTROL_PORT_WIDTH as u64, 1) == 0 }
    })
}

/// Firecracker's boot-timer register on x86_64: a byte at the start of its 32-bit MMIO window
/// (4 GiB - 1 GiB). Nothing of moat's or QEMU microvm's is mapped there, so the write is dropped.
const FIRECRACKER_BOOT_TIMER: libc::off_t = 0xc000_0000;
/// The byte that makes Firecracker's boot timer log "Guest-boot-time".
const BOOT_TIMER_MAGIC: u8 = 123;
const PAGE_SIZE: usize = 4096;

/// Signals Firecracker's boot timer (`--boot-timer`), so that the same agent gives Firecracker's
/// boot-time log line when benchmarks compare the two.
///
/// The register is MMIO, which a process reaches only through `/dev/mem` (devtmpfs mounted).
/// The node is removed afterwards: no workload has a use for it, and Docker gives none.
pub fn signal_boot_timer() {
    // SAFETY: a plain open of a NUL-terminated path; the result is checked.
    let fd = unsafe {
        libc::open(
            c"/dev/mem".as_ptr(),
            libc::O_RDWR | libc::O_SYNC | libc::O_CLOEXEC,
        )
    };
    // Unlinked at once: the open descriptor is all the write needs.
    let _ = std::fs::remove_file("/dev/mem");
    if fd < 0 {
        return;
    }
    // SAFETY: a new shared mapping of one page of physical address space outside guest RAM; it
    // aliases no Rust object. The fd is no longer needed once mapped.
    let page = unsafe {
        let page = libc::mmap(
            std::ptr::null_mut(),
            PAGE_SIZE,
            libc::PROT_WRITE,
            libc::MAP_SHARED,
            fd,
            FIRECRACKER_BOOT_TIMER,
        );
        libc::close(fd);
        page
    };
    if page == libc::MAP_FAILED {
        return;
    }
    // SAFETY: `page` is the live one-page mapping made above; a volatile byte write is the MMIO
    // access the device expects, and the mapping is removed right after.
    unsafe {
        std::ptr::write_volatile(page.cast::<u8>(), BOOT_TIMER_MAGIC);
        libc::munmap(page, PAGE_SIZE);
    }
}
