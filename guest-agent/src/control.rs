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
