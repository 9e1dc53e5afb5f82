//! Running one VM in the foreground: boot it, forward the user's signals to the workload, report
//! the boot phases, and turn how the guest ended into moat's exit status.

use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use moat_agent_protocol::channel::{Request, MAIN_PROCESS};
use moat_agent_protocol::ConsoleCommand;
use moat_vmm::timeline::Timeline;
use moat_vmm::{VmConfig, VmHandle, VmOutcome};

use crate::agent::{Agent, CONNECT_PATIENCE};
use crate::bench::memory::MemorySample;
use crate::bench::report::BootReport;
use crate::session::{self, Sink, Stdio};
use crate::{bench, exit, signals};

/// After this many forwarded SIGINTs or SIGTERMs the user has given up on the workload: the VM
/// is ended from the host.
const SIGNALS_BEFORE_KILL: u32 = 3;

/// Kernel arguments moat always passes: console on COM1, reset through the i8042 so the VM
/// ends, reboot at once on panic, and a quiet boot (each console byte costs a VM exit).
const BASE_CMDLINE: &str = "console=ttyS0 reboot=k panic=-1 quiet";

/// The guest kernel's command line: moat's defaults, then the user's `extra` arguments.
pub fn kernel_cmdline(extra: Option<&str>) -> String {
    let mut cmdline = BASE_CMDLINE.to_string();
    if moat_vmm::host::is_qemu_tcg() {
        // QEMU's emulated SVM does not intercept XSETBV, so guests must not use XSAVE there.
        cmdline.push_str(" noxsave");
    }
    if let Some(extra) = extra.map(str::trim).filter(|e| !e.is_empty()) {
        cmdline.push(' ');
        cmdline.push_str(extra);
    }
    cmdline
}

/// Steps taken before the VM was created, shown first in the boot report.
pub type HostPhases = Vec<(String, Duration)>;

/// How the user's terminal meets the workload.
pub enum Attachment {
    /// The workload's stdio is the guest console, which is copied to stdout (`moat boot`).
    Console,
    /// The workload's stdio goes over the agent channel; the console is copied to `console`.
    Channel {
        /// The VM's agent.
        agent: Agent,
        /// How the workload's stdio is attached.
        stdio: Stdio,
        /// Where its output goes.
        sink: Sink,
        /// Where the guest console goes.
        console: Box<dyn Write + Send>,
    },
}

/// Boots `config`, runs it to its end with the user's signals forwarded; returns the exit status.
pub fn run(
    config: &VmConfig,
    timeline: Arc<Timeline>,
    report: bool,
    host_phases: &HostPhases,
    attachment: Attachment,
) -> u8 {
    let tty = matches!(&attachment, Attachment::Channel { stdio, .. } if stdio.tty);
    signals::block(tty);
    let killed_by = Arc::new(AtomicI32::new(0));
    let json_report = bench::report::requested_path();
    let mut memory = None;
    let (console, channel): (Box<dyn Write + Send>, _) = match attachment {
        Attachment::Console => (Box::new(std::io::stdout()), None),
        Attachment::Channel {
            agent,
            stdio,
            sink,
            console,
        } => (console, Some((agent, stdio, sink))),
    };
    let result = moat_vmm::boot(config, timeline.clone(), console).and_then(|mut vmm| {
        let target = match channel {
            Some((agent, stdio, sink)) => {
                attach_workload(vmm.handle(), agent.clone(), stdio, sink);
                SignalTarget::Agent(agent)
            }
            None => SignalTarget::Console,
        };
        forward_signals(vmm.handle(), target, tty, killed_by.clone());
        let outcome = vmm.run();
        // Sampled before the VM is dropped, so guest memory is still mapped and can be told
        // apart from the VMM's own.
        if json_report.is_some() && bench::report::memory_requested() {
            memory = bench::memory::sample(None, config.memory_mib).ok();
        }
        // The kernel's teardown of the VM waits until moat has exited with the status.
        vmm.leave_to_exit();
        outcome
    });
    if report {
        print_report(&timeline, host_phases);
    }
    if let Some(path) = json_report {
        write_json_report(&path, &timeline, host_phases, memory);
    }
    match result {
        Ok(outcome) => outcome_status(outcome, killed_by.load(Ordering::Relaxed)),
        Err(e) => {
            exit::report(&e.into());
            exit::MOAT_FAILED
        }
    }
}

