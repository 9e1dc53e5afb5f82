//! Attaching to a process in a guest: its output streams to the terminal or to logs, the user's
//! stdin to it, the user's signals and terminal size to it, and its exit status back.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::thread::JoinHandle;

use moat_agent_protocol::channel::{Request, StreamKind};

use crate::agent::{self, Agent, CONNECT_PATIENCE};

/// Largest size of one workload log file before it is rotated; a log takes at most twice this.
pub const LOG_MAX: u64 = 8 << 20;

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
    /// Size-bounded log files (`moat logs` reads them).
    Logs {
        /// The stdout log.
        stdout: PathBuf,
        /// The stderr log.
        stderr: PathBuf,
    },
}

/// Attaches to `process`, copies its streams until they end and returns its exit status.
pub fn attach(agent: &Agent, process: u32, stdio: Stdio, sink: &Sink) -> Result<u8, agent::Error> {
    let mut control = agent.control(CONNECT_PATIENCE)?;
    let stdout = agent.stream(process, StreamKind::Stdout)?;
    let stderr = agent.stream(process, StreamKind::Stderr)?;
    let copiers = [
        copy_out(stdout, sink_writer(sink, StreamKind::Stdout)),
        copy_out(stderr, sink_writer(sink, StreamKind::Stderr)),
    ];
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

fn sink_writer(sink: &Sink, stream: StreamKind) -> Box<dyn Write + Send> {
    match (sink, stream) {
        (Sink::Terminal, StreamKind::Stderr) => Box::new(std::io::stderr()),
        (Sink::Terminal, _) => Box::new(std::io::stdout()),
        (Sink::Logs { stderr, .. }, StreamKind::Stderr) => Box::new(RotatingLog::new(stderr)),
        (Sink::Logs { stdout, .. }, _) => Box::new(RotatingLog::new(stdout)),
    }
}

fn copy_out(from: std::os::unix::net::UnixStream, mut to: Box<dyn Write + Send>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        if let Err(e) = agent::copy_output(from, &mut to) {
            log::debug!("output stream ended: {e}");
        }
    })
}

/// Copies the host's stdin to the process until it ends, then closes the process's stdin. Not
/// joined: a terminal's stdin may never end.
fn copy_stdin(mut to: std::os::unix::net::UnixStream) {
    std::thread::spawn(move || {
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

/// A log file that starts over (keeping the previous one as `NAME.1`) past [`LOG_MAX`] bytes.
pub struct RotatingLog {
    path: PathBuf,
    file: Option<File>,
    written: u64,
}

impl RotatingLog {
    /// A log at `path`, appended to.
    pub fn new(path: &std::path::Path) -> Self {
        let file = OpenOptions::new().create(true).append(true).open(path).ok();
        let written = file
            .as_ref()
            .and_then(|f| f.metadata().ok())
            .map_or(0, |m| m.len());
        Self {
            path: path.to_path_buf(),
            file,
            written,
        }
    }

    fn rotate(&mut self) {
        let mut old = self.path.clone().into_os_string();
        old.push(".1");
        let _ = std::fs::rename(&self.path, &old);
        self.file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .ok();
        self.written = 0;
    }
}

impl Write for RotatingLog {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.written + buf.len() as u64 > LOG_MAX {
            self.rotate();
        }
        // A log that cannot be written drops the output rather than stalling the workload.
        if let Some(file) = &mut self.file {
            let _ = file.write_all(buf);
        }
        self.written += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
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

    #[test]
    fn a_log_rotates_past_its_limit_and_stays_bounded() {
        let dir = std::env::temp_dir().join(format!("moat-log-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir is writable");
        let path = dir.join("stdout.log");
        let mut log = RotatingLog::new(&path);
        let chunk = vec![b'x'; 1 << 20];
        for _ in 0..(3 * LOG_MAX / chunk.len() as u64) {
            log.write_all(&chunk).expect("a log never fails a write");
        }
        let current = std::fs::metadata(&path).expect("log exists").len();
        let previous = std::fs::metadata(dir.join("stdout.log.1"))
            .expect("rotated log exists")
            .len();
        assert!(current <= LOG_MAX && previous <= LOG_MAX);
        std::fs::remove_dir_all(&dir).expect("temp dir is removable");
    }
}
