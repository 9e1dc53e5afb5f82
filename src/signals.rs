//! The user's signals, passed on to a workload: `moat` blocks them in every thread and one
//! thread takes them with `sigwait`, as `docker run`'s signal proxy does.

/// Signals `moat` passes on to the workload.
const FORWARDED: [libc::c_int; 6] = [
    libc::SIGINT,
    libc::SIGTERM,
    libc::SIGHUP,
    libc::SIGQUIT,
    libc::SIGUSR1,
    libc::SIGUSR2,
];

/// Blocks the forwarded signals (and with a tty SIGWINCH) in this thread and so in every thread
/// it starts later, so that only the forwarding thread sees them. Call it before starting any.
pub fn block(tty: bool) {
    let set = forwarded_set(tty);
    // SAFETY: `set` is initialised; pthread_sigmask only changes this thread's mask.
    unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
}

/// A thread that hands each forwarded signal (and with a tty SIGWINCH) to `deliver`.
pub fn forward(tty: bool, mut deliver: impl FnMut(libc::c_int) + Send + 'static) {
    let set = forwarded_set(tty);
    std::thread::Builder::new()
        .name("signals".into())
        .stack_size(moat_vmm::THREAD_STACK_SIZE)
        .spawn(move || loop {
            let mut signal = 0;
            // SAFETY: `set` is initialised; sigwait writes the signal number.
            if unsafe { libc::sigwait(&set, &mut signal) } != 0 {
                return;
            }
            log::debug!("forwarding signal {signal}");
            deliver(signal);
        })
        .expect("spawning a thread at start-up succeeds");
}

/// The forwarded signals, and with a tty SIGWINCH (the terminal was resized).
fn forwarded_set(tty: bool) -> libc::sigset_t {
    // SAFETY: sigemptyset initialises the zeroed set before sigaddset reads it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for signal in FORWARDED {
            libc::sigaddset(&mut set, signal);
        }
        if tty {
            libc::sigaddset(&mut set, libc::SIGWINCH);
        }
        set
    }
}
