//! The verbs on VMs that exist: `moat ps`, `exec`, `logs`, `kill`, `stop` and `rm`, as Docker
//! names them for containers.

use std::fs::File;
use std::io::{BufReader, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use moat_agent_protocol::channel::{ProcessSpec, Request, Response, MAIN_PROCESS};

use crate::agent::{self, Agent, CONNECT_PATIENCE};
use crate::session::{
    self, OutputStream, RawTerminal, RecordError, RecordReader, Sink, Stdio, RECORD_HEADER,
};
use crate::state::{self, Status, VmDir, VmState};
use crate::{exit, signals};

/// How long `stop` and `rm -f` wait for the VM's process to be gone once the VM was ended.
const END_PATIENCE: Duration = Duration::from_secs(10);

/// Flags of `moat ps`.
#[derive(Debug, Args)]
pub struct PsArgs {
    /// Show VMs that have ended too
    #[arg(short, long)]
    all: bool,
    /// Print only VM ids
    #[arg(short, long)]
    quiet: bool,
}

/// Flags of `moat logs`.
#[derive(Debug, Args)]
pub struct LogsArgs {
    /// Keep printing new output until the VM ends
    #[arg(short, long)]
    follow: bool,
    /// The VM: its name, id or a unique id prefix
    #[arg(value_name = "VM")]
    vm: String,
}

/// Flags of `moat exec`.
#[derive(Debug, Args)]
pub struct ExecArgs {
    /// Keep stdin open and copy it to the process
    #[arg(short = 'i', long)]
    interactive: bool,
    /// Run the process on a terminal (a pty in the guest)
    #[arg(short = 't', long)]
    tty: bool,
    /// Set an environment variable (KEY=VALUE)
    #[arg(short = 'e', long = "env", value_name = "KEY=VALUE")]
    env: Vec<String>,
    /// User to run as: `name|uid[:group|gid]` [default: the workload's]
    #[arg(short = 'u', long, value_name = "USER[:GROUP]")]
    user: Option<String>,
    /// Working directory [default: the workload's]
    #[arg(short = 'w', long, value_name = "DIR")]
    workdir: Option<String>,
    /// The VM: its name, id or a unique id prefix
    #[arg(value_name = "VM")]
    vm: String,
    /// Command and arguments
    #[arg(
        required = true,
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "COMMAND"
    )]
    command: Vec<String>,
}

/// Flags of `moat kill`.
#[derive(Debug, Args)]
pub struct KillArgs {
    /// Signal to send: a name (TERM, SIGTERM) or a number
    #[arg(short, long, default_value = "KILL", value_parser = parse_signal)]
    signal: i32,
    /// The VMs: names, ids or unique id prefixes
    #[arg(required = true, value_name = "VM")]
    vms: Vec<String>,
}

/// Flags of `moat stop`.
#[derive(Debug, Args)]
pub struct StopArgs {
    /// Seconds to wait after SIGTERM before ending the VM
    #[arg(short, long, default_value = "10", value_name = "SECS")]
    time: u64,
    /// The VMs: names, ids or unique id prefixes
    #[arg(required = true, value_name = "VM")]
    vms: Vec<String>,
}

/// Flags of `moat rm`.
#[derive(Debug, Args)]
pub struct RmArgs {
    /// End a running VM first
    #[arg(short, long)]
    force: bool,
    /// The VMs: names, ids or unique id prefixes
    #[arg(required = true, value_name = "VM")]
    vms: Vec<String>,
}

