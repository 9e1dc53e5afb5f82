//! Running `moat` for the tests, and choosing where the tests run.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use libtest_mimic::{Arguments, Trial};

/// Where the suite can boot guests.
pub enum Place {
    /// Hardware KVM here (a real host, or inside the nested harness).
    Here,
    /// A PVM host: rerun inside the nested harness.
    Nested,
    /// No KVM at all.
    Nowhere(String),
}

/// The repository root.
pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Decides where guests can boot, the same way `tests/nested/hostkind` does.
pub fn where_to_run() -> Place {
    if std::env::var_os("MOAT_NESTED").is_some() {
        return Place::Here;
    }
    match moat_vmm::host::kvm_kind() {
        moat_vmm::host::KvmKind::Hardware => Place::Here,
        moat_vmm::host::KvmKind::Pvm => Place::Nested,
        moat_vmm::host::KvmKind::Missing => Place::Nowhere("this host has no /dev/kvm".into()),
    }
}

/// How long one L2 session may run the suite (6 to 30 minutes, by machine), in seconds;
/// `MOAT_NESTED_TIMEOUT` overrides it.
const NESTED_TIMEOUT_SECS: &str = "2400";

/// The nested harness's status when L2 ran out of time (tests/nested/run).
const NESTED_TIMED_OUT: i32 = 124;

/// How long L2 may print nothing while a test runs before it is taken for wedged, in seconds.
/// Tests run one at a time and each has its own 120 s watchdog inside L2, so a longer silence
/// means L2 itself stopped. `MOAT_NESTED_IDLE` overrides it.
const NESTED_IDLE_SECS: u64 = 300;

/// Tests that may rightly run longer than [`NESTED_IDLE_SECS`], with their own limit: the
/// 32-stream test moves 2 GiB through an emulated guest (its deadline is 900 s, then the VM is
/// removed).
const LONG_TESTS: &[(&str, u64)] = &[("channel::concurrent_connections_carry_data_intact", 1200)];

/// Fresh L2 sessions tried after the first one stops answering.
const NESTED_RETRIES: usize = 2;

/// Re-executes this test binary inside an L2 VM and exits with its status.
///
/// The L2's KVM runs on QEMU's software-emulated SVM, which is incomplete: now and then L2
/// wedges as a whole (every test has its own watchdog inside L2, which then never fires). When
/// L2 runs out of time or prints nothing for longer than the running test may take, the tests
/// that had not reported run in a fresh L2, up to [`NESTED_RETRIES`] times, and the log says
/// so; a test that hangs every time still fails.
pub fn rerun_nested(all: &[String]) -> ! {
    eprintln!("e2e: this host's KVM is PVM-backed; running the suite inside the nested harness");
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    let mut reported: Vec<(String, bool)> = Vec::new();
    let mut status = NESTED_TIMED_OUT;
    for session in 0..=NESTED_RETRIES {
        if session > 0 {
            let left = all
                .iter()
                .filter(|t| !reported.iter().any(|(name, _)| name == *t))
                .count();
            eprintln!(
                "e2e: L2 stopped answering with {} reported and up to {left} to go: running the \
                 rest in a fresh L2",
                reported.len()
            );
        }
        let mut session_args = args.clone();
        for (done, _) in &reported {
            session_args.push("--skip".into());
            session_args.push(done.into());
        }
        let (session_status, session_reported) = run_nested(&session_args, all, &reported);
        status = session_status;
        reported.extend(session_reported);
        if status != NESTED_TIMED_OUT {
            break;
        }
    }
    // Earlier sessions' results stand: only a clean run of the rest can pass the suite.
    let failed = reported.iter().any(|(_, passed)| !passed);
    std::process::exit(if failed && status == 0 { 101 } else { status });
}

