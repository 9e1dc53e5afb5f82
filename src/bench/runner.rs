//! The benchmark's child processes: started together, timed from spawn to exit, and never left
//! behind: on Ctrl-C, SIGTERM or a timeout every child still running is killed and reaped.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context;

use super::memory::{self, MemorySample};

/// Set by the signal handler when the user asks the benchmark to stop.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// How often the wait for children looks at the interrupt flag and the deadline.
const POLL: Duration = Duration::from_millis(50);

/// How many lines of a failed child's output its failure quotes.
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
    /// Where its stdout and stderr are kept, for the reason it failed, if it does.
    pub log: PathBuf,
    /// When its stdout shows this line, sample its memory (a VM of that many MiB) once.
    pub sample_at_line: Option<(&'static str, u64)>,
}

/// How one child ended well: it exited with status 0.
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

/// Why a child counts as a failed run. `output` is [`output_note`] of its log.
#[derive(Debug, thiserror::Error)]
pub enum Failed {
    /// It exited with a status other than 0.
    #[error("ended with {status}{output}")]
    Status { status: ExitStatus, output: String },
    /// It was still running at the deadline and was killed.
    #[error("still running after {timeout:?}, killed{output}")]
    TimedOut { timeout: Duration, output: String },
}

/// How one child ended.
pub type Outcome = Result<Finished, Failed>;

/// A child's exit as its waiter thread saw it.
type Exit = (ExitStatus, Instant);

/// A child that was spawned, until its waiter thread reports its exit.
struct Running {
    pid: u32,
    log: PathBuf,
    spawned: Instant,
    sample: Arc<Mutex<Option<MemorySample>>>,
    reader: Option<JoinHandle<()>>,
}

/// Starts every launch at once and waits for all of them, for at most `timeout`; the ones still
/// running then are killed. Returns each one's outcome, in the order given. Fails only when a
/// child cannot be started or the benchmark is interrupted, and then stops every child first.
pub fn run_all(launches: Vec<Launch>, timeout: Duration) -> anyhow::Result<Vec<Outcome>> {
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
    let exits = wait_all(&running, timeout, &exit_rx)?;
    Ok(running
        .into_iter()
        .zip(exits)
        .map(|(child, exit)| finish(child, exit, timeout))
        .collect())
}