/// `moat ps`: one line per VM, oldest first.
pub fn ps(args: PsArgs) -> u8 {
    let vms: Vec<VmState> = state::list()
        .into_iter()
        .map(|(_, s)| s)
        .filter(|s| args.all || s.status == Status::Running)
        .collect();
    if args.quiet {
        vms.iter().for_each(|s| println!("{}", s.id));
        return 0;
    }
    println!(
        "{:<12}  {:<16}  {:<24}  {:<14}  {:>8}  {:>4}  {:>7}",
        "VM ID", "NAME", "IMAGE", "STATUS", "UPTIME", "CPUS", "MEMORY"
    );
    let now = state::now();
    for vm in &vms {
        let status = match vm.status {
            Status::Running => "running".to_string(),
            Status::Exited(code) => format!("exited ({code})"),
        };
        let uptime = match vm.status {
            Status::Running => duration(now.saturating_sub(vm.created)),
            Status::Exited(_) => "-".into(),
        };
        println!(
            "{:<12}  {:<16}  {:<24}  {:<14}  {:>8}  {:>4}  {:>6}M",
            vm.id,
            vm.name.as_deref().unwrap_or("-"),
            shorten(&vm.image, 24),
            status,
            uptime,
            vm.cpus,
            vm.memory_mib
        );
    }
    0
}

/// `moat exec`: a new process in a running VM; its exit status.
pub fn exec(args: ExecArgs) -> u8 {
    signals::block(args.tty);
    let result = running(&args.vm).and_then(|(dir, _)| {
        let agent = Agent::new(&dir.socket());
        let spec = ProcessSpec {
            argv: args.command.clone(),
            env: args.env.clone(),
            cwd: args.workdir.clone(),
            user: args.user.clone(),
            tty: args.tty,
            stdin: args.interactive,
            size: session::pty_size(args.tty),
        };
        let process = match agent
            .control(CONNECT_PATIENCE)?
            .request(&Request::Exec(spec))?
        {
            Response::Started { process } => process,
            other => bail!("unexpected answer from the agent: {other:?}"),
        };
        let target = agent.clone();
        signals::forward(args.tty, move |signal| match signal {
            libc::SIGWINCH => session::send_resize(&target, process),
            _ => session::send_signal(&target, process, signal),
        });
        let stdio = Stdio {
            tty: args.tty,
            stdin: args.interactive,
        };
        let raw = RawTerminal::for_stdio(stdio);
        let status = session::attach(&agent, process, stdio, &Sink::Terminal);
        drop(raw);
        Ok(status?)
    });
    result.unwrap_or_else(|e| failed(&e))
}

