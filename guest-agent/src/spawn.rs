//! Starting the workload and waiting for it as PID 1.

use std::ffi::CString;
use std::io;

use moat_agent_protocol::caps;
use moat_agent_protocol::channel::ProcessSpec;
use moat_agent_protocol::console::LineReader;
use moat_agent_protocol::{ConsoleCommand, LaunchSpec};

use crate::user::Credentials;

/// `PATH` for workloads whose launch does not set one: Docker's default.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Exit status when the command cannot be found (shell and Docker convention).
const STATUS_NOT_FOUND: i32 = 127;
/// Exit status when the command exists but cannot be executed.
const STATUS_NOT_EXECUTABLE: i32 = 126;

/// What the child needs to become the workload, prepared before fork so that the child only
/// makes system calls.
pub struct Workload {
    argv: Vec<CString>,
    env: Vec<CString>,
    cwd: Option<CString>,
    creds: Credentials,
    /// Capabilities to keep, as a mask; `None` keeps them all.
    capabilities: Option<u64>,
}

impl Workload {
    /// The workload of `spec`, running as `creds`.
    pub fn new(spec: &LaunchSpec, creds: Credentials) -> io::Result<Self> {
        let hostname = spec.hostname.as_deref();
        Ok(Self {
            argv: to_cstrings(&spec.argv)?,
            env: to_cstrings(&workload_env(&spec.env, &creds.home, hostname))?,
            cwd: spec.cwd.as_deref().map(CString::new).transpose()?,
            creds,
            capabilities: spec.capabilities.as_deref().map(caps::mask),
        })
    }

    /// A process exec'd next to the workload of `launch` (`moat exec`), running as `creds`: the
    /// workload's environment with the exec's variables on top, and the workload's directory and
    /// capabilities unless the exec names its own directory.
    pub fn exec(launch: &LaunchSpec, exec: &ProcessSpec, creds: Credentials) -> io::Result<Self> {
        if exec.argv.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "no command to run",
            ));
        }
        let hostname = launch.hostname.as_deref();
        let vars = [launch.env.as_slice(), exec.env.as_slice()].concat();
        let cwd = exec.cwd.as_deref().or(launch.cwd.as_deref());
        Ok(Self {
            argv: to_cstrings(&exec.argv)?,
            env: to_cstrings(&workload_env(&vars, &creds.home, hostname))?,
            cwd: cwd.map(CString::new).transpose()?,
            creds,
            capabilities: launch.capabilities.as_deref().map(caps::mask),
        })
    }
}

/// Where a child's standard streams come from.
#[derive(Debug, Clone, Copy)]
pub enum ChildStdio {
    /// The agent's own stdout and stderr (the console), stdin from `/dev/null`.
    Console,
    /// These descriptors become fds 0, 1 and 2; with `tty`, fd 0 is a pty slave that becomes
    /// the controlling terminal of the child's new session.
    Fds {
        /// Becomes stdin.
        stdin: libc::c_int,
        /// Becomes stdout.
        stdout: libc::c_int,
        /// Becomes stderr.
        stderr: libc::c_int,
        /// `stdin` is a pty slave to make the controlling terminal.
        tty: bool,
    },
}

/// Forks and execs the workload; returns its pid.
///
/// The caller has blocked SIGCHLD (to read it from a signalfd); the child unblocks every signal
/// before exec, so the workload starts with a clean mask.
pub fn start(workload: &Workload) -> io::Result<libc::pid_t> {
    start_with(workload, ChildStdio::Console)
}

/// Forks and execs `workload` with `stdio`; returns its pid.
///
/// In channel mode the agent has threads. The child still only allocates (glibc's fork leaves
/// malloc usable in the child) and makes system calls; it writes its one error message with a
/// raw `write`, not through std's stderr lock, which another thread may have held at fork.
pub fn start_with(workload: &Workload, stdio: ChildStdio) -> io::Result<libc::pid_t> {
    // SAFETY: fork has no memory-safety preconditions; the child only runs `exec_workload`,
    // which takes no lock another thread could hold.
    match unsafe { libc::fork() } {
        -1 => Err(io::Error::last_os_error()),
        0 => exec_workload(workload, stdio),
        pid => Ok(pid),
    }
}

