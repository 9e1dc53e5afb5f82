//! The agent channel: typed messages between the host and the agent over virtio-vsock.
//!
//! The agent listens on vsock port [`AGENT_PORT`]. Every connection the host opens starts with
//! one [`Hello`] frame that says what the connection is for:
//!
//! * a **control** connection carries [`Request`]s, each answered by one [`Response`], in order.
//!   A [`Request::Wait`] is answered only when its process ends, so a host that also wants to
//!   signal or resize uses a second control connection for that;
//! * a **stream** connection carries one process's stdin, stdout or stderr as raw bytes, with no
//!   framing: end of file is the stream's end (a shutdown of the connection).
//!
//! A process starts as soon as it exists (the workload at boot, an exec on request), before any
//! stream is attached: its output waits in a pipe until the host attaches, so nothing is lost and
//! a start costs no round trip. With a tty, the pty carries stdout and stderr together on the
//! stdout stream; the stderr stream ends at once.
//!
//! Frames are a 4-byte big-endian length and that many bytes of JSON. JSON because the control
//! plane is a handful of small messages per process (its cost is noise next to a process start),
//! serde_json is already in both binaries for the launch spec, and a person can read a capture;
//! the length prefix bounds what a peer can make the other side buffer ([`FRAME_MAX`]). Data never
//! goes through frames: streams are raw.

use std::io::{self, Read, Write};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// The vsock port the agent listens on.
pub const AGENT_PORT: u32 = 1024;

/// The protocol's version; a control [`Hello`] names the one the host speaks, and the agent
/// refuses any other.
pub const PROTOCOL_VERSION: u32 = 1;

/// The workload's process id: the agent starts it at boot from the launch spec.
pub const MAIN_PROCESS: u32 = 0;

/// Largest frame either side accepts, in bytes: a process spec with a large environment fits.
pub const FRAME_MAX: u32 = 1 << 20;

/// The first frame on every connection the host opens.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "hello", rename_all = "snake_case")]
pub enum Hello {
    /// Requests and responses follow.
    Control {
        /// The protocol version the host speaks.
        version: u32,
    },
    /// Raw bytes of one stream of one process follow.
    Stream {
        /// The process, [`MAIN_PROCESS`] or an id from [`Response::Started`].
        process: u32,
        /// Which of its streams.
        stream: StreamKind,
    },
}

/// One of a process's standard streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StreamKind {
    /// Host to process.
    Stdin,
    /// Process to host (with a tty: everything the pty prints).
    Stdout,
    /// Process to host (with a tty: ends at once).
    Stderr,
}

/// A new process in the running guest (`moat exec`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessSpec {
    /// Command and arguments; the command is looked up on the environment's `PATH`.
    pub argv: Vec<String>,
    /// `KEY=VALUE` pairs added to (and overriding) the workload's environment.
    pub env: Vec<String>,
    /// Working directory [default: the workload's].
    pub cwd: Option<String>,
    /// `user[:group]`, by name or number, resolved in the guest's root [default: the workload's].
    pub user: Option<String>,
    /// Run on a new pty instead of pipes.
    pub tty: bool,
    /// Keep stdin open for a stdin stream; otherwise stdin is `/dev/null`.
    pub stdin: bool,
    /// The pty's size with `tty`: rows and columns.
    pub size: Option<(u16, u16)>,
}

/// How the workload's stdio is set up when it runs over the channel (the launch spec's part).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelSpec {
    /// Run the workload on a pty (`-t`).
    #[serde(default)]
    pub tty: bool,
    /// Keep its stdin open for a stdin stream (`-i`); otherwise stdin is `/dev/null`.
    #[serde(default)]
    pub stdin: bool,
    /// The pty's initial size with `tty`: rows and columns.
    #[serde(default)]
    pub size: Option<(u16, u16)>,
}

/// What the host asks of the agent on a control connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "request", rename_all = "snake_case")]
pub enum Request {
    /// Start a new process; answered by [`Response::Started`].
    Exec(ProcessSpec),
    /// Send a signal to a process; answered by [`Response::Done`].
    Signal {
        /// The process.
        process: u32,
        /// The signal number.
        signal: i32,
    },
    /// Set the pty size of a process run with a tty; answered by [`Response::Done`].
    Resize {
        /// The process.
        process: u32,
        /// Rows.
        rows: u16,
        /// Columns.
        cols: u16,
    },
    /// Wait for a process to end; answered by [`Response::Exited`].
    Wait {
        /// The process.
        process: u32,
    },
    /// End the VM once the workload has ended and its disks are flushed (the host sends it
    /// after reading the workload's output to its end); answered by [`Response::Done`] just
    /// before the VM stops.
    PowerOff,
}

