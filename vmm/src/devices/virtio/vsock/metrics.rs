//! Counters of one vsock device, for logs, tests and later the metrics endpoint.

/// What a vsock device did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct VsockMetrics {
    /// Packets the guest sent that parsed.
    pub tx_packets: u64,
    /// Payload bytes from the guest written to host sockets.
    pub tx_bytes: u64,
    /// Packets the device put on the RX queue.
    pub rx_packets: u64,
    /// Payload bytes from host sockets given to the guest.
    pub rx_bytes: u64,
    /// Chains that did not parse, or carried a wrong address, type or operation.
    pub malformed_packets: u64,
    /// RST packets sent to the guest.
    pub rst_sent: u64,
    /// RST packets received from the guest.
    pub rst_received: u64,
    /// Connections established, in either direction.
    pub connections_opened: u64,
    /// Guest connections to a host port nobody listens on, or over the connection limit.
    pub connections_refused: u64,
    /// Connections the guest reset for sending beyond its credit.
    pub credit_violations: u64,
    /// Host clients dropped before or during their `CONNECT` line.
    pub host_clients_dropped: u64,
}
