//! COM1: a 16550A UART (vm-superio) whose output goes to a host writer.

use std::io::Write;

use vm_superio::serial::NoEvents;
use vm_superio::Serial;

use crate::devices::bus::BusDevice;
use crate::devices::IrqLine;

/// The guest's serial console.
pub struct SerialConsole {
    uart: Serial<IrqLine, NoEvents, Box<dyn Write + Send>>,
}

impl std::fmt::Debug for SerialConsole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SerialConsole").finish_non_exhaustive()
    }
}

impl SerialConsole {
    /// A UART that raises `irq` and writes what the guest sends to `out`.
    pub fn new(irq: IrqLine, out: Box<dyn Write + Send>) -> Self {
        Self {
            uart: Serial::new(irq, out),
        }
    }
}

impl SerialConsole {
    /// Queues bytes for the guest to read, raising the UART's interrupt; returns how many fit
    /// in the receive FIFO (the rest are dropped: the guest is not reading).
    pub fn enqueue_input(&mut self, bytes: &[u8]) -> usize {
        match self.uart.enqueue_raw_bytes(bytes) {
            Ok(queued) => queued,
            Err(e) => {
                log::debug!("serial input dropped: {e:?}");
                0
            }
        }
    }
}

impl BusDevice for SerialConsole {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let value = u8::try_from(offset).map_or(0xff, |offset| self.uart.read(offset));
        data.fill(value);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let (Ok(offset), [value]) = (u8::try_from(offset), data) else {
            return;
        };
        if let Err(e) = self.uart.write(offset, *value) {
            // The host end is gone (closed pipe): the guest carries on without a console.
            log::debug!("serial console write failed: {e:?}");
        }
    }
}
