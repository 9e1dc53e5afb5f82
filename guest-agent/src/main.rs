//! moat's guest agent: PID 1 inside every moat micro-VM.
//!
//! It reports readiness to the VMM before doing anything else (the boot-time marker), reads the
//! launch spec the host packed into the initramfs, assembles the workload's root (image disk,
//! overlay, volumes, the mounts and /etc files a container expects), switches to it, runs the
//! workload as its user, forwards the host's signals to it, reaps every process as an init
//! must, and reports the workload's exit status to the VMM, which then ends the VM. The agent
//! never returns: PID 1 exiting would panic the guest kernel.

mod control;
mod etc;
mod mounts;
mod spawn;
mod tty;
mod user;

use std::io::Read;

use moat_agent_protocol::{
    AgentFailure, ControlEvent, LaunchSpec, LAUNCH_SPEC_MAX, LAUNCH_SPEC_PATH,
};

use crate::mounts::RootError;

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
    // SAFETY: sync has no preconditions; it flushes the disks' writes before the VM ends.
    unsafe { libc::sync() };
    control::report(status);
    power_off();
}

/// Sets up, starts the workload and waits for it; returns its exit status.
fn run() -> Result<u8, AgentFailure> {
    tty::configure_console();
    mounts::mount_base().map_err(|e| fail(AgentFailure::BaseMounts, &e))?;
    let spec = read_spec()?;
    let log = |msg: &str| {
        if spec.debug {
            eprintln!("moat-agent: {msg}");
        }
    };

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
    configure_etc(&spec, &log);
    if let Some(cwd) = &spec.cwd {
        // Docker creates a missing working directory; under a read-only root it must exist.
        let _ = std::fs::create_dir_all(cwd);
    }
    let creds = credentials(&spec)?;
    if spec.root.as_ref().is_some_and(|r| r.read_only) {
        mounts::make_root_read_only().map_err(|e| fail(AgentFailure::RootMount, &e))?;
    }

    let sigchld = spawn::sigchld_fd().map_err(|e| fail(AgentFailure::Spawn, &e))?;
    let workload =
        spawn::Workload::new(&spec, creds).map_err(|e| fail(AgentFailure::BadLaunch, &e))?;
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