/// In the child: a clean signal state, a new session, its stdio, the workload's identity and
/// directory, then exec. Never returns.
fn exec_workload(workload: &Workload, stdio: ChildStdio) -> ! {
    let fail = |what: &str, error: io::Error, status: i32| -> ! {
        let message = format!("moat-agent: {what}: {error}\n");
        // SAFETY: writes a live buffer of the given length; _exit is always safe and skips the
        // parent's atexit state copied by fork.
        unsafe {
            libc::write(2, message.as_ptr().cast(), message.len());
            libc::_exit(status)
        }
    };
    // SAFETY: plain system calls on values owned by this function; the child is a new process.
    unsafe {
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
        // std ignores SIGPIPE in the agent; an ignored signal stays ignored across exec, and a
        // workload expects the default (`yes | head` ends `yes`).
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        libc::setsid();
    }
    if let Err(e) = set_stdio(stdio) {
        fail("cannot set up stdio", e, STATUS_NOT_EXECUTABLE);
    }
    if let Some(cwd) = &workload.cwd {
        // SAFETY: cwd is a valid NUL-terminated string.
        if unsafe { libc::chdir(cwd.as_ptr()) } != 0 {
            fail(
                &format!("cannot enter {cwd:?}"),
                io::Error::last_os_error(),
                STATUS_NOT_EXECUTABLE,
            );
        }
    }
    if let Some(keep) = workload.capabilities {
        if let Err(e) = limit_bounding_set(keep) {
            fail("cannot drop capabilities", e, STATUS_NOT_EXECUTABLE);
        }
    }
    if let Err(e) = drop_privileges(&workload.creds) {
        fail("cannot switch user", e, STATUS_NOT_EXECUTABLE);
    }
    if let (Some(keep), 0) = (workload.capabilities, workload.creds.uid) {
        // A root workload would otherwise keep every capability in its own sets; a non-root
        // one lost them all in setuid.
        if let Err(e) = set_capabilities(keep) {
            fail("cannot set capabilities", e, STATUS_NOT_EXECUTABLE);
        }
    }
    let error = execvpe(&workload.argv, &workload.env);
    let status = match error.raw_os_error() {
        Some(libc::ENOENT) => STATUS_NOT_FOUND,
        _ => STATUS_NOT_EXECUTABLE,
    };
    fail(&format!("cannot run {:?}", workload.argv[0]), error, status)
}

/// Puts the child's standard streams in place (after `setsid`, so a pty can become the session's
/// controlling terminal).
fn set_stdio(stdio: ChildStdio) -> io::Result<()> {
    let check = |rc: libc::c_int| {
        if rc < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    };
    match stdio {
        ChildStdio::Console => {
            // SAFETY: plain system calls on a descriptor this function opens and closes.
            unsafe {
                let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY);
                if null >= 0 {
                    libc::dup2(null, 0);
                    if null > 2 {
                        libc::close(null);
                    }
                }
            }
            Ok(())
        }
        ChildStdio::Fds {
            stdin,
            stdout,
            stderr,
            tty,
        } => {
            if tty {
                // SAFETY: TIOCSCTTY takes an integer argument; `stdin` is an open pty slave.
                check(unsafe { libc::ioctl(stdin, libc::TIOCSCTTY, 0) })?;
            }
            // SAFETY: dup2 on descriptors the parent opened for this child; the agent opens
            // everything close-on-exec, and dup2 clears that flag on the target only.
            unsafe {
                check(libc::dup2(stdin, 0))?;
                check(libc::dup2(stdout, 1))?;
                check(libc::dup2(stderr, 2))
            }
        }
    }
}

/// Drops every capability outside `keep` from the bounding set, so no exec can regain it.
fn limit_bounding_set(keep: u64) -> io::Result<()> {
    for cap in 0..caps::NAMES.len() as u64 {
        if keep & (1 << cap) != 0 {
            continue;
        }
        // SAFETY: prctl with integer arguments only.
        if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) } != 0 {
            let error = io::Error::last_os_error();
            // A capability the kernel does not know is not held either.
            if error.raw_os_error() != Some(libc::EINVAL) {
                return Err(error);
            }
        }
    }
    Ok(())
}

