//! virtio-blk against virtio-queue's mock driver: well-formed requests do what they say, and
//! malformed chains from a hostile guest fail the request without a panic.

use std::io::{Read, Write};

use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::split::Descriptor as SplitDescriptor;
use virtio_queue::desc::RawDescriptor;
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::tempfile::TempFile;

use super::*;
use crate::devices::virtio::block::request::{self, RequestError};
use crate::devices::IrqLine;

/// Guest memory for the tests: 1 MiB; the mock queue sits at its start.
const MEM_SIZE: usize = 0x10_0000;
const HEADER_ADDR: u64 = 0x1_0000;
const DATA_ADDR: u64 = 0x2_0000;
const STATUS_ADDR: u64 = 0x3_0000;
/// The test disk: 8 sectors, each filled with its own index.
const DISK_SECTORS: u64 = 8;

fn memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap()
}

fn disk(read_only: bool) -> (TempFile, Disk) {
    let file = TempFile::new().unwrap();
    let mut f = file.as_file();
    for sector in 0..DISK_SECTORS {
        f.write_all(&[sector as u8; 512]).unwrap();
    }
    let disk = Disk::open(file.as_path(), read_only).unwrap();
    (file, disk)
}

fn readable(addr: u64, len: u32) -> RawDescriptor {
    RawDescriptor::from(SplitDescriptor::new(addr, len, 0, 0))
}

fn writable(addr: u64, len: u32) -> RawDescriptor {
    RawDescriptor::from(SplitDescriptor::new(
        addr,
        len,
        VRING_DESC_F_WRITE as u16,
        0,
    ))
}

/// Links descriptors placed from table index `first` into one chain, as a driver would.
fn linked(first: u16, descs: &[RawDescriptor]) -> Vec<RawDescriptor> {
    let last = descs.len() - 1;
    descs
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let d = SplitDescriptor::from(*d);
            let (flags, next) = if i == last {
                (d.flags(), 0)
            } else {
                (d.flags() | VRING_DESC_F_NEXT as u16, first + i as u16 + 1)
            };
            RawDescriptor::from(SplitDescriptor::new(d.addr().0, d.len(), flags, next))
        })
        .collect()
}

fn write_header(mem: &GuestMemoryMmap, type_: u32, sector: u64) {
    mem.write_obj(type_.to_le(), GuestAddress(HEADER_ADDR))
        .unwrap();
    mem.write_obj(0u32, GuestAddress(HEADER_ADDR + 4)).unwrap();
    mem.write_obj(sector.to_le(), GuestAddress(HEADER_ADDR + 8))
        .unwrap();
}

/// Runs one chain through the device logic; returns (used length, status byte, metrics).
fn run(mem: &GuestMemoryMmap, disk: &mut Disk, descs: &[RawDescriptor]) -> (u32, u8, BlockMetrics) {
    mem.write_obj(0xffu8, GuestAddress(STATUS_ADDR)).unwrap();
    let queue = MockSplitQueue::new(mem, 16);
    let chain = queue.build_desc_chain(descs).unwrap();
    let mut metrics = BlockMetrics::default();
    let used = handle_chain(disk, &mut metrics, mem, chain);
    let status = mem.read_obj(GuestAddress(STATUS_ADDR)).unwrap();
    (used, status, metrics)
}

fn parse_error(mem: &GuestMemoryMmap, descs: &[RawDescriptor]) -> RequestError {
    let queue = MockSplitQueue::new(mem, 16);
    let chain = queue.build_desc_chain(descs).unwrap();
    request::parse(&request::collect(chain), mem, DISK_SECTORS * 512).unwrap_err()
}

#[test]
fn read_copies_sectors_into_guest_memory() {
    let mem = memory();
    let (_file, mut disk) = disk(false);
    write_header(&mem, 0, 2);
    let descs = [
        readable(HEADER_ADDR, 16),
        writable(DATA_ADDR, 1024),
        writable(STATUS_ADDR, 1),
    ];
    let (used, status, metrics) = run(&mem, &mut disk, &descs);
    assert_eq!((used, status), (1025, VIRTIO_BLK_S_OK));
    let mut data = [0u8; 1024];
    mem.read_slice(&mut data, GuestAddress(DATA_ADDR)).unwrap();
    assert!(data[..512].iter().all(|&b| b == 2) && data[512..].iter().all(|&b| b == 3));
    assert_eq!((metrics.reads, metrics.read_bytes), (1, 1024));
}

#[test]
fn write_reaches_the_disk() {
    let mem = memory();
    let (file, mut disk) = disk(false);
    write_header(&mem, 1, 5);
    mem.write_slice(&[0xab; 512], GuestAddress(DATA_ADDR))
        .unwrap();
    let descs = [
        readable(HEADER_ADDR, 16),
        readable(DATA_ADDR, 512),
        writable(STATUS_ADDR, 1),
    ];
    let (used, status, _) = run(&mem, &mut disk, &descs);
    assert_eq!((used, status), (1, VIRTIO_BLK_S_OK));
    let mut contents = Vec::new();
    std::fs::File::open(file.as_path())
        .unwrap()
        .read_to_end(&mut contents)
        .unwrap();
    assert!(contents[5 * 512..6 * 512].iter().all(|&b| b == 0xab));
    assert!(contents[6 * 512..7 * 512].iter().all(|&b| b == 6));
}

