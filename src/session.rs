//! Attaching to a process in a guest: its output streams to the terminal or to a log, the user's
//! stdin to it, the user's signals and terminal size to it, and its exit status back.
//!
//! The log of a background VM's workload is one file of records, kept in the order the output
//! arrived: each record is a header of [`RECORD_HEADER`] bytes (the stream's tag, 1 for stdout
//! and 2 for stderr, then the payload's length as a little-endian `u32`) and the payload.
//! `moat logs` reads it back with [`RecordReader`].

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;

use moat_agent_protocol::channel::{Request, StreamKind};

use crate::agent::{self, Agent, CONNECT_PATIENCE};

/// Largest size of one workload log file before it is rotated; a log takes at most twice this.
pub const LOG_MAX: u64 = 8 << 20;

/// Largest payload of one log record: the most [`agent::copy_output`] reads at once (64 KiB).
/// Longer writes become several records, so a reader never needs a bigger buffer than this.
pub const RECORD_MAX: usize = 64 << 10;

/// Bytes before each record's payload: the stream's tag, then the payload's length.
pub const RECORD_HEADER: usize = 5;

/// How a process's stdio is attached.
#[derive(Debug, Clone, Copy, Default)]
pub struct Stdio {
    /// The process runs on a pty.
    pub tty: bool,
    /// The host's stdin is copied to the process.
    pub stdin: bool,
}

/// Where a process's output goes.
#[derive(Debug, Clone)]
pub enum Sink {
    /// The host's stdout and stderr.
    Terminal,
    /// A size-bounded log of both streams at this path (`moat logs` reads it).
    Log(PathBuf),
}

/// An output stream as a log record names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum OutputStream {
    /// The process's stdout.
    Stdout = 1,
    /// The process's stderr.
    Stderr = 2,
}

/// Why a log cannot be read on.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// The header names no stream: the log is corrupt.
    #[error("corrupt record: unknown stream tag {tag}")]
    Tag {
        /// The tag found.
        tag: u8,
    },
    /// The header gives a length no writer produces: the log is corrupt.
    #[error("corrupt record: length {len} is not between 1 and {max}", max = RECORD_MAX)]
    Length {
        /// The length found.
        len: u32,
    },
    /// Reading the log failed.
    #[error("cannot read the log")]
    Read(#[source] std::io::Error),
}

/// Attaches to `process`, copies its streams until they end and returns its exit status.
pub fn attach(agent: &Agent, process: u32, stdio: Stdio, sink: &Sink) -> Result<u8, agent::Error> {
    let mut control = agent.control(CONNECT_PATIENCE)?;
    let stdout = agent.stream(process, StreamKind::Stdout)?;
    let stderr = agent.stream(process, StreamKind::Stderr)?;
    let [to_stdout, to_stderr] = sink_writers(sink);
    let copiers = [copy_out(stdout, to_stdout), copy_out(stderr, to_stderr)];
    if stdio.stdin {
        let stdin = agent.stream(process, StreamKind::Stdin)?;
        copy_stdin(stdin);
    }
    let status = control.wait(process)?;
    for copier in copiers {
        let _ = copier.join();
    }
    Ok(status)
}

/// Where the process's stdout and stderr are copied to, in that order.
fn sink_writers(sink: &Sink) -> [Box<dyn Write + Send>; 2] {
    match sink {
        Sink::Terminal => [Box::new(std::io::stdout()), Box::new(std::io::stderr())],
        Sink::Log(path) => {
            // One log behind one lock for both streams, so that it keeps their arrival order.
            let log = Arc::new(Mutex::new(OutputLog::open(path)));
            [
                Box::new(LogWriter::new(&log, OutputStream::Stdout)),
                Box::new(LogWriter::new(&log, OutputStream::Stderr)),
            ]
        }
    }
}

/// Starts a thread with the VMM process's small stack (see [`moat_vmm::THREAD_STACK_SIZE`]);
/// like `std::thread::spawn`, it panics when the system cannot start one.
fn spawn<T: Send + 'static>(name: &str, f: impl FnOnce() -> T + Send + 'static) -> JoinHandle<T> {
    std::thread::Builder::new()
        .name(name.into())
        .stack_size(moat_vmm::THREAD_STACK_SIZE)
        .spawn(f)
        .expect("cannot start a thread")
}

fn copy_out(from: std::os::unix::net::UnixStream, mut to: Box<dyn Write + Send>) -> JoinHandle<()> {
    spawn("output", move || {
        if let Err(e) = agent::copy_output(from, &mut to) {
            log::debug!("output stream ended: {e}");
        }
    })
}

