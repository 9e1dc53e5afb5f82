//! The benchmark's child processes: started together, timed from spawn to exit, and never left
//! behind: on Ctrl-C, SIGTERM or a timeout every child still running is killed and reaped.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use super::memory::{self, MemorySample};

/// Set by the signal handler when the user asks the benchmark to stop.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// How often the wait for children looks at the interrupt flag and the deadline.
const POLL: Duration = Duration::from_millis(50);

/// How many lines of a failed child's output an error quotes.
const LOG_TAIL_LINES: usize = 6;

/// The benchmark was interrupted by a signal; its children are gone.
#[derive(Debug, thiserror::Error)]
#[error("interrupted; the benchmark's VMs were stopped")]
pub struct Interrupted;

/// Makes SIGINT, SIGTERM and SIGHUP stop the benchmark (between polls) instead of killing it
/// with its children still running.
pub fn catch_interrupts() {
    extern "C" fn on_signal(_: libc::c_int) {
        INTERRUPTED.store(true, Ordering::Relaxed);
    }
    for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe {
            libc::signal(
                signal,
                on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t,
            )
        };
    }
}

/// One child to start.
pub struct Launch {
    /// The command; its stdin is closed and its output goes to `log`.
    pub command: Command,
    /// Where its stdout and stderr are kept, for the error message if it fails.
    pub log: PathBuf,
    /// When its stdout shows this line, sample its memory (a VM of that many MiB) once.
    pub sample_at_line: Option<(&'static str, u64)>,
}

/// How one child ended.
pub struct Finished {
    /// When it was spawned.
    pub spawned: Instant,
    /// When its exit was seen.
    pub exited: Instant,
    /// Its memory when it printed the marker line, if asked and seen.
    pub sample: Option<MemorySample>,
}

impl Finished {
    /// Spawn to exit.
    pub fn elapsed(&self) -> Duration {
        self.exited.duration_since(self.spawned)
    }
}

/// A child that was spawned, until its waiter thread reports its exit.
struct Running {
    pid: u32,
    log: PathBuf,
    spawned: Instant,
    sample: Arc<Mutex<Option<MemorySample>>>,
    reader: Option<JoinHandle<()>>,
}

/// Starts every launch at once and waits for all of them, for at most `timeout`. Each must exit
/// with status 0. Returns them in the order given.
pub fn run_all(launches: Vec<Launch>, timeout: Duration) -> anyhow::Result<Vec<Finished>> {
    let (exit_tx, exit_rx) = mpsc::channel();
    let mut running = Vec::with_capacity(launches.len());
    for (index, launch) in launches.into_iter().enumerate() {
        match spawn(launch, index, exit_tx.clone()) {
            Ok(child) => running.push(child),
            Err(e) => {
                stop_all(&running, &vec![false; running.len()], &exit_rx);
                return Err(e);
            }
        }
    }
    let deadline = Instant::now() + timeout;
    let mut exits: Vec<Option<(ExitStatus, Instant)>> = vec![None; running.len()];
    let mut waiting = running.len();
    while waiting > 0 {
        if INTERRUPTED.load(Ordering::Relaxed) || Instant::now() > deadline {
            let exited: Vec<bool> = exits.iter().map(Option::is_some).collect();
            stop_all(&running, &exited, &exit_rx);
            if INTERRUPTED.load(Ordering::Relaxed) {
                return Err(Interrupted.into());
            }
            bail!(
                "a VM did not finish within {} s; stopped",
                timeout.as_secs()
            );
        }
        if let Ok((index, status, at)) = exit_rx.recv_timeout(POLL) {
            exits[index] = Some((status, at));
            waiting -= 1;
        }
    }
    running
        .into_iter()
        .zip(exits)
        .map(|(child, exit)| finish(child, exit.expect("every child reported its exit")))
        .collect()
}

/// Starts one child and a thread that waits for it (and, when it watches for a line, one that
/// reads its stdout).
fn spawn(
    mut launch: Launch,
    index: usize,
    exit_tx: mpsc::Sender<(usize, ExitStatus, Instant)>,
) -> anyhow::Result<Running> {
    let log = File::create(&launch.log)
        .with_context(|| format!("cannot create {}", launch.log.display()))?;
    let stdout = match launch.sample_at_line {
        Some(_) => Stdio::piped(),
        None => Stdio::from(log.try_clone()?),
    };
    // A process group of its own: the terminal's Ctrl-C reaches the benchmark, which stops the
    // children itself, instead of racing them.
    launch
        .command
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(Stdio::from(log.try_clone()?))
        .process_group(0);
    let program = launch.command.get_program().to_string_lossy().into_owned();
    let spawned = Instant::now();
    let mut child = launch
        .command
        .spawn()
        .with_context(|| format!("cannot run {program}"))?;
    let pid = child.id();
    let sample = Arc::new(Mutex::new(None));
    let reader = match (child.stdout.take(), launch.sample_at_line) {
        (Some(stdout), Some((line, memory_mib))) => Some(watch_stdout(
            stdout,
            log,
            pid,
            line,
            memory_mib,
            sample.clone(),
        )),
        _ => None,
    };
    std::thread::spawn(move || {
        // Reaping here keeps the pid from being reused while the main thread may still kill it.
        if let Ok(status) = child.wait() {
            let _ = exit_tx.send((index, status, Instant::now()));
        }
    });
    Ok(Running {
        pid,
        log: launch.log,
        spawned,
        sample,
        reader,
    })
}

/// Copies the child's stdout to its log; at the marker line, samples its memory.
fn watch_stdout(
    stdout: std::process::ChildStdout,
    mut log: File,
    pid: u32,
    marker: &'static str,
    memory_mib: u64,
    sample: Arc<Mutex<Option<MemorySample>>>,
) -> JoinHandle<()> {
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.trim_end_matches('\r') == marker {
                let taken = memory::sample(Some(pid), memory_mib).ok();
                *sample.lock().unwrap_or_else(|p| p.into_inner()) = taken;
            }
            let _ = writeln!(log, "{line}");
        }
    })
}

