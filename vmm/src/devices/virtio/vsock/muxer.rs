//! The connection table: host listener, host clients' handshakes, and the queue processing that
//! moves packets between the guest and host sockets.
//!
//! [`Muxer::process_tx`] and [`Muxer::process_rx`] are plain functions over a queue and guest
//! memory; the event loop only tells the muxer which host sockets are ready
//! ([`Muxer::accept`], [`Muxer::on_host_event`]) and asks what to watch ([`Muxer::interest`]).

use std::collections::{HashMap, VecDeque};
use std::io::{self, Read};
use std::os::unix::io::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::EventSet;

use super::connection::{Connection, HostRead, Verdict};
use super::metrics::VsockMetrics;
use super::packet::{self, Buffer, Header, TxPacket};
use super::{
    op, BUF_ALLOC, FIRST_LOCAL_PORT, HOST_CID, MAX_CONNECTIONS, MAX_CONNECT_LINE, MAX_HANDSHAKES,
    MAX_PAYLOAD, MAX_PENDING_CONTROL, TYPE_STREAM,
};

/// How long a host client may take to send its `CONNECT` line before it is dropped (the device
/// arms a timer for the oldest one, see [`Muxer::handshake_deadline`]).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// A connection's identity: (our port, the guest's port).
type Key = (u32, u32);

/// The Unix socket host clients connect to; its file goes away with it.
#[derive(Debug)]
pub struct HostListener {
    listener: UnixListener,
    path: PathBuf,
}

impl HostListener {
    /// Listens at `path`, non-blocking.
    pub fn bind(path: &Path) -> io::Result<Self> {
        let listener = UnixListener::bind(path)?;
        let host = Self {
            listener,
            path: path.to_owned(),
        };
        host.listener.set_nonblocking(true)?;
        Ok(host)
    }

    /// The listening socket.
    pub fn as_raw_fd(&self) -> RawFd {
        self.listener.as_raw_fd()
    }
}

impl Drop for HostListener {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// A host client that has not yet sent its whole `CONNECT <port>\n` line.
#[derive(Debug)]
struct Handshake {
    stream: UnixStream,
    line: Vec<u8>,
    since: Instant,
}

/// Every connection of one vsock device.
#[derive(Debug)]
pub struct Muxer {
    guest_cid: u64,
    listener: HostListener,
    conns: HashMap<Key, Connection>,
    by_fd: HashMap<RawFd, Key>,
    handshakes: HashMap<RawFd, Handshake>,
    /// Control packets that belong to no live connection (RSTs), oldest first.
    control: VecDeque<Header>,
    /// Connections in the order they get RX buffers, for fairness.
    rotation: VecDeque<Key>,
    next_local_port: u32,
    scratch: Vec<u8>,
    /// Sockets closed by the device, kept open until the event loop stopped watching them so
    /// that their numbers are not reused while still registered.
    retired: Vec<UnixStream>,
    /// What the device did.
    pub metrics: VsockMetrics,
}

impl Muxer {
    /// A muxer for a guest with context id `guest_cid`, serving host clients on `listener`.
    pub fn new(guest_cid: u64, listener: HostListener) -> Self {
        Self {
            guest_cid,
            listener,
            conns: HashMap::new(),
            by_fd: HashMap::new(),
            handshakes: HashMap::new(),
            control: VecDeque::new(),
            rotation: VecDeque::new(),
            next_local_port: FIRST_LOCAL_PORT,
            scratch: vec![0; MAX_PAYLOAD as usize],
            retired: Vec::new(),
            metrics: VsockMetrics::default(),
        }
    }

    /// The listening socket's fd.
    pub fn listener_fd(&self) -> RawFd {
        self.listener.as_raw_fd()
    }

    /// Live connections.
    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    /// Closes every connection (device reset); the listener stays.
    pub fn reset(&mut self) {
        self.by_fd.clear();
        self.rotation.clear();
        self.control.clear();
        let conns = std::mem::take(&mut self.conns);
        self.retired
            .extend(conns.into_values().map(Connection::into_stream));
        let handshakes = std::mem::take(&mut self.handshakes);
        self.retired
            .extend(handshakes.into_values().map(|h| h.stream));
    }

