//! Starting the workload and waiting for it as PID 1.

use std::ffi::CString;
use std::io;

use moat_agent_protocol::Launch;

/// `PATH` for workloads whose launch does not set one: Docker's default.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Exit status when the command cannot be found (shell and Docker convention).
const STATUS_NOT_FOUND: i32 = 127;
/// Exit status when the command exists but cannot be executed.
const STATUS_NOT_EXECUTABLE: i32 = 126;

/// Forks and execs the workload; returns its pid.
pub fn start(launch: &Launch) -> io::Result<libc::pid_t> {
    let argv = to_cstrings(&launch.argv)?;
    let env = to_cstrings(&workload_env(&launch.env))?;
    // SAFETY: fork has no memory-safety preconditions; the agent is single-threaded, so the child
    // may run arbitrary code before exec.
    match unsafe { libc::fork() } {
        -1 => Err(io::Error::last_os_error()),
        0 => exec_workload(&argv, &env),
        pid => Ok(pid),
    }
}

/// In the child: a new session, then exec. Never returns.
fn exec_workload(argv: &[CString], env: &[CString]) -> ! {
    // SAFETY: setsid has no preconditions; the child is a new process, not a group leader.
    unsafe { libc::setsid() };
    let error = execvpe(argv, env);
    let status = match error.raw_os_error() {
        Some(libc::ENOENT) => STATUS_NOT_FOUND,
        _ => STATUS_NOT_EXECUTABLE,
    };
    eprintln!("moat-agent: cannot run {:?}: {error}", argv[0]);
    // SAFETY: _exit is always safe; it skips the parent's atexit state copied by fork.
    unsafe { libc::_exit(status) }
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

/// The workload's environment: defaults a container gets, then the launch's own variables.
fn workload_env(extra: &[String]) -> Vec<String> {
    let mut env = vec![format!("PATH={DEFAULT_PATH}"), "HOME=/root".to_string()];
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

/// Reaps every child until `workload` exits; returns its status in shell convention
/// (the exit code, or 128+N after death by signal N).
pub fn wait_reaping(workload: libc::pid_t) -> u8 {
    loop {
        let mut status = 0;
        // SAFETY: waitpid writes only to `status`.
        let pid = unsafe { libc::waitpid(-1, &mut status, 0) };
        if pid == workload {
            return shell_status(status);
        }
        if pid == -1 && io::Error::last_os_error().raw_os_error() == Some(libc::ECHILD) {
            // Cannot happen while `workload` has not been reaped; do not spin if it does.
            return STATUS_NOT_EXECUTABLE as u8;
        }
    }
}

fn shell_status(status: libc::c_int) -> u8 {
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
        let env = workload_env(&["PATH=/x".to_string(), "A=1".to_string()]);
        assert_eq!(env, vec!["HOME=/root", "PATH=/x", "A=1"]);
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
