//! moat's guest agent: PID 1 inside every moat micro-VM.
//!
//! It mounts /proc, /sys and /dev and reports readiness to the VMM (the boot-time marker, at the
//! same instant as its write to Firecracker's boot timer, so that the two compare), reads the
//! launch spec the host packed into the initramfs, assembles the workload's root (image disk,
//! overlay, volumes, the mounts and /etc files a container expects), switches to it, runs the
//! workload as its user, forwards the host's signals to it, reaps every process as an init
//! must, and reports the workload's exit status to the VMM, which then ends the VM. The agent
//! never returns: PID 1 exiting would panic the guest kernel.
//!
//! When the launch spec asks for the agent channel, the workload's stdio, execs and signals go
//! over virtio-vsock instead of the console (`server`), and the VM ends when the host asks.

mod control;
mod etc;
mod mounts;
mod process;
mod server;
mod spawn;
mod tty;
mod user;
mod vsock;

use std::io::Read;
use std::sync::Arc;
use std::time::Duration;

use moat_agent_protocol::channel::{ChannelSpec, AGENT_PORT, MAIN_PROCESS};
use moat_agent_protocol::{
    AgentFailure, ControlEvent, LaunchSpec, LAUNCH_SPEC_MAX, LAUNCH_SPEC_PATH,
};

use crate::mounts::RootError;
use crate::process::Reaping;
use crate::server::Agent;

/// How long the processes left when the workload ends get to die after SIGKILL.
const KILL_GRACE: Duration = Duration::from_secs(1);

/// How long the agent waits for the host, in channel mode, once the workload has ended: to read
/// the workload's output, then to ask to power off. A host that takes longer is taken for dead,
/// so the VM does not outlive it.
const HOST_GRACE: Duration = Duration::from_secs(30);

fn main() {
    let start_ns = boottime_ns();
    // SAFETY: getpid has no preconditions.
    if unsafe { libc::getpid() } != 1 {
        eprintln!("moat-agent: must run as PID 1 inside a moat guest");
        std::process::exit(2);
    }
    let status = match run(start_ns) {
        Ok(status) => ControlEvent::WorkloadExited(status),
        Err(failure) => ControlEvent::AgentFailed(failure),
    };
    // SAFETY: sync has no preconditions; it flushes the disks' writes before the VM ends.
    unsafe { libc::sync() };
    control::report(status);
    power_off();
}

/// Sets up, runs the workload to its end and returns its exit status.
fn run(start_ns: u64) -> Result<u8, AgentFailure> {
    tty::configure_console();
    mounts::mount_base().map_err(|e| fail(AgentFailure::BaseMounts, &e))?;
    // The earliest point /dev/mem exists: moat's marker and Firecracker's, back to back.
    control::report(ControlEvent::AgentReady);
    control::signal_boot_timer();
    let spec = read_spec()?;
    let log = |msg: &str| {
        if spec.debug {
            eprintln!("moat-agent: {msg}");
        }
    };

    prepare_root(&spec, &log)?;
    let creds = credentials(&spec)?;
    if spec.root.as_ref().is_some_and(|r| r.read_only) {
        mounts::make_root_read_only().map_err(|e| fail(AgentFailure::RootMount, &e))?;
    }
    match spec.channel {
        None => run_on_console(&spec, creds, &log),
        Some(stdio) => run_on_channel(spec.clone(), creds, stdio, start_ns, &log),
    }
}

/// The root, its container mounts, volumes, tmpfs mounts, /etc files and working directory.
fn prepare_root(spec: &LaunchSpec, log: &dyn Fn(&str)) -> Result<(), AgentFailure> {
    if let Some(root) = &spec.root {
        let described = mounts::prepare_root(root).map_err(|e| match e {
            RootError::Disk(e) => fail(AgentFailure::RootMount, &e),
            RootError::Writable(e) => fail(AgentFailure::WritableLayer, &e),
        })?;
        mounts::switch_root().map_err(|e| fail(AgentFailure::RootMount, &e))?;
        log(&format!("root {described}"));
    }
    mounts::container_mounts().map_err(|e| fail(AgentFailure::BaseMounts, &e))?;
    for volume in &spec.volumes {
        let fstype =
            mounts::mount_volume(volume).map_err(|e| fail(AgentFailure::VolumeMount, &e))?;
        log(&format!(
            "volume {} ({fstype}) at {}",
            volume.device, volume.target
        ));
    }
    for target in &spec.tmpfs {
        mounts::mount_tmpfs(target).map_err(|e| fail(AgentFailure::BaseMounts, &e))?;
    }
    configure_etc(spec, log);
    if let Some(cwd) = &spec.cwd {
        // Docker creates a missing working directory; under a read-only root it must exist.
        let _ = std::fs::create_dir_all(cwd);
    }
    Ok(())
}

