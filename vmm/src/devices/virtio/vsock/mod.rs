//! virtio-vsock (virtio 1.2 §5.10), stream sockets only, with a Unix-socket host side.
//!
//! * [`packet`]: parsing the guest's packets and writing ours, trusting nothing the guest wrote;
//! * [`connection`]: one stream between a guest port and a host Unix socket, with its credit;
//! * [`muxer`]: the connection table, the host listener, and queue processing;
//! * [`device`]: the device state, its configuration space and activation;
//! * [`event_handler`]: queue notifications and host sockets on the event loop;
//! * [`metrics`]: per-device counters.
//!
//! The host side follows the "hybrid vsock" scheme: a host client connects to the device's Unix
//! socket and writes `CONNECT <port>\n`; a guest connection to the host on port P goes to the
//! Unix socket `<path>_P`.

pub mod connection;
pub mod device;
pub mod event_handler;
pub mod metrics;
pub mod muxer;
pub mod packet;

#[cfg(test)]
mod tests;

pub use device::{Error, Vsock};

/// Virtio device ID of a socket device (§5).
pub const TYPE_VSOCK: u32 = 19;
/// Queue size of each of the three queues.
pub const QUEUE_SIZE: u16 = 256;
/// Queue indices (§5.10.2).
pub const RX_QUEUE: usize = 0;
/// The driver's packets to the device.
pub const TX_QUEUE: usize = 1;
/// Transport events (unused: moat never migrates a VM).
pub const EVENT_QUEUE: usize = 2;

/// The host's context id (§5.10.4).
pub const HOST_CID: u64 = 2;
/// Lowest context id a guest may have: 0 to 2 are reserved (§5.10.4).
pub const MIN_GUEST_CID: u32 = 3;

/// Socket type of a stream packet (§5.10.6).
pub const TYPE_STREAM: u16 = 1;

/// Packet operations (§5.10.6).
pub mod op {
    /// Connect to a listening port.
    pub const REQUEST: u16 = 1;
    /// Accept a connection.
    pub const RESPONSE: u16 = 2;
    /// Refuse or abort a connection.
    pub const RST: u16 = 3;
    /// Close one or both directions.
    pub const SHUTDOWN: u16 = 4;
    /// Stream data.
    pub const RW: u16 = 5;
    /// Here is my buffer space and how much I consumed.
    pub const CREDIT_UPDATE: u16 = 6;
    /// Please send a credit update.
    pub const CREDIT_REQUEST: u16 = 7;
}

/// SHUTDOWN flag: the sender will receive no more data (§5.10.6.5).
pub const SHUTDOWN_RCV: u32 = 1;
/// SHUTDOWN flag: the sender will send no more data.
pub const SHUTDOWN_SEND: u32 = 2;

/// Receive buffer space the device advertises per connection (`buf_alloc`): also the bound on
/// guest data buffered for a host socket that does not keep up.
pub const BUF_ALLOC: u32 = 256 << 10;
/// Most payload bytes one packet may carry: bounds the copy a single chain can ask for.
pub const MAX_PAYLOAD: u32 = 64 << 10;
/// Most connections at once, guest- and host-initiated together.
pub const MAX_CONNECTIONS: usize = 1024;
/// Most host clients that connected but have not finished their `CONNECT` line; the oldest is
/// dropped to make room.
pub const MAX_HANDSHAKES: usize = 64;
/// Longest `CONNECT <port>\n` line: "CONNECT " and a 10-digit port fit with room to spare.
pub const MAX_CONNECT_LINE: usize = 32;
/// Most control packets (RST answers) waiting for RX buffers; the guest's TX queue is not
/// processed while this many wait.
pub const MAX_PENDING_CONTROL: usize = 1024;
/// First host port handed to host-initiated connections; lower ports are the host's services.
pub const FIRST_LOCAL_PORT: u32 = 1 << 30;