/// Sets the effective, permitted and inheritable sets to `keep` (capset, version 3).
fn set_capabilities(keep: u64) -> io::Result<()> {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: libc::c_int,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const VERSION_3: u32 = 0x2008_0522;
    let header = Header {
        version: VERSION_3,
        pid: 0,
    };
    let word = |shift: u32| {
        let bits = (keep >> shift) as u32;
        Data {
            effective: bits,
            permitted: bits,
            inheritable: bits,
        }
    };
    let data = [word(0), word(32)];
    // SAFETY: capset reads a v3 header and two data words, both live for the call.
    let rc = unsafe { libc::syscall(libc::SYS_capset, &header, data.as_ptr()) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Supplementary groups, then the group, then the user: the order in which each step is still
/// permitted.
fn drop_privileges(creds: &Credentials) -> io::Result<()> {
    let check = |rc: libc::c_int| {
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    };
    // An unprivileged agent (a unit test) cannot change its identity, and need not when it is
    // asked for its own.
    // SAFETY: getuid and getgid have no preconditions.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    if uid != 0 && (creds.uid, creds.gid) == (uid, gid) {
        return Ok(());
    }
    // SAFETY: the group list pointer and length describe a live slice.
    check(unsafe { libc::setgroups(creds.groups.len(), creds.groups.as_ptr()) })?;
    // SAFETY: plain system calls.
    check(unsafe { libc::setgid(creds.gid) })?;
    check(unsafe { libc::setuid(creds.uid) })
}

/// Looks `argv[0]` up on the workload's `PATH` (when it has no `/`) and execs it.
fn execvpe(argv: &[CString], env: &[CString]) -> io::Error {
    let mut argv_ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    argv_ptrs.push(std::ptr::null());
    let mut env_ptrs: Vec<*const libc::c_char> = env.iter().map(|e| e.as_ptr()).collect();
    env_ptrs.push(std::ptr::null());

    let mut error = io::Error::from_raw_os_error(libc::ENOENT);
    for candidate in candidates(argv[0].to_bytes(), env) {
        // SAFETY: all pointers are NUL-terminated strings kept alive by `argv`, `env` and
        // `candidate`; the arrays are null-terminated.
        unsafe { libc::execve(candidate.as_ptr(), argv_ptrs.as_ptr(), env_ptrs.as_ptr()) };
        let this = io::Error::last_os_error();
        // Keep the most telling error: "permission denied" beats "not found" further on.
        if this.raw_os_error() != Some(libc::ENOENT) {
            error = this;
        }
    }
    error
}

/// The paths to try for `name`, in `PATH` order.
fn candidates(name: &[u8], env: &[CString]) -> Vec<CString> {
    if name.contains(&b'/') {
        return CString::new(name).into_iter().collect();
    }
    let path = env
        .iter()
        .find_map(|e| e.to_bytes().strip_prefix(b"PATH="))
        .unwrap_or(DEFAULT_PATH.as_bytes());
    path.split(|&c| c == b':')
        .map(|dir| if dir.is_empty() { &b"."[..] } else { dir })
        .filter_map(|dir| CString::new([dir, b"/", name].concat()).ok())
        .collect()
}

/// The workload's environment: what a container gets by default (`PATH`, `HOSTNAME`, `HOME`),
/// then the launch's own variables, which win.
fn workload_env(extra: &[String], home: &str, hostname: Option<&str>) -> Vec<String> {
    let mut env = vec![format!("PATH={DEFAULT_PATH}")];
    env.extend(hostname.map(|h| format!("HOSTNAME={h}")));
    env.push(format!("HOME={home}"));
    for var in extra {
        let key = var.split_once('=').map_or(var.as_str(), |(k, _)| k);
        env.retain(|e| e.split_once('=').map(|(k, _)| k) != Some(key));
        env.push(var.clone());
    }
    env
}

fn to_cstrings(items: &[String]) -> io::Result<Vec<CString>> {
    items
        .iter()
        .map(|s| CString::new(s.as_str()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput)))
        .collect()
}