/// Console mode: the workload's stdio is the console, and the VM ends when it does.
fn run_on_console(
    spec: &LaunchSpec,
    creds: user::Credentials,
    log: &dyn Fn(&str),
) -> Result<u8, AgentFailure> {
    let sigchld = spawn::sigchld_fd().map_err(|e| fail(AgentFailure::Spawn, &e))?;
    let workload =
        spawn::Workload::new(spec, creds).map_err(|e| fail(AgentFailure::BadLaunch, &e))?;
    let child = spawn::start(&workload).map_err(|e| fail(AgentFailure::Spawn, &e))?;
    control::report(ControlEvent::WorkloadStarted);
    log(&format!("started {:?} as pid {child}", spec.argv));

    let status = spawn::supervise(child, sigchld);
    log(&format!("workload exited with status {status}"));

    // As when a container ends: whatever the workload left running ends with it, and only then
    // can its volumes be closed cleanly.
    spawn::kill_all();
    mounts::unmount_volumes(&spec.volumes);
    Ok(status)
}

/// Channel mode: the workload's stdio, execs and signals go over virtio-vsock, and the VM ends
/// when the host asks, once the workload has ended.
fn run_on_channel(
    spec: LaunchSpec,
    creds: user::Credentials,
    stdio: ChannelSpec,
    start_ns: u64,
    log: &dyn Fn(&str),
) -> Result<u8, AgentFailure> {
    let listener = vsock::listen(AGENT_PORT).map_err(|e| fail(AgentFailure::Other, &e))?;
    let volumes = spec.volumes.clone();
    let agent = Arc::new(Agent::new(spec, creds, start_ns, Reaping::All));
    agent
        .table()
        .reap_all()
        .map_err(|e| fail(AgentFailure::Spawn, &e))?;
    agent
        .start_main(stdio)
        .map_err(|e| fail(AgentFailure::Spawn, &e))?;
    control::report(ControlEvent::WorkloadStarted);
    server::listen(Arc::clone(&agent), listener).map_err(|e| fail(AgentFailure::Other, &e))?;

    let table = agent.table();
    let status = table
        .wait_ended(MAIN_PROCESS)
        .map_err(|e| fail(AgentFailure::Other, &e))?;
    log(&format!("workload exited with status {status}"));

    // As in console mode, with the reaper keeping the execs' statuses for their waiters.
    // SAFETY: kill has no memory-safety preconditions; -1 spares PID 1, the agent.
    unsafe { libc::kill(-1, libc::SIGKILL) };
    table.wait_all_ended(KILL_GRACE);
    table.wait_outputs_copied(MAIN_PROCESS, HOST_GRACE);
    mounts::unmount_volumes(&volumes);
    // SAFETY: sync has no preconditions.
    unsafe { libc::sync() };
    table.publish(MAIN_PROCESS);

    if !agent.wait_power_off(HOST_GRACE) {
        eprintln!("moat-agent: the host did not ask to power off; powering off");
    }
    Ok(status)
}

/// Hostname, /etc/hosts and /etc/resolv.conf. Failures are logged, not fatal: a root without a
/// writable layer keeps the image's own files.
fn configure_etc(spec: &LaunchSpec, log: &dyn Fn(&str)) {
    if let Some(hostname) = &spec.hostname {
        if let Err(e) = etc::set_hostname(hostname) {
            log(&format!("hostname {hostname}: {e}"));
        }
    }
    if !spec.dns.is_empty() {
        if let Err(e) = etc::write_resolv_conf(&spec.dns) {
            log(&format!("/etc/resolv.conf: {e}"));
        }
    }
}

/// The workload's user, resolved in its own root.
fn credentials(spec: &LaunchSpec) -> Result<user::Credentials, AgentFailure> {
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    let group = std::fs::read_to_string("/etc/group").unwrap_or_default();
    user::resolve(spec.user.as_deref().unwrap_or(""), &passwd, &group)
        .map_err(|e| fail(AgentFailure::User, &e))
}

fn read_spec() -> Result<LaunchSpec, AgentFailure> {
    let path = format!("/{LAUNCH_SPEC_PATH}");
    let mut bytes = Vec::new();
    std::fs::File::open(&path)
        .and_then(|f| f.take(LAUNCH_SPEC_MAX).read_to_end(&mut bytes))
        .map_err(|e| fail(AgentFailure::BadLaunch, &format!("read {path}: {e}")))?;
    LaunchSpec::from_json(&bytes)
        .map_err(|e| fail(AgentFailure::BadLaunch, &format!("{path}: {e}")))
}

/// Prints why the agent failed on the console and returns the code for the VMM.
fn fail(failure: AgentFailure, why: &dyn std::fmt::Display) -> AgentFailure {
    eprintln!("moat-agent: {}: {why}", failure.describe());
    failure
}

/// Nanoseconds of CLOCK_BOOTTIME: time since the guest kernel started, suspend included.
fn boottime_ns() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec, which lives for the call.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut now) };
    u64::try_from(now.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(now.tv_nsec).unwrap_or(0)
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
