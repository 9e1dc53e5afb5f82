//! vsock packets (§5.10.6): a 44-byte little-endian header, then the payload, spread over a
//! descriptor chain however the driver likes.
//!
//! Every byte of a TX chain comes from the guest. Parsing checks directions, that every buffer
//! lies inside guest memory, and that the payload length fits both the chain and
//! [`MAX_PAYLOAD`], so nothing later can read out of bounds: a bad chain is an error value.

use std::ops::Range;

use virtio_queue::DescriptorChain;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use super::MAX_PAYLOAD;

/// Bytes of a packet header (§5.10.6).
pub const HEADER_SIZE: usize = 44;

/// A packet header, fields in host order.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Header {
    /// Sender's context id.
    pub src_cid: u64,
    /// Receiver's context id.
    pub dst_cid: u64,
    /// Sender's port.
    pub src_port: u32,
    /// Receiver's port.
    pub dst_port: u32,
    /// Payload bytes that follow the header.
    pub len: u32,
    /// Socket type (stream only here).
    pub type_: u16,
    /// Operation.
    pub op: u16,
    /// Operation flags (SHUTDOWN's direction bits).
    pub flags: u32,
    /// The sender's receive buffer space for this connection.
    pub buf_alloc: u32,
    /// Bytes the sender has consumed from its receive buffer, ever (wrapping).
    pub fwd_cnt: u32,
}