/// Copies the host's stdin to the process until it ends, then closes the process's stdin. Not
/// joined: a terminal's stdin may never end.
fn copy_stdin(mut to: std::os::unix::net::UnixStream) {
    spawn("stdin", move || {
        let mut buf = [0u8; 16 << 10];
        let mut stdin = std::io::stdin().lock();
        loop {
            match stdin.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if to.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            }
        }
        let _ = to.shutdown(Shutdown::Write);
    });
}

/// The path a log is renamed to when it rotates: `NAME.1`.
pub fn rotated_path(path: &Path) -> PathBuf {
    let mut rotated = path.as_os_str().to_os_string();
    rotated.push(".1");
    rotated.into()
}

/// A workload's output log: records appended to a file that is renamed to `NAME.1` (replacing
/// the previous one) and started over before it would pass its limit, always between records.
pub struct OutputLog {
    path: PathBuf,
    file: Option<File>,
    /// The file's size; while there is no file, what was dropped since the last rotation.
    written: u64,
    limit: u64,
    /// The record being written, reused.
    record: Vec<u8>,
}

impl OutputLog {
    /// The log at `path`, appended to, rotated past [`LOG_MAX`].
    pub fn open(path: &Path) -> Self {
        Self::with_limit(path, LOG_MAX)
    }

    /// The log at `path`, rotated past `limit` bytes.
    pub fn with_limit(path: &Path, limit: u64) -> Self {
        let file = OpenOptions::new().create(true).append(true).open(path).ok();
        let written = file
            .as_ref()
            .and_then(|f| f.metadata().ok())
            .map_or(0, |m| m.len());
        Self {
            path: path.to_path_buf(),
            file,
            written,
            limit,
            record: Vec::with_capacity(RECORD_HEADER + RECORD_MAX),
        }
    }

    /// Appends `bytes` from `stream` as one record, or several past [`RECORD_MAX`].
    pub fn append(&mut self, stream: OutputStream, bytes: &[u8]) {
        for payload in bytes.chunks(RECORD_MAX) {
            self.append_record(stream, payload);
        }
    }

    /// Appends one record. A log that cannot be written drops the output rather than stalling
    /// the workload.
    fn append_record(&mut self, stream: OutputStream, payload: &[u8]) {
        let len = (RECORD_HEADER + payload.len()) as u64;
        if self.written > 0 && self.written + len > self.limit {
            self.rotate();
        }
        self.record.clear();
        self.record
            .extend_from_slice(&record_header(stream, payload.len()));
        self.record.extend_from_slice(payload);
        let Some(file) = &mut self.file else {
            // Counted all the same, so that a fresh file is tried at the next rotation.
            self.written += len;
            return;
        };
        // One write per record: a reader sees whole records, or a last one still growing.
        if file.write_all(&self.record).is_ok() {
            self.written += len;
        } else if file.set_len(self.written).is_err() {
            // Part of a record that stays would garble every record after it.
            self.file = None;
        }
    }

    fn rotate(&mut self) {
        let _ = std::fs::rename(&self.path, rotated_path(&self.path));
        self.file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .ok();
        self.written = 0;
    }
}

/// One stream's writer into an [`OutputLog`] shared with the other: each write is a record.
struct LogWriter {
    log: Arc<Mutex<OutputLog>>,
    stream: OutputStream,
}

impl LogWriter {
    fn new(log: &Arc<Mutex<OutputLog>>, stream: OutputStream) -> Self {
        Self {
            log: Arc::clone(log),
            stream,
        }
    }
}

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        // An append leaves only whole records behind, so a holder that panicked left the log
        // fit to use.
        let mut log = self.log.lock().unwrap_or_else(PoisonError::into_inner);
        log.append(self.stream, buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Reads an output log's records one at a time.
pub struct RecordReader<R> {
    from: R,
    payload: Vec<u8>,
}

impl<R: Read> RecordReader<R> {
    /// Records from `from`, which starts at a record.
    pub fn new(from: R) -> Self {
        Self {
            from,
            payload: Vec::new(),
        }
    }

    /// The next record's stream and payload; `None` at the end of the log, or at a last record
    /// not all written yet. A corrupt header is an error, and reading cannot go on past it.
    pub fn next_record(&mut self) -> Result<Option<(OutputStream, &[u8])>, RecordError> {
        let mut header = [0u8; RECORD_HEADER];
        if read_full(&mut self.from, &mut header)? < RECORD_HEADER {
            return Ok(None);
        }
        let (stream, len) = parse_header(header)?;
        self.payload.resize(len, 0);
        if read_full(&mut self.from, &mut self.payload)? < len {
            return Ok(None);
        }
        Ok(Some((stream, &self.payload)))
    }
}

/// The header of a record of `len` bytes, at most [`RECORD_MAX`], from `stream`.
fn record_header(stream: OutputStream, len: usize) -> [u8; RECORD_HEADER] {
    let [a, b, c, d] = (len as u32).to_le_bytes();
    [stream as u8, a, b, c, d]
}

/// The stream and payload length a record's header names, checked before anything is
/// allocated for the payload.
fn parse_header(header: [u8; RECORD_HEADER]) -> Result<(OutputStream, usize), RecordError> {
    let stream = match header[0] {
        1 => OutputStream::Stdout,
        2 => OutputStream::Stderr,
        tag => return Err(RecordError::Tag { tag }),
    };
    let len = u32::from_le_bytes([header[1], header[2], header[3], header[4]]);
    match usize::try_from(len) {
        Ok(n) if (1..=RECORD_MAX).contains(&n) => Ok((stream, n)),
        _ => Err(RecordError::Length { len }),
    }
}

/// Fills `buf` from `from` as far as it goes; the byte count, short only at the end.
fn read_full(from: &mut impl Read, buf: &mut [u8]) -> Result<usize, RecordError> {
    let mut filled = 0;
    while filled < buf.len() {
        match from.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(RecordError::Read(e)),
        }
    }
    Ok(filled)
}