/// Waits for every child's exit until `timeout`, then kills the rest (their exit is `None`).
fn wait_all(
    running: &[Running],
    timeout: Duration,
    exit_rx: &mpsc::Receiver<(usize, ExitStatus, Instant)>,
) -> Result<Vec<Option<Exit>>, Interrupted> {
    let deadline = Instant::now() + timeout;
    let mut exits: Vec<Option<Exit>> = vec![None; running.len()];
    let mut waiting = running.len();
    while waiting > 0 {
        let interrupted = INTERRUPTED.load(Ordering::Relaxed);
        if interrupted || Instant::now() > deadline {
            let exited: Vec<bool> = exits.iter().map(Option::is_some).collect();
            stop_all(running, &exited, exit_rx);
            if interrupted {
                return Err(Interrupted);
            }
            break;
        }
        if let Ok((index, status, at)) = exit_rx.recv_timeout(POLL) {
            exits[index] = Some((status, at));
            waiting -= 1;
        }
    }
    Ok(exits)
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

/// Turns a child's exit into its outcome: a failure quotes the end of its output. A child killed
/// at the deadline (no exit) timed out; its output reader is left to end with its pipe.
fn finish(child: Running, exit: Option<Exit>, timeout: Duration) -> Outcome {
    let Some((status, exited)) = exit else {
        let output = output_note(&child.log);
        return Err(Failed::TimedOut { timeout, output });
    };
    if let Some(reader) = child.reader {
        let _ = reader.join();
    }
    if !status.success() {
        let output = output_note(&child.log);
        return Err(Failed::Status { status, output });
    }
    let sample = *child.sample.lock().unwrap_or_else(|p| p.into_inner());
    Ok(Finished {
        spawned: child.spawned,
        exited,
        sample,
    })
}

/// Where a run's output is and its last lines, as ` (output in LOG): line | line`, one line.
pub fn output_note(log: &Path) -> String {
    format!(" (output in {}){}", log.display(), log_tail(log))
}

/// The last lines of a log, as `: line | line`, or nothing when it is empty.
fn log_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let tail = &lines[lines.len().saturating_sub(LOG_TAIL_LINES)..];
    if tail.is_empty() {
        String::new()
    } else {
        format!(": {}", tail.join(" | "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Long enough for a shell to start and exit on a busy machine, far shorter than `HANG`.
    const TIMEOUT: Duration = Duration::from_secs(2);
    /// A child that would outlive the timeout many times over.
    const HANG: &str = "sleep 30";

    /// A fresh, empty directory for one test.
    fn test_dir(test: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("moat-bench-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir is writable");
        dir
    }

    /// `sh -c script`, logging to `name.log` in `dir`.
    fn shell(dir: &Path, name: &str, script: &str) -> Launch {
        let mut command = Command::new("sh");
        command.args(["-c", script]);
        Launch {
            command,
            log: dir.join(format!("{name}.log")),
            sample_at_line: None,
        }
    }

    /// Whether `pid` is gone or a zombie: either way it runs no more.
    fn is_dead(pid: &str) -> bool {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // The state follows the command name, which is in parentheses.
        stat.rsplit_once(") ")
            .is_none_or(|(_, rest)| rest.starts_with('Z'))
    }

    #[test]
    fn failed_and_timed_out_children_are_failures_and_the_others_results() {
        let dir = test_dir("outcomes");
        let launches = vec![
            shell(&dir, "good", "exit 0"),
            shell(&dir, "failing", "echo 'triple fault' >&2; exit 3"),
            shell(&dir, "hung", HANG),
            shell(&dir, "slower", "sleep 0.2"),
        ];

        let started = Instant::now();
        let outcomes = run_all(launches, TIMEOUT).unwrap();

        assert!(started.elapsed() < TIMEOUT + Duration::from_secs(5));
        assert_eq!(outcomes.len(), 4);
        assert!(outcomes[0].is_ok());
        match &outcomes[1] {
            Err(Failed::Status { status, output }) => {
                assert_eq!(status.code(), Some(3));
                assert!(output.ends_with(": triple fault"), "{output}");
            }
            other => panic!("not a failed status: {:?}", other.as_ref().err()),
        }
        assert!(matches!(outcomes[2], Err(Failed::TimedOut { .. })));
        let slower = outcomes[3].as_ref().unwrap();
        assert!(slower.elapsed() >= Duration::from_millis(200));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_timed_out_child_and_its_own_children_are_killed() {
        let dir = test_dir("killed");
        let pids = dir.join("pids");
        let script = format!(
            "echo $$ > {0}; {HANG} & echo $! >> {0}; wait",
            pids.display()
        );

        let outcomes = run_all(vec![shell(&dir, "hung", &script)], TIMEOUT).unwrap();

        assert!(matches!(outcomes[0], Err(Failed::TimedOut { .. })));
        let pids = std::fs::read_to_string(&pids).unwrap();
        let pids: Vec<&str> = pids.lines().collect();
        assert_eq!(pids.len(), 2, "the shell and its sleep");
        // The shell was reaped before run_all returned; the orphaned sleep is reaped by init,
        // which may take a moment.
        assert!(is_dead(pids[0]), "the shell {} still runs", pids[0]);
        let deadline = Instant::now() + Duration::from_secs(5);
        while !is_dead(pids[1]) && Instant::now() < deadline {
            std::thread::sleep(POLL);
        }
        assert!(is_dead(pids[1]), "its sleep {} still runs", pids[1]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_failure_reason_is_one_line_with_the_end_of_the_log() {
        let dir = test_dir("reason");
        let script = "for i in 1 2 3 4 5 6 7 8; do echo line $i; done; exit 1";

        let outcomes = run_all(vec![shell(&dir, "noisy", script)], TIMEOUT).unwrap();

        let reason = outcomes[0].as_ref().err().unwrap().to_string();
        assert!(!reason.contains('\n'), "{reason}");
        assert!(
            reason.starts_with("ended with exit status: 1 (output in "),
            "{reason}"
        );
        assert!(reason.ends_with(": line 3 | line 4 | line 5 | line 6 | line 7 | line 8"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