    /// Every host socket to watch and for what; sockets not listed are not watched.
    pub fn interest(&self) -> Vec<(RawFd, EventSet)> {
        let handshakes = self.handshakes.keys().map(|&fd| (fd, EventSet::IN));
        let conns = self
            .conns
            .values()
            .map(|c| (c.stream().as_raw_fd(), c.interest()))
            .filter(|(_, set)| !set.is_empty());
        handshakes.chain(conns).collect()
    }

    /// Closes the sockets of dropped connections; call once the event loop no longer watches
    /// them.
    pub fn close_retired(&mut self) {
        self.retired.clear();
    }

    // ----- guest to host -------------------------------------------------------------------

    /// Handles the guest's TX packets; returns whether any descriptor was used. Stops early
    /// while too many control packets wait for RX buffers.
    pub fn process_tx(&mut self, mem: &GuestMemoryMmap, queue: &mut Queue) -> bool {
        let mut used = false;
        while self.control.len() < MAX_PENDING_CONTROL {
            let Some(chain) = queue.pop_descriptor_chain(mem) else {
                break;
            };
            let head = chain.head_index();
            match packet::parse_tx(&packet::collect(chain), mem) {
                Ok(packet) => self.on_guest_packet(packet),
                Err(e) => {
                    self.metrics.malformed_packets += 1;
                    log::debug!("virtio-vsock: dropped a TX chain: {e}");
                }
            }
            if let Err(e) = queue.add_used(mem, head, 0) {
                log::debug!("virtio-vsock: cannot return TX descriptor {head}: {e}");
            }
            used = true;
        }
        used
    }

    /// Whether TX processing stopped for want of room for control packets.
    pub fn tx_stalled(&self) -> bool {
        self.control.len() >= MAX_PENDING_CONTROL
    }

    fn on_guest_packet(&mut self, packet: TxPacket) {
        let h = packet.header;
        if h.src_cid != self.guest_cid || h.dst_cid != HOST_CID {
            self.metrics.malformed_packets += 1;
            log::debug!(
                "virtio-vsock: dropped a packet from cid {} to cid {}",
                h.src_cid,
                h.dst_cid
            );
            return;
        }
        self.metrics.tx_packets += 1;
        if h.type_ != TYPE_STREAM {
            self.metrics.malformed_packets += 1;
            self.answer_rst(&h);
            return;
        }
        let key = (h.dst_port, h.src_port);
        match self.conns.get_mut(&key) {
            Some(conn) => {
                let verdict = conn.on_packet(&h, &packet.data, &mut self.metrics);
                self.settle(key, verdict);
            }
            None if h.op == op::REQUEST => self.guest_connect(&h),
            None if h.op == op::RST => self.metrics.rst_received += 1,
            None => self.answer_rst(&h),
        }
    }

    /// A guest connects to host port `dst_port`: the Unix socket `<path>_<port>`.
    fn guest_connect(&mut self, request: &Header) {
        if self.conns.len() >= MAX_CONNECTIONS {
            self.metrics.connections_refused += 1;
            self.answer_rst(request);
            return;
        }
        let mut path = self.listener.path.clone().into_os_string();
        path.push(format!("_{}", request.dst_port));
        // Never blocks the event loop: a listener whose backlog is full refuses (EAGAIN), and the
        // guest sees an RST as for any refused connection.
        let stream = connect_nonblocking(Path::new(&path));
        match stream {
            Ok(stream) => {
                let conn = Connection::accepted(stream, self.guest_cid, request);
                self.insert(conn);
            }
            Err(e) => {
                self.metrics.connections_refused += 1;
                log::debug!(
                    "virtio-vsock: guest connection to {} refused: {e}",
                    PathBuf::from(path).display()
                );
                self.answer_rst(request);
            }
        }
    }

    fn insert(&mut self, conn: Connection) {
        let key = (conn.local_port, conn.peer_port);
        self.metrics.connections_opened += 1;
        self.by_fd.insert(conn.stream().as_raw_fd(), key);
        self.rotation.push_back(key);
        self.conns.insert(key, conn);
    }