/// Kills every child whose exit has not been seen (with its process group) and waits until
/// they have been reaped.
fn stop_all(
    running: &[Running],
    exited: &[bool],
    exit_rx: &mpsc::Receiver<(usize, ExitStatus, Instant)>,
) {
    let mut waiting = 0;
    for (child, _) in running.iter().zip(exited).filter(|(_, &exited)| !exited) {
        // SAFETY: kill touches no memory. The child leads its own process group; if its waiter
        // reaped it a moment ago, Linux hands out pids cyclically, so the group id is not
        // reused in that moment and the signal finds nothing (ESRCH).
        unsafe { libc::kill(-(child.pid as libc::pid_t), libc::SIGKILL) };
        waiting += 1;
    }
    while waiting > 0 && exit_rx.recv_timeout(Duration::from_secs(5)).is_ok() {
        waiting -= 1;
    }
}

/// Turns a child's exit into its result: a failure quotes the end of its output.
fn finish(child: Running, (status, exited): (ExitStatus, Instant)) -> anyhow::Result<Finished> {
    if let Some(reader) = child.reader {
        let _ = reader.join();
    }
    if !status.success() {
        bail!(
            "a run ended with {status} (output in {}){}",
            child.log.display(),
            log_tail(&child.log)
        );
    }
    let sample = *child.sample.lock().unwrap_or_else(|p| p.into_inner());
    Ok(Finished {
        spawned: child.spawned,
        exited,
        sample,
    })
}

/// The last lines of a log, as `: line | line`, or nothing when it is empty.
fn log_tail(log: &std::path::Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let tail = &lines[lines.len().saturating_sub(LOG_TAIL_LINES)..];
    if tail.is_empty() {
        String::new()
    } else {
        format!(": {}", tail.join(" | "))
    }
}