#[test]
fn read_only_disk_refuses_writes_and_stays_unchanged() {
    let mem = memory();
    let (file, mut disk) = disk(true);
    write_header(&mem, 1, 0);
    mem.write_slice(&[0xab; 512], GuestAddress(DATA_ADDR))
        .unwrap();
    let descs = [
        readable(HEADER_ADDR, 16),
        readable(DATA_ADDR, 512),
        writable(STATUS_ADDR, 1),
    ];
    let (_, status, metrics) = run(&mem, &mut disk, &descs);
    assert_eq!(status, VIRTIO_BLK_S_IOERR);
    assert_eq!(metrics.io_errors, 1);
    let contents = std::fs::read(file.as_path()).unwrap();
    assert!(contents[..512].iter().all(|&b| b == 0));
}

#[test]
fn read_only_disk_offers_the_ro_feature() {
    let (_file, disk) = disk(true);
    let block = Block::new(disk).unwrap();
    assert_ne!(block.avail_features() & VIRTIO_BLK_F_RO, 0);
}

#[test]
fn get_id_returns_the_disk_id() {
    let mem = memory();
    let (_file, mut disk) = disk(true);
    write_header(&mem, 8, 0);
    let descs = [
        readable(HEADER_ADDR, 16),
        writable(DATA_ADDR, 20),
        writable(STATUS_ADDR, 1),
    ];
    let (used, status, _) = run(&mem, &mut disk, &descs);
    assert_eq!((used, status), (21, VIRTIO_BLK_S_OK));
    let mut id = [0u8; 4];
    mem.read_slice(&mut id, GuestAddress(DATA_ADDR)).unwrap();
    assert_eq!(&id, b"moat");
}

#[test]
fn flush_succeeds() {
    let mem = memory();
    let (_file, mut disk) = disk(false);
    write_header(&mem, 4, 0);
    let (_, status, metrics) = run(
        &mem,
        &mut disk,
        &[readable(HEADER_ADDR, 16), writable(STATUS_ADDR, 1)],
    );
    assert_eq!((status, metrics.flushes), (VIRTIO_BLK_S_OK, 1));
}

#[test]
fn unknown_types_are_unsupported() {
    let mem = memory();
    let (_file, mut disk) = disk(false);
    write_header(&mem, 11, 0);
    let (_, status, _) = run(
        &mem,
        &mut disk,
        &[readable(HEADER_ADDR, 16), writable(STATUS_ADDR, 1)],
    );
    assert_eq!(status, VIRTIO_BLK_S_UNSUPP);
}

#[test]
fn a_lone_descriptor_is_rejected() {
    let mem = memory();
    let (_file, mut disk) = disk(false);
    write_header(&mem, 0, 0);
    assert_eq!(
        parse_error(&mem, &[readable(HEADER_ADDR, 16)]),
        RequestError::ChainTooShort(1)
    );
    let (used, status, metrics) = run(&mem, &mut disk, &[readable(HEADER_ADDR, 16)]);
    assert_eq!((used, status, metrics.invalid_requests), (0, 0xff, 1));
}

#[test]
fn a_writable_or_short_header_is_rejected() {
    let mem = memory();
    write_header(&mem, 0, 0);
    let status = writable(STATUS_ADDR, 1);
    assert_eq!(
        parse_error(&mem, &[writable(HEADER_ADDR, 16), status]),
        RequestError::BadHeader
    );
    assert_eq!(
        parse_error(&mem, &[readable(HEADER_ADDR, 15), status]),
        RequestError::BadHeader
    );
}

#[test]
fn a_read_only_status_is_rejected_and_never_written() {
    let mem = memory();
    let (_file, mut disk) = disk(false);
    write_header(&mem, 0, 0);
    let descs = [
        readable(HEADER_ADDR, 16),
        writable(DATA_ADDR, 512),
        readable(STATUS_ADDR, 1),
    ];
    assert_eq!(parse_error(&mem, &descs), RequestError::BadStatus);
    let (used, status, _) = run(&mem, &mut disk, &descs);
    assert_eq!((used, status), (0, 0xff));
}

#[test]
fn data_in_the_wrong_direction_is_rejected_with_ioerr() {
    let mem = memory();
    let (_file, mut disk) = disk(false);
    write_header(&mem, 0, 0);
    let descs = [
        readable(HEADER_ADDR, 16),
        readable(DATA_ADDR, 512),
        writable(STATUS_ADDR, 1),
    ];
    assert_eq!(parse_error(&mem, &descs), RequestError::DataDirection);
    let (used, status, _) = run(&mem, &mut disk, &descs);
    assert_eq!((used, status), (1, VIRTIO_BLK_S_IOERR));
    write_header(&mem, 1, 0);
    let descs = [
        readable(HEADER_ADDR, 16),
        writable(DATA_ADDR, 512),
        writable(STATUS_ADDR, 1),
    ];
    assert_eq!(parse_error(&mem, &descs), RequestError::DataDirection);
}

