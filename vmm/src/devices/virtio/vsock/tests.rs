//! virtio-vsock against virtio-queue's mock driver and real Unix sockets in a temporary
//! directory: connections in both directions, credit, and hostile packets that must be dropped
//! or reset without a panic.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;

use virtio_bindings::bindings::virtio_ring::VRING_DESC_F_WRITE;
use virtio_queue::desc::split::Descriptor as SplitDescriptor;
use virtio_queue::desc::RawDescriptor;
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::Queue;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::tempdir::TempDir;

use super::muxer::{HostListener, Muxer};
use super::packet::{Header, HEADER_SIZE};
use super::*;
use crate::config::VsockConfig;
use crate::devices::virtio::VirtioDevice;

/// Guest memory: 4 MiB. The RX queue's rings sit at 0, the TX queue's at [`TX_RING`], packet
/// buffers from [`BUFFERS`] up.
const MEM_SIZE: usize = 4 << 20;
const TX_RING: u64 = 0x1_0000;
const BUFFERS: u64 = 0x2_0000;
/// Payload room of an RX buffer, as Linux gives them: one page.
const RX_PAYLOAD: u32 = 4096;
const GUEST_CID: u64 = 3;
/// A guest-side port, as Linux picks ephemeral ones.
const GUEST_PORT: u32 = 49152;
/// The guest's advertised receive space in most tests.
const GUEST_BUF_ALLOC: u32 = 64 << 10;
/// Mock queue size; tests stay well under it, since the mock does not wrap its rings.
const QUEUE_LEN: u16 = 256;

fn memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap()
}

/// A driver: two mock queues, a bump allocator for buffers, and what it put where.
struct Guest<'a> {
    mem: &'a GuestMemoryMmap,
    rxq: MockSplitQueue<'a, GuestMemoryMmap>,
    txq: MockSplitQueue<'a, GuestMemoryMmap>,
    rx: Queue,
    tx: Queue,
    rx_next_desc: u16,
    tx_next_desc: u16,
    rx_addrs: HashMap<u16, u64>,
    rx_seen: u16,
    next_addr: u64,
}

impl<'a> Guest<'a> {
    fn new(mem: &'a GuestMemoryMmap) -> Self {
        let rxq = MockSplitQueue::create(mem, GuestAddress(0), QUEUE_LEN);
        let txq = MockSplitQueue::create(mem, GuestAddress(TX_RING), QUEUE_LEN);
        let rx = rxq.create_queue().unwrap();
        let tx = txq.create_queue().unwrap();
        Self {
            mem,
            rxq,
            txq,
            rx,
            tx,
            rx_next_desc: 0,
            tx_next_desc: 0,
            rx_addrs: HashMap::new(),
            rx_seen: 0,
            next_addr: BUFFERS,
        }
    }

    fn alloc(&mut self, len: u32) -> u64 {
        let addr = self.next_addr;
        self.next_addr += u64::from(len).next_multiple_of(64);
        assert!(
            self.next_addr < MEM_SIZE as u64,
            "test used too much guest memory"
        );
        addr
    }

    /// Offers `descs` on the TX queue as one chain, then lets the muxer process it.
    fn send_descs(&mut self, muxer: &mut Muxer, descs: &[RawDescriptor]) {
        let first = self.tx_next_desc;
        let chained = chain(first, descs);
        self.txq.add_desc_chains(&chained, first).unwrap();
        self.tx_next_desc += descs.len() as u16;
        muxer.process_tx(self.mem, &mut self.tx);
    }

    /// Sends one packet in a single readable descriptor.
    fn send(&mut self, muxer: &mut Muxer, header: Header, data: &[u8]) {
        let len = (HEADER_SIZE + data.len()) as u32;
        let addr = self.alloc(len);
        self.mem
            .write_slice(&header.to_bytes(), GuestAddress(addr))
            .unwrap();
        self.mem
            .write_slice(data, GuestAddress(addr + HEADER_SIZE as u64))
            .unwrap();
        self.send_descs(muxer, &[readable(addr, len)]);
    }

    /// Offers `count` RX buffers of one page each.
    fn give_rx(&mut self, count: usize) {
        for _ in 0..count {
            let len = HEADER_SIZE as u32 + RX_PAYLOAD;
            let addr = self.alloc(len);
            let index = self.rx_next_desc;
            self.rxq
                .add_desc_chains(&[writable(addr, len)], index)
                .unwrap();
            self.rx_addrs.insert(index, addr);
            self.rx_next_desc += 1;
        }
    }