/// The agent's answer to a [`Hello`] or a [`Request`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "response", rename_all = "snake_case")]
pub enum Response {
    /// Answer to a control [`Hello`]: the agent is ready.
    Ready {
        /// The agent's protocol version.
        version: u32,
        /// When the agent started, in nanoseconds of the guest's CLOCK_BOOTTIME.
        agent_start_ns: u64,
    },
    /// A process was started.
    Started {
        /// Its id for later requests and streams.
        process: u32,
    },
    /// A process ended.
    Exited {
        /// The process.
        process: u32,
        /// Its status: the exit code, or 128+N when signal N killed it.
        status: u8,
    },
    /// The request was carried out.
    Done,
    /// The request failed.
    Error {
        /// Why, for a person.
        message: String,
    },
}

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The connection failed or ended inside a frame.
    #[error("agent channel I/O")]
    Io(#[from] io::Error),
    /// The peer announced a frame larger than [`FRAME_MAX`].
    #[error("frame of {0} bytes is larger than the {FRAME_MAX}-byte limit")]
    TooLarge(u32),
    /// The frame is not a valid message.
    #[error("malformed frame")]
    Malformed(#[from] serde_json::Error),
    /// The connection ended cleanly between frames.
    #[error("the connection was closed")]
    Closed,
}

/// Writes one frame holding `message`.
pub fn write_frame<W: Write, T: Serialize>(writer: &mut W, message: &T) -> Result<(), FrameError> {
    let body = serde_json::to_vec(message)?;
    let len = u32::try_from(body.len())
        .ok()
        .filter(|&len| len <= FRAME_MAX)
        .ok_or(FrameError::TooLarge(u32::MAX))?;
    let mut frame = Vec::with_capacity(4 + body.len());
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(&body);
    writer.write_all(&frame)?;
    writer.flush()?;
    Ok(())
}

/// Reads one frame and decodes it; [`FrameError::Closed`] at a clean end of the connection.
pub fn read_frame<R: Read, T: DeserializeOwned>(reader: &mut R) -> Result<T, FrameError> {
    let mut len = [0u8; 4];
    match reader.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Err(FrameError::Closed),
        Err(e) => return Err(e.into()),
    }
    let len = u32::from_be_bytes(len);
    if len > FRAME_MAX {
        return Err(FrameError::TooLarge(len));
    }
    let mut body = vec![0u8; len as usize];
    reader.read_exact(&mut body)?;
    Ok(serde_json::from_slice(&body)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip() {
        let messages = [
            Request::Exec(ProcessSpec {
                argv: vec!["sh".into(), "-c".into(), "echo hi".into()],
                tty: true,
                size: Some((24, 80)),
                ..ProcessSpec::default()
            }),
            Request::Signal {
                process: 3,
                signal: 15,
            },
            Request::Wait { process: 0 },
            Request::PowerOff,
        ];
        let mut wire = Vec::new();
        for message in &messages {
            write_frame(&mut wire, message).expect("a Vec takes every write");
        }
        let mut reader = wire.as_slice();
        for message in &messages {
            let read: Request = read_frame(&mut reader).expect("written just above");
            assert_eq!(&read, message);
        }
        assert!(matches!(
            read_frame::<_, Request>(&mut reader),
            Err(FrameError::Closed)
        ));
    }

    #[test]
    fn an_oversized_frame_is_refused_before_allocating() {
        let wire = (FRAME_MAX + 1).to_be_bytes();
        let result: Result<Request, _> = read_frame(&mut wire.as_slice());
        assert!(matches!(result, Err(FrameError::TooLarge(n)) if n == FRAME_MAX + 1));
    }

    #[test]
    fn a_truncated_frame_is_an_error_not_a_clean_close() {
        let mut wire = Vec::new();
        write_frame(&mut wire, &Request::PowerOff).expect("a Vec takes every write");
        wire.truncate(wire.len() - 1);
        let result: Result<Request, _> = read_frame(&mut wire.as_slice());
        assert!(matches!(result, Err(FrameError::Io(_))));
    }

    #[test]
    fn garbage_is_malformed() {
        let mut wire = 3u32.to_be_bytes().to_vec();
        wire.extend_from_slice(b"{x]");
        let result: Result<Request, _> = read_frame(&mut wire.as_slice());
        assert!(matches!(result, Err(FrameError::Malformed(_))));
    }
}
