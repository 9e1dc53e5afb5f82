//! The i8042 keyboard controller, reduced to what a guest uses to reset: command 0xfe on the
//! command port (Linux's `reboot=k`).

use vm_superio::I8042Device;
use vmm_sys_util::eventfd::EventFd;

use crate::devices::bus::BusDevice;

/// The i8042 controller.
#[derive(Debug)]
pub struct I8042 {
    controller: I8042Device<ResetEvt>,
}

/// The reset line, an eventfd the event loop watches.
#[derive(Debug)]
struct ResetEvt(EventFd);

impl vm_superio::Trigger for ResetEvt {
    type E = std::io::Error;

    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}

impl I8042 {
    /// A controller that signals `reset_evt` when the guest asks for a CPU reset.
    pub fn new(reset_evt: EventFd) -> Self {
        Self {
            controller: I8042Device::new(ResetEvt(reset_evt)),
        }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let value = u8::try_from(offset).map_or(0xff, |offset| self.controller.read(offset));
        data.fill(value);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let (Ok(offset), [value]) = (u8::try_from(offset), data) else {
            return;
        };
        if let Err(e) = self.controller.write(offset, *value) {
            log::warn!("cannot signal the guest's reset request: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_command_signals_the_reset_line() {
        let evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut i8042 = I8042::new(evt.try_clone().unwrap());
        i8042.write(4, &[0xfe]);
        assert_eq!(evt.read().unwrap(), 1);
    }

    #[test]
    fn other_commands_do_not() {
        let evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut i8042 = I8042::new(evt.try_clone().unwrap());
        i8042.write(4, &[0xaa]);
        i8042.write(0, &[0xfe]);
        assert!(evt.read().is_err());
    }
}