    /// Applies what a connection asked for after an event.
    fn settle(&mut self, key: Key, verdict: Verdict) {
        let Some(conn) = self.conns.get(&key) else {
            return;
        };
        match verdict {
            Verdict::Keep if conn.finished() => self.close(key, true),
            Verdict::Keep => {}
            Verdict::Reset => self.close(key, true),
            Verdict::Close => self.close(key, false),
        }
    }

    /// Drops a connection, first queueing an RST for the guest if `rst`.
    fn close(&mut self, key: Key, rst: bool) {
        let Some(mut conn) = self.conns.remove(&key) else {
            return;
        };
        if rst {
            let header = conn.header(op::RST, 0, 0);
            self.push_control(header);
        }
        self.by_fd.remove(&conn.stream().as_raw_fd());
        self.rotation.retain(|k| *k != key);
        self.retired.push(conn.into_stream());
    }

    /// Answers a packet that belongs to no connection with an RST (§5.10.6.4).
    fn answer_rst(&mut self, to: &Header) {
        if to.op == op::RST {
            return;
        }
        self.push_control(Header {
            src_cid: HOST_CID,
            dst_cid: self.guest_cid,
            src_port: to.dst_port,
            dst_port: to.src_port,
            type_: TYPE_STREAM,
            op: op::RST,
            buf_alloc: BUF_ALLOC,
            ..Header::default()
        });
    }

    fn push_control(&mut self, header: Header) {
        // process_tx stops below the bound, so only resets from host events can overflow it;
        // the guest's side of such a connection then times out instead.
        if self.control.len() < MAX_PENDING_CONTROL * 2 {
            self.control.push_back(header);
        }
    }

    // ----- host to guest -------------------------------------------------------------------

    /// Fills the guest's RX buffers with pending packets; returns whether any was used.
    pub fn process_rx(&mut self, mem: &GuestMemoryMmap, queue: &mut Queue) -> bool {
        let mut used = false;
        while self.has_rx_work() {
            let Some(chain) = queue.pop_descriptor_chain(mem) else {
                break;
            };
            let head = chain.head_index();
            let buffers = packet::collect(chain);
            let written = match packet::rx_capacity(&buffers, mem) {
                Ok(capacity) => self.fill_rx(mem, &buffers, capacity),
                Err(e) => {
                    self.metrics.malformed_packets += 1;
                    log::debug!("virtio-vsock: dropped an RX chain: {e}");
                    Some(0)
                }
            };
            let Some(len) = written else {
                // Nothing was ready after all (a read would block): give the chain back.
                queue.set_next_avail(queue.next_avail().wrapping_sub(1));
                break;
            };
            if let Err(e) = queue.add_used(mem, head, len) {
                log::debug!("virtio-vsock: cannot return RX descriptor {head}: {e}");
            }
            used = true;
        }
        used
    }

    fn has_rx_work(&self) -> bool {
        !self.control.is_empty() || self.conns.values().any(Connection::has_rx_work)
    }

    /// Writes one packet into a checked RX chain; `None` if there was nothing to send.
    fn fill_rx(
        &mut self,
        mem: &GuestMemoryMmap,
        buffers: &[Buffer],
        capacity: usize,
    ) -> Option<u32> {
        for _ in 0..=self.rotation.len() {
            if let Some(header) = self.control.pop_front() {
                return Some(self.write_packet(mem, buffers, &header, &[]));
            }
            let key = self.rotation.pop_front()?;
            self.rotation.push_back(key);
            if let Some(len) = self.fill_from(key, mem, buffers, capacity) {
                return Some(len);
            }
        }
        None
    }

    /// One packet of connection `key`: a control packet, else host data.
    fn fill_from(
        &mut self,
        key: Key,
        mem: &GuestMemoryMmap,
        buffers: &[Buffer],
        capacity: usize,
    ) -> Option<u32> {
        let conn = self.conns.get_mut(&key)?;
        let header = match conn.next_control() {
            Some(header) => header,
            None => return self.fill_data(key, mem, buffers, capacity),
        };
        let len = self.write_packet(mem, buffers, &header, &[]);
        self.settle(key, Verdict::Keep);
        Some(len)
    }

