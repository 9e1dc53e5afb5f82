//! The console the agent inherits from the kernel as stdin, stdout and stderr.

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
