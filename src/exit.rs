//! moat's exit statuses.
//!
//! A workload's own status passes through unchanged (128+N when it died of signal N, 126 and
//! 127 when its command could not be run or found, as in a shell). moat's own failures use
//! codes at the top of the range, as Docker does with 125:
//!
//! | status | meaning |
//! |---|---|
//! | 125 | moat could not start the VM: bad flags, missing kernel or disk, no usable KVM |
//! | 125 | ... or the launch asked for something the image lacks (a user or group) |
//! | 124 | the guest failed before reporting the workload's status: kernel panic or reset, triple fault, agent failure |

use std::io::Write;
use std::process::ExitCode;

/// moat could not start the VM.
pub const MOAT_FAILED: u8 = 125;
/// The guest failed before reporting the workload's status.
pub const GUEST_FAILED: u8 = 124;

/// The status for an agent failure: the user's mistakes count as moat refusing the launch,
/// the rest as the guest failing.
pub fn agent_failure_status(failure: moat_agent_protocol::AgentFailure) -> u8 {
    match failure {
        moat_agent_protocol::AgentFailure::User => MOAT_FAILED,
        _ => GUEST_FAILED,
    }
}

/// The table above, for `--help`.
pub const HELP: &str = "\
Exit status: the workload's own; 125 when moat could not start the VM; 124 when the guest
failed before reporting the workload's status (kernel panic, reset, agent failure).";

/// Prints a flag error (Docker exits 125 for these too) or the help text.
pub fn usage_error(e: clap::Error) -> ExitCode {
    let code = if e.use_stderr() { MOAT_FAILED } else { 0 };
    let _ = e.print();
    ExitCode::from(code)
}

/// Prints `error` with its cause chain on one line.
pub fn report(error: &anyhow::Error) {
    eprintln!("moat: {error:#}");
}

/// Exits at once with `code`, after flushing what the guest printed.
///
/// Exiting without dropping the VM lets the kernel tear guest memory and vCPUs down as the
/// process ends, instead of doing it first and exiting afterwards.
pub fn now(code: u8) -> ExitCode {
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    std::process::exit(i32::from(code))
}