    /// Lets the muxer fill RX buffers; returns the packets it wrote since the last call.
    fn recv(&mut self, muxer: &mut Muxer) -> Vec<(Header, Vec<u8>)> {
        muxer.process_rx(self.mem, &mut self.rx);
        let used = self.rxq.used().idx().load();
        self.rx_used(used.wrapping_sub(self.rx_seen))
    }

    /// The next `count` packets in the RX used ring, however they got there.
    fn rx_used(&mut self, count: u16) -> Vec<(Header, Vec<u8>)> {
        let used = self.rxq.used().idx().load();
        assert_eq!(used.wrapping_sub(self.rx_seen), count, "used RX buffers");
        let mut packets = Vec::new();
        while self.rx_seen != used {
            let elem = self
                .rxq
                .used()
                .ring()
                .ref_at(self.rx_seen as usize)
                .unwrap()
                .load();
            self.rx_seen += 1;
            let addr = self.rx_addrs[&(elem.id() as u16)];
            let mut raw = [0u8; HEADER_SIZE];
            self.mem.read_slice(&mut raw, GuestAddress(addr)).unwrap();
            let header = Header::from_bytes(&raw);
            let mut data = vec![0u8; header.len as usize];
            self.mem
                .read_slice(&mut data, GuestAddress(addr + HEADER_SIZE as u64))
                .unwrap();
            assert_eq!(elem.len() as usize, HEADER_SIZE + data.len());
            packets.push((header, data));
        }
        packets
    }
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

/// Links descriptors placed from table index `first` into one chain.
fn chain(first: u16, descs: &[RawDescriptor]) -> Vec<RawDescriptor> {
    let last = descs.len() - 1;
    descs
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let d = SplitDescriptor::from(*d);
            let (flags, next) = if i == last {
                (d.flags(), 0)
            } else {
                (d.flags() | 1, first + i as u16 + 1)
            };
            RawDescriptor::from(SplitDescriptor::new(d.addr().0, d.len(), flags, next))
        })
        .collect()
}

/// A guest packet to the host.
fn guest_packet(op: u16, host_port: u32, len: u32) -> Header {
    Header {
        src_cid: GUEST_CID,
        dst_cid: HOST_CID,
        src_port: GUEST_PORT,
        dst_port: host_port,
        len,
        type_: TYPE_STREAM,
        op,
        flags: 0,
        buf_alloc: GUEST_BUF_ALLOC,
        fwd_cnt: 0,
    }
}

/// A muxer listening in a fresh directory; returns it with its socket path.
fn muxer() -> (TempDir, PathBuf, Muxer) {
    let dir = TempDir::new_with_prefix("/tmp/moat-vsock").unwrap();
    let path = dir.as_path().join("v.sock");
    let muxer = Muxer::new(GUEST_CID, HostListener::bind(&path).unwrap());
    (dir, path, muxer)
}

/// Marks every host socket the muxer watches as ready for what it wants, as epoll would.
fn poll_host(muxer: &mut Muxer) {
    for (fd, set) in muxer.interest() {
        muxer.on_host_event(fd, set);
    }
}

/// A host service on port `port`, as `<path>_<port>`.
fn host_service(path: &std::path::Path, port: u32) -> UnixListener {
    UnixListener::bind(format!("{}_{port}", path.display())).unwrap()
}

/// The guest connects to host port 1234, served; returns the host's end.
fn connected_from_guest(
    guest: &mut Guest,
    muxer: &mut Muxer,
    path: &std::path::Path,
) -> UnixStream {
    let service = host_service(path, 1234);
    guest.send(muxer, guest_packet(op::REQUEST, 1234, 0), &[]);
    let (host_end, _) = service.accept().unwrap();
    guest.give_rx(1);
    let packets = guest.recv(muxer);
    assert_eq!(packets[0].0.op, op::RESPONSE);
    host_end
}

#[test]
fn header_round_trips_through_its_wire_layout() {
    let header = guest_packet(op::RW, 7, 99);
    assert_eq!(Header::from_bytes(&header.to_bytes()), header);
}

