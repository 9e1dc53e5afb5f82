//! The host's end of the agent channel: connections to the agent through the VM's vsock socket.
//!
//! The VMM's vsock device listens on a Unix socket per VM; a client writes `CONNECT <port>\n`
//! and, once the guest accepted, reads `OK <host port>\n` (see `moat_vmm::VsockConfig`). Each
//! connection then speaks `moat_agent_protocol::channel`.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use moat_agent_protocol::channel::{
    self, FrameError, Hello, Request, Response, StreamKind, AGENT_PORT, PROTOCOL_VERSION,
};

/// How long to keep trying while the agent is not listening yet (a guest still booting).
pub const CONNECT_PATIENCE: Duration = Duration::from_secs(60);

/// Pause between attempts to reach an agent that is not listening yet.
const RETRY_PAUSE: Duration = Duration::from_millis(10);

/// Why the agent could not be reached or answered wrongly.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The VM's socket could not be reached.
    #[error("cannot reach the VM's agent socket {path}")]
    Socket {
        /// The socket.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The agent did not accept a connection in time.
    #[error("the agent did not answer within {0:?}")]
    NotListening(Duration),
    /// A frame could not be exchanged.
    #[error("agent channel")]
    Frame(#[from] FrameError),
    /// The agent refused a request.
    #[error("the agent refused: {0}")]
    Refused(String),
    /// The agent answered something that does not fit the request.
    #[error("unexpected answer from the agent: {0:?}")]
    Unexpected(Response),
}

/// The agent of one VM, reached through its vsock socket.
#[derive(Debug, Clone)]
pub struct Agent {
    socket: PathBuf,
}

impl Agent {
    /// The agent behind the VM's vsock socket at `socket`.
    pub fn new(socket: &Path) -> Self {
        Self {
            socket: socket.to_path_buf(),
        }
    }

    /// A control connection, retrying for up to `patience` while the agent is not listening.
    pub fn control(&self, patience: Duration) -> Result<Control, Error> {
        let mut stream = self.connect(patience)?;
        channel::write_frame(
            &mut stream,
            &Hello::Control {
                version: PROTOCOL_VERSION,
            },
        )?;
        match channel::read_frame(&mut stream)? {
            Response::Ready { .. } => Ok(Control { stream }),
            Response::Error { message } => Err(Error::Refused(message)),
            other => Err(Error::Unexpected(other)),
        }
    }

    /// A connection carrying one stream of one process.
    pub fn stream(&self, process: u32, stream: StreamKind) -> Result<UnixStream, Error> {
        let mut conn = self.connect(CONNECT_PATIENCE)?;
        channel::write_frame(&mut conn, &Hello::Stream { process, stream })?;
        Ok(conn)
    }

    /// A connection to the agent's port, once the guest accepted it.
    fn connect(&self, patience: Duration) -> Result<UnixStream, Error> {
        let deadline = Instant::now() + patience;
        loop {
            match self.try_connect()? {
                Some(stream) => return Ok(stream),
                None if Instant::now() >= deadline => return Err(Error::NotListening(patience)),
                None => std::thread::sleep(RETRY_PAUSE),
            }
        }
    }

    /// One attempt: `None` when nobody listens on the port in the guest yet.
    fn try_connect(&self) -> Result<Option<UnixStream>, Error> {
        let socket_error = |source| Error::Socket {
            path: self.socket.clone(),
            source,
        };
        let mut stream = UnixStream::connect(&self.socket).map_err(socket_error)?;
        stream
            .write_all(format!("CONNECT {AGENT_PORT}\n").as_bytes())
            .map_err(socket_error)?;
        // Read the answer byte by byte: what follows it belongs to the protocol.
        let mut line = Vec::new();
        let mut byte = [0u8; 1];
        while line.len() < 64 {
            match stream.read(&mut byte) {
                Ok(0) | Err(_) => return Ok(None),
                Ok(_) if byte[0] == b'\n' => break,
                Ok(_) => line.push(byte[0]),
            }
        }
        Ok(line.starts_with(b"OK ").then_some(stream))
    }
}

/// A control connection: requests answered in order.
#[derive(Debug)]
pub struct Control {
    stream: UnixStream,
}

impl Control {
    /// Sends `request` and returns the agent's answer; a refusal is an error.
    pub fn request(&mut self, request: &Request) -> Result<Response, Error> {
        channel::write_frame(&mut self.stream, request)?;
        match channel::read_frame(&mut self.stream)? {
            Response::Error { message } => Err(Error::Refused(message)),
            response => Ok(response),
        }
    }

    /// Sends a request that is answered with `Done`.
    pub fn command(&mut self, request: &Request) -> Result<(), Error> {
        match self.request(request)? {
            Response::Done => Ok(()),
            other => Err(Error::Unexpected(other)),
        }
    }

    /// Waits until `process` ends; returns its status.
    pub fn wait(&mut self, process: u32) -> Result<u8, Error> {
        match self.request(&Request::Wait { process })? {
            Response::Exited { status, .. } => Ok(status),
            other => Err(Error::Unexpected(other)),
        }
    }

    /// Limits how long an answer may take (`None`: forever).
    pub fn set_timeout(&self, timeout: Option<Duration>) -> std::io::Result<()> {
        self.stream.set_read_timeout(timeout)
    }
}

/// Copies a process's output stream to `out` until it ends.
pub fn copy_output(mut from: UnixStream, out: &mut dyn Write) -> std::io::Result<u64> {
    let mut reader = BufReader::with_capacity(64 << 10, &mut from);
    let mut copied = 0u64;
    loop {
        let chunk = reader.fill_buf()?;
        if chunk.is_empty() {
            return Ok(copied);
        }
        let len = chunk.len();
        out.write_all(chunk)?;
        out.flush()?;
        reader.consume(len);
        copied += len as u64;
    }
}
