//! Address-range dispatch of vCPU I/O and MMIO exits to devices.
//!
//! A bus is built once, before the vCPUs start, and is then read-only, so vCPU threads share it
//! without a lock; each device has its own mutex.

use std::sync::{Arc, Mutex};

/// A device that answers register accesses on a bus.
pub trait BusDevice: Send {
    /// Fills `data` from the register at `offset` from the device's base.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// Handles a write of `data` to the register at `offset`.
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// Why a device could not be placed on a bus.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The range overlaps one already on the bus.
    #[error("bus range {base:#x}+{len:#x} overlaps another device")]
    Overlap {
        /// Start of the refused range.
        base: u64,
        /// Its length.
        len: u64,
    },
    /// A zero-length range.
    #[error("bus range at {base:#x} is empty")]
    Empty {
        /// Start of the refused range.
        base: u64,
    },
}

struct Range {
    base: u64,
    len: u64,
    device: Arc<Mutex<dyn BusDevice>>,
}

/// A set of non-overlapping address ranges, each served by one device.
#[derive(Default)]
pub struct Bus {
    ranges: Vec<Range>,
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.ranges.iter().map(|r| (r.base, r.len)))
            .finish()
    }
}

impl Bus {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Serves `base..base+len` with `device`.
    pub fn insert(
        &mut self,
        device: Arc<Mutex<dyn BusDevice>>,
        base: u64,
        len: u64,
    ) -> Result<(), Error> {
        if len == 0 {
            return Err(Error::Empty { base });
        }
        let end = base.checked_add(len).ok_or(Error::Overlap { base, len })?;
        if self
            .ranges
            .iter()
            .any(|r| base < r.base + r.len && r.base < end)
        {
            return Err(Error::Overlap { base, len });
        }
        let at = self.ranges.partition_point(|r| r.base < base);
        self.ranges.insert(at, Range { base, len, device });
        Ok(())
    }

    /// The device serving `addr` and the offset of `addr` in its range.
    fn find(&self, addr: u64) -> Option<(&Range, u64)> {
        let index = self
            .ranges
            .partition_point(|r| r.base <= addr)
            .checked_sub(1)?;
        let range = &self.ranges[index];
        let offset = addr - range.base;
        (offset < range.len).then_some((range, offset))
    }

    /// Dispatches a read; returns false when no device serves `addr`.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        let Some((range, offset)) = self.find(addr) else {
            return false;
        };
        lock(&range.device).read(offset, data);
        true
    }

    /// Dispatches a write; returns false when no device serves `addr`.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        let Some((range, offset)) = self.find(addr) else {
            return false;
        };
        lock(&range.device).write(offset, data);
        true
    }
}

/// Locks a device; a device whose holder panicked is still served (its state is plain data).
pub(crate) fn lock<T: ?Sized>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Recorder {
        writes: Vec<(u64, Vec<u8>)>,
    }

    impl BusDevice for Recorder {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.writes.push((offset, data.to_vec()));
        }
    }

    #[test]
    fn accesses_reach_the_device_at_their_offset() {
        let device = Arc::new(Mutex::new(Recorder::default()));
        let mut bus = Bus::new();
        bus.insert(device.clone(), 0x3f8, 8).unwrap();
        let mut data = [0u8; 1];
        assert!(bus.read(0x3fa, &mut data));
        assert_eq!(data, [2]);
        assert!(bus.write(0x3ff, &[9]));
        assert_eq!(device.lock().unwrap().writes, vec![(7, vec![9])]);
    }

    #[test]
    fn addresses_outside_every_range_are_not_served() {
        let mut bus = Bus::new();
        bus.insert(Arc::new(Mutex::new(Recorder::default())), 0x100, 0x10)
            .unwrap();
        assert!(!bus.read(0xff, &mut [0]));
        assert!(!bus.write(0x110, &[0]));
    }

    #[test]
    fn overlapping_and_empty_ranges_are_refused() {
        let mut bus = Bus::new();
        bus.insert(Arc::new(Mutex::new(Recorder::default())), 0x100, 0x10)
            .unwrap();
        let other = Arc::new(Mutex::new(Recorder::default()));
        assert!(matches!(
            bus.insert(other.clone(), 0x10f, 1),
            Err(Error::Overlap { .. })
        ));
        assert!(matches!(
            bus.insert(other.clone(), 0xf0, 0x11),
            Err(Error::Overlap { .. })
        ));
        assert!(matches!(
            bus.insert(other.clone(), u64::MAX, 2),
            Err(Error::Overlap { .. })
        ));
        assert!(matches!(
            bus.insert(other, 0x200, 0),
            Err(Error::Empty { .. })
        ));
    }
}
