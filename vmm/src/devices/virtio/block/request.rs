//! Parsing a virtio-blk descriptor chain (§5.2.6): a device-readable 16-byte header, data
//! buffers, and a device-writable status byte last.
//!
//! Every field comes from the guest. Parsing checks directions, lengths, alignment to sectors,
//! the disk's capacity and that every buffer lies inside guest memory, so execution never has
//! to: a malformed chain is an error value, never a panic or an out-of-bounds access.

use virtio_queue::DescriptorChain;
use vm_memory::{ByteValued, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use super::{ID_BYTES, SECTOR_SHIFT, SECTOR_SIZE};

/// Request types (§5.2.6).
const VIRTIO_BLK_T_IN: u32 = 0;
const VIRTIO_BLK_T_OUT: u32 = 1;
const VIRTIO_BLK_T_FLUSH: u32 = 4;
const VIRTIO_BLK_T_GET_ID: u32 = 8;

/// Most data bytes one request may move: bounds the work a single chain can ask for.
pub const MAX_REQUEST_BYTES: u64 = 16 << 20;

/// The request header as the driver lays it out.
#[derive(Debug, Clone, Copy, Default)]
#[repr(C)]
struct Header {
    type_: u32,
    reserved: u32,
    sector: u64,
}

// SAFETY: Header is repr(C), made only of integers, and has no padding (4 + 4 + 8 bytes), so
// every byte pattern is a valid value.
unsafe impl ByteValued for Header {}

const HEADER_SIZE: u32 = std::mem::size_of::<Header>() as u32;

/// What a request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestType {
    /// Read sectors into the guest's buffers.
    In,
    /// Write the guest's buffers to sectors.
    Out,
    /// Make earlier writes durable.
    Flush,
    /// Return the device ID string.
    GetId,
    /// Any other type: answered with UNSUPP.
    Unsupported(u32),
}

impl RequestType {
    fn from_raw(raw: u32) -> Self {
        match raw {
            VIRTIO_BLK_T_IN => Self::In,
            VIRTIO_BLK_T_OUT => Self::Out,
            VIRTIO_BLK_T_FLUSH => Self::Flush,
            VIRTIO_BLK_T_GET_ID => Self::GetId,
            other => Self::Unsupported(other),
        }
    }

    /// Whether the data buffers are written by the device.
    fn device_writes_data(self) -> bool {
        matches!(self, Self::In | Self::GetId)
    }
}

/// Why a chain is not a valid request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// Fewer than the two descriptors every request needs.
    #[error("descriptor chain has {0} descriptors, a request needs at least 2")]
    ChainTooShort(usize),
    /// The header is not device-readable, or shorter than 16 bytes.
    #[error("request header descriptor is writable or shorter than 16 bytes")]
    BadHeader,
    /// The status descriptor is not device-writable, or is empty.
    #[error("status descriptor is read-only or empty")]
    BadStatus,
    /// A data buffer goes the wrong way for the request type.
    #[error("data descriptor has the wrong direction for the request type")]
    DataDirection,
    /// A buffer lies (partly) outside guest memory.
    #[error("buffer at {addr:#x}+{len:#x} is outside guest memory")]
    OutOfMemory {
        /// Start of the buffer.
        addr: u64,
        /// Its length.
        len: u32,
    },
    /// Read or write length is not a whole number of sectors.
    #[error("data length {0} is not a multiple of 512")]
    UnalignedLength(u64),
    /// The request moves more than [`MAX_REQUEST_BYTES`].
    #[error("request moves {0} bytes, more than the 16 MiB limit")]
    TooLarge(u64),
    /// The request reaches past the end of the disk.
    #[error("request for sector {sector} (+{len} bytes) is beyond the disk's end")]
    BeyondCapacity {
        /// First sector.
        sector: u64,
        /// Bytes asked for.
        len: u64,
    },
    /// A GET_ID request without room for the answer.
    #[error("GET_ID request has no data buffer")]
    NoIdBuffer,
}

/// A parsed, validated request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// What is asked.
    pub request_type: RequestType,
    /// First sector, for IN and OUT.
    pub sector: u64,
    /// Data buffers in guest memory, in order.
    pub data: Vec<(GuestAddress, u32)>,
    /// Where the status byte goes.
    pub status_addr: GuestAddress,
}

impl Request {
    /// Total bytes of the data buffers.
    pub fn data_len(&self) -> u64 {
        self.data.iter().map(|(_, len)| u64::from(*len)).sum()
    }
}

