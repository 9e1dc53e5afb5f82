//! moat's guest agent: PID 1 inside every moat micro-VM.
//!
//! It reports readiness to the VMM before doing anything else (the boot-time marker), mounts
//! what a workload needs, switches to the workload's root disk, runs the workload, reaps every
//! process as an init must, and reports the workload's exit status to the VMM, which then ends
//! the VM. The agent never returns: PID 1 exiting would panic the guest kernel.

mod control;
mod mounts;
mod spawn;

use moat_agent_protocol::{AgentFailure, ControlEvent, Launch};

/// Where the kernel exposes its command line once /proc is mounted.
const PROC_CMDLINE: &str = "/proc/cmdline";

fn main() {
    // SAFETY: getpid has no preconditions.
    if unsafe { libc::getpid() } != 1 {
        eprintln!("moat-agent: must run as PID 1 inside a moat guest");
        std::process::exit(2);
    }
    control::report(ControlEvent::AgentReady);

    let status = match run() {
        Ok(status) => ControlEvent::WorkloadExited(status),
        Err(failure) => ControlEvent::AgentFailed(failure),
    };
    // SAFETY: sync has no preconditions; it flushes the root disk's writes before the VM ends.
    unsafe { libc::sync() };
    control::report(status);
    power_off();
}

/// Mounts, starts the workload and waits for it; returns its exit status.
fn run() -> Result<u8, AgentFailure> {
    mounts::mount_base().map_err(|e| fail(AgentFailure::BaseMounts, &e))?;
    let launch = read_launch()?;
    let log = |msg: &str| {
        if launch.debug {
            eprintln!("moat-agent: {msg}");
        }
    };

    if let Some(device) = &launch.root {
        let fstype = mounts::switch_root(device).map_err(|e| fail(AgentFailure::RootMount, &e))?;
        log(&format!("root {device} mounted ({fstype})"));
    }
    if launch.argv.is_empty() {
        return Err(fail(
            AgentFailure::BadLaunch,
            &"no workload command was given",
        ));
    }

    let child = spawn::start(&launch).map_err(|e| fail(AgentFailure::Spawn, &e))?;
    control::report(ControlEvent::WorkloadStarted);
    log(&format!("started {:?} as pid {child}", launch.argv));

    let status = spawn::wait_reaping(child);
    log(&format!("workload exited with status {status}"));
    Ok(status)
}

fn read_launch() -> Result<Launch, AgentFailure> {
    let cmdline = std::fs::read_to_string(PROC_CMDLINE).map_err(|e| {
        fail(
            AgentFailure::BadLaunch,
            &format!("read {PROC_CMDLINE}: {e}"),
        )
    })?;
    Launch::from_cmdline(&cmdline).map_err(|e| fail(AgentFailure::BadLaunch, &e))
}

/// Prints why the agent failed on the console and returns the code for the VMM.
fn fail(failure: AgentFailure, why: &dyn std::fmt::Display) -> AgentFailure {
    eprintln!("moat-agent: {}: {why}", failure.describe());
    failure
}

/// Ends the VM when no moat VMM is listening on the control port (plain QEMU, for one).
fn power_off() -> ! {
    loop {
        // SAFETY: reboot with a valid command; as PID 1 we hold CAP_SYS_BOOT. With `reboot=k` on
        // the command line the kernel resets through the i8042, which moat's VMM and QEMU both
        // turn into the end of the VM.
        unsafe { libc::reboot(libc::RB_AUTOBOOT) };
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
}
