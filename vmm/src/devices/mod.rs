//! Device models and the buses vCPU exits are dispatched on.
//!
//! Register accesses arrive on vCPU threads through [`bus::Bus`]; queue work happens on the
//! event loop thread, woken by ioeventfds. A device never trusts what the guest wrote: bad
//! values fail the one request and are counted, never a panic.

pub mod bus;
pub mod control;
pub mod legacy;
pub mod virtio;

use vmm_sys_util::eventfd::EventFd;

/// An interrupt line backed by an eventfd that KVM turns into a guest interrupt (irqfd).
#[derive(Debug)]
pub struct IrqLine {
    irq_evt: EventFd,
}

impl IrqLine {
    /// A new line; register [`IrqLine::evt`] with KVM as an irqfd.
    pub fn new() -> std::io::Result<Self> {
        Ok(Self {
            irq_evt: EventFd::new(libc::EFD_NONBLOCK)?,
        })
    }

    /// The eventfd behind the line.
    pub fn evt(&self) -> &EventFd {
        &self.irq_evt
    }

    /// Raises the interrupt.
    pub fn trigger(&self) -> std::io::Result<()> {
        self.irq_evt.write(1)
    }

    /// A second handle to the same line.
    pub fn try_clone(&self) -> std::io::Result<Self> {
        Ok(Self {
            irq_evt: self.irq_evt.try_clone()?,
        })
    }
}

impl vm_superio::Trigger for IrqLine {
    type E = std::io::Error;

    fn trigger(&self) -> std::io::Result<()> {
        IrqLine::trigger(self)
    }
}
