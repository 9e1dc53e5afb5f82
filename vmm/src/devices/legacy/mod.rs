//! PC legacy devices: the COM1 serial console and the i8042 controller's reset line.

mod i8042;
mod serial;

pub use i8042::I8042;
pub use serial::SerialConsole;

/// COM1's I/O ports.
pub const COM1_PORT: u64 = 0x3f8;
/// Width of a 16550 UART's register window.
pub const COM1_LEN: u64 = 8;
/// COM1's ISA IRQ.
pub const COM1_IRQ: u32 = 4;
/// The i8042 data port; the command port is at +4.
pub const I8042_PORT: u64 = 0x60;
/// Data port to command port inclusive.
pub const I8042_LEN: u64 = 5;