/// The host terminal in raw mode for as long as this lives (`-t`): keys go to the guest's pty
/// unchanged, and the guest's line discipline does the echoing.
pub struct RawTerminal {
    saved: libc::termios,
}

impl RawTerminal {
    /// Puts stdin's terminal in raw mode; `None` when stdin is not a terminal.
    pub fn enable() -> Option<Self> {
        let fd = std::io::stdin().as_raw_fd();
        // SAFETY: tcgetattr writes a termios into the zeroed value; the fd is stdin.
        let mut saved: libc::termios = unsafe { std::mem::zeroed() };
        if unsafe { libc::tcgetattr(fd, &mut saved) } != 0 {
            return None;
        }
        let mut raw = saved;
        // SAFETY: cfmakeraw only edits the termios it is given.
        unsafe { libc::cfmakeraw(&mut raw) };
        // SAFETY: a valid termios for the same fd.
        if unsafe { libc::tcsetattr(fd, libc::TCSANOW, &raw) } != 0 {
            return None;
        }
        Some(Self { saved })
    }
}

impl RawTerminal {
    /// Raw mode for a process attached with a tty and the user's stdin (`-it`), as Docker sets
    /// it; `None` otherwise.
    pub fn for_stdio(stdio: Stdio) -> Option<Self> {
        (stdio.tty && stdio.stdin).then(Self::enable).flatten()
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        let fd = std::io::stdin().as_raw_fd();
        // SAFETY: restores the termios read from the same fd.
        unsafe { libc::tcsetattr(fd, libc::TCSANOW, &self.saved) };
    }
}

/// The host terminal's size as rows and columns, if stdout or stdin is a terminal.
pub fn terminal_size() -> Option<(u16, u16)> {
    for fd in [libc::STDOUT_FILENO, libc::STDIN_FILENO] {
        // SAFETY: TIOCGWINSZ writes a winsize into the zeroed value.
        let mut size: libc::winsize = unsafe { std::mem::zeroed() };
        if unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut size) } == 0 && size.ws_row > 0 {
            return Some((size.ws_row, size.ws_col));
        }
    }
    None
}

/// The size a new pty should start with: the host terminal's, when a tty is asked for.
pub fn pty_size(tty: bool) -> Option<(u16, u16)> {
    tty.then(terminal_size).flatten()
}

/// Sends `signal` to `process` through the agent; failures are logged (the process may have
/// ended already).
pub fn send_signal(agent: &Agent, process: u32, signal: i32) {
    let result = agent
        .control(CONNECT_PATIENCE)
        .and_then(|mut control| control.command(&Request::Signal { process, signal }));
    if let Err(e) = result {
        log::debug!("signal {signal} to process {process}: {e}");
    }
}

