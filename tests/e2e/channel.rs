//! The agent channel over virtio-vsock: separate streams, stdin, ttys, background VMs and the
//! verbs on them (`ps`, `exec`, `logs`, `kill`, `stop`, `rm`), and the vsock device's limits.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use libtest_mimic::Trial;
use moat_agent_protocol::channel::{self, Hello, ProcessSpec, Request, Response, StreamKind};
use sha2::{Digest, Sha256};

use crate::support::{expect_line, expect_status, explain, image, moat, run, Scratch};
use crate::{trials, Test};

pub fn tests() -> Vec<Trial> {
    const TESTS: &[Test] = &[
        (
            "channel::stdout_and_stderr_are_kept_apart",
            stdout_and_stderr_are_kept_apart,
        ),
        ("channel::stdin_is_piped_in", stdin_is_piped_in),
        (
            "channel::tty_gives_the_workload_a_terminal",
            tty_gives_the_workload_a_terminal,
        ),
        (
            "channel::detached_vm_exec_logs_kill_rm",
            detached_vm_exec_logs_kill_rm,
        ),
        (
            "channel::stop_ends_a_workload_that_ignores_sigterm",
            stop_ends_a_workload_that_ignores_sigterm,
        ),
        (
            "channel::sigkill_of_moat_leaves_nothing_alive",
            sigkill_of_moat_leaves_nothing_alive,
        ),
        (
            "channel::concurrent_connections_carry_data_intact",
            concurrent_connections_carry_data_intact,
        ),
        (
            "channel::an_unread_flood_does_not_grow_the_vmm",
            an_unread_flood_does_not_grow_the_vmm,
        ),
    ];
    trials(TESTS)
}

/// A runtime directory of the test's own, so `ps` sees only its VMs.
struct Runtime {
    scratch: Scratch,
}

impl Runtime {
    fn new(test: &str) -> Self {
        Self {
            scratch: Scratch::new(test),
        }
    }

    fn dir(&self) -> PathBuf {
        self.scratch.path().join("run")
    }

    fn moat(&self) -> Command {
        let mut cmd = moat();
        cmd.env("MOAT_RUNTIME_DIR", self.dir());
        cmd
    }

    fn run(&self, args: &[&str]) -> Result<Output, String> {
        let mut cmd = self.moat();
        cmd.args(args);
        run(cmd)
    }

    /// What a moat command prints on stdout and stderr together, as `2>&1` would merge them.
    fn merged_output(&self, args: &[&str]) -> Result<String, String> {
        let path = self.scratch.path().join("merged.out");
        let file = std::fs::File::create(&path).map_err(|e| e.to_string())?;
        let mut cmd = self.moat();
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(file.try_clone().map_err(|e| e.to_string())?)
            .stderr(file);
        let status = cmd.status().map_err(|e| e.to_string())?;
        if !status.success() {
            return Err(format!("moat {} ended with {status}", args.join(" ")));
        }
        std::fs::read_to_string(&path).map_err(|e| e.to_string())
    }

    /// `moat launch -d`: the VM's id.
    fn detach(&self, flags: &[&str], command: &[&str]) -> Result<String, String> {
        let mut cmd = self.moat();
        cmd.args(["launch", "-d"])
            .args(flags)
            .arg(image("busybox.tar")?)
            .args(command);
        let output = run(cmd)?;
        expect_status(&output, 0)?;
        let id = String::from_utf8_lossy(&output.stdout).trim().to_string();
        if id.len() != 12 {
            return Err(explain("launch -d printed no id", &output));
        }
        Ok(id)
    }

    fn socket(&self, id: &str) -> PathBuf {
        self.dir().join(id).join("vsock.sock")
    }

    /// Waits until `moat ps -a` shows `needle` in the VM's line (or `gone` for no line).
    fn wait_for_ps(&self, id: &str, needle: &str) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let output = self.run(&["ps", "-a"])?;
            let text = String::from_utf8_lossy(&output.stdout).to_string();
            let line = text.lines().find(|l| l.starts_with(id));
            let found = match needle {
                "gone" => line.is_none(),
                _ => line.is_some_and(|l| l.contains(needle)),
            };
            if found {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "moat ps -a never showed {needle:?} for {id}:\n{text}"
                ));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// What a failing test should show of VM `id`: `moat ps -a` and the ends of its logs.
    fn diagnose(&self, id: &str) -> String {
        let ps = self
            .run(&["ps", "-a"])
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_else(|e| e);
        let tail = |name: &str| {
            let text = std::fs::read_to_string(self.dir().join(id).join(name)).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(15)..].join("\n")
        };
        format!(
            "moat ps -a:\n{ps}\nmoat.log:\n{}\nconsole.log:\n{}",
            tail("moat.log"),
            tail("console.log")
        )
    }

    fn state_pid(&self, id: &str) -> Result<i32, String> {
        let path = self.dir().join(id).join("state.json");
        let text = std::fs::read_to_string(&path).map_err(|e| format!("{path:?}: {e}"))?;
        let state: serde_json::Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
        state["pid"]
            .as_i64()
            .map(|p| p as i32)
            .ok_or_else(|| format!("no pid in {text}"))
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        // Leave no VM behind, whatever the test did.
        if let Ok(output) = self.run(&["ps", "-a", "-q"]) {
            for id in String::from_utf8_lossy(&output.stdout).lines() {
                let _ = self.run(&["rm", "-f", id]);
            }
        }
    }
}