/// How long L2 may stay silent now. Tests run one at a time in the order of `all`; `started`
/// are those this session has named in a `test NAME ... ` line so far (a test that prints
/// before its result starts such a line without ending it), `earlier` what earlier sessions
/// reported, which this one skips. The test running is the last one named, or the one after it,
/// whose line has not come through yet: either may be a long one.
fn idle_limit(all: &[String], started: &[String], earlier: &[(String, bool)]) -> Duration {
    let pending: Vec<&String> = all
        .iter()
        .filter(|t| !earlier.iter().any(|(name, _)| name == *t))
        .collect();
    let last = started
        .iter()
        .filter_map(|s| pending.iter().position(|t| *t == s))
        .max();
    let running = match last {
        None => &pending[..pending.len().min(1)],
        Some(i) => &pending[i..pending.len().min(i + 2)],
    };
    let default = std::env::var("MOAT_NESTED_IDLE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(NESTED_IDLE_SECS);
    let secs = LONG_TESTS
        .iter()
        .filter(|(name, _)| running.iter().any(|r| r == name))
        .map(|&(_, secs)| secs)
        .fold(default, u64::max);
    Duration::from_secs(secs)
}

/// Runs this test binary with `args` in a fresh L2, passing its output on; returns its status
/// and the tests that reported a result, each with whether it passed.
fn run_nested(
    args: &[std::ffi::OsString],
    all: &[String],
    earlier: &[(String, bool)],
) -> (i32, Vec<(String, bool)>) {
    use std::io::{BufRead, BufReader, Write};

    let exe = std::env::current_exe().expect("the test binary knows its own path");
    let mut args = args.to_vec();
    // Inside L2 the output is a console, which looks like a terminal: keep the host's choice.
    if !std::io::stdout().is_terminal()
        && !args
            .iter()
            .any(|a| a.to_string_lossy().starts_with("--color"))
    {
        args.push("--color=never".into());
    }
    let mut child = Command::new(repo().join("tests/nested/run"))
        .args(["--cpus", "2", "--memory", "2048", "--timeout"])
        .arg(std::env::var("MOAT_NESTED_TIMEOUT").unwrap_or_else(|_| NESTED_TIMEOUT_SECS.into()))
        .arg("--")
        .arg(exe)
        .args(args)
        .current_dir(repo())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start tests/nested/run: {e}"));
    let stdout = child.stdout.take().expect("piped above");
    let (lines, received) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).split(b'\n').map_while(Result::ok) {
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    let mut reported = Vec::new();
    let mut started: Vec<String> = Vec::new();
    let mut out = std::io::stdout();
    loop {
        let idle = idle_limit(all, &started, earlier);
        let line = match received.recv_timeout(idle) {
            Ok(line) => line,
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                eprintln!(
                    "e2e: nothing from L2 for {} s: taking it for wedged",
                    idle.as_secs()
                );
                // SAFETY: kill has no memory effects; the harness stops L2 on SIGTERM.
                unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
                let _ = child.wait();
                return (NESTED_TIMED_OUT, reported);
            }
        };
        let _ = out.write_all(&line);
        let _ = out.write_all(b"\n");
        let _ = out.flush();
        let text = String::from_utf8_lossy(&line);
        if let Some((name, result)) = test_line(&text) {
            started.push(name.clone());
            if let Some(passed) = result {
                reported.push((name, passed));
            }
        }
    }
    let status = child.wait().map_or(125, |s| s.code().unwrap_or(125));
    (status, reported)
}

/// The test named by a libtest line (`test NAME ... ok`), and its result if the line carries
/// one. A test that prints before its result names itself on a line without one: it counts as
/// started, not reported, and runs again if L2 stops answering.
fn test_line(line: &str) -> Option<(String, Option<bool>)> {
    let (name, rest) = line.strip_prefix("test ")?.split_once(" ... ")?;
    let result = match rest.trim() {
        "ok" => Some(true),
        "FAILED" => Some(false),
        _ => None,
    };
    Some((name.trim().to_string(), result))
}

