//! virtio-blk (virtio 1.2 §5.2): a disk backed by a host file or block device.
//!
//! * [`request`]: parsing a descriptor chain into a request, trusting nothing the guest wrote;
//! * [`device`]: the device state, its configuration space and request execution;
//! * [`event_handler`]: queue notifications from the event loop;
//! * [`metrics`]: per-device counters.

pub mod device;
pub mod event_handler;
pub mod metrics;
pub mod request;

pub use device::{Block, Error};

/// Virtio device ID of a block device (§5).
pub const TYPE_BLOCK: u32 = 2;
/// Bytes per sector: virtio-blk addresses the disk in 512-byte units whatever the host's.
pub const SECTOR_SIZE: u64 = 512;
/// log2 of [`SECTOR_SIZE`].
pub const SECTOR_SHIFT: u32 = 9;
/// Length of the device ID a GET_ID request returns (§5.2.6).
pub const ID_BYTES: usize = 20;
/// Queue size: enough in-flight requests for a sequential reader, small enough to bound work.
pub const QUEUE_SIZE: u16 = 256;

/// Feature bit: the disk is read-only (§5.2.3).
pub const VIRTIO_BLK_F_RO: u64 = 1 << 5;
/// Feature bit: the device supports the FLUSH command.
pub const VIRTIO_BLK_F_FLUSH: u64 = 1 << 9;
