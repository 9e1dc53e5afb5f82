//! Counters of one block device, for logs, tests and later the metrics endpoint.

/// What a block device did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BlockMetrics {
    /// Completed IN requests.
    pub reads: u64,
    /// Bytes read from the disk into the guest.
    pub read_bytes: u64,
    /// Completed OUT requests.
    pub writes: u64,
    /// Bytes written from the guest to the disk.
    pub write_bytes: u64,
    /// FLUSH requests.
    pub flushes: u64,
    /// Chains that did not parse.
    pub invalid_requests: u64,
    /// Requests that failed on the host side (I/O error, write to a read-only disk).
    pub io_errors: u64,
    /// Requests of a type the device does not support.
    pub unsupported: u64,
}
