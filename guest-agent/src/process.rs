//! The processes the agent runs in channel mode, the workload and every exec: their unattached
//! stdio ends, their exit statuses, and whoever waits for them.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use moat_agent_protocol::channel::{ChannelSpec, StreamKind, MAIN_PROCESS};

use crate::spawn::{self, ChildStdio, Workload};
use crate::tty;

/// Who reaps the children.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reaping {
    /// One thread reaps every child with `waitpid(-1)`, orphans included: the agent as PID 1.
    All,
    /// A thread per child waits for that child only, so the table can live in a process that
    /// has other children (unit tests).
    EachChild,
}

/// Why a request about a process failed.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// No process has this id.
    #[error("no process {0}")]
    Unknown(u32),
    /// The process has ended, so it cannot be signalled or resized.
    #[error("process {0} has ended")]
    Ended(u32),
    /// A resize of a process run without a tty.
    #[error("process {0} has no tty")]
    NoTty(u32),
    /// kill() failed.
    #[error("cannot signal process {process}")]
    Signal {
        /// The process.
        process: u32,
        /// Why.
        source: io::Error,
    },
    /// TIOCSWINSZ failed.
    #[error("cannot resize the tty of process {process}")]
    Resize {
        /// The process.
        process: u32,
        /// Why.
        source: io::Error,
    },
    /// Pipes or a pty for a new process could not be opened.
    #[error("cannot set up the stdio of a new process")]
    Stdio(#[source] io::Error),
    /// fork() failed.
    #[error("cannot start a new process")]
    Spawn(#[source] io::Error),
}

/// Every process the agent started, by id.
pub struct Table {
    state: Mutex<State>,
    /// Notified whenever a process ends, a status is published or an output copy finishes.
    changed: Condvar,
    reaping: Reaping,
}

#[derive(Default)]
struct State {
    /// The next exec's id; the workload is [`MAIN_PROCESS`].
    next_id: u32,
    processes: HashMap<u32, Process>,
    /// Ids of the processes not yet reaped, by pid.
    ids: HashMap<libc::pid_t, u32>,
}

struct Process {
    pid: libc::pid_t,
    /// Set when the process is reaped.
    ended: Option<u8>,
    /// What `Wait` answers: set with `ended`, or for the workload by [`Table::publish`] once the
    /// guest is torn down.
    status: Option<u8>,
    hold_status: bool,
    /// The agent's ends of the stdio, until a stream connection takes them.
    unattached: HashMap<StreamKind, OwnedFd>,
    /// The pty master, for resizes, while the process runs with a tty.
    pty: Option<OwnedFd>,
    /// Output streams being copied to the host right now.
    copying: usize,
}

impl Table {
    /// An empty table whose children are reaped as `reaping` says.
    pub fn new(reaping: Reaping) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(State {
                next_id: MAIN_PROCESS + 1,
                ..State::default()
            }),
            changed: Condvar::new(),
            reaping,
        })
    }

    /// Starts the thread that reaps every child of the agent ([`Reaping::All`]).
    pub fn reap_all(self: &Arc<Self>) -> io::Result<()> {
        let table = Arc::clone(self);
        std::thread::Builder::new()
            .name("reaper".into())
            .spawn(move || table.reaper())?;
        Ok(())
    }

    fn reaper(&self) {
        loop {
            let mut status = 0;
            // SAFETY: waitpid writes only to `status`.
            let pid = unsafe { libc::waitpid(-1, &mut status, 0) };
            if pid > 0 {
                self.record(pid, status);
            } else if io::Error::last_os_error().raw_os_error() == Some(libc::ECHILD) {
                // No children right now; one may be forked at any time.
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }

    /// Starts `workload` with stdio as `stdio` says; the workload itself when `main`, an exec
    /// otherwise. Returns its id.
    pub fn spawn(
        self: &Arc<Self>,
        workload: &Workload,
        stdio: ChannelSpec,
        main: bool,
    ) -> Result<u32, ProcessError> {
        let ends = Ends::open(stdio).map_err(ProcessError::Stdio)?;
        // The lock is held across fork so the reaper cannot record the pid before it is known.
        let mut state = self.lock();
        let pid = spawn::start_with(workload, ends.child_stdio()).map_err(ProcessError::Spawn)?;
        let id = if main {
            MAIN_PROCESS
        } else {
            state.next_id += 1;
            state.next_id - 1
        };
        let process = Process {
            pid,
            ended: None,
            status: None,
            hold_status: main,
            unattached: ends.parent,
            pty: ends.pty,
            copying: 0,
        };
        state.processes.insert(id, process);
        state.ids.insert(pid, id);
        drop(state);
        if self.reaping == Reaping::EachChild {
            self.reap_one(pid);
        }
        Ok(id)
    }

    fn reap_one(self: &Arc<Self>, pid: libc::pid_t) {
        let table = Arc::clone(self);
        let waiter = move || loop {
            let mut status = 0;
            // SAFETY: waitpid writes only to `status`.
            let rc = unsafe { libc::waitpid(pid, &mut status, 0) };
            if rc == pid {
                return table.record(pid, status);
            }
            if io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
                return;
            }
        };
        // Without a thread the process stays a zombie and its waiters wait: tests only.
        let _ = std::thread::Builder::new().spawn(waiter);
    }

    /// Records that `pid` ended with wait status `raw`; orphans the agent never knew are only
    /// reaped.
    fn record(&self, pid: libc::pid_t, raw: libc::c_int) {
        let mut state = self.lock();
        let Some(id) = state.ids.remove(&pid) else {
            return;
        };
        if let Some(process) = state.processes.get_mut(&id) {
            let status = spawn::shell_status(raw);
            process.ended = Some(status);
            process.pty = None;
            if !process.hold_status {
                process.status = Some(status);
            }
            self.changed.notify_all();
        }
    }

    /// Waits until process `id` has a status to report; the workload's comes with
    /// [`Table::publish`].
    pub fn wait(&self, id: u32) -> Result<u8, ProcessError> {
        self.wait_for(id, |p| p.status)
    }

    /// Waits until process `id` has ended, published or not.
    pub fn wait_ended(&self, id: u32) -> Result<u8, ProcessError> {
        self.wait_for(id, |p| p.ended)
    }

    fn wait_for(&self, id: u32, field: fn(&Process) -> Option<u8>) -> Result<u8, ProcessError> {
        let mut state = self.lock();
        loop {
            let process = state.processes.get(&id).ok_or(ProcessError::Unknown(id))?;
            if let Some(status) = field(process) {
                return Ok(status);
            }
            state = self
                .changed
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// Makes the status of a process started as `main` the answer to `Wait`.
    pub fn publish(&self, id: u32) {
        let mut state = self.lock();
        if let Some(process) = state.processes.get_mut(&id) {
            process.status = process.ended;
            self.changed.notify_all();
        }
    }

    /// Waits until every process has ended, or `timeout` has passed.
    pub fn wait_all_ended(&self, timeout: Duration) {
        self.wait_until(timeout, |state| {
            state.processes.values().all(|p| p.ended.is_some())
        });
    }

    /// Waits until no output of process `id` is being copied, or `timeout` has passed.
    pub fn wait_outputs_copied(&self, id: u32, timeout: Duration) {
        self.wait_until(timeout, |state| {
            state.processes.get(&id).is_none_or(|p| p.copying == 0)
        });
    }

    fn wait_until(&self, timeout: Duration, done: impl Fn(&State) -> bool) {
        let deadline = Instant::now() + timeout;
        let mut state = self.lock();
        while !done(&state) {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                return;
            };
            state = self
                .changed
                .wait_timeout(state, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// Sends `signal` to process `id`.
    pub fn signal(&self, id: u32, signal: i32) -> Result<(), ProcessError> {
        let state = self.lock();
        let process = state.running(id)?;
        // SAFETY: kill has no memory-safety preconditions. The pid is not reaped yet (the lock
        // is held and `ended` is unset), so it still names this process.
        if unsafe { libc::kill(process.pid, signal) } != 0 {
            let source = io::Error::last_os_error();
            return Err(ProcessError::Signal {
                process: id,
                source,
            });
        }
        Ok(())
    }

    /// Sets the pty size of process `id`.
    pub fn resize(&self, id: u32, rows: u16, cols: u16) -> Result<(), ProcessError> {
        let state = self.lock();
        let pty = state
            .running(id)?
            .pty
            .as_ref()
            .ok_or(ProcessError::NoTty(id))?;
        tty::set_size(pty.as_fd(), rows, cols).map_err(|source| ProcessError::Resize {
            process: id,
            source,
        })
    }

    /// Hands the agent's end of stream `kind` of process `id` to a stream connection, once:
    /// `None` for an unknown process, a stream taken before, or a stream the process does not
    /// have (stderr with a tty). Output streams count as copying until [`Table::copied`].
    pub fn attach(&self, id: u32, kind: StreamKind) -> Option<OwnedFd> {
        let mut state = self.lock();
        let process = state.processes.get_mut(&id)?;
        let end = process.unattached.remove(&kind)?;
        if kind != StreamKind::Stdin {
            process.copying += 1;
        }
        Some(end)
    }

    /// An output stream of process `id` taken by [`Table::attach`] reached its end.
    pub fn copied(&self, id: u32) {
        let mut state = self.lock();
        if let Some(process) = state.processes.get_mut(&id) {
            process.copying = process.copying.saturating_sub(1);
            self.changed.notify_all();
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // No thread panics while holding the lock (the agent aborts on panic), so a poisoned
        // lock still holds a consistent table.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl State {
    fn running(&self, id: u32) -> Result<&Process, ProcessError> {
        let process = self.processes.get(&id).ok_or(ProcessError::Unknown(id))?;
        match process.ended {
            Some(_) => Err(ProcessError::Ended(id)),
            None => Ok(process),
        }
    }
}

/// Both ends of a new process's stdio: the child's, closed in the agent once it has forked, and
/// the agent's, kept until streams attach.
struct Ends {
    parent: HashMap<StreamKind, OwnedFd>,
    pty: Option<OwnedFd>,
    /// The child's stdin, stdout and stderr.
    child: [OwnedFd; 3],
    tty: bool,
}

impl Ends {
    fn open(stdio: ChannelSpec) -> io::Result<Self> {
        if stdio.tty {
            Self::pty(stdio)
        } else {
            Self::pipes(stdio.stdin)
        }
    }

    /// Pipes for stdout and stderr; stdin a pipe too when the host will write it.
    fn pipes(stdin: bool) -> io::Result<Self> {
        let mut parent = HashMap::new();
        let child_stdin = if stdin {
            let (read, write) = pipe()?;
            parent.insert(StreamKind::Stdin, write);
            read
        } else {
            dev_null()?
        };
        let (stdout, child_stdout) = pipe()?;
        let (stderr, child_stderr) = pipe()?;
        parent.insert(StreamKind::Stdout, stdout);
        parent.insert(StreamKind::Stderr, stderr);
        Ok(Self {
            parent,
            pty: None,
            child: [child_stdin, child_stdout, child_stderr],
            tty: false,
        })
    }

    /// A pty whose master carries stdout (and stdin when the host will write it). Its slave is
    /// the child's stdin even without `stdin`, as with `docker run -t`: a shell then waits for
    /// input rather than reading end of file.
    fn pty(stdio: ChannelSpec) -> io::Result<Self> {
        let pty = tty::open_pty(stdio.size)?;
        let mut parent = HashMap::new();
        parent.insert(StreamKind::Stdout, pty.master.try_clone()?);
        if stdio.stdin {
            parent.insert(StreamKind::Stdin, pty.master.try_clone()?);
        }
        let child = [pty.slave.try_clone()?, pty.slave.try_clone()?, pty.slave];
        Ok(Self {
            parent,
            pty: Some(pty.master),
            child,
            tty: true,
        })
    }

    fn child_stdio(&self) -> ChildStdio {
        let [stdin, stdout, stderr] = &self.child;
        ChildStdio::Fds {
            stdin: stdin.as_raw_fd(),
            stdout: stdout.as_raw_fd(),
            stderr: stderr.as_raw_fd(),
            tty: self.tty,
        }
    }
}

/// A close-on-exec pipe: (read end, write end).
fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two descriptors into the live array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both descriptors were just created and are owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

fn dev_null() -> io::Result<OwnedFd> {
    Ok(std::fs::File::open("/dev/null")?.into())
}