/// Without KVM: every test fails saying why, unless skipping was asked for explicitly.
pub fn conclude_without_kvm(args: &Arguments, tests: Vec<Trial>, why: &str) {
    let allow_skip = std::env::var("MOAT_E2E_ALLOW_SKIP").as_deref() == Ok("1");
    let message = format!("{why}: guests cannot boot (set MOAT_E2E_ALLOW_SKIP=1 to skip)");
    eprintln!("e2e: {message}");
    let trials = tests
        .into_iter()
        .map(|trial| {
            let name = trial.name().to_string();
            let message = message.clone();
            Trial::test(name, move || Err(message.into())).with_ignored_flag(allow_skip)
        })
        .collect();
    libtest_mimic::run(args, trials).exit();
}

/// The `moat` binary under test, with the suite's own image cache.
pub fn moat() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_moat"));
    command
        .stdin(Stdio::null())
        .env("MOAT_CACHE_DIR", cache_dir());
    command
}

/// The image cache of this run of the suite: fresh, so the first launch of each image builds.
pub fn cache_dir() -> PathBuf {
    std::env::temp_dir().join(format!("moat-e2e-cache-{}", std::process::id()))
}

/// A sample image tarball the Makefile builds under build/images/.
pub fn image(name: &str) -> Result<PathBuf, String> {
    let path = repo().join("build/images").join(name);
    if path.is_file() {
        Ok(path)
    } else {
        Err(format!(
            "{} is missing: run `make test-images`",
            path.display()
        ))
    }
}

/// The busybox root disk `make testdisk` builds.
pub fn busybox_disk() -> Result<PathBuf, String> {
    let path = repo().join("build/busybox.ext4");
    if path.is_file() {
        Ok(path)
    } else {
        Err(format!(
            "{} is missing: run `make testdisk`",
            path.display()
        ))
    }
}

/// Most a guest boot may take before the test calls it hung (generous: L2 is emulated).
const BOOT_TIMEOUT: Duration = Duration::from_secs(120);

/// Runs `command` to completion within [`BOOT_TIMEOUT`].
pub fn run(mut command: Command) -> Result<Output, String> {
    let started = Instant::now();
    let child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start {command:?}: {e}"))?;
    let pid = child.id();
    let watchdog = std::thread::spawn(move || {
        while started.elapsed() < BOOT_TIMEOUT {
            std::thread::sleep(Duration::from_millis(100));
            // SAFETY: kill(pid, 0) only probes whether the process exists.
            if unsafe { libc::kill(pid as i32, 0) } != 0 {
                return;
            }
        }
        // SAFETY: the child is ours and still running past its deadline.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    });
    let output = child
        .wait_with_output()
        .map_err(|e| format!("waiting for moat: {e}"))?;
    let _ = watchdog.join();
    Ok(output)
}

/// Fails with the whole output of a run: the guest console is what explains a failure.
pub fn explain(what: &str, output: &Output) -> String {
    format!(
        "{what}\n  status: {:?}\n  --- stdout (guest console) ---\n{}\n  --- stderr ---\n{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Checks the exit status of a run.
pub fn expect_status(output: &Output, status: i32) -> Result<(), String> {
    if output.status.code() == Some(status) {
        Ok(())
    } else {
        Err(explain(&format!("expected exit status {status}"), output))
    }
}

/// Checks that some line of stdout is exactly `line`.
pub fn expect_line(output: &Output, line: &str) -> Result<(), String> {
    let stdout = String::from_utf8_lossy(&output.stdout);
    if stdout.lines().any(|l| l.trim_end_matches('\r') == line) {
        Ok(())
    } else {
        Err(explain(
            &format!("expected a line {line:?} on the guest console"),
            output,
        ))
    }
}

/// A scratch directory for one test, removed when dropped.
pub struct Scratch(PathBuf);

impl Scratch {
    /// A new, empty directory.
    pub fn new(test: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("moat-e2e-{}-{test}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("the temp dir is writable");
        Self(dir)
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.0
    }

    /// A file of `size` zero bytes in the directory.
    pub fn zero_file(&self, name: &str, size: u64) -> PathBuf {
        let path = self.0.join(name);
        let file = std::fs::File::create(&path).expect("the temp dir is writable");
        file.set_len(size).expect("the temp dir is writable");
        path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