#[test]
fn guest_connection_to_a_host_service_gets_a_response_and_data_flows_both_ways() {
    let mem = memory();
    let mut guest = Guest::new(&mem);
    let (_dir, path, mut muxer) = muxer();
    let mut host_end = connected_from_guest(&mut guest, &mut muxer, &path);

    guest.send(&mut muxer, guest_packet(op::RW, 1234, 5), b"hello");
    let mut got = [0u8; 5];
    host_end.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"hello");

    host_end.write_all(b"world").unwrap();
    poll_host(&mut muxer);
    guest.give_rx(1);
    let packets = guest.recv(&mut muxer);
    assert_eq!(packets.len(), 1);
    let (header, data) = &packets[0];
    assert_eq!(
        (header.op, header.src_port, header.dst_port),
        (op::RW, 1234, GUEST_PORT)
    );
    assert_eq!(data, b"world");
    assert_eq!(muxer.metrics.connections_opened, 1);
}

#[test]
fn guest_connection_to_a_port_nobody_serves_gets_rst() {
    let mem = memory();
    let mut guest = Guest::new(&mem);
    let (_dir, _path, mut muxer) = muxer();
    guest.send(&mut muxer, guest_packet(op::REQUEST, 9999, 0), &[]);
    guest.give_rx(1);
    let packets = guest.recv(&mut muxer);
    assert_eq!(packets[0].0.op, op::RST);
    assert_eq!(muxer.metrics.connections_refused, 1);
    assert_eq!(muxer.connection_count(), 0);
}

#[test]
fn guest_connection_to_a_full_listener_gets_rst_without_waiting() {
    use std::os::unix::io::AsRawFd;
    let mem = memory();
    let mut guest = Guest::new(&mem);
    let (_dir, path, mut muxer) = muxer();
    let service = host_service(&path, 4321);
    // A backlog of 0 holds one pending connection; fill it.
    // SAFETY: plain syscall on a listener this test owns.
    assert_eq!(unsafe { libc::listen(service.as_raw_fd(), 0) }, 0);
    let service_path = PathBuf::from(format!("{}_4321", path.display()));
    let mut waiting = Vec::new();
    loop {
        match muxer::connect_nonblocking(&service_path) {
            Ok(stream) => waiting.push(stream),
            Err(e) => {
                assert_eq!(e.raw_os_error(), Some(libc::EAGAIN), "{e}");
                break;
            }
        }
        assert!(waiting.len() < 64, "the backlog never filled");
    }
    // A blocking connect would wait here until the service accepted.
    guest.send(&mut muxer, guest_packet(op::REQUEST, 4321, 0), &[]);
    guest.give_rx(1);
    let packets = guest.recv(&mut muxer);
    assert_eq!(packets[0].0.op, op::RST);
    assert_eq!(muxer.metrics.connections_refused, 1);
}

#[test]
fn host_client_that_never_sends_its_line_is_dropped_at_its_deadline() {
    let (_dir, path, mut muxer) = muxer();
    assert_eq!(muxer.handshake_deadline(), None);
    let before = std::time::Instant::now();
    let mut client = UnixStream::connect(&path).unwrap();
    muxer.accept();
    let deadline = muxer.handshake_deadline().expect("a pending handshake");
    assert!(deadline >= before + muxer::HANDSHAKE_TIMEOUT);
    assert!(deadline <= std::time::Instant::now() + muxer::HANDSHAKE_TIMEOUT);

    // Just before the deadline it stays; at the deadline it goes, with nobody else connecting.
    muxer.expire_handshakes(deadline - std::time::Duration::from_millis(1));
    assert!(muxer.handshake_deadline().is_some());
    muxer.expire_handshakes(deadline);
    assert_eq!(muxer.handshake_deadline(), None);
    assert!(muxer.interest().is_empty());
    muxer.close_retired();
    let mut buf = [0u8; 1];
    assert_eq!(client.read(&mut buf).unwrap(), 0);
    assert_eq!(muxer.metrics.host_clients_dropped, 1);
}