fn launch(flags: &[&str], command: &[&str]) -> Result<Output, String> {
    let mut cmd = moat();
    cmd.arg("launch")
        .args(flags)
        .arg(image("busybox.tar")?)
        .args(command);
    run(cmd)
}

fn stdout_and_stderr_are_kept_apart() -> Result<(), String> {
    let output = launch(&[], &["sh", "-c", "echo to-out; echo to-err >&2; exit 5"])?;
    expect_status(&output, 5)?;
    expect_line(&output, "to-out")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    if stdout.contains("to-err") || !stderr.lines().any(|l| l == "to-err") {
        return Err(explain("stderr was not kept apart from stdout", &output));
    }
    Ok(())
}

fn stdin_is_piped_in() -> Result<(), String> {
    let mut cmd = moat();
    cmd.arg("launch")
        .arg("-i")
        .arg(image("busybox.tar")?)
        .args(["sh", "-c", "tr a-z A-Z; echo stdin-ended"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| e.to_string())?;
    let mut stdin = child.stdin.take().expect("piped");
    stdin
        .write_all(b"hello through vsock\n")
        .map_err(|e| e.to_string())?;
    drop(stdin);
    let output = child.wait_with_output().map_err(|e| e.to_string())?;
    expect_status(&output, 0)?;
    expect_line(&output, "HELLO THROUGH VSOCK")?;
    expect_line(&output, "stdin-ended")
}

fn tty_gives_the_workload_a_terminal() -> Result<(), String> {
    let output = launch(
        &["-t"],
        &[
            "sh",
            "-c",
            "test -t 0 && test -t 1 && echo on-a-tty; tty; exit 2",
        ],
    )?;
    expect_status(&output, 2)?;
    expect_line(&output, "on-a-tty")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !stdout.contains("/dev/pts/") {
        return Err(explain("the workload's terminal is not a pty", &output));
    }
    Ok(())
}

fn detached_vm_exec_logs_kill_rm() -> Result<(), String> {
    let rt = Runtime::new("detached");
    // Seconds apart, so the order the two streams arrived in is known.
    let workload = "trap 'echo got-term; exit 7' TERM; echo started; sleep 1; echo warning >&2; \
                    sleep 1; echo ready; while :; do sleep 0.1; done";
    let id = rt.detach(&["--name", "svc"], &["sh", "-c", workload])?;
    rt.wait_for_ps(&id, "running")?;
    let ps = rt.run(&["ps"])?;
    if !String::from_utf8_lossy(&ps.stdout).contains("svc") {
        return Err(explain("moat ps does not show the VM's name", &ps));
    }

    let exec = rt.run(&[
        "exec",
        "-e",
        "X=from-exec",
        "svc",
        "sh",
        "-c",
        "echo $X; exit 4",
    ])?;
    expect_status(&exec, 4)?;
    expect_line(&exec, "from-exec")?;

    // `moat logs` keeps the streams apart and in the order they were written, as docker logs.
    let deadline = Instant::now() + Duration::from_secs(60);
    let merged = loop {
        let merged = rt.merged_output(&["logs", "svc"])?;
        if merged.contains("ready") || Instant::now() > deadline {
            break merged;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    if merged != "started\nwarning\nready\n" {
        return Err(format!("moat logs 2>&1 printed {merged:?}"));
    }
    let logs = rt.run(&["logs", "svc"])?;
    if String::from_utf8_lossy(&logs.stderr) != "warning\n" {
        return Err(explain("moat logs did not keep stderr apart", &logs));
    }

    let kill = rt.run(&["kill", "-s", "TERM", "svc"])?;
    expect_status(&kill, 0)?;
    rt.wait_for_ps(&id, "exited (7)")?;

    let logs = rt.run(&["logs", "svc"])?;
    expect_line(&logs, "started")?;
    expect_line(&logs, "got-term")?;
    // Following the logs of a VM that has ended prints them and returns.
    let followed = rt.run(&["logs", "-f", "svc"])?;
    expect_status(&followed, 0)?;
    expect_line(&followed, "got-term")?;

    let rm = rt.run(&["rm", "svc"])?;
    expect_status(&rm, 0)?;
    rt.wait_for_ps(&id, "gone")?;
    if rt.dir().join(&id).exists() {
        return Err("moat rm left the VM's directory".into());
    }
    Ok(())
}

fn stop_ends_a_workload_that_ignores_sigterm() -> Result<(), String> {
    let rt = Runtime::new("stop");
    let id = rt.detach(
        &[],
        &["sh", "-c", "trap '' TERM; while :; do sleep 0.1; done"],
    )?;
    rt.wait_for_ps(&id, "running")?;
    // The agent must be up before the stop is timed: an exec proves it.
    expect_status(&rt.run(&["exec", &id, "true"])?, 0)?;
    let started = Instant::now();
    let stop = rt.run(&["stop", "-t", "1", &id])?;
    expect_status(&stop, 0)?;
    if started.elapsed() > Duration::from_secs(30) {
        return Err(format!("stop took {:?}", started.elapsed()));
    }
    rt.wait_for_ps(&id, "exited")?;
    let ps = rt.run(&["ps"])?;
    if String::from_utf8_lossy(&ps.stdout).contains(&id) {
        return Err(explain("a stopped VM is still listed as running", &ps));
    }
    Ok(())
}

fn sigkill_of_moat_leaves_nothing_alive() -> Result<(), String> {
    let rt = Runtime::new("sigkill");
    let id = rt.detach(&["--scratch", "64m"], &["sleep", "1000"])?;
    rt.wait_for_ps(&id, "running")?;
    let pid = rt.state_pid(&id)?;
    // SAFETY: the VM's process, started by this test.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    rt.wait_for_ps(&id, "gone")?;
    // SAFETY: kill(pid, 0) only probes.
    if unsafe { libc::kill(pid, 0) } == 0 && std::fs::read(format!("/proc/{pid}/stat")).is_ok() {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        if !stat.contains(") Z ") {
            return Err(format!("the VM's process {pid} is still alive"));
        }
    }
    if rt.dir().join(&id).exists() {
        return Err("the dead VM's directory is still there".into());
    }
    Ok(())
}

/// 32 processes in one VM each send 64 MiB of known bytes through their own vsock connection;
/// every byte arrives, in order.
fn concurrent_connections_carry_data_intact() -> Result<(), String> {
    const CONNECTIONS: usize = 32;
    const BYTES: u64 = 64 << 20;
    let rt = Runtime::new("concurrent");
    let id = rt.detach(&["-m", "512m", "--cpus", "2"], &["sleep", "1000"])?;
    rt.wait_for_ps(&id, "running")?;
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    for i in 0..CONNECTIONS {
        let mut cmd = rt.moat();
        let script = format!("yes moat-stream-{i} | head -c {BYTES}");
        cmd.args(["exec", &id, "sh", "-c", &script])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let done_tx = done_tx.clone();
        std::thread::spawn(move || {
            let _ = done_tx.send((i, stream_digest(cmd, i)));
        });
    }
    // A hang must not hold the whole suite until the harness gives up: past the deadline the
    // test says what it saw, and `rm -f` ends the VM and with it the stragglers.
    let deadline = Instant::now() + Duration::from_secs(900);
    let mut finished = 0;
    while finished < CONNECTIONS {
        let wait = deadline.saturating_duration_since(Instant::now());
        let Ok((i, result)) = done_rx.recv_timeout(wait) else {
            let diagnosis = rt.diagnose(&id);
            let _ = rt.run(&["rm", "-f", &id]);
            return Err(format!(
                "only {finished} of {CONNECTIONS} streams ended within 900 s\n{diagnosis}"
            ));
        };
        let (total, digest) = result.map_err(|e| format!("{e}\n{}", rt.diagnose(&id)))?;
        let expected = expected_digest(&format!("moat-stream-{i}\n"), BYTES);
        if total != BYTES || digest != expected {
            return Err(format!(
                "connection {i}: {total} bytes, digest mismatch: {}",
                digest != expected
            ));
        }
        finished += 1;
    }
    // `rm -f` ends a running VM and forgets it.
    expect_status(&rt.run(&["rm", "-f", &id])?, 0)?;
    rt.wait_for_ps(&id, "gone")?;
    Ok(())
}

/// Runs one `moat exec` and returns how many bytes it printed and their sha256.
fn stream_digest(mut cmd: Command, i: usize) -> Result<(u64, Vec<u8>), String> {
    let mut child = cmd.spawn().map_err(|e| e.to_string())?;
    let mut out = child.stdout.take().expect("piped");
    let mut hasher = Sha256::new();
    let mut total = 0u64;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = out.read(&mut buf).map_err(|e| e.to_string())?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        total += n as u64;
    }
    let output = child.wait_with_output().map_err(|e| e.to_string())?;
    if !output.status.success() {
        return Err(format!(
            "exec {i} ended with {}: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    Ok((total, hasher.finalize().to_vec()))
}

/// The sha256 of `line` repeated and cut at `len` bytes (what `yes | head -c` prints).
fn expected_digest(line: &str, len: u64) -> Vec<u8> {
    let mut hasher = Sha256::new();
    let block = line.repeat((1 << 16) / line.len() + 1);
    let mut left = len as usize;
    let mut offset = 0usize;
    while left > 0 {
        let from = offset % line.len();
        let take = left.min(block.len() - from).min(1 << 16);
        hasher.update(&block.as_bytes()[from..from + take]);
        offset += take;
        left -= take;
    }
    hasher.finalize().to_vec()
}

/// A guest process floods a stream the host never reads: the VMM's memory stays bounded.
fn an_unread_flood_does_not_grow_the_vmm() -> Result<(), String> {
    // Far more than the VMM may buffer for one connection, far less than the flood's volume.
    const GROWTH_LIMIT_KIB: u64 = 32 << 10;
    let rt = Runtime::new("flood");
    const GUEST_MIB: u64 = 256;
    let id = rt.detach(&["-m", &format!("{GUEST_MIB}m")], &["sleep", "1000"])?;
    rt.wait_for_ps(&id, "running")?;
    let socket = rt.socket(&id);
    let mut control = connect(
        &socket,
        &Hello::Control {
            version: channel::PROTOCOL_VERSION,
        },
    )?;
    let _ready: Response = channel::read_frame(&mut control).map_err(|e| e.to_string())?;
    let spec = ProcessSpec {
        argv: vec!["sh".into(), "-c".into(), "yes flood-flood-flood".into()],
        ..ProcessSpec::default()
    };
    channel::write_frame(&mut control, &Request::Exec(spec)).map_err(|e| e.to_string())?;
    let process = match channel::read_frame(&mut control).map_err(|e| e.to_string())? {
        Response::Started { process } => process,
        other => return Err(format!("exec answered {other:?}")),
    };
    let _unread = connect(
        &socket,
        &Hello::Stream {
            process,
            stream: StreamKind::Stdout,
        },
    )?;
    let pid = rt.state_pid(&id)?;
    std::thread::sleep(Duration::from_secs(3));
    let before = vmm_rss_kib(pid, GUEST_MIB)?;
    std::thread::sleep(Duration::from_secs(10));
    let after = vmm_rss_kib(pid, GUEST_MIB)?;
    if after > before + GROWTH_LIMIT_KIB {
        return Err(format!(
            "the VMM grew from {before} KiB to {after} KiB under an unread flood"
        ));
    }
    Ok(())
}

/// A connection to the agent through the VM's socket, with its hello sent.
fn connect(socket: &std::path::Path, hello: &Hello) -> Result<UnixStream, String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut stream = UnixStream::connect(socket).map_err(|e| format!("{socket:?}: {e}"))?;
        stream
            .write_all(format!("CONNECT {}\n", channel::AGENT_PORT).as_bytes())
            .map_err(|e| e.to_string())?;
        let mut line = String::new();
        let mut reader = BufReader::new(stream.try_clone().map_err(|e| e.to_string())?);
        // The answer is one short line; a BufReader may read no further than it.
        let _ = reader.read_line(&mut line);
        if line.starts_with("OK ") && reader.buffer().is_empty() {
            channel::write_frame(&mut stream, hello).map_err(|e| e.to_string())?;
            return Ok(stream);
        }
        if Instant::now() > deadline {
            return Err(format!("the agent never accepted a connection: {line:?}"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The resident memory of VMM process `pid` in KiB, its guest's RAM left out: that is one
/// anonymous mapping of the VM's memory size, which the guest may touch more of (in 2 MiB pages
/// where the host gives huge pages) without the VMM growing at all.
fn vmm_rss_kib(pid: i32, guest_mib: u64) -> Result<u64, String> {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).map_err(|e| e.to_string())?;
    let kib = |line: &str, field: &str| -> Option<u64> {
        line.strip_prefix(field)?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()
    };
    let (mut total, mut guest, mut size) = (0, None, 0);
    for line in smaps.lines() {
        if let Some(s) = kib(line, "Size:") {
            size = s;
        } else if let Some(rss) = kib(line, "Rss:") {
            if size == guest_mib << 10 && guest.is_none() {
                guest = Some(rss);
            } else {
                total += rss;
            }
        }
    }
    guest
        .map(|_| total)
        .ok_or_else(|| format!("no {guest_mib} MiB guest RAM mapping in /proc/{pid}/smaps"))
}
