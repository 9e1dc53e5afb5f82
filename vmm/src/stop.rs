//! How a VM ends: the first reason recorded wins, and everyone waiting is woken.
//!
//! vCPU threads, the control port and the i8042 reset all report here; the event loop waits on
//! [`Stop::evt`] and the vCPU threads poll [`Stop::is_stopped`] between guest entries.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use moat_agent_protocol::AgentFailure;
use vmm_sys_util::eventfd::EventFd;

/// How a VM ended, seen from the guest's side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmOutcome {
    /// The agent reported the workload's exit status.
    WorkloadExited(u8),
    /// The agent could not start the workload.
    AgentFailed(AgentFailure),
    /// The guest reset itself (i8042 or KVM reset) before the agent reported a status: the guest
    /// kernel panicked or rebooted.
    GuestReset,
    /// The guest triple-faulted.
    GuestShutdown,
    /// The host ended the VM before the guest did ([`VmHandle::kill`](crate::VmHandle::kill)).
    Killed,
}

/// Why a vCPU could not go on running the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VcpuFault {
    /// KVM could not emulate an instruction (`KVM_EXIT_INTERNAL_ERROR`).
    InternalError {
        /// The vCPU.
        vcpu: u8,
    },
    /// VM entry failed (`KVM_EXIT_FAIL_ENTRY`).
    FailEntry {
        /// The vCPU.
        vcpu: u8,
        /// The hardware's entry failure reason.
        reason: u64,
    },
    /// `KVM_RUN` itself failed.
    Run {
        /// The vCPU.
        vcpu: u8,
        /// The errno.
        errno: i32,
    },
    /// An exit moat does not handle.
    UnexpectedExit {
        /// The vCPU.
        vcpu: u8,
        /// The exit, as KVM named it.
        exit: String,
    },
}

impl std::fmt::Display for VcpuFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::InternalError { vcpu } => {
                write!(f, "KVM could not emulate the guest on vCPU {vcpu}")
            }
            Self::FailEntry { vcpu, reason } => {
                write!(
                    f,
                    "vCPU {vcpu} could not enter the guest (reason {reason:#x})"
                )
            }
            Self::Run { vcpu, errno } => write!(
                f,
                "KVM_RUN failed on vCPU {vcpu}: {}",
                std::io::Error::from_raw_os_error(*errno)
            ),
            Self::UnexpectedExit { vcpu, exit } => {
                write!(f, "unexpected exit {exit} on vCPU {vcpu}")
            }
        }
    }
}

/// Why the VM stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopReason {
    /// The guest ended in one of the expected ways.
    Outcome(VmOutcome),
    /// A vCPU failed.
    Fault(VcpuFault),
}

/// The shared stop switch of one VM.
#[derive(Debug)]
pub struct Stop {
    stopped: AtomicBool,
    reason: Mutex<Option<StopReason>>,
    evt: EventFd,
}

impl Stop {
    /// A switch in the running position.
    pub fn new() -> std::io::Result<Self> {
        Ok(Self {
            stopped: AtomicBool::new(false),
            reason: Mutex::new(None),
            evt: EventFd::new(libc::EFD_NONBLOCK)?,
        })
    }

    /// Records `reason` unless another was recorded first, and wakes the event loop.
    pub fn stop(&self, reason: StopReason) {
        let mut slot = self
            .reason
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if slot.is_none() {
            *slot = Some(reason);
        }
        self.stopped.store(true, Ordering::Release);
        // A full eventfd counter still wakes the loop, so a failed write loses nothing.
        let _ = self.evt.write(1);
    }

    /// Whether the VM was asked to stop.
    pub fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::Acquire)
    }

    /// The recorded reason, if the VM stopped.
    pub fn reason(&self) -> Option<StopReason> {
        self.reason
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Readable once the VM was asked to stop.
    pub fn evt(&self) -> &EventFd {
        &self.evt
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_reason_wins() {
        let stop = Stop::new().unwrap();
        assert!(!stop.is_stopped());
        stop.stop(StopReason::Outcome(VmOutcome::WorkloadExited(3)));
        stop.stop(StopReason::Outcome(VmOutcome::GuestReset));
        assert!(stop.is_stopped());
        assert_eq!(
            stop.reason(),
            Some(StopReason::Outcome(VmOutcome::WorkloadExited(3)))
        );
        assert_eq!(stop.evt().read().unwrap(), 2);
    }
}