/// A host client connects to guest port 52 and the guest accepts; returns the client.
fn connected_from_host(
    guest: &mut Guest,
    muxer: &mut Muxer,
    path: &std::path::Path,
) -> (UnixStream, u32) {
    let mut client = UnixStream::connect(path).unwrap();
    client.write_all(b"CONNECT 52\n").unwrap();
    muxer.accept();
    poll_host(muxer);
    guest.give_rx(1);
    let packets = guest.recv(muxer);
    let request = packets[0].0;
    assert_eq!(
        (request.op, request.dst_port, request.dst_cid),
        (op::REQUEST, 52, GUEST_CID)
    );
    assert!(request.src_port >= FIRST_LOCAL_PORT);

    let mut response = guest_packet(op::RESPONSE, request.src_port, 0);
    response.src_port = 52;
    guest.send(muxer, response, &[]);
    (client, request.src_port)
}

#[test]
fn host_client_connect_sends_a_request_and_the_response_says_ok() {
    let mem = memory();
    let mut guest = Guest::new(&mem);
    let (_dir, path, mut muxer) = muxer();
    let (mut client, local_port) = connected_from_host(&mut guest, &mut muxer, &path);

    let expected = format!("OK {local_port}\n");
    let mut line = vec![0u8; expected.len()];
    client.read_exact(&mut line).unwrap();
    assert_eq!(line, expected.as_bytes());

    client.write_all(b"ping").unwrap();
    poll_host(&mut muxer);
    guest.give_rx(1);
    let packets = guest.recv(&mut muxer);
    assert_eq!(
        (packets[0].0.op, packets[0].1.as_slice()),
        (op::RW, &b"ping"[..])
    );
}

#[test]
fn host_client_with_a_bad_line_is_dropped() {
    let (_dir, path, mut muxer) = muxer();
    let mut client = UnixStream::connect(&path).unwrap();
    client.write_all(b"HELLO 52\n").unwrap();
    muxer.accept();
    poll_host(&mut muxer);
    muxer.close_retired();
    let mut buf = [0u8; 1];
    assert_eq!(client.read(&mut buf).unwrap(), 0);
    assert_eq!(muxer.metrics.host_clients_dropped, 1);
}

#[test]
fn host_client_with_an_endless_line_is_dropped() {
    let (_dir, path, mut muxer) = muxer();
    let mut client = UnixStream::connect(&path).unwrap();
    client.write_all(&[b'7'; MAX_CONNECT_LINE + 1]).unwrap();
    muxer.accept();
    poll_host(&mut muxer);
    assert_eq!(muxer.metrics.host_clients_dropped, 1);
    assert!(muxer.interest().is_empty());
}

#[test]
fn guest_rst_closes_the_host_socket() {
    let mem = memory();
    let mut guest = Guest::new(&mem);
    let (_dir, path, mut muxer) = muxer();
    let mut host_end = connected_from_guest(&mut guest, &mut muxer, &path);

    guest.send(&mut muxer, guest_packet(op::RST, 1234, 0), &[]);
    muxer.close_retired();
    let mut buf = [0u8; 1];
    assert_eq!(host_end.read(&mut buf).unwrap(), 0);
    assert_eq!(muxer.connection_count(), 0);
}

#[test]
fn host_eof_sends_shutdown_to_the_guest() {
    let mem = memory();
    let mut guest = Guest::new(&mem);
    let (_dir, path, mut muxer) = muxer();
    let host_end = connected_from_guest(&mut guest, &mut muxer, &path);

    drop(host_end);
    poll_host(&mut muxer);
    guest.give_rx(1);
    let packets = guest.recv(&mut muxer);
    assert_eq!(
        (packets[0].0.op, packets[0].0.flags),
        (op::SHUTDOWN, SHUTDOWN_SEND)
    );
}

#[test]
fn guest_shutdown_both_ways_closes_with_rst() {
    let mem = memory();
    let mut guest = Guest::new(&mem);
    let (_dir, path, mut muxer) = muxer();
    let mut host_end = connected_from_guest(&mut guest, &mut muxer, &path);

    let mut shutdown = guest_packet(op::SHUTDOWN, 1234, 0);
    shutdown.flags = SHUTDOWN_RCV | SHUTDOWN_SEND;
    guest.send(&mut muxer, shutdown, &[]);
    guest.give_rx(1);
    assert_eq!(guest.recv(&mut muxer)[0].0.op, op::RST);
    muxer.close_retired();
    assert_eq!(host_end.read(&mut [0u8; 1]).unwrap(), 0);
}