    /// One data packet of connection `key`, or the SHUTDOWN or RST that ends its host side.
    fn fill_data(
        &mut self,
        key: Key,
        mem: &GuestMemoryMmap,
        buffers: &[Buffer],
        capacity: usize,
    ) -> Option<u32> {
        let conn = self.conns.get_mut(&key)?;
        let mut scratch = std::mem::take(&mut self.scratch);
        let limit = capacity.min(scratch.len());
        let result = match conn.read_host(&mut scratch[..limit]) {
            HostRead::Data(n) => {
                let header = conn.data_header(n);
                self.metrics.rx_bytes += n as u64;
                Some(self.write_packet(mem, buffers, &header, &scratch[..n]))
            }
            HostRead::Eof => self.fill_from(key, mem, buffers, capacity),
            HostRead::WouldBlock => None,
            HostRead::Failed => {
                self.close(key, true);
                let header = self.control.pop_front()?;
                Some(self.write_packet(mem, buffers, &header, &[]))
            }
        };
        self.scratch = scratch;
        result
    }

    /// Writes a packet into a checked RX chain; returns the used length.
    fn write_packet(
        &mut self,
        mem: &GuestMemoryMmap,
        buffers: &[Buffer],
        header: &Header,
        data: &[u8],
    ) -> u32 {
        match packet::write_rx(buffers, mem, header, data) {
            Ok(len) => {
                self.metrics.rx_packets += 1;
                if header.op == op::RST {
                    self.metrics.rst_sent += 1;
                }
                len
            }
            Err(e) => {
                self.metrics.malformed_packets += 1;
                log::debug!("virtio-vsock: cannot write an RX packet: {e}");
                0
            }
        }
    }

    // ----- host sockets --------------------------------------------------------------------

    /// Accepts every waiting host client; each must then send its `CONNECT` line.
    pub fn accept(&mut self) {
        self.expire_handshakes(Instant::now());
        loop {
            match self.listener.listener.accept() {
                Ok((stream, _)) => self.start_handshake(stream),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    if e.kind() != io::ErrorKind::WouldBlock {
                        log::warn!("virtio-vsock cannot accept a host client: {e}");
                    }
                    break;
                }
            }
        }
    }

    fn start_handshake(&mut self, stream: UnixStream) {
        if stream.set_nonblocking(true).is_err() {
            self.metrics.host_clients_dropped += 1;
            return;
        }
        if self.handshakes.len() >= MAX_HANDSHAKES {
            let oldest = self
                .handshakes
                .iter()
                .min_by_key(|(_, h)| h.since)
                .map(|(&fd, _)| fd);
            if let Some(fd) = oldest {
                self.drop_handshake(fd);
            }
        }
        let handshake = Handshake {
            stream,
            line: Vec::with_capacity(MAX_CONNECT_LINE),
            since: Instant::now(),
        };
        self.handshakes
            .insert(handshake.stream.as_raw_fd(), handshake);
    }

    /// When the oldest host client still owing its `CONNECT` line runs out of time.
    pub fn handshake_deadline(&self) -> Option<Instant> {
        let oldest = self.handshakes.values().map(|h| h.since).min()?;
        Some(oldest + HANDSHAKE_TIMEOUT)
    }

    /// Drops host clients that, at `now`, took too long over their line.
    pub fn expire_handshakes(&mut self, now: Instant) {
        let stale: Vec<RawFd> = self
            .handshakes
            .iter()
            .filter(|(_, h)| now.duration_since(h.since) >= HANDSHAKE_TIMEOUT)
            .map(|(&fd, _)| fd)
            .collect();
        for fd in stale {
            self.drop_handshake(fd);
        }
    }

    fn drop_handshake(&mut self, fd: RawFd) {
        if let Some(h) = self.handshakes.remove(&fd) {
            self.metrics.host_clients_dropped += 1;
            self.retired.push(h.stream);
        }
    }

