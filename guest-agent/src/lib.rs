//! The host–agent protocol: what moat's VMM and the guest agent (PID 1 in the guest) agree on.
//!
//! The agent talks to the host through four narrow, easily audited paths:
//!
//! * the initramfs carries what the agent must run: the host appends a second cpio archive
//!   ([`cpio`]) holding one JSON file, [`LaunchSpec`] at [`LAUNCH_SPEC_PATH`]. The kernel unpacks
//!   concatenated archives into one tree, so the spec costs no device, no size limit of the
//!   kernel command line, and no copy of the agent per launch;
//! * the [agent channel](channel) over virtio-vsock carries processes and their streams: a
//!   control connection (start, signal, resize, wait, power off) and one connection per stdio
//!   stream, each opened with a typed hello;
//! * a single 32-bit I/O port, the [control port](CONTROL_PORT), carries events from the agent to
//!   the VMM: readiness (the boot-time marker), workload start, and the exit status;
//! * the serial console's input carries [`ConsoleCommand`]s from the host to the agent (signals
//!   for the workload) when moat runs a guest without the channel (`moat boot`). The workload's
//!   stdin is never the console, so the agent owns that input.
//!
//! Both sides compile this crate, so a change to the protocol is a change to both.

#![deny(missing_docs)]

pub mod caps;
pub mod channel;
pub mod console;
pub mod cpio;
mod launch;

pub use console::ConsoleCommand;
pub use launch::{
    is_clean_absolute, LaunchSpec, Overlay, RootSpec, VolumeSpec, LAUNCH_SPEC_MAX,
    LAUNCH_SPEC_PATH, LAUNCH_SPEC_VERSION,
};

/// I/O port the agent writes [`ControlEvent`]s to with a 32-bit `out`.
///
/// 0x0ff0 is outside every port range a PC-compatible guest probes (COM ports, PIT, PIC, i8042,
/// CMOS, PCI configuration at 0xcf8), so no guest driver ever touches it by accident.
pub const CONTROL_PORT: u16 = 0x0ff0;

/// Width in bytes of one control port access.
pub const CONTROL_PORT_WIDTH: usize = 4;

/// An event the agent reports to the VMM on the [control port](CONTROL_PORT).
///
/// Encoded in one 32-bit word: the kind in bits 31..24, a payload in bits 23..0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControlEvent {
    /// The agent runs: its very first act, the boot-time marker.
    AgentReady,
    /// The workload process was started.
    WorkloadStarted,
    /// The workload ended with this status (0..=255, 128+N for death by signal N).
    WorkloadExited(u8),
    /// The agent could not start the workload; the payload is an [`AgentFailure`] code.
    AgentFailed(AgentFailure),
}

/// Why the agent could not start the workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum AgentFailure {
    /// The initramfs held no launch spec, or one the agent cannot read.
    BadLaunch = 1,
    /// The root disk could not be mounted.
    RootMount = 2,
    /// A mount the workload needs (/proc, /sys, /dev) failed.
    BaseMounts = 3,
    /// fork() failed.
    Spawn = 4,
    /// A volume disk could not be mounted at its path.
    VolumeMount = 5,
    /// The user or group to run as is not in the image's /etc/passwd or /etc/group.
    User = 6,
    /// The writable layer (overlay on tmpfs or a scratch disk) could not be set up.
    WritableLayer = 7,
    /// The agent hit a failure that has no code of its own.
    Other = 255,
}

impl AgentFailure {
    fn from_code(code: u8) -> Self {
        match code {
            1 => Self::BadLaunch,
            2 => Self::RootMount,
            3 => Self::BaseMounts,
            4 => Self::Spawn,
            5 => Self::VolumeMount,
            6 => Self::User,
            7 => Self::WritableLayer,
            _ => Self::Other,
        }
    }

    /// A short description for error messages on the host.
    pub fn describe(self) -> &'static str {
        match self {
            Self::BadLaunch => "the agent was given no valid workload",
            Self::RootMount => "the agent could not mount the root disk",
            Self::BaseMounts => "the agent could not mount /proc, /sys or /dev",
            Self::Spawn => "the agent could not start the workload process",
            Self::VolumeMount => "the agent could not mount a volume",
            Self::User => "the user to run as does not exist in the image",
            Self::WritableLayer => "the agent could not set up the writable layer",
            Self::Other => "the agent failed",
        }
    }
}

const KIND_SHIFT: u32 = 24;
const PAYLOAD_MASK: u32 = (1 << KIND_SHIFT) - 1;
const KIND_AGENT_READY: u32 = 0x01;
const KIND_WORKLOAD_STARTED: u32 = 0x02;
const KIND_WORKLOAD_EXITED: u32 = 0x03;
const KIND_AGENT_FAILED: u32 = 0x04;

impl ControlEvent {
    /// The 32-bit word the agent writes to the control port.
    pub fn encode(self) -> u32 {
        let (kind, payload) = match self {
            Self::AgentReady => (KIND_AGENT_READY, 0),
            Self::WorkloadStarted => (KIND_WORKLOAD_STARTED, 0),
            Self::WorkloadExited(status) => (KIND_WORKLOAD_EXITED, u32::from(status)),
            Self::AgentFailed(failure) => (KIND_AGENT_FAILED, failure as u32),
        };
        (kind << KIND_SHIFT) | payload
    }

    /// Decodes a word written by the guest; `None` for anything malformed.
    ///
    /// The guest controls this value, so every bit pattern must be handled.
    pub fn decode(word: u32) -> Option<Self> {
        let payload = word & PAYLOAD_MASK;
        let small = u8::try_from(payload).ok();
        match (word >> KIND_SHIFT, small) {
            (KIND_AGENT_READY, Some(0)) => Some(Self::AgentReady),
            (KIND_WORKLOAD_STARTED, Some(0)) => Some(Self::WorkloadStarted),
            (KIND_WORKLOAD_EXITED, Some(status)) => Some(Self::WorkloadExited(status)),
            (KIND_AGENT_FAILED, Some(code)) => {
                Some(Self::AgentFailed(AgentFailure::from_code(code)))
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_events_round_trip() {
        let events = [
            ControlEvent::AgentReady,
            ControlEvent::WorkloadStarted,
            ControlEvent::WorkloadExited(0),
            ControlEvent::WorkloadExited(255),
            ControlEvent::AgentFailed(AgentFailure::RootMount),
        ];
        for event in events {
            assert_eq!(ControlEvent::decode(event.encode()), Some(event));
        }
    }

    #[test]
    fn malformed_control_words_are_rejected() {
        assert_eq!(ControlEvent::decode(0), None);
        assert_eq!(ControlEvent::decode(0xff00_0000), None);
        // An exit status does not fit in 24 bits' worth of payload above 255.
        assert_eq!(
            ControlEvent::decode((KIND_WORKLOAD_EXITED << 24) | 256),
            None
        );
        assert_eq!(ControlEvent::decode((KIND_AGENT_READY << 24) | 1), None);
    }
}