#[test]
fn device_never_sends_beyond_the_guests_credit() {
    let mem = memory();
    let mut guest = Guest::new(&mem);
    let (_dir, path, mut muxer) = muxer();
    let service = host_service(&path, 1234);
    /// The guest has room for 6000 bytes: one full page and part of another.
    const CREDIT: u32 = 6000;
    let mut request = guest_packet(op::REQUEST, 1234, 0);
    request.buf_alloc = CREDIT;
    guest.send(&mut muxer, request, &[]);
    let (mut host_end, _) = service.accept().unwrap();
    host_end
        .write_all(&[0x5a; 3 * RX_PAYLOAD as usize])
        .unwrap();

    guest.give_rx(8);
    poll_host(&mut muxer);
    let packets = guest.recv(&mut muxer);
    let sent: usize = packets.iter().map(|(_, d)| d.len()).sum();
    assert_eq!(sent, CREDIT as usize);
    assert!(!muxer
        .interest()
        .iter()
        .any(|(_, set)| set.contains(EventSet::IN)));

    // The guest consumed everything: as much again flows, and no more.
    let mut update = guest_packet(op::CREDIT_UPDATE, 1234, 0);
    update.buf_alloc = CREDIT;
    update.fwd_cnt = CREDIT;
    guest.send(&mut muxer, update, &[]);
    poll_host(&mut muxer);
    let rest: usize = guest.recv(&mut muxer).iter().map(|(_, d)| d.len()).sum();
    assert_eq!(rest, CREDIT as usize);
}

#[test]
fn guest_sending_beyond_our_credit_is_reset() {
    let mem = memory();
    let mut guest = Guest::new(&mem);
    let (_dir, path, mut muxer) = muxer();
    // The host service never reads, so guest data piles up in the socket, then the buffer.
    let _host_end = connected_from_guest(&mut guest, &mut muxer, &path);
    let chunk = vec![1u8; MAX_PAYLOAD as usize];
    let mut sent = 0u64;
    while muxer.connection_count() == 1 {
        guest.send(&mut muxer, guest_packet(op::RW, 1234, MAX_PAYLOAD), &chunk);
        sent += u64::from(MAX_PAYLOAD);
        assert!(sent < 64 << 20, "the device never enforced its credit");
    }
    assert_eq!(muxer.metrics.credit_violations, 1);
    guest.give_rx(1);
    assert_eq!(guest.recv(&mut muxer)[0].0.op, op::RST);
}

#[test]
fn credit_request_gets_a_credit_update() {
    let mem = memory();
    let mut guest = Guest::new(&mem);
    let (_dir, path, mut muxer) = muxer();
    let _host_end = connected_from_guest(&mut guest, &mut muxer, &path);
    guest.send(&mut muxer, guest_packet(op::CREDIT_REQUEST, 1234, 0), &[]);
    guest.give_rx(1);
    let (header, _) = guest.recv(&mut muxer)[0];
    assert_eq!(
        (header.op, header.buf_alloc),
        (op::CREDIT_UPDATE, BUF_ALLOC)
    );
}

/// Sends a malformed chain and checks it was counted and answered by nothing.
fn assert_dropped(descs: impl FnOnce(&GuestMemoryMmap) -> Vec<RawDescriptor>) {
    let mem = memory();
    let mut guest = Guest::new(&mem);
    let (_dir, _path, mut muxer) = muxer();
    let descs = descs(&mem);
    guest.send_descs(&mut muxer, &descs);
    assert_eq!(muxer.metrics.malformed_packets, 1);
    guest.give_rx(1);
    assert!(guest.recv(&mut muxer).is_empty());
}

/// Writes a REQUEST header claiming `len` payload bytes at [`BUFFERS`].
fn header_at_buffers(mem: &GuestMemoryMmap, len: u32) {
    mem.write_slice(
        &guest_packet(op::RW, 1234, len).to_bytes(),
        GuestAddress(BUFFERS),
    )
    .unwrap();
}

#[test]
fn short_header_is_dropped() {
    assert_dropped(|mem| {
        header_at_buffers(mem, 0);
        vec![readable(BUFFERS, HEADER_SIZE as u32 - 1)]
    });
}

#[test]
fn payload_longer_than_the_chain_is_dropped() {
    assert_dropped(|mem| {
        header_at_buffers(mem, 100);
        vec![readable(BUFFERS, HEADER_SIZE as u32 + 99)]
    });
}

#[test]
fn huge_payload_length_is_dropped() {
    assert_dropped(|mem| {
        header_at_buffers(mem, u32::MAX);
        vec![
            readable(BUFFERS, HEADER_SIZE as u32),
            readable(BUFFERS, u32::MAX),
        ]
    });
}

