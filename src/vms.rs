//! The verbs on VMs that exist: `moat ps`, `exec`, `logs`, `kill`, `stop` and `rm`, as Docker
//! names them for containers.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::bail;
use clap::Args;
use moat_agent_protocol::channel::{ProcessSpec, Request, Response, MAIN_PROCESS};

use crate::agent::{self, Agent, CONNECT_PATIENCE};
use crate::session::{self, RawTerminal, Sink, Stdio};
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

/// `moat logs`: the workload's stdout and stderr as kept on the host.
pub fn logs(args: LogsArgs) -> u8 {
    let (dir, _) = match state::find(&args.vm) {
        Ok(found) => found,
        Err(e) => return failed(&e),
    };
    let mut out = LogReader::new(&dir.log("stdout"));
    let mut err = LogReader::new(&dir.log("stderr"));
    loop {
        let copied = out.copy_new(&mut std::io::stdout()) + err.copy_new(&mut std::io::stderr());
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

/// Reads a rotating log from where it was last read: the rotated part first, then the current.
struct LogReader {
    path: std::path::PathBuf,
    offset: u64,
    started: bool,
}

impl LogReader {
    fn new(path: &Path) -> Self {
        Self {
            path: path.to_path_buf(),
            offset: 0,
            started: false,
        }
    }

    /// Copies what was added since the last call; returns the byte count.
    fn copy_new(&mut self, out: &mut dyn Write) -> u64 {
        let mut copied = 0;
        if !self.started {
            self.started = true;
            let mut rotated = self.path.clone().into_os_string();
            rotated.push(".1");
            if let Ok(bytes) = std::fs::read(&rotated) {
                let _ = out.write_all(&bytes);
                copied += bytes.len() as u64;
            }
        }
        let Ok(mut file) = std::fs::File::open(&self.path) else {
            return copied;
        };
        let len = file.metadata().map_or(0, |m| m.len());
        if len < self.offset {
            self.offset = 0; // rotated since the last read
        }
        let mut bytes = Vec::new();
        if file.seek(SeekFrom::Start(self.offset)).is_ok() && file.read_to_end(&mut bytes).is_ok() {
            let _ = out.write_all(&bytes);
            let _ = out.flush();
            self.offset += bytes.len() as u64;
            copied += bytes.len() as u64;
        }
        copied
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
