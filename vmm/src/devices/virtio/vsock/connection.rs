//! One stream connection between a guest port and a host Unix socket, and its credit-based
//! flow control (§5.10.6.3).
//!
//! The connection never blocks: guest data the host socket cannot take yet waits in a buffer
//! bounded by the `buf_alloc` we advertise, and host data is only read when the guest has
//! credit for it. What the connection wants sent to the guest is kept as flags, so a connection
//! has at most one of each control packet pending whatever the guest does.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;

use vmm_sys_util::epoll::EventSet;

use super::metrics::VsockMetrics;
use super::packet::Header;
use super::{op, BUF_ALLOC, HOST_CID, SHUTDOWN_RCV, SHUTDOWN_SEND, TYPE_STREAM};

/// Where a connection is in its handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// A host client asked for a guest port; waiting for the guest's RESPONSE.
    Connecting,
    /// Data may flow.
    Established,
}

/// What the muxer must do with a connection after an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Keep it.
    Keep,
    /// Send the guest an RST and drop it.
    Reset,
    /// Drop it; the guest already knows (it sent an RST).
    Close,
}

/// What a read from the host socket gave.
#[derive(Debug)]
pub enum HostRead {
    /// Bytes read into the buffer.
    Data(usize),
    /// Nothing to read now.
    WouldBlock,
    /// The host will send no more.
    Eof,
    /// The socket failed.
    Failed,
}

/// One stream connection.
#[derive(Debug)]
pub struct Connection {
    stream: UnixStream,
    /// Our port.
    pub local_port: u32,
    /// The guest's port.
    pub peer_port: u32,
    state: State,
    guest_cid: u64,

    send_request: bool,
    send_response: bool,
    send_credit_update: bool,
    send_shutdown: bool,

    /// Guest data not yet written to the host socket.
    tx_buf: VecDeque<u8>,
    /// Guest bytes written to the host socket, ever (wrapping).
    fwd_cnt: u32,
    /// `fwd_cnt` as of the last packet we sent.
    fwd_cnt_sent: u32,
    guest_shut_send: bool,
    guest_shut_rcv: bool,
    host_write_shut: bool,

    /// Host bytes given to the guest, ever (wrapping).
    rx_cnt: u32,
    peer_buf_alloc: u32,
    peer_fwd_cnt: u32,
    /// The host socket polled readable and has not yet returned WouldBlock.
    host_readable: bool,
    host_eof: bool,
}

impl Connection {
    /// A guest connection to a host socket, accepted: a RESPONSE is pending.
    pub fn accepted(stream: UnixStream, guest_cid: u64, request: &Header) -> Self {
        let mut conn = Self::new(stream, guest_cid, request.dst_port, request.src_port);
        conn.state = State::Established;
        conn.send_response = true;
        conn.update_peer_credit(request);
        conn
    }

    /// A host client's connection to guest port `peer_port`: a REQUEST is pending.
    pub fn requested(stream: UnixStream, guest_cid: u64, local_port: u32, peer_port: u32) -> Self {
        let mut conn = Self::new(stream, guest_cid, local_port, peer_port);
        conn.send_request = true;
        conn
    }

    fn new(stream: UnixStream, guest_cid: u64, local_port: u32, peer_port: u32) -> Self {
        Self {
            stream,
            local_port,
            peer_port,
            state: State::Connecting,
            guest_cid,
            send_request: false,
            send_response: false,
            send_credit_update: false,
            send_shutdown: false,
            tx_buf: VecDeque::new(),
            fwd_cnt: 0,
            fwd_cnt_sent: 0,
            guest_shut_send: false,
            guest_shut_rcv: false,
            host_write_shut: false,
            rx_cnt: 0,
            peer_buf_alloc: 0,
            peer_fwd_cnt: 0,
            host_readable: false,
            host_eof: false,
        }
    }

    /// The host socket.
    pub fn stream(&self) -> &UnixStream {
        &self.stream
    }

