//! Terminals: the console the agent inherits from the kernel as stdin, stdout and stderr, and
//! the ptys of processes run with a tty over the agent channel.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// Puts the console in the mode the host expects: input raw and unechoed, since it carries the
/// host's commands, not typing; output unprocessed, so a workload's `\n` reaches the host as
/// `\n` and not `\r\n`, as with Docker without `-t`. Kernel messages take their own path.
pub fn configure_console() {
    // SAFETY: tcgetattr fills the zeroed struct; tcsetattr reads it. Fd 0 is the console or
    // not a tty, in which case both calls fail harmlessly.
    unsafe {
        let mut termios: libc::termios = std::mem::zeroed();
        if libc::tcgetattr(0, &mut termios) != 0 {
            return;
        }
        termios.c_lflag &= !(libc::ECHO | libc::ECHONL | libc::ICANON | libc::ISIG | libc::IEXTEN);
        termios.c_iflag &= !(libc::ICRNL | libc::INLCR | libc::IGNCR | libc::IXON | libc::ISTRIP);
        termios.c_oflag &= !libc::OPOST;
        termios.c_cc[libc::VMIN] = 1;
        termios.c_cc[libc::VTIME] = 0;
        libc::tcsetattr(0, libc::TCSANOW, &termios);
    }
}

/// The end-of-file character of the terminal behind `fd` when it is in canonical mode; `None`
/// for a pipe, or a terminal in raw mode (which has no end of file to send). A pty master
/// answers for its slave.
pub fn canonical_eof_char(fd: BorrowedFd) -> Option<u8> {
    // SAFETY: termios is plain data; tcgetattr fills it or fails (a pipe: ENOTTY).
    let mut termios: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: a valid descriptor and a termios to fill.
    if unsafe { libc::tcgetattr(fd.as_raw_fd(), &mut termios) } != 0 {
        return None;
    }
    if termios.c_lflag & libc::ICANON == 0 {
        return None;
    }
    Some(termios.c_cc[libc::VEOF])
}

/// A new pseudo-terminal: the agent keeps the master, the child gets the slave.
pub struct Pty {
    /// The agent's side: what the child prints is read here, what it reads is written here.
    pub master: OwnedFd,
    /// The child's side, its stdin, stdout, stderr and controlling terminal.
    pub slave: OwnedFd,
}

/// Opens a pty from `/dev/ptmx` (devpts' own, see `mounts::container_mounts`), of `size` rows
/// and columns when given.
pub fn open_pty(size: Option<(u16, u16)>) -> io::Result<Pty> {
    let flags = libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC;
    // SAFETY: opens a path given as a NUL-terminated string; the fd is owned at once.
    let master = check_fd(unsafe { libc::open(c"/dev/ptmx".as_ptr(), flags) })?;
    let mut name = [0 as libc::c_char; 64];
    // SAFETY: unlockpt takes an open master; ptsname_r writes at most `name.len()` bytes,
    // NUL-terminated, into `name`.
    unsafe {
        if libc::unlockpt(master.as_raw_fd()) != 0
            || libc::ptsname_r(master.as_raw_fd(), name.as_mut_ptr(), name.len()) != 0
        {
            return Err(io::Error::last_os_error());
        }
    }
    // SAFETY: `name` holds the NUL-terminated path ptsname_r wrote.
    let slave = check_fd(unsafe { libc::open(name.as_ptr(), flags) })?;
    if let Some((rows, cols)) = size {
        set_size(master.as_fd(), rows, cols)?;
    }
    Ok(Pty { master, slave })
}

/// Sets a pty's size; the kernel sends SIGWINCH to its foreground process group.
pub fn set_size(master: BorrowedFd<'_>, rows: u16, cols: u16) -> io::Result<()> {
    let size = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one winsize, which lives for the call.
    if unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &size) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn check_fd(fd: libc::c_int) -> io::Result<OwnedFd> {
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a descriptor just returned by open, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}
