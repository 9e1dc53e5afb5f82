//! The agent's virtio-vsock listener (AF_VSOCK, vsock(7)).

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;

/// Connections the kernel queues before the agent accepts them: the host opens a handful per
/// process (control, stdin, stdout, stderr).
const BACKLOG: libc::c_int = 64;

/// A listening socket on `port` for connections from any CID (the host's is 2).
pub fn listen(port: u32) -> io::Result<OwnedFd> {
    // SAFETY: socket has no memory-safety preconditions; the fd is owned at once.
    let fd = unsafe { libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a descriptor just returned by socket, owned by nobody else.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_vm is plain data; all-zero is a valid value before the fields are set.
    let mut addr: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
    addr.svm_family = libc::AF_VSOCK as libc::sa_family_t;
    addr.svm_port = port;
    addr.svm_cid = libc::VMADDR_CID_ANY;
    let len = std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t;
    // SAFETY: bind reads `len` bytes of `addr`, which lives for the call; listen takes integers.
    unsafe {
        let addr = (&addr as *const libc::sockaddr_vm).cast();
        if libc::bind(socket.as_raw_fd(), addr, len) != 0
            || libc::listen(socket.as_raw_fd(), BACKLOG) != 0
        {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(socket)
}

/// Accepts one connection.
///
/// It comes back as a `UnixStream` because std's `UnixStream` only makes socket-generic calls on
/// its descriptor (read, write, shutdown, dup), which vsock supports like any stream socket; the
/// channel code and its tests then share one type.
pub fn accept(listener: BorrowedFd<'_>) -> io::Result<UnixStream> {
    // SAFETY: accept4 with null address pointers writes nothing to memory.
    let fd = unsafe {
        libc::accept4(
            listener.as_raw_fd(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            libc::SOCK_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a descriptor just returned by accept4, owned by nobody else.
    Ok(UnixStream::from(unsafe { OwnedFd::from_raw_fd(fd) }))
}
