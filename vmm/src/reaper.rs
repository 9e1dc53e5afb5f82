//! A VM's teardown, left to a process of its own so that the process that ran the VM exits as
//! soon as it knows how the guest ended.
//!
//! When the last reference to a KVM VM goes, the kernel destroys it (vCPUs, memory slots, the
//! shadow MMU) and then the address space that held guest memory. At process exit that work
//! delays the exit status the caller waits for. The reaper is a process made with
//! `clone(CLONE_VM)`: it shares the address space and holds its own copy of the VM's file
//! descriptor, so the exit of the process that ran the VM releases neither. The reaper waits
//! until that process is gone (end of file on a pipe whose write end only that process holds)
//! and exits in turn, which is when the kernel tears the VM down, off the caller's path.
//!
//! The reaper runs on a stack of its own in the shared address space and touches nothing but
//! raw system calls: no allocator, no `errno`, no thread-local storage.

use std::io;
use std::os::fd::RawFd;

/// The reaper's stack: it only makes a few system calls.
const STACK_SIZE: usize = 64 << 10;

/// Most file descriptors the reaper keeps open.
const MAX_KEPT: usize = 8;

/// What the reaper is given, in memory it shares with its parent.
#[repr(C)]
struct Orders {
    /// Descriptors to keep open, ascending; every other descriptor is closed.
    keep: [RawFd; MAX_KEPT],
    kept: usize,
    /// Read end of the pipe that reaches end of file when the parent is gone.
    parent_gone: RawFd,
}

/// Starts a reaper that holds `keep` (the VM's descriptors) open until this process has exited.
///
/// The reaper also holds this process's address space, so guest memory is unmapped by the
/// reaper's exit, not this process's. Call it only when this process is about to exit: what
/// `keep` refers to lives on until then.
pub fn spawn(keep: &[RawFd]) -> io::Result<()> {
    if keep.len() >= MAX_KEPT {
        return Err(io::Error::other("too many descriptors for the reaper"));
    }
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two descriptors into `fds`, which has room for them.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let [parent_gone, _held_until_exit] = fds;
    let mut orders = Orders {
        keep: [-1; MAX_KEPT],
        kept: keep.len() + 1,
        parent_gone,
    };
    orders.keep[..keep.len()].copy_from_slice(keep);
    orders.keep[keep.len()] = parent_gone;
    orders.keep[..orders.kept].sort_unstable();

    // Both are left to the exit of this process: the reaper may still read them after this
    // function returns, and the write end must stay open until then.
    let orders = Box::leak(Box::new(orders));
    let stack = Box::leak(vec![0u8; STACK_SIZE].into_boxed_slice());
    // SAFETY: the stack top is the end of a leaked, writable allocation (16-byte aligned as
    // the ABI wants); `orders` is leaked too, so both outlive the reaper. Without
    // CLONE_THREAD or a signal in the flags the child is a separate process that nobody waits
    // for; init reaps it.
    let pid = unsafe {
        let top = stack.as_mut_ptr().add(STACK_SIZE) as usize & !0xf;
        libc::clone(
            reap,
            top as *mut libc::c_void,
            libc::CLONE_VM,
            (orders as *mut Orders).cast(),
        )
    };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The reaper: closes what it need not hold, waits for its parent to be gone, exits.
extern "C" fn reap(orders: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `spawn` passes a leaked `Orders` that nothing writes any more.
    let orders = unsafe { &*orders.cast::<Orders>() };
    let mut first = 0;
    for &fd in &orders.keep[..orders.kept] {
        close_range(first, fd - 1);
        first = fd + 1;
    }
    close_range(first, RawFd::MAX);
    let mut byte = 0u8;
    // Nothing is ever written: read returns 0 at end of file, when the parent is gone, or
    // fails, when something is badly wrong; either way it is time to go.
    while syscall3(
        libc::SYS_read,
        orders.parent_gone as usize,
        &raw mut byte as usize,
        1,
    ) == -(libc::EINTR as isize)
    {}
    syscall3(libc::SYS_exit_group, 0, 0, 0);
    unreachable!("exit_group does not return")
}

/// Closes descriptors `first..=last`, if that range is not empty.
fn close_range(first: RawFd, last: RawFd) {
    if first <= last {
        syscall3(libc::SYS_close_range, first as usize, last as usize, 0);
    }
}

/// A system call without the C library's wrapper, which would write the parent's `errno`.
fn syscall3(number: libc::c_long, a: usize, b: usize, c: usize) -> isize {
    let result: isize;
    // SAFETY: the x86_64 Linux system call convention; the kernel clobbers rcx and r11 only.
    // The callers pass arguments valid for their call (a buffer that lives across `read`).
    unsafe {
        std::arch::asm!(
            "syscall",
            inlateout("rax") number as isize => result,
            in("rdi") a,
            in("rsi") b,
            in("rdx") c,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    result
}

#[cfg(test)]
mod tests {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    use std::time::{Duration, Instant};

    use super::*;

    fn pipe() -> (OwnedFd, OwnedFd) {
        let mut fds = [0; 2];
        // SAFETY: pipe2 writes two new descriptors, which are then owned here.
        unsafe {
            assert_eq!(libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC), 0);
            (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1]))
        }
    }

    /// Whether the pipe's write side is closed everywhere within `patience` (a read sees end
    /// of file instead of waiting).
    fn closed_everywhere(read: &OwnedFd, patience: Duration) -> bool {
        let started = Instant::now();
        loop {
            let mut poll = libc::pollfd {
                fd: read.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            unsafe { libc::poll(&mut poll, 1, 10) };
            if poll.revents & libc::POLLHUP != 0 {
                return true;
            }
            if started.elapsed() > patience {
                return false;
            }
        }
    }

    #[test]
    fn the_reaper_holds_what_it_is_told_to_keep() {
        let (read, write) = pipe();

        spawn(&[write.as_raw_fd()]).unwrap();
        drop(write);

        // The reaper lives until the test process exits, and so does its copy.
        assert!(!closed_everywhere(&read, Duration::from_millis(200)));
    }

    #[test]
    fn the_reaper_closes_everything_else() {
        let (read, write) = pipe();
        let (_other_read, other_write) = pipe();

        spawn(&[other_write.as_raw_fd()]).unwrap();
        drop(write);

        assert!(closed_everywhere(&read, Duration::from_secs(5)));
    }
}