#[test]
fn buffers_outside_guest_memory_are_rejected() {
    let mem = memory();
    let (_file, mut disk) = disk(false);
    write_header(&mem, 0, 0);
    let end = MEM_SIZE as u64;
    let descs = [
        readable(HEADER_ADDR, 16),
        writable(end - 256, 512),
        writable(STATUS_ADDR, 1),
    ];
    assert!(matches!(
        parse_error(&mem, &descs),
        RequestError::OutOfMemory { .. }
    ));
    let (used, status, _) = run(&mem, &mut disk, &descs);
    assert_eq!((used, status), (1, VIRTIO_BLK_S_IOERR));

    let far = [
        readable(HEADER_ADDR, 16),
        writable(u64::MAX - 8, 512),
        writable(STATUS_ADDR, 1),
    ];
    assert!(matches!(
        parse_error(&mem, &far),
        RequestError::OutOfMemory { .. }
    ));
    let header_out = [readable(end, 16), writable(STATUS_ADDR, 1)];
    assert!(matches!(
        parse_error(&mem, &header_out),
        RequestError::OutOfMemory { .. }
    ));
    let status_out = [readable(HEADER_ADDR, 16), writable(end + 1, 1)];
    assert!(matches!(
        parse_error(&mem, &status_out),
        RequestError::OutOfMemory { .. }
    ));
}

#[test]
fn lengths_that_are_not_whole_sectors_are_rejected() {
    let mem = memory();
    write_header(&mem, 0, 0);
    let descs = [
        readable(HEADER_ADDR, 16),
        writable(DATA_ADDR, 100),
        writable(STATUS_ADDR, 1),
    ];
    assert_eq!(
        parse_error(&mem, &descs),
        RequestError::UnalignedLength(100)
    );
}

#[test]
fn requests_past_the_disk_end_are_rejected() {
    let mem = memory();
    let descs = [
        readable(HEADER_ADDR, 16),
        writable(DATA_ADDR, 1024),
        writable(STATUS_ADDR, 1),
    ];
    write_header(&mem, 0, DISK_SECTORS - 1);
    assert!(matches!(
        parse_error(&mem, &descs),
        RequestError::BeyondCapacity { .. }
    ));
    // A sector number whose byte offset overflows 64 bits.
    write_header(&mem, 0, u64::MAX / 2);
    assert!(matches!(
        parse_error(&mem, &descs),
        RequestError::BeyondCapacity { .. }
    ));
}

#[test]
fn get_id_without_a_buffer_is_rejected() {
    let mem = memory();
    write_header(&mem, 8, 0);
    let descs = [readable(HEADER_ADDR, 16), writable(STATUS_ADDR, 1)];
    assert_eq!(parse_error(&mem, &descs), RequestError::NoIdBuffer);
}

#[test]
fn processing_a_queue_completes_every_chain_and_interrupts() {
    let mem = memory();
    let (_file, disk) = disk(false);
    let mut block = Block::new(disk).unwrap();
    let mock = MockSplitQueue::new(&mem, 16);
    write_header(&mem, 0, 1);
    let chain = [
        readable(HEADER_ADDR, 16),
        writable(DATA_ADDR, 512),
        writable(STATUS_ADDR, 1),
    ];
    mock.add_desc_chains(&linked(0, &chain), 0).unwrap();
    // A second, malformed chain: a lone header.
    mock.add_desc_chains(&[readable(HEADER_ADDR, 16)], 3)
        .unwrap();
    let queue: Queue = mock.create_queue().unwrap();
    let irq = IrqLine::new().unwrap();
    let irq_evt = irq.evt().try_clone().unwrap();
    let interrupt = VirtioInterrupt::new(irq);
    block
        .activate(mem.clone(), vec![queue], interrupt.clone())
        .unwrap();

    block.process_queue();

    assert_eq!(mock.used().idx().load(), 2);
    assert_eq!(irq_evt.read().unwrap(), 1);
    assert_eq!(interrupt.status(), INTERRUPT_USED_RING);
    assert_eq!(
        (block.metrics.reads, block.metrics.invalid_requests),
        (1, 1)
    );
}

#[test]
fn a_second_writer_cannot_open_a_disk_in_use() {
    let (file, _disk) = disk(false);
    assert!(matches!(
        Disk::open(file.as_path(), false),
        Err(Error::InUse { .. })
    ));
    assert!(matches!(
        Disk::open(file.as_path(), true),
        Err(Error::InUse { .. })
    ));
}

#[test]
fn activation_needs_exactly_one_queue() {
    let (_file, disk) = disk(false);
    let mut block = Block::new(disk).unwrap();
    let interrupt = VirtioInterrupt::new(IrqLine::new().unwrap());
    let result = block.activate(memory(), Vec::new(), interrupt);
    assert!(matches!(
        result,
        Err(ActivateError::QueueCount {
            expected: 1,
            given: 0
        })
    ));
}