impl Header {
    /// Decodes the wire layout.
    pub fn from_bytes(b: &[u8; HEADER_SIZE]) -> Self {
        let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"));
        let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().expect("4 bytes"));
        let u16_at = |i: usize| u16::from_le_bytes(b[i..i + 2].try_into().expect("2 bytes"));
        Self {
            src_cid: u64_at(0),
            dst_cid: u64_at(8),
            src_port: u32_at(16),
            dst_port: u32_at(20),
            len: u32_at(24),
            type_: u16_at(28),
            op: u16_at(30),
            flags: u32_at(32),
            buf_alloc: u32_at(36),
            fwd_cnt: u32_at(40),
        }
    }

    /// Encodes the wire layout.
    pub fn to_bytes(&self) -> [u8; HEADER_SIZE] {
        let mut b = [0u8; HEADER_SIZE];
        b[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        b[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        b[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        b[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        b[24..28].copy_from_slice(&self.len.to_le_bytes());
        b[28..30].copy_from_slice(&self.type_.to_le_bytes());
        b[30..32].copy_from_slice(&self.op.to_le_bytes());
        b[32..36].copy_from_slice(&self.flags.to_le_bytes());
        b[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        b[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        b
    }
}

/// Why a chain is not a packet.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    /// The chain cannot hold a header.
    #[error("the chain has {0} bytes, a header needs {HEADER_SIZE}")]
    ShortHeader(u64),
    /// A TX buffer the device would have to write, or an RX buffer it could only read.
    #[error("a descriptor points the wrong way for its queue")]
    Direction,
    /// A buffer outside guest memory.
    #[error("buffer {addr:#x}+{len} is outside guest memory")]
    OutOfMemory {
        /// Guest address.
        addr: u64,
        /// Length.
        len: u32,
    },
    /// The header claims more payload than the chain carries.
    #[error("the header claims {len} payload bytes, the chain carries {available}")]
    Truncated {
        /// Claimed length.
        len: u32,
        /// Bytes after the header.
        available: u64,
    },
    /// The header claims more payload than any packet may carry.
    #[error("the header claims {0} payload bytes, more than {MAX_PAYLOAD}")]
    TooLarge(u32),
}

/// One descriptor as the chain gave it.
#[derive(Debug, Clone, Copy)]
pub struct Buffer {
    addr: GuestAddress,
    len: u32,
    device_writable: bool,
}

/// Walks a chain into its buffers. The chain iterator stops at loops and bad indices.
pub fn collect(chain: DescriptorChain<&GuestMemoryMmap>) -> Vec<Buffer> {
    chain
        .map(|d| Buffer {
            addr: d.addr(),
            len: d.len(),
            device_writable: d.is_write_only(),
        })
        .collect()
}

/// A packet the guest sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxPacket {
    /// Its header.
    pub header: Header,
    /// Its payload, exactly `header.len` bytes.
    pub data: Vec<u8>,
}

/// Parses a TX chain: every buffer device-readable and in guest memory.
pub fn parse_tx(buffers: &[Buffer], mem: &GuestMemoryMmap) -> Result<TxPacket, PacketError> {
    let total = check(buffers, mem, false)?;
    if total < HEADER_SIZE as u64 {
        return Err(PacketError::ShortHeader(total));
    }
    let mut raw = [0u8; HEADER_SIZE];
    gather(buffers, mem, 0, &mut raw)?;
    let header = Header::from_bytes(&raw);
    if header.len > MAX_PAYLOAD {
        return Err(PacketError::TooLarge(header.len));
    }
    let available = total - HEADER_SIZE as u64;
    if u64::from(header.len) > available {
        return Err(PacketError::Truncated {
            len: header.len,
            available,
        });
    }
    let mut data = vec![0u8; header.len as usize];
    gather(buffers, mem, HEADER_SIZE, &mut data)?;
    Ok(TxPacket { header, data })
}

/// Checks an RX chain (every buffer device-writable and in guest memory); returns the payload
/// bytes it can take after a header.
pub fn rx_capacity(buffers: &[Buffer], mem: &GuestMemoryMmap) -> Result<usize, PacketError> {
    let total = check(buffers, mem, true)?;
    let payload = total
        .checked_sub(HEADER_SIZE as u64)
        .ok_or(PacketError::ShortHeader(total))?;
    Ok(usize::try_from(payload.min(u64::from(MAX_PAYLOAD))).unwrap_or(0))
}

/// Writes a header and its payload into a checked RX chain; returns the bytes written.
pub fn write_rx(
    buffers: &[Buffer],
    mem: &GuestMemoryMmap,
    header: &Header,
    data: &[u8],
) -> Result<u32, PacketError> {
    scatter(buffers, mem, 0, &header.to_bytes())?;
    scatter(buffers, mem, HEADER_SIZE, data)?;
    Ok((HEADER_SIZE + data.len()) as u32)
}

/// Checks direction and memory of every buffer; returns their total length.
fn check(buffers: &[Buffer], mem: &GuestMemoryMmap, writable: bool) -> Result<u64, PacketError> {
    let mut total = 0u64;
    for b in buffers {
        if b.device_writable != writable {
            return Err(PacketError::Direction);
        }
        if b.len > 0 && !mem.check_range(b.addr, b.len as usize) {
            return Err(PacketError::OutOfMemory {
                addr: b.addr.0,
                len: b.len,
            });
        }
        total += u64::from(b.len);
    }
    Ok(total)
}

/// Reads `out.len()` bytes starting `offset` bytes into the chain.
fn gather(
    buffers: &[Buffer],
    mem: &GuestMemoryMmap,
    offset: usize,
    out: &mut [u8],
) -> Result<(), PacketError> {
    walk(buffers, offset, out.len(), |addr, range| {
        mem.read_slice(&mut out[range], addr)
    })
}

/// Writes `data` starting `offset` bytes into the chain.
fn scatter(
    buffers: &[Buffer],
    mem: &GuestMemoryMmap,
    offset: usize,
    data: &[u8],
) -> Result<(), PacketError> {
    walk(buffers, offset, data.len(), |addr, range| {
        mem.write_slice(&data[range], addr)
    })
}

/// Calls `f` with each guest address and the range of a `len`-byte span it holds, the span
/// starting `offset` bytes into the chain. Fails if the chain is too short.
fn walk<F>(buffers: &[Buffer], mut offset: usize, len: usize, mut f: F) -> Result<(), PacketError>
where
    F: FnMut(GuestAddress, Range<usize>) -> Result<(), vm_memory::GuestMemoryError>,
{
    let mut done = 0;
    for b in buffers {
        if done == len {
            break;
        }
        let blen = b.len as usize;
        if offset >= blen {
            offset -= blen;
            continue;
        }
        let take = (blen - offset).min(len - done);
        let out_of_memory = || PacketError::OutOfMemory {
            addr: b.addr.0,
            len: b.len,
        };
        let addr = b
            .addr
            .checked_add(offset as u64)
            .ok_or_else(out_of_memory)?;
        f(addr, done..done + take).map_err(|_| out_of_memory())?;
        done += take;
        offset = 0;
    }
    if done == len {
        Ok(())
    } else {
        Err(PacketError::ShortHeader(done as u64))
    }
}