/// A thread that attaches to the workload, copies its streams to their end, learns its status,
/// then asks the agent to end the VM (which carries the status to the VMM).
fn attach_workload(handle: VmHandle, agent: Agent, stdio: Stdio, sink: Sink) {
    std::thread::Builder::new()
        .name("workload".into())
        .stack_size(moat_vmm::THREAD_STACK_SIZE)
        .spawn(move || {
            match session::attach(&agent, MAIN_PROCESS, stdio, &sink) {
                Ok(_) => {
                    // The VM may stop before the answer makes it out: the status comes from
                    // the VMM's control port either way.
                    let _ = agent
                        .control(CONNECT_PATIENCE)
                        .and_then(|mut control| control.command(&Request::PowerOff));
                }
                Err(e) => {
                    // The VM usually ended first (an agent failure or a panic says why); if
                    // not, the host can no longer reach its workload: end it.
                    log::warn!("lost the workload's agent: {e}");
                    std::thread::sleep(AGENT_LOSS_GRACE);
                    handle.kill();
                }
            }
        })
        .expect("spawning a thread at start-up succeeds");
}

/// How long a VM may go on after its agent channel broke, so that its own account of the end
/// (an agent failure, a kernel panic) wins over "killed".
const AGENT_LOSS_GRACE: Duration = Duration::from_secs(5);

/// Where the user's signals go.
enum SignalTarget {
    /// As commands on the console's input (`moat boot`).
    Console,
    /// As requests to the agent for the workload.
    Agent(Agent),
}

/// Passes the user's signals on to the workload; after [`SIGNALS_BEFORE_KILL`] SIGINTs or
/// SIGTERMs the VM is ended from the host.
fn forward_signals(handle: VmHandle, target: SignalTarget, tty: bool, killed_by: Arc<AtomicI32>) {
    let mut stops = 0;
    signals::forward(tty, move |signal| {
        match &target {
            SignalTarget::Agent(agent) if signal == libc::SIGWINCH => {
                return session::send_resize(agent, MAIN_PROCESS);
            }
            SignalTarget::Agent(agent) => session::send_signal(agent, MAIN_PROCESS, signal),
            SignalTarget::Console => {
                handle.console_input(&ConsoleCommand::Signal(signal).encode());
            }
        }
        if signal == libc::SIGINT || signal == libc::SIGTERM {
            stops += 1;
            if stops >= SIGNALS_BEFORE_KILL {
                eprintln!("moat: the workload ignored {stops} signals; ending the VM");
                killed_by.store(signal, Ordering::Relaxed);
                handle.kill();
            }
        }
    });
}

/// The host's phases, then the VM's, in the order they happened.
fn all_phases(timeline: &Timeline, host_phases: &HostPhases) -> HostPhases {
    let vm_phases = timeline
        .snapshot()
        .into_iter()
        .map(|(phase, at)| (phase.name().to_string(), at));
    host_phases.iter().cloned().chain(vm_phases).collect()
}

fn print_report(timeline: &Timeline, host_phases: &HostPhases) {
    let mut text = String::from("moat: boot phases (ms since process start)\n");
    for (name, at) in all_phases(timeline, host_phases) {
        text.push_str(&format!("  {name:<18} {:>9.3}\n", at.as_secs_f64() * 1e3));
    }
    text.push_str(&format!(
        "  {:<18} {:>9.3}\n",
        "exit",
        timeline.now().as_secs_f64() * 1e3
    ));
    eprint!("{text}");
}

/// The boot report `moat bench` reads (see [`bench::report`]).
fn write_json_report(
    path: &Path,
    timeline: &Timeline,
    host_phases: &HostPhases,
    memory: Option<MemorySample>,
) {
    let mut report = BootReport::new(all_phases(timeline, host_phases), timeline.now());
    report.memory = memory;
    bench::report::write(path, &report);
}

/// The exit status for how the guest ended.
fn outcome_status(outcome: VmOutcome, killed_by: i32) -> u8 {
    match outcome {
        VmOutcome::WorkloadExited(status) => status,
        VmOutcome::AgentFailed(failure) => {
            eprintln!("moat: {}", failure.describe());
            exit::agent_failure_status(failure)
        }
        VmOutcome::GuestReset => {
            eprintln!("moat: the guest reset before the workload finished (kernel panic?)");
            exit::GUEST_FAILED
        }
        VmOutcome::GuestShutdown => {
            eprintln!("moat: the guest shut down (triple fault) before the workload finished");
            exit::GUEST_FAILED
        }
        VmOutcome::Killed => 128u8.saturating_add(u8::try_from(killed_by).unwrap_or(9)),
    }
}