    /// Gives up the host socket (to close it once the event loop stopped watching it).
    pub fn into_stream(self) -> UnixStream {
        self.stream
    }

    /// The handshake state.
    pub fn state(&self) -> State {
        self.state
    }

    /// Handles a packet the guest sent on this connection.
    pub fn on_packet(
        &mut self,
        header: &Header,
        data: &[u8],
        metrics: &mut VsockMetrics,
    ) -> Verdict {
        self.update_peer_credit(header);
        match (header.op, self.state) {
            (op::RESPONSE, State::Connecting) => self.establish(),
            (op::RW, State::Established) => self.accept_data(data, metrics),
            (op::SHUTDOWN, State::Established) => self.guest_shutdown(header.flags, metrics),
            (op::CREDIT_UPDATE, _) => Verdict::Keep,
            (op::CREDIT_REQUEST, _) => {
                self.send_credit_update = true;
                Verdict::Keep
            }
            (op::RST, _) => {
                metrics.rst_received += 1;
                Verdict::Close
            }
            _ => {
                metrics.malformed_packets += 1;
                Verdict::Reset
            }
        }
    }

    fn update_peer_credit(&mut self, header: &Header) {
        self.peer_buf_alloc = header.buf_alloc;
        self.peer_fwd_cnt = header.fwd_cnt;
    }

    /// The guest accepted a host client's connection: tell the client our port.
    fn establish(&mut self) -> Verdict {
        let line = format!("OK {}\n", self.local_port);
        // A fresh socket's send buffer always has room for one short line.
        match self.stream.write_all(line.as_bytes()) {
            Ok(()) => {
                self.state = State::Established;
                Verdict::Keep
            }
            Err(_) => Verdict::Reset,
        }
    }

    fn accept_data(&mut self, data: &[u8], metrics: &mut VsockMetrics) -> Verdict {
        if self.guest_shut_send {
            metrics.malformed_packets += 1;
            return Verdict::Reset;
        }
        // Everything in tx_buf is data the guest counts against the credit we gave it, since
        // fwd_cnt only grows when bytes leave tx_buf.
        if self.tx_buf.len() + data.len() > BUF_ALLOC as usize {
            metrics.credit_violations += 1;
            return Verdict::Reset;
        }
        let mut written = 0;
        if self.tx_buf.is_empty() {
            match self.stream.write(data) {
                Ok(n) => written = n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => return Verdict::Reset,
            }
        }
        self.forwarded(written, metrics);
        self.tx_buf.extend(&data[written..]);
        Verdict::Keep
    }

    fn forwarded(&mut self, n: usize, metrics: &mut VsockMetrics) {
        self.fwd_cnt = self.fwd_cnt.wrapping_add(n as u32);
        metrics.tx_bytes += n as u64;
        // Tell the guest once it has room for a good chunk, not after every write.
        if self.fwd_cnt.wrapping_sub(self.fwd_cnt_sent) >= BUF_ALLOC / 2 {
            self.send_credit_update = true;
        }
    }

    fn guest_shutdown(&mut self, flags: u32, metrics: &mut VsockMetrics) -> Verdict {
        self.guest_shut_send |= flags & SHUTDOWN_SEND != 0;
        self.guest_shut_rcv |= flags & SHUTDOWN_RCV != 0;
        // Half-closes the host socket now if no guest data waits for it.
        self.flush(metrics)
    }