#[test]
fn descriptor_outside_guest_memory_is_dropped() {
    assert_dropped(|_| vec![readable(MEM_SIZE as u64 - 8, HEADER_SIZE as u32)]);
}

#[test]
fn write_only_tx_descriptor_is_dropped() {
    assert_dropped(|mem| {
        header_at_buffers(mem, 0);
        vec![writable(BUFFERS, HEADER_SIZE as u32)]
    });
}

#[test]
fn wrong_source_cid_is_dropped() {
    assert_dropped(|mem| {
        let mut header = guest_packet(op::REQUEST, 1234, 0);
        header.src_cid = GUEST_CID + 1;
        mem.write_slice(&header.to_bytes(), GuestAddress(BUFFERS))
            .unwrap();
        vec![readable(BUFFERS, HEADER_SIZE as u32)]
    });
}

#[test]
fn header_split_across_descriptors_with_data_parses() {
    let mem = memory();
    let mut guest = Guest::new(&mem);
    let (_dir, path, mut muxer) = muxer();
    let mut host_end = connected_from_guest(&mut guest, &mut muxer, &path);
    let mut bytes = guest_packet(op::RW, 1234, 3).to_bytes().to_vec();
    bytes.extend_from_slice(b"abc");
    let addr = guest.alloc(64);
    mem.write_slice(&bytes, GuestAddress(addr)).unwrap();
    guest.send_descs(
        &mut muxer,
        &[
            readable(addr, 10),
            readable(addr + 10, 40),
            readable(addr + 50, 0),
            readable(addr + 50, 10),
        ],
    );
    let mut got = [0u8; 3];
    host_end.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"abc");
}

#[test]
fn unknown_type_is_answered_with_rst() {
    let mem = memory();
    let mut guest = Guest::new(&mem);
    let (_dir, _path, mut muxer) = muxer();
    let mut header = guest_packet(op::REQUEST, 1234, 0);
    header.type_ = 2;
    guest.send(&mut muxer, header, &[]);
    guest.give_rx(1);
    assert_eq!(guest.recv(&mut muxer)[0].0.op, op::RST);
    assert_eq!(muxer.metrics.malformed_packets, 1);
}

#[test]
fn unknown_op_on_a_connection_resets_it() {
    let mem = memory();
    let mut guest = Guest::new(&mem);
    let (_dir, path, mut muxer) = muxer();
    let _host_end = connected_from_guest(&mut guest, &mut muxer, &path);
    guest.send(&mut muxer, guest_packet(99, 1234, 0), &[]);
    guest.give_rx(1);
    assert_eq!(guest.recv(&mut muxer)[0].0.op, op::RST);
    assert_eq!(muxer.connection_count(), 0);
}

#[test]
fn rx_chain_the_device_cannot_write_is_returned_empty() {
    let mem = memory();
    let mut guest = Guest::new(&mem);
    let (_dir, _path, mut muxer) = muxer();
    guest.send(&mut muxer, guest_packet(op::REQUEST, 9999, 0), &[]);
    guest
        .rxq
        .add_desc_chains(&[readable(BUFFERS, 100)], 0)
        .unwrap();
    muxer.process_rx(&mem, &mut guest.rx);
    assert_eq!(guest.rxq.used().idx().load(), 1);
    assert_eq!(muxer.metrics.malformed_packets, 1);
}

#[test]
fn reserved_cid_is_refused() {
    let config = VsockConfig {
        guest_cid: 2,
        uds_path: PathBuf::from("/nonexistent/v.sock"),
    };
    assert!(matches!(Vsock::new(&config), Err(Error::ReservedCid(2))));
}

#[test]
fn device_offers_its_cid_and_removes_its_socket_when_dropped() {
    let dir = TempDir::new_with_prefix("/tmp/moat-vsock").unwrap();
    let config = VsockConfig {
        guest_cid: 0x1234_5678,
        uds_path: dir.as_path().join("v.sock"),
    };
    let device = Vsock::new(&config).unwrap();
    assert_eq!(device.device_type(), TYPE_VSOCK);
    let mut cid = [0u8; 8];
    device.read_config(0, &mut cid);
    assert_eq!(u64::from_le_bytes(cid), 0x1234_5678);
    assert!(config.uds_path.exists());
    assert!(matches!(Vsock::new(&config), Err(Error::Bind { .. })));
    drop(device);
    assert!(!config.uds_path.exists());
}