/// Sends the host terminal's size to `process`.
pub fn send_resize(agent: &Agent, process: u32) {
    let Some((rows, cols)) = terminal_size() else {
        return;
    };
    let result = agent.control(CONNECT_PATIENCE).and_then(|mut control| {
        control.command(&Request::Resize {
            process,
            rows,
            cols,
        })
    });
    if let Err(e) = result {
        log::debug!("resize of process {process}: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh, empty directory for one test.
    fn test_dir(test: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("moat-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir is writable");
        dir
    }

    /// Every record in the file at `path`, and whether the file held nothing after them.
    fn records_in(path: &Path) -> (Vec<(OutputStream, Vec<u8>)>, bool) {
        let bytes = std::fs::read(path).expect("log exists");
        let mut reader = RecordReader::new(bytes.as_slice());
        let mut records = Vec::new();
        let mut used = 0;
        while let Some((stream, payload)) = reader.next_record().expect("the log is whole") {
            used += RECORD_HEADER + payload.len();
            records.push((stream, payload.to_vec()));
        }
        (records, used == bytes.len())
    }

    #[test]
    fn both_streams_share_one_log_in_arrival_order() {
        const TAKEN: &str = "a log takes every write";
        let dir = test_dir("log-order");
        let path = dir.join("output.log");
        let [mut stdout, mut stderr] = sink_writers(&Sink::Log(path.clone()));

        stdout.write_all(b"out 1").expect(TAKEN);
        stderr.write_all(b"err 1").expect(TAKEN);
        stderr.write_all(b"err 2").expect(TAKEN);
        stdout.write_all(b"out 2").expect(TAKEN);

        let expected = vec![
            (OutputStream::Stdout, b"out 1".to_vec()),
            (OutputStream::Stderr, b"err 1".to_vec()),
            (OutputStream::Stderr, b"err 2".to_vec()),
            (OutputStream::Stdout, b"out 2".to_vec()),
        ];
        assert_eq!(records_in(&path), (expected, true));
        std::fs::remove_dir_all(&dir).expect("temp dir is removable");
    }

    #[test]
    fn a_write_past_the_largest_record_becomes_several_records() {
        let dir = test_dir("log-split");
        let path = dir.join("output.log");
        let mut log = OutputLog::open(&path);

        log.append(OutputStream::Stdout, &vec![b'x'; RECORD_MAX + 1]);

        let (records, whole) = records_in(&path);
        let lens: Vec<usize> = records.iter().map(|(_, p)| p.len()).collect();
        assert_eq!(lens, [RECORD_MAX, 1]);
        assert!(whole);
        std::fs::remove_dir_all(&dir).expect("temp dir is removable");
    }

    #[test]
    fn a_log_rotates_between_records_and_stays_bounded() {
        let dir = test_dir("log-rotate");
        let path = dir.join("output.log");
        // 10 records of 5 + 16 bytes: four fit in 100 bytes, so the log rotates twice.
        let limit = 100;
        let mut log = OutputLog::with_limit(&path, limit);

        for n in 0..10 {
            log.append(
                OutputStream::Stdout,
                format!("record {n:02} of ten").as_bytes(),
            );
        }

        for file in [rotated_path(&path), path.clone()] {
            let len = std::fs::metadata(&file).expect("log exists").len();
            assert!(len <= limit, "{} holds {len} bytes", file.display());
            let (records, whole) = records_in(&file);
            assert!(whole, "{} ends inside a record", file.display());
            assert!(!records.is_empty());
        }
        let (rotated, _) = records_in(&rotated_path(&path));
        let (current, _) = records_in(&path);
        assert_eq!(rotated[0].1, b"record 04 of ten");
        assert_eq!(current[0].1, b"record 08 of ten");
        std::fs::remove_dir_all(&dir).expect("temp dir is removable");
    }

    #[test]
    fn the_real_limit_bounds_a_log_to_twice_its_size() {
        let dir = test_dir("log-bound");
        let path = dir.join("output.log");
        let mut log = OutputLog::open(&path);
        let chunk = vec![b'x'; 1 << 20];

        for _ in 0..(3 * LOG_MAX / chunk.len() as u64) {
            log.append(OutputStream::Stderr, &chunk);
        }

        let current = std::fs::metadata(&path).expect("log exists").len();
        let previous = std::fs::metadata(rotated_path(&path))
            .expect("rotated log exists")
            .len();
        assert!(current <= LOG_MAX && previous <= LOG_MAX);
        std::fs::remove_dir_all(&dir).expect("temp dir is removable");
    }

    #[test]
    fn a_record_not_all_there_is_not_read() {
        // A stderr record of 4 bytes with only 2 of them written yet.
        let log = [2, 4, 0, 0, 0, b'a', b'b'];

        let mut reader = RecordReader::new(&log[..]);

        assert!(matches!(reader.next_record(), Ok(None)));
    }

    #[test]
    fn a_corrupt_header_is_an_error_not_an_allocation() {
        let bad_tag = [7, 1, 0, 0, 0, b'a'];
        let huge = [1, 0xff, 0xff, 0xff, 0xff];
        let empty = [1, 0, 0, 0, 0];

        assert!(matches!(
            RecordReader::new(&bad_tag[..]).next_record(),
            Err(RecordError::Tag { tag: 7 })
        ));
        assert!(matches!(
            RecordReader::new(&huge[..]).next_record(),
            Err(RecordError::Length { len: u32::MAX })
        ));
        assert!(matches!(
            RecordReader::new(&empty[..]).next_record(),
            Err(RecordError::Length { len: 0 })
        ));
    }
}