/// `moat logs`: the workload's stdout and stderr as kept on the host, in the order they arrived.
pub fn logs(args: LogsArgs) -> u8 {
    let (dir, _) = match state::find(&args.vm) {
        Ok(found) => found,
        Err(e) => return failed(&e),
    };
    let mut log = LogReader::new(&dir.output_log());
    loop {
        let copied = log.copy_new(&mut print_record);
        let _ = std::io::stdout().flush();
        let copied = match copied {
            Ok(copied) => copied,
            Err(e) => return failed(&e),
        };
        if !args.follow {
            return 0;
        }
        let running = dir
            .read()
            .is_ok_and(|s| s.status == Status::Running && s.is_alive());
        if !running && copied == 0 {
            return 0;
        }
        if copied == 0 {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Writes a record's payload to moat's stdout or stderr. stdout is flushed before stderr is
/// written, so that a terminal (or one pipe for both) shows them in the order they arrived.
fn print_record(stream: OutputStream, payload: &[u8]) {
    match stream {
        OutputStream::Stdout => {
            let _ = std::io::stdout().write_all(payload);
        }
        OutputStream::Stderr => {
            let _ = std::io::stdout().flush();
            let _ = std::io::stderr().write_all(payload);
        }
    }
}

/// `moat kill`: a signal for each VM's workload.
pub fn kill(args: KillArgs) -> u8 {
    each(&args.vms, |name| {
        let (dir, _) = running(name)?;
        Agent::new(&dir.socket())
            .control(CONNECT_PATIENCE)?
            .command(&Request::Signal {
                process: MAIN_PROCESS,
                signal: args.signal,
            })?;
        Ok(())
    })
}

/// `moat stop`: SIGTERM to each VM's workload, then the end of the VM after the timeout.
pub fn stop(args: StopArgs) -> u8 {
    each(&args.vms, |name| {
        let (dir, vm) = state::find(name)?;
        if vm.status == Status::Running {
            stop_vm(&dir, &vm, Duration::from_secs(args.time))?;
        }
        Ok(())
    })
}

/// `moat rm`: removes ended VMs, and with `-f` running ones.
pub fn rm(args: RmArgs) -> u8 {
    each(&args.vms, |name| {
        let (dir, vm) = state::find(name)?;
        if vm.status == Status::Running {
            if !args.force {
                bail!("VM {} is running: stop it first, or use rm -f", vm.id);
            }
            end_process(&vm)?;
        }
        dir.remove();
        Ok(())
    })
}

/// Asks the workload to stop, waits `grace`, then ends the VM; returns once its process is gone.
fn stop_vm(dir: &VmDir, vm: &VmState, grace: Duration) -> anyhow::Result<()> {
    let agent = Agent::new(&dir.socket());
    let asked = agent.control(CONNECT_PATIENCE).and_then(|mut control| {
        control.command(&Request::Signal {
            process: MAIN_PROCESS,
            signal: libc::SIGTERM,
        })?;
        control
            .set_timeout(Some(grace.max(Duration::from_millis(1))))
            .map_err(|e| agent::Error::Frame(e.into()))?;
        control.wait(MAIN_PROCESS)
    });
    if asked.is_err() {
        // The workload ignored SIGTERM (or the agent is gone): end the VM from inside, and
        // failing that, from outside.
        // The answer may be lost as the VM stops; whether the VM ended is what counts.
        let reached = agent
            .control(CONNECT_PATIENCE)
            .map(|mut control| control.command(&Request::PowerOff));
        if reached.is_err() {
            return end_process(vm);
        }
    }
    if !wait_gone(vm, END_PATIENCE) {
        return end_process(vm);
    }
    Ok(())
}

/// Kills the VM's process and waits until it is gone; the VM ends with it.
fn end_process(vm: &VmState) -> anyhow::Result<()> {
    if vm.is_alive() {
        // SAFETY: kill has no memory-safety preconditions; is_alive checked the pid is the VM's.
        unsafe { libc::kill(vm.pid, libc::SIGKILL) };
    }
    if !wait_gone(vm, END_PATIENCE) {
        bail!("VM {}'s process {} does not end", vm.id, vm.pid);
    }
    Ok(())
}

/// Waits up to `patience` for the VM's process to end.
fn wait_gone(vm: &VmState, patience: Duration) -> bool {
    let deadline = Instant::now() + patience;
    while vm.is_alive() {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

/// The running VM `name`.
fn running(name: &str) -> anyhow::Result<(VmDir, VmState)> {
    let (dir, vm) = state::find(name)?;
    if vm.status != Status::Running {
        bail!("VM {} is not running", vm.id);
    }
    Ok((dir, vm))
}

/// Runs `verb` on each VM, printing each name done (as Docker does) and each failure.
fn each(names: &[String], verb: impl Fn(&str) -> anyhow::Result<()>) -> u8 {
    let mut status = 0;
    for name in names {
        match verb(name) {
            Ok(()) => println!("{name}"),
            Err(e) => status = failed(&e),
        }
    }
    status
}

fn failed(e: &anyhow::Error) -> u8 {
    exit::report(e);
    exit::MOAT_FAILED
}

/// A signal by name (`TERM`, `SIGTERM`) or number.
fn parse_signal(text: &str) -> Result<i32, String> {
    if let Ok(number) = text.parse::<i32>() {
        return if (1..=64).contains(&number) {
            Ok(number)
        } else {
            Err(format!("no signal {number}"))
        };
    }
    let name = text.to_ascii_uppercase();
    let name = name.strip_prefix("SIG").unwrap_or(&name);
    let known = [
        ("HUP", libc::SIGHUP),
        ("INT", libc::SIGINT),
        ("QUIT", libc::SIGQUIT),
        ("KILL", libc::SIGKILL),
        ("USR1", libc::SIGUSR1),
        ("USR2", libc::SIGUSR2),
        ("PIPE", libc::SIGPIPE),
        ("ALRM", libc::SIGALRM),
        ("TERM", libc::SIGTERM),
        ("CONT", libc::SIGCONT),
        ("STOP", libc::SIGSTOP),
        ("WINCH", libc::SIGWINCH),
    ];
    known
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, number)| *number)
        .ok_or_else(|| format!("unknown signal {text:?}"))
}

/// `3d`, `4h`, `12m`, `40s`.
fn duration(secs: u64) -> String {
    match secs {
        s if s >= 86_400 => format!("{}d", s / 86_400),
        s if s >= 3_600 => format!("{}h", s / 3_600),
        s if s >= 60 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

/// The end of `text` in at most `width` characters.
fn shorten(text: &str, width: usize) -> String {
    let chars: Vec<char> = text.chars().collect();
    if chars.len() <= width {
        return text.to_string();
    }
    let tail: String = chars[chars.len() - (width - 1)..].iter().collect();
    format!("…{tail}")
}

/// Reads an output log record by record from where it was last read: the rotated file first,
/// then the current one, and on to the next current one each time the log rotates.
struct LogReader {
    path: PathBuf,
    /// The file being read, once it exists: it stays open, so that what was added to it just
    /// before it rotated is still read.
    current: Option<LogFile>,
    started: bool,
}

/// A log file and where its next record starts.
struct LogFile {
    file: File,
    offset: u64,
}

impl LogReader {
    fn new(path: &Path) -> Self {
        Self {
            path: path.to_path_buf(),
            current: None,
            started: false,
        }
    }

    /// Passes each whole record added since the last call to `emit`; returns their bytes. A
    /// corrupt record ends reading with an error, after the records before it.
    fn copy_new(&mut self, emit: &mut dyn FnMut(OutputStream, &[u8])) -> anyhow::Result<u64> {
        let mut copied = 0;
        if !self.started {
            self.started = true;
            copied += self.start(emit)?;
        }
        loop {
            if self.current.is_none() {
                self.current = open_log(&self.path);
            }
            let Some(current) = &mut self.current else {
                return Ok(copied);
            };
            copied += copy_records(current, &self.path, emit)?;
            if !rotated_away(&current.file, &self.path) {
                return Ok(copied);
            }
            // Nothing is added to a log once it is rotated: what it holds now is all of it.
            // (Should the log rotate twice between two reads, the file in between is skipped:
            // that takes LOG_MAX of output within one poll.)
            copied += copy_records(current, &self.path, emit)?;
            self.current = None;
        }
    }

    /// Opens the current file, then copies the rotated one unless it is that same file (the
    /// log rotated in between).
    fn start(&mut self, emit: &mut dyn FnMut(OutputStream, &[u8])) -> anyhow::Result<u64> {
        self.current = open_log(&self.path);
        let rotated_path = session::rotated_path(&self.path);
        let Some(mut rotated) = open_log(&rotated_path) else {
            return Ok(0);
        };
        if let Some(current) = &self.current {
            if same_file(&current.file, &rotated.file) {
                return Ok(0);
            }
        }
        copy_records(&mut rotated, &rotated_path, emit)
    }
}

fn open_log(path: &Path) -> Option<LogFile> {
    let file = File::open(path).ok()?;
    Some(LogFile { file, offset: 0 })
}

/// Passes the whole records from `log`'s offset on to `emit`, moving the offset past them;
/// returns their bytes.
fn copy_records(
    log: &mut LogFile,
    path: &Path,
    emit: &mut dyn FnMut(OutputStream, &[u8]),
) -> anyhow::Result<u64> {
    let start = log.offset;
    let copied = copy_records_from(log, emit);
    copied.with_context(|| format!("cannot read {} past byte {}", path.display(), log.offset))?;
    Ok(log.offset - start)
}

fn copy_records_from(
    log: &mut LogFile,
    emit: &mut dyn FnMut(OutputStream, &[u8]),
) -> Result<(), RecordError> {
    log.file
        .seek(SeekFrom::Start(log.offset))
        .map_err(RecordError::Read)?;
    let mut records = RecordReader::new(BufReader::new(&log.file));
    while let Some((stream, payload)) = records.next_record()? {
        emit(stream, payload);
        log.offset += (RECORD_HEADER + payload.len()) as u64;
    }
    Ok(())
}

/// Whether `path` now names another file than `file`: the log rotated. Between the rename and
/// the new file's creation there is no file at `path`; that is found out at the next read.
fn rotated_away(file: &File, path: &Path) -> bool {
    match (file.metadata(), std::fs::metadata(path)) {
        (Ok(open), Ok(named)) => !same_inode(&open, &named),
        _ => false,
    }
}

fn same_file(a: &File, b: &File) -> bool {
    match (a.metadata(), b.metadata()) {
        (Ok(a), Ok(b)) => same_inode(&a, &b),
        _ => false,
    }
}

fn same_inode(a: &std::fs::Metadata, b: &std::fs::Metadata) -> bool {
    a.dev() == b.dev() && a.ino() == b.ino()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::OutputLog;

    #[test]
    fn signals_parse_by_name_and_number() {
        assert_eq!(parse_signal("TERM"), Ok(libc::SIGTERM));
        assert_eq!(parse_signal("sigint"), Ok(libc::SIGINT));
        assert_eq!(parse_signal("9"), Ok(9));
        assert!(parse_signal("0").is_err());
        assert!(parse_signal("BOGUS").is_err());
    }

    #[test]
    fn durations_read_like_docker() {
        assert_eq!(duration(5), "5s");
        assert_eq!(duration(125), "2m");
        assert_eq!(duration(7_300), "2h");
        assert_eq!(duration(200_000), "2d");
    }

    #[test]
    fn long_images_keep_their_end() {
        assert_eq!(shorten("short.tar", 24), "short.tar");
        let long = "/very/long/path/to/images/busybox.tar";
        assert_eq!(shorten(long, 12).chars().count(), 12);
        assert!(shorten(long, 12).ends_with("busybox.tar"));
    }

    type Records = Vec<(OutputStream, Vec<u8>)>;

    /// A fresh, empty directory for one test.
    fn test_dir(test: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("moat-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir is writable");
        dir
    }

    /// What one `copy_new` passes on, and its result.
    fn read_new(reader: &mut LogReader) -> (Records, anyhow::Result<u64>) {
        let mut records = Vec::new();
        let result = reader.copy_new(&mut |stream, payload| {
            records.push((stream, payload.to_vec()));
        });
        (records, result)
    }

    /// Record `n`: 16 bytes, from stdout when `n` is even and from stderr when it is odd.
    fn record(n: usize) -> (OutputStream, Vec<u8>) {
        let stream = if n % 2 == 0 {
            OutputStream::Stdout
        } else {
            OutputStream::Stderr
        };
        (stream, format!("record {n:02} of ten").into_bytes())
    }

    fn append_raw(path: &Path, bytes: &[u8]) {
        let mut file = File::options().append(true).open(path).expect("log exists");
        file.write_all(bytes).expect("temp file is writable");
    }

    /// Rotates past 100 bytes: four records of 5 + 16 bytes fit in a file.
    const SMALL_LIMIT: u64 = 100;

    #[test]
    fn the_rotated_file_is_read_before_the_current_one() {
        let dir = test_dir("logs-rotated");
        let path = dir.join("output.log");
        let mut log = OutputLog::with_limit(&path, SMALL_LIMIT);
        for n in 0..10 {
            let (stream, payload) = record(n);
            log.append(stream, &payload);
        }

        let (records, result) = read_new(&mut LogReader::new(&path));

        // Records 0 to 3 went with the first rotation; 4 to 7 are in .1, 8 and 9 current.
        assert_eq!(records, (4..10).map(record).collect::<Records>());
        assert_eq!(result.expect("the log is whole"), 6 * 21);
        std::fs::remove_dir_all(&dir).expect("temp dir is removable");
    }

    #[test]
    fn following_across_a_rotation_loses_and_repeats_nothing() {
        let dir = test_dir("logs-follow");
        let path = dir.join("output.log");
        let mut log = OutputLog::with_limit(&path, SMALL_LIMIT);
        let mut reader = LogReader::new(&path);
        let mut append = |range: std::ops::Range<usize>| {
            for (stream, payload) in range.map(record) {
                log.append(stream, &payload);
            }
        };

        append(0..3);
        let (first, _) = read_new(&mut reader);
        // Record 3 lands in the file that 4 then rotates away.
        append(3..6);
        let (second, _) = read_new(&mut reader);

        assert_eq!(first, (0..3).map(record).collect::<Records>());
        assert_eq!(second, (3..6).map(record).collect::<Records>());
        std::fs::remove_dir_all(&dir).expect("temp dir is removable");
    }

    #[test]
    fn a_record_still_being_written_waits_for_the_next_read() {
        let dir = test_dir("logs-partial");
        let path = dir.join("output.log");
        OutputLog::open(&path).append(OutputStream::Stdout, b"whole");
        let mut reader = LogReader::new(&path);
        // A stderr record of 6 bytes, written in three pieces.
        let late = [2, 6, 0, 0, 0, b'l', b'a', b't', b'e', b'!', b'\n'];

        append_raw(&path, &late[..2]);
        let (first, _) = read_new(&mut reader);
        append_raw(&path, &late[2..8]);
        let (second, _) = read_new(&mut reader);
        append_raw(&path, &late[8..]);
        let (third, _) = read_new(&mut reader);

        assert_eq!(first, [(OutputStream::Stdout, b"whole".to_vec())]);
        assert_eq!(second, Records::new());
        assert_eq!(third, [(OutputStream::Stderr, b"late!\n".to_vec())]);
        std::fs::remove_dir_all(&dir).expect("temp dir is removable");
    }

    #[test]
    fn a_record_with_an_unknown_stream_ends_reading() {
        let dir = test_dir("logs-bad-tag");
        let path = dir.join("output.log");
        OutputLog::open(&path).append(OutputStream::Stdout, b"before");
        append_raw(&path, &[9, 1, 0, 0, 0, b'x']);
        OutputLog::open(&path).append(OutputStream::Stdout, b"after");

        let (records, result) = read_new(&mut LogReader::new(&path));

        assert_eq!(records, [(OutputStream::Stdout, b"before".to_vec())]);
        let message = format!("{:#}", result.expect_err("tag 9 names no stream"));
        assert!(message.contains("past byte 11"), "{message}");
        assert!(message.contains("unknown stream tag 9"), "{message}");
        std::fs::remove_dir_all(&dir).expect("temp dir is removable");
    }

    #[test]
    fn a_record_with_an_impossible_length_ends_reading() {
        let dir = test_dir("logs-bad-length");
        let path = dir.join("output.log");
        // Claims 4 GiB: read as a length it would be a huge allocation.
        std::fs::write(&path, [1, 0xff, 0xff, 0xff, 0xff, b'x']).expect("temp dir is writable");

        let (records, result) = read_new(&mut LogReader::new(&path));

        assert_eq!(records, Records::new());
        let message = format!("{:#}", result.expect_err("no record is 4 GiB long"));
        assert!(message.contains("length 4294967295"), "{message}");
        std::fs::remove_dir_all(&dir).expect("temp dir is removable");
    }
}