#[test]
fn event_loop_carries_host_data_to_the_guest() {
    use std::sync::{Arc, Mutex};

    use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};

    use crate::devices::virtio::VirtioInterrupt;
    use crate::devices::IrqLine;

    type Subscriber = Arc<Mutex<dyn MutEventSubscriber + Send>>;
    let mem = memory();
    let mut guest = Guest::new(&mem);
    let dir = TempDir::new_with_prefix("/tmp/moat-vsock").unwrap();
    let config = VsockConfig {
        guest_cid: GUEST_CID as u32,
        uds_path: dir.as_path().join("v.sock"),
    };
    let service = host_service(&config.uds_path, 1234);
    let mut device = Vsock::new(&config).unwrap();
    let event_queue = MockSplitQueue::create(&mem, GuestAddress(0x3_0000), QUEUE_LEN);
    let queues = vec![
        guest.rxq.create_queue().unwrap(),
        guest.txq.create_queue().unwrap(),
        event_queue.create_queue().unwrap(),
    ];
    let interrupt = VirtioInterrupt::new(IrqLine::new().unwrap());
    device
        .activate(mem.clone(), queues, interrupt.clone())
        .unwrap();
    let device = Arc::new(Mutex::new(device));
    let mut manager = EventManager::<Subscriber>::new().unwrap();
    manager.add_subscriber(device.clone());

    // The guest connects: a TX notification.
    let addr = guest.alloc(HEADER_SIZE as u32);
    let request = guest_packet(op::REQUEST, 1234, 0).to_bytes();
    mem.write_slice(&request, GuestAddress(addr)).unwrap();
    guest
        .txq
        .add_desc_chains(&[readable(addr, HEADER_SIZE as u32)], 0)
        .unwrap();
    device.lock().unwrap().queue_evts()[TX_QUEUE]
        .write(1)
        .unwrap();
    manager.run_with_timeout(100).unwrap();
    let (mut host_end, _) = service.accept().unwrap();

    // The host writes before the guest gave RX buffers; they arrive with an RX notification.
    host_end.write_all(b"through the loop").unwrap();
    manager.run_with_timeout(100).unwrap();
    guest.give_rx(2);
    device.lock().unwrap().queue_evts()[RX_QUEUE]
        .write(1)
        .unwrap();
    manager.run_with_timeout(100).unwrap();

    let mut packets = guest.rx_used(2);
    let (data_header, data) = packets.pop().unwrap();
    assert_eq!(packets[0].0.op, op::RESPONSE);
    assert_eq!(
        (data_header.op, data.as_slice()),
        (op::RW, &b"through the loop"[..])
    );
    assert_ne!(
        interrupt.status() & crate::devices::virtio::INTERRUPT_USED_RING,
        0
    );
}

#[test]
fn event_loop_drops_a_silent_host_client_when_its_time_is_up() {
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};

    type Subscriber = Arc<Mutex<dyn MutEventSubscriber + Send>>;
    let dir = TempDir::new_with_prefix("/tmp/moat-vsock").unwrap();
    let config = VsockConfig {
        guest_cid: GUEST_CID as u32,
        uds_path: dir.as_path().join("v.sock"),
    };
    let device: Subscriber = Arc::new(Mutex::new(Vsock::new(&config).unwrap()));
    let mut manager = EventManager::<Subscriber>::new().unwrap();
    manager.add_subscriber(device);

    // Connects and never sends its line; nobody else connects after it.
    let mut client = UnixStream::connect(&config.uds_path).unwrap();
    client.set_nonblocking(true).unwrap();
    let connected = Instant::now();
    let deadline = connected + muxer::HANDSHAKE_TIMEOUT * 3;
    let dropped = loop {
        manager.run_with_timeout(100).unwrap();
        match client.read(&mut [0u8; 1]) {
            Ok(0) => break true,
            Ok(_) => panic!("the device wrote to a client that never asked for a port"),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => panic!("{e}"),
        }
        if Instant::now() > deadline {
            break false;
        }
    };

    assert!(dropped, "the silent client was never dropped");
    assert!(connected.elapsed() >= muxer::HANDSHAKE_TIMEOUT - Duration::from_millis(50));
}