    /// A host socket polled ready with `events`.
    pub fn on_host_event(&mut self, fd: RawFd, events: EventSet) {
        if self.handshakes.contains_key(&fd) {
            self.continue_handshake(fd);
            return;
        }
        let Some(&key) = self.by_fd.get(&fd) else {
            return;
        };
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        if events.intersects(EventSet::IN | EventSet::HANG_UP | EventSet::ERROR) {
            conn.mark_readable();
        }
        let verdict = conn.flush(&mut self.metrics);
        self.settle(key, verdict);
    }

    /// Reads the client's line a byte at a time, so that no byte of its data is consumed.
    fn continue_handshake(&mut self, fd: RawFd) {
        let Some(h) = self.handshakes.get_mut(&fd) else {
            return;
        };
        let mut byte = [0u8; 1];
        loop {
            match h.stream.read(&mut byte) {
                Ok(1) if byte[0] == b'\n' => break,
                Ok(1) if h.line.len() < MAX_CONNECT_LINE => h.line.push(byte[0]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // End of file, an error, or a line too long.
                _ => return self.drop_handshake(fd),
            }
        }
        let port = parse_connect(&h.line);
        let Some(h) = self.handshakes.remove(&fd) else {
            return;
        };
        match port {
            Some(port) => self.host_connect(h.stream, port),
            None => {
                self.metrics.host_clients_dropped += 1;
                log::debug!("virtio-vsock: dropped a host client with a bad CONNECT line");
                self.retired.push(h.stream);
            }
        }
    }

    /// A host client asks for guest port `port`: send the guest a REQUEST.
    fn host_connect(&mut self, stream: UnixStream, port: u32) {
        let local_port = match self.allocate_port() {
            Some(p) if self.conns.len() < MAX_CONNECTIONS => p,
            _ => {
                self.metrics.host_clients_dropped += 1;
                self.retired.push(stream);
                return;
            }
        };
        let conn = Connection::requested(stream, self.guest_cid, local_port, port);
        self.insert(conn);
    }

    /// A host port no live connection uses, from [`FIRST_LOCAL_PORT`] up, wrapping.
    fn allocate_port(&mut self) -> Option<u32> {
        for _ in 0..=MAX_CONNECTIONS {
            let port = self.next_local_port;
            self.next_local_port = port.checked_add(1).unwrap_or(FIRST_LOCAL_PORT);
            if !self.conns.keys().any(|&(local, _)| local == port) {
                return Some(port);
            }
        }
        None
    }

    /// The connection between our `local_port` and the guest's `peer_port`.
    #[cfg(test)]
    pub fn connection(&self, local_port: u32, peer_port: u32) -> Option<&Connection> {
        self.conns.get(&(local_port, peer_port))
    }
}

/// A non-blocking connection to the Unix socket at `path`, made without waiting: on Linux a
/// non-blocking `connect` to a Unix stream socket either completes at once or fails (`EAGAIN`
/// when the listener's backlog is full).
pub(super) fn connect_nonblocking(path: &Path) -> io::Result<UnixStream> {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::io::{FromRawFd, OwnedFd};

    // SAFETY: sockaddr_un is plain data; all zeroes is a valid (empty) value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = path.as_os_str().as_bytes();
    // Leave room for the terminating NUL the zeroed tail provides.
    if bytes.len() >= addr.sun_path.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "socket path too long",
        ));
    }
    for (dst, &src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = src as libc::c_char;
    }
    // SAFETY: plain syscall; the result is checked before use.
    let fd = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a new socket that nothing else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    let len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
    // SAFETY: addr is a valid sockaddr_un of `len` bytes and outlives the call.
    let rc = unsafe {
        libc::connect(
            socket.as_raw_fd(),
            std::ptr::addr_of!(addr).cast::<libc::sockaddr>(),
            len,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(UnixStream::from(socket))
}

/// The port of a `CONNECT <port>` line (without its newline).
fn parse_connect(line: &[u8]) -> Option<u32> {
    let text = std::str::from_utf8(line).ok()?;
    let port = text.strip_prefix("CONNECT ")?.trim_end_matches('\r');
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    port.parse().ok()
}