/// Blocks SIGCHLD and returns a signalfd that reads it, so that child exits and console input
/// can be waited for together.
pub fn sigchld_fd() -> io::Result<libc::c_int> {
    // SAFETY: the set is initialised by sigemptyset before use; plain system calls.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGCHLD);
        if libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) != 0 {
            return Err(io::Error::last_os_error());
        }
        let fd = libc::signalfd(-1, &set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(fd)
    }
}

/// Waits until `workload` exits, reaping every other child as PID 1 must and delivering the
/// signals the host asks for on the console; returns the workload's status in shell convention
/// (the exit code, or 128+N after death by signal N).
pub fn supervise(workload: libc::pid_t, sigchld: libc::c_int) -> u8 {
    let console = 0;
    let mut reader = LineReader::default();
    let mut fds = [
        libc::pollfd {
            fd: sigchld,
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: console,
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    loop {
        if let Some(status) = reap(workload) {
            return status;
        }
        // SAFETY: fds is a live array of pollfd of the given length.
        let ready = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
        if ready < 0 {
            continue; // EINTR
        }
        if fds[0].revents != 0 {
            drain(sigchld);
        }
        if fds[1].revents != 0 {
            let mut buf = [0u8; 256];
            // SAFETY: reads into a live buffer of the given length.
            let n = unsafe { libc::read(console, buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                // No console input any more: stop polling it.
                fds[1].fd = -1;
                continue;
            }
            for ConsoleCommand::Signal(signal) in reader.feed(&buf[..n as usize]) {
                // SAFETY: kill has no memory-safety preconditions.
                unsafe { libc::kill(workload, signal) };
            }
        }
    }
}

/// Reaps every exited child; returns the workload's status if it was among them.
/// Kills every process left in the guest and reaps them, waiting at most a second: PID 1 is
/// the only process `kill(-1, ...)` spares.
pub fn kill_all() {
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(-1, libc::SIGKILL) };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
    while std::time::Instant::now() < deadline {
        let mut status = 0;
        // SAFETY: waitpid writes only to `status`.
        let pid = unsafe { libc::waitpid(-1, &mut status, 0) };
        if pid <= 0 {
            return; // ECHILD: nothing left.
        }
    }
}

fn reap(workload: libc::pid_t) -> Option<u8> {
    loop {
        let mut status = 0;
        // SAFETY: waitpid writes only to `status`.
        let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if pid == workload {
            return Some(shell_status(status));
        }
        if pid <= 0 {
            return None;
        }
    }
}

/// Empties the signalfd; the reaping loop finds out which children ended.
fn drain(fd: libc::c_int) {
    let mut info = [0u8; std::mem::size_of::<libc::signalfd_siginfo>()];
    // SAFETY: reads into a live buffer of the given length.
    while unsafe { libc::read(fd, info.as_mut_ptr().cast(), info.len()) } > 0 {}
}

/// A wait status in shell convention: the exit code, or 128+N after death by signal N.
pub fn shell_status(status: libc::c_int) -> u8 {
    if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status) as u8
    } else {
        (128 + libc::WTERMSIG(status)) as u8
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn launch_env_overrides_defaults() {
        let env = workload_env(&["PATH=/x".to_string(), "A=1".to_string()], "/root", None);
        assert_eq!(env, vec!["HOME=/root", "PATH=/x", "A=1"]);
        let env = workload_env(&[], "/home/app", Some("box"));
        assert_eq!(env[1..], ["HOSTNAME=box", "HOME=/home/app"]);
    }

    #[test]
    fn names_with_a_slash_are_not_searched() {
        let found = candidates(b"./run", &[]);
        assert_eq!(found, vec![CString::new("./run").unwrap()]);
    }

    #[test]
    fn names_are_searched_on_the_workload_path() {
        let env = [CString::new("PATH=/a::/b").unwrap()];
        let found = candidates(b"sh", &env);
        let found: Vec<_> = found.iter().map(|c| c.to_str().unwrap()).collect();
        assert_eq!(found, vec!["/a/sh", "./sh", "/b/sh"]);
    }

    #[test]
    fn signal_deaths_map_to_128_plus_signal() {
        assert_eq!(shell_status(libc::SIGKILL), 137);
        assert_eq!(shell_status(7 << 8), 7);
    }
}
