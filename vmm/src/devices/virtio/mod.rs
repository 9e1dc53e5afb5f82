//! Virtio devices (virtio 1.2, modern interface only) and their MMIO transport.

pub mod block;
pub mod mmio;
pub mod vsock;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::IrqLine;

/// Feature bit: the device follows virtio 1.x (§6.1), required of every modern device.
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;

/// Device status bits (§2.1).
pub mod status {
    /// The guest noticed the device.
    pub const ACKNOWLEDGE: u32 = 1;
    /// The guest has a driver for it.
    pub const DRIVER: u32 = 2;
    /// The driver is ready: queues may be used.
    pub const DRIVER_OK: u32 = 4;
    /// Feature negotiation is complete.
    pub const FEATURES_OK: u32 = 8;
    /// The device hit an error and needs a reset.
    pub const DEVICE_NEEDS_RESET: u32 = 64;
    /// The guest gave up on the device.
    pub const FAILED: u32 = 128;
}

/// InterruptStatus bit: a queue's used ring was updated (§4.2.2).
pub const INTERRUPT_USED_RING: u32 = 1;
/// InterruptStatus bit: the configuration changed.
pub const INTERRUPT_CONFIG: u32 = 2;

/// The interrupt a virtio device raises, and the status register the transport exposes.
#[derive(Debug, Clone)]
pub struct VirtioInterrupt {
    status: Arc<AtomicU32>,
    line: Arc<IrqLine>,
}

impl VirtioInterrupt {
    /// An interrupt on `line` with a fresh status register.
    pub fn new(line: IrqLine) -> Self {
        Self {
            status: Arc::new(AtomicU32::new(0)),
            line: Arc::new(line),
        }
    }

    /// Sets `bits` in InterruptStatus and raises the line.
    pub fn trigger(&self, bits: u32) -> std::io::Result<()> {
        self.status.fetch_or(bits, Ordering::AcqRel);
        self.line.trigger()
    }

    /// The InterruptStatus register.
    pub fn status(&self) -> u32 {
        self.status.load(Ordering::Acquire)
    }

    /// Clears `bits` (the driver's InterruptACK).
    pub fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::AcqRel);
    }

    /// The irqfd to register with KVM.
    pub fn line(&self) -> &IrqLine {
        &self.line
    }
}

/// Why a device could not start using its queues.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    /// The driver enabled a queue count the device does not have.
    #[error("the driver set up {given} queues, the device has {expected}")]
    QueueCount {
        /// Queues the device has.
        expected: usize,
        /// Queues the driver made ready.
        given: usize,
    },
}

/// A virtio device behind a transport.
pub trait VirtioDevice: Send {
    /// The virtio device ID (§5).
    fn device_type(&self) -> u32;
    /// Maximum size of each queue; the length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];
    /// The features the device offers.
    fn avail_features(&self) -> u64;
    /// Records the features the driver accepted (a subset of the offered ones).
    fn set_acked_features(&mut self, features: u64);
    /// Reads the device-specific configuration space.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes the device-specific configuration space.
    fn write_config(&mut self, offset: u64, data: &[u8]);
    /// One eventfd per queue, signalled when the driver notifies that queue.
    fn queue_evts(&self) -> &[EventFd];
    /// Starts the device on the driver's queues.
    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        queues: Vec<Queue>,
        interrupt: VirtioInterrupt,
    ) -> Result<(), ActivateError>;
    /// Returns the device to its initial state.
    fn reset(&mut self);
}

/// Copies the bytes of `config` at `offset` into `data`; out-of-range bytes read as zero.
pub fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let Ok(start) = usize::try_from(offset) else {
        return;
    };
    if let Some(src) = config.get(start..) {
        let len = src.len().min(data.len());
        data[..len].copy_from_slice(&src[..len]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_reads_past_the_end_are_zero() {
        let config = [1u8, 2, 3, 4];
        let mut data = [0xffu8; 4];
        read_config_bytes(&config, 2, &mut data);
        assert_eq!(data, [3, 4, 0, 0]);
        read_config_bytes(&config, u64::MAX, &mut data);
        assert_eq!(data, [0; 4]);
    }
}