/// One descriptor as the chain gave it.
#[derive(Debug, Clone, Copy)]
pub struct RawBuffer {
    addr: GuestAddress,
    len: u32,
    device_writable: bool,
}

/// Walks a chain into its buffers. The chain iterator stops at loops and bad indices.
pub fn collect(chain: DescriptorChain<&GuestMemoryMmap>) -> Vec<RawBuffer> {
    chain
        .map(|d| RawBuffer {
            addr: d.addr(),
            len: d.len(),
            device_writable: d.is_write_only(),
        })
        .collect()
}

/// The status buffer of a chain, if its last descriptor can hold one: used to report IOERR for
/// a chain that did not parse.
pub fn status_of(buffers: &[RawBuffer], mem: &GuestMemoryMmap) -> Option<GuestAddress> {
    let last = buffers.last()?;
    (buffers.len() >= 2 && last.device_writable && last.len >= 1 && in_memory(mem, last.addr, 1))
        .then_some(last.addr)
}

/// Parses buffers into a request against a disk of `capacity` bytes.
pub fn parse(
    buffers: &[RawBuffer],
    mem: &GuestMemoryMmap,
    capacity: u64,
) -> Result<Request, RequestError> {
    let [header, data @ .., status] = buffers else {
        return Err(RequestError::ChainTooShort(buffers.len()));
    };
    if header.device_writable || header.len < HEADER_SIZE {
        return Err(RequestError::BadHeader);
    }
    let raw: Header = mem
        .read_obj(header.addr)
        .map_err(|_| RequestError::OutOfMemory {
            addr: header.addr.0,
            len: header.len,
        })?;
    if !status.device_writable || status.len == 0 {
        return Err(RequestError::BadStatus);
    }
    if !in_memory(mem, status.addr, 1) {
        return Err(RequestError::OutOfMemory {
            addr: status.addr.0,
            len: 1,
        });
    }

    let request_type = RequestType::from_raw(u32::from_le(raw.type_));
    let request = Request {
        request_type,
        sector: u64::from_le(raw.sector),
        data: data.iter().map(|b| (b.addr, b.len)).collect(),
        status_addr: status.addr,
    };
    check_data(&request, data, mem)?;
    check_extent(&request, capacity)?;
    Ok(request)
}

fn check_data(
    request: &Request,
    data: &[RawBuffer],
    mem: &GuestMemoryMmap,
) -> Result<(), RequestError> {
    let writes = request.request_type.device_writes_data();
    for buffer in data {
        if matches!(
            request.request_type,
            RequestType::In | RequestType::Out | RequestType::GetId
        ) && buffer.device_writable != writes
        {
            return Err(RequestError::DataDirection);
        }
        if !in_memory(mem, buffer.addr, buffer.len as usize) {
            return Err(RequestError::OutOfMemory {
                addr: buffer.addr.0,
                len: buffer.len,
            });
        }
    }
    Ok(())
}

fn check_extent(request: &Request, capacity: u64) -> Result<(), RequestError> {
    let len = request.data_len();
    match request.request_type {
        RequestType::In | RequestType::Out => {
            if len % SECTOR_SIZE != 0 {
                return Err(RequestError::UnalignedLength(len));
            }
            if len > MAX_REQUEST_BYTES {
                return Err(RequestError::TooLarge(len));
            }
            let beyond = || RequestError::BeyondCapacity {
                sector: request.sector,
                len,
            };
            let start = request
                .sector
                .checked_shl(SECTOR_SHIFT)
                .filter(|s| s >> SECTOR_SHIFT == request.sector);
            let end = start.and_then(|s| s.checked_add(len)).ok_or_else(beyond)?;
            if end > capacity {
                return Err(beyond());
            }
        }
        RequestType::GetId if len == 0 => return Err(RequestError::NoIdBuffer),
        RequestType::GetId | RequestType::Flush | RequestType::Unsupported(_) => {}
    }
    Ok(())
}

/// Whether `addr..addr+len` lies wholly in guest memory (possibly across regions).
fn in_memory(mem: &GuestMemoryMmap, addr: GuestAddress, len: usize) -> bool {
    len == 0 || mem.check_range(addr, len)
}

/// Bytes a GET_ID answer writes into a buffer of `len` bytes.
pub fn id_len(len: u64) -> usize {
    ID_BYTES.min(len as usize)
}