    /// Writes buffered guest data to the host socket, then half-closes it if the guest will send
    /// no more.
    pub fn flush(&mut self, metrics: &mut VsockMetrics) -> Verdict {
        while !self.tx_buf.is_empty() {
            let (chunk, _) = self.tx_buf.as_slices();
            match self.stream.write(chunk) {
                Ok(0) => return Verdict::Reset,
                Ok(n) => {
                    self.tx_buf.drain(..n);
                    self.forwarded(n, metrics);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => return Verdict::Reset,
            }
        }
        if self.tx_buf.is_empty() && self.guest_shut_send && !self.host_write_shut {
            self.host_write_shut = true;
            // The peer may already be gone; then the next read or write tells us.
            let _ = self.stream.shutdown(Shutdown::Write);
        }
        Verdict::Keep
    }

    /// Both directions are finished: time to close with an RST (§5.10.6.5).
    pub fn finished(&self) -> bool {
        let guest_to_host_done = self.guest_shut_send && self.host_write_shut;
        let host_to_guest_done = (self.host_eof && !self.send_shutdown) || self.guest_shut_rcv;
        guest_to_host_done && host_to_guest_done
    }

    /// The host socket polled readable (or hung up): the next read tells which.
    pub fn mark_readable(&mut self) {
        self.host_readable = true;
    }

    /// Bytes the guest can take now: its buffer space minus what is in flight.
    pub fn credit(&self) -> u32 {
        let in_flight = self.rx_cnt.wrapping_sub(self.peer_fwd_cnt);
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    fn may_read_host(&self) -> bool {
        self.state == State::Established
            && !self.host_eof
            && !self.guest_shut_rcv
            && self.credit() > 0
    }

    /// Whether an RX buffer would be used now: a pending control packet or readable data.
    pub fn has_rx_work(&self) -> bool {
        self.has_control() || (self.host_readable && self.may_read_host())
    }

    fn has_control(&self) -> bool {
        self.send_request || self.send_response || self.send_shutdown || self.send_credit_update
    }

    /// What to poll the host socket for; empty means "do not watch it".
    pub fn interest(&self) -> EventSet {
        let mut set = EventSet::empty();
        if self.may_read_host() && !self.host_readable {
            set |= EventSet::IN;
        }
        if !self.tx_buf.is_empty() {
            set |= EventSet::OUT;
        }
        set
    }

    /// The next control packet to send the guest, if any.
    pub fn next_control(&mut self) -> Option<Header> {
        let (op, flags) = if std::mem::take(&mut self.send_request) {
            (op::REQUEST, 0)
        } else if std::mem::take(&mut self.send_response) {
            (op::RESPONSE, 0)
        } else if std::mem::take(&mut self.send_shutdown) {
            (op::SHUTDOWN, SHUTDOWN_SEND)
        } else if std::mem::take(&mut self.send_credit_update) {
            (op::CREDIT_UPDATE, 0)
        } else {
            return None;
        };
        Some(self.header(op, 0, flags))
    }

    /// Reads host data for the guest into `buf`, at most the guest's credit.
    pub fn read_host(&mut self, buf: &mut [u8]) -> HostRead {
        if !(self.host_readable && self.may_read_host()) {
            return HostRead::WouldBlock;
        }
        let max = buf.len().min(self.credit() as usize);
        match self.stream.read(&mut buf[..max]) {
            Ok(0) => {
                self.host_eof = true;
                self.send_shutdown = true;
                HostRead::Eof
            }
            Ok(n) => HostRead::Data(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                self.host_readable = false;
                HostRead::WouldBlock
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => HostRead::WouldBlock,
            Err(_) => HostRead::Failed,
        }
    }

    /// The header of a data packet of `len` bytes, counted as sent.
    pub fn data_header(&mut self, len: usize) -> Header {
        self.rx_cnt = self.rx_cnt.wrapping_add(len as u32);
        self.header(op::RW, len as u32, 0)
    }

    /// A header from us to the guest's end of this connection, with our current credit.
    pub fn header(&mut self, op: u16, len: u32, flags: u32) -> Header {
        self.fwd_cnt_sent = self.fwd_cnt;
        Header {
            src_cid: HOST_CID,
            dst_cid: self.guest_cid,
            src_port: self.local_port,
            dst_port: self.peer_port,
            len,
            type_: TYPE_STREAM,
            op,
            flags,
            buf_alloc: BUF_ALLOC,
            fwd_cnt: self.fwd_cnt,
        }
    }
}
