//! The virtio-blk device: its disk, configuration space, and the execution of requests.

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::metrics::BlockMetrics;
use super::request::{self, Request, RequestType};
use super::{ID_BYTES, QUEUE_SIZE, SECTOR_SHIFT, TYPE_BLOCK, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO};
use crate::devices::virtio::{
    read_config_bytes, ActivateError, VirtioDevice, VirtioInterrupt, INTERRUPT_USED_RING,
    VIRTIO_F_VERSION_1,
};

/// Request status values (§5.2.6).
const VIRTIO_BLK_S_OK: u8 = 0;
const VIRTIO_BLK_S_IOERR: u8 = 1;
const VIRTIO_BLK_S_UNSUPP: u8 = 2;

/// Why a block device could not be created.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The backing file could not be opened.
    #[error("cannot open disk {path}")]
    Open {
        /// The disk's path.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// Another process holds the disk.
    #[error("disk {path} is in use by another VM")]
    InUse {
        /// The disk's path.
        path: PathBuf,
    },
    /// The disk's size could not be read.
    #[error("cannot read the size of disk {path}")]
    Size {
        /// The disk's path.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The queue eventfd could not be created.
    #[error("cannot create the disk's queue eventfd")]
    EventFd(#[source] io::Error),
}

/// The host side of a disk.
#[derive(Debug)]
pub struct Disk {
    file: File,
    read_only: bool,
    capacity: u64,
    id: [u8; ID_BYTES],
}

impl Disk {
    /// Opens `path`, locked shared when read-only and exclusive otherwise, so that two VMs never
    /// write one disk.
    pub fn open(path: &Path, read_only: bool) -> Result<Self, Error> {
        let mut file = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(path)
            .map_err(|source| Error::Open {
                path: path.to_owned(),
                source,
            })?;
        lock_file(&file, read_only).map_err(|_| Error::InUse {
            path: path.to_owned(),
        })?;
        let size = |source| Error::Size {
            path: path.to_owned(),
            source,
        };
        // Seeking to the end measures regular files and block devices alike.
        let bytes = file.seek(SeekFrom::End(0)).map_err(size)?;
        if bytes % super::SECTOR_SIZE != 0 {
            log::warn!(
                "disk {} is not a whole number of sectors; its tail is unused",
                path.display()
            );
        }
        let meta = file.metadata().map_err(size)?;
        Ok(Self {
            file,
            read_only,
            capacity: bytes & !(super::SECTOR_SIZE - 1),
            id: disk_id(meta.dev(), meta.ino()),
        })
    }

    /// Size in bytes, a whole number of sectors.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }
}

/// An ID stable for the same file: its device and inode numbers.
fn disk_id(dev: u64, ino: u64) -> [u8; ID_BYTES] {
    let text = format!("moat{dev:x}-{ino:x}");
    let mut id = [0u8; ID_BYTES];
    let len = text.len().min(ID_BYTES);
    id[..len].copy_from_slice(&text.as_bytes()[..len]);
    id
}

fn lock_file(file: &File, shared: bool) -> io::Result<()> {
    let op = if shared { libc::LOCK_SH } else { libc::LOCK_EX };
    // SAFETY: flock on a descriptor we own; it touches no memory.
    if unsafe { libc::flock(file.as_raw_fd(), op | libc::LOCK_NB) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// State that exists once the driver started the device.
#[derive(Debug)]
struct Active {
    mem: GuestMemoryMmap,
    queue: Queue,
    interrupt: VirtioInterrupt,
}

/// A virtio-blk device.
#[derive(Debug)]
pub struct Block {
    disk: Disk,
    avail_features: u64,
    acked_features: u64,
    config: [u8; 8],
    queue_evts: [EventFd; 1],
    active: Option<Active>,
    /// What the device did.
    pub metrics: BlockMetrics,
}

impl Block {
    /// A device serving `disk`.
    pub fn new(disk: Disk) -> Result<Self, Error> {
        let mut avail_features = VIRTIO_F_VERSION_1 | VIRTIO_BLK_F_FLUSH;
        if disk.read_only {
            avail_features |= VIRTIO_BLK_F_RO;
        }
        // Configuration space (§5.2.4): only `capacity`, in sectors, is offered.
        let config = (disk.capacity >> SECTOR_SHIFT).to_le_bytes();
        Ok(Self {
            disk,
            avail_features,
            acked_features: 0,
            config,
            queue_evts: [EventFd::new(libc::EFD_NONBLOCK).map_err(Error::EventFd)?],
            active: None,
            metrics: BlockMetrics::default(),
        })
    }

    /// Handles every available request, then interrupts the guest if it wants to know.
    pub fn process_queue(&mut self) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        let mut completed = false;
        while let Some(chain) = active.queue.pop_descriptor_chain(&active.mem) {
            let head = chain.head_index();
            let used_len = handle_chain(&mut self.disk, &mut self.metrics, &active.mem, chain);
            if let Err(e) = active.queue.add_used(&active.mem, head, used_len) {
                log::warn!("virtio-blk cannot return descriptor {head}: {e}");
            }
            completed = true;
        }
        if completed && active.queue.needs_notification(&active.mem).unwrap_or(true) {
            if let Err(e) = active.interrupt.trigger(INTERRUPT_USED_RING) {
                log::warn!("virtio-blk cannot interrupt the guest: {e}");
            }
        }
    }
}

/// Parses and executes one chain; returns the bytes the device wrote into guest buffers.
pub fn handle_chain(
    disk: &mut Disk,
    metrics: &mut BlockMetrics,
    mem: &GuestMemoryMmap,
    chain: virtio_queue::DescriptorChain<&GuestMemoryMmap>,
) -> u32 {
    let buffers = request::collect(chain);
    let (status, status_addr, written) = match request::parse(&buffers, mem, disk.capacity) {
        Ok(req) => {
            let (status, written) = execute(disk, metrics, mem, &req);
            (status, Some(req.status_addr), written)
        }
        Err(e) => {
            metrics.invalid_requests += 1;
            log::debug!("virtio-blk: invalid request: {e}");
            (VIRTIO_BLK_S_IOERR, request::status_of(&buffers, mem), 0)
        }
    };
    match status_addr.map(|addr| mem.write_obj(status, addr)) {
        Some(Ok(())) => written + 1,
        _ => 0,
    }
}

/// Executes a parsed request; returns its status and the data bytes written into the guest.
fn execute(
    disk: &mut Disk,
    metrics: &mut BlockMetrics,
    mem: &GuestMemoryMmap,
    req: &Request,
) -> (u8, u32) {
    let result = match req.request_type {
        RequestType::In => read_sectors(disk, mem, req).map(|n| {
            metrics.reads += 1;
            metrics.read_bytes += n;
            n as u32
        }),
        RequestType::Out if disk.read_only => Err(io::Error::from(io::ErrorKind::PermissionDenied)),
        RequestType::Out => write_sectors(disk, mem, req).map(|n| {
            metrics.writes += 1;
            metrics.write_bytes += n;
            0
        }),
        RequestType::Flush => {
            metrics.flushes += 1;
            if disk.read_only {
                Ok(0)
            } else {
                disk.file.sync_data().map(|()| 0)
            }
        }
        RequestType::GetId => write_id(disk, mem, req),
        RequestType::Unsupported(_) => {
            metrics.unsupported += 1;
            return (VIRTIO_BLK_S_UNSUPP, 0);
        }
    };
    match result {
        Ok(written) => (VIRTIO_BLK_S_OK, written),
        Err(e) => {
            metrics.io_errors += 1;
            log::debug!(
                "virtio-blk: {:?} at sector {} failed: {e}",
                req.request_type,
                req.sector
            );
            (VIRTIO_BLK_S_IOERR, 0)
        }
    }
}

fn read_sectors(disk: &mut Disk, mem: &GuestMemoryMmap, req: &Request) -> io::Result<u64> {
    disk.file
        .seek(SeekFrom::Start(req.sector << SECTOR_SHIFT))?;
    for &(addr, len) in &req.data {
        mem.read_exact_volatile_from(addr, &mut disk.file, len as usize)
            .map_err(io::Error::other)?;
    }
    Ok(req.data_len())
}

fn write_sectors(disk: &mut Disk, mem: &GuestMemoryMmap, req: &Request) -> io::Result<u64> {
    disk.file
        .seek(SeekFrom::Start(req.sector << SECTOR_SHIFT))?;
    for &(addr, len) in &req.data {
        mem.write_all_volatile_to(addr, &mut disk.file, len as usize)
            .map_err(io::Error::other)?;
    }
    Ok(req.data_len())
}

fn write_id(disk: &Disk, mem: &GuestMemoryMmap, req: &Request) -> io::Result<u32> {
    let &(addr, len) = req.data.first().ok_or(io::ErrorKind::InvalidInput)?;
    let n = request::id_len(u64::from(len));
    mem.write_slice(&disk.id[..n], addr)
        .map_err(io::Error::other)?;
    Ok(n as u32)
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        TYPE_BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn avail_features(&self) -> u64 {
        self.avail_features
    }

    fn set_acked_features(&mut self, features: u64) {
        self.acked_features = features & self.avail_features;
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {
        // Nothing in the offered configuration space is writable (no CONFIG_WCE).
    }

    fn queue_evts(&self) -> &[EventFd] {
        &self.queue_evts
    }

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        queues: Vec<Queue>,
        interrupt: VirtioInterrupt,
    ) -> Result<(), ActivateError> {
        let [queue]: [Queue; 1] =
            queues
                .try_into()
                .map_err(|q: Vec<Queue>| ActivateError::QueueCount {
                    expected: 1,
                    given: q.len(),
                })?;
        self.active = Some(Active {
            mem,
            queue,
            interrupt,
        });
        Ok(())
    }

    fn reset(&mut self) {
        self.active = None;
        self.acked_features = 0;
    }
}

#[cfg(test)]
mod tests;
