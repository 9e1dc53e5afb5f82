//! The host–agent protocol: what moat's VMM and the guest agent (PID 1 in the guest) agree on.
//!
//! Until the vsock channel exists (TODO(#4): typed messages over virtio-vsock), the agent talks to
//! the VMM through two narrow, easily audited paths:
//!
//! * the kernel command line carries what the agent must run ([`Launch`], encoded with
//!   [`Launch::to_cmdline`]): keys are namespaced `moat.*` so the kernel neither interprets them
//!   nor passes them to init as arguments, and values use an alphabet the kernel never splits;
//! * a single 32-bit I/O port, the [control port](CONTROL_PORT), carries events from the agent to
//!   the VMM: readiness (the boot-time marker), workload start, and the exit status.
//!
//! Both sides compile this file, so a change to the protocol is a change to both.

#![deny(missing_docs)]

/// I/O port the agent writes [`ControlEvent`]s to with a 32-bit `out`.
///
/// 0x0ff0 is outside every port range a PC-compatible guest probes (COM ports, PIT, PIC, i8042,
/// CMOS, PCI configuration at 0xcf8), so no guest driver ever touches it by accident.
pub const CONTROL_PORT: u16 = 0x0ff0;

/// Width in bytes of one control port access.
pub const CONTROL_PORT_WIDTH: usize = 4;

/// Kernel command-line key holding the workload's argv.
pub const CMDLINE_ARGV: &str = "moat.argv";
/// Kernel command-line key holding the workload's environment.
pub const CMDLINE_ENV: &str = "moat.env";
/// Kernel command-line key naming the block device the agent mounts as the workload's root.
pub const CMDLINE_ROOT: &str = "moat.root";
/// Kernel command-line key: the agent logs what it does to the console.
pub const CMDLINE_DEBUG: &str = "moat.debug";

/// Most a kernel command line may hold on x86_64 (`COMMAND_LINE_SIZE`, including the NUL).
pub const KERNEL_CMDLINE_MAX: usize = 2048;

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
    /// The kernel command line held no workload, or an undecodable one.
    BadLaunch = 1,
    /// The root disk could not be mounted.
    RootMount = 2,
    /// A mount the workload needs (/proc, /sys, /dev) failed.
    BaseMounts = 3,
    /// fork() failed.
    Spawn = 4,
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

/// What the agent must run, as carried on the kernel command line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Launch {
    /// The workload's argv; `argv[0]` is looked up on `PATH` when it has no `/`.
    pub argv: Vec<String>,
    /// Extra environment, `KEY=VALUE`.
    pub env: Vec<String>,
    /// Block device to mount as the root filesystem (`/dev/vda`), if any.
    pub root: Option<String>,
    /// Whether the agent reports its steps on the console.
    pub debug: bool,
}

/// Why a [`Launch`] could not be read from a command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LaunchError {
    /// A `moat.*` value is not valid base64url.
    BadEncoding(&'static str),
    /// A decoded value is not UTF-8.
    NotUtf8(&'static str),
    /// An argument or variable holds a NUL byte, which cannot cross `execve`.
    Nul,
}

impl std::fmt::Display for LaunchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::BadEncoding(key) => write!(f, "{key} is not valid base64url"),
            Self::NotUtf8(key) => write!(f, "{key} is not UTF-8"),
            Self::Nul => write!(f, "an argument or variable contains a NUL byte"),
        }
    }
}

impl std::error::Error for LaunchError {}

impl Launch {
    /// The `moat.*` command-line words for this launch, space separated.
    pub fn to_cmdline(&self) -> Result<String, LaunchError> {
        let mut words = Vec::new();
        if !self.argv.is_empty() {
            words.push(format!("{CMDLINE_ARGV}={}", encode_list(&self.argv)?));
        }
        if !self.env.is_empty() {
            words.push(format!("{CMDLINE_ENV}={}", encode_list(&self.env)?));
        }
        if let Some(root) = &self.root {
            words.push(format!("{CMDLINE_ROOT}={root}"));
        }
        if self.debug {
            words.push(CMDLINE_DEBUG.to_string());
        }
        Ok(words.join(" "))
    }

    /// Reads a launch back from a whole kernel command line (`/proc/cmdline`).
    pub fn from_cmdline(cmdline: &str) -> Result<Self, LaunchError> {
        let mut launch = Self::default();
        for word in cmdline.split_ascii_whitespace() {
            let (key, value) = word.split_once('=').unwrap_or((word, ""));
            match key {
                CMDLINE_ARGV => launch.argv = decode_list(CMDLINE_ARGV, value)?,
                CMDLINE_ENV => launch.env = decode_list(CMDLINE_ENV, value)?,
                CMDLINE_ROOT => launch.root = Some(value.to_string()),
                CMDLINE_DEBUG => launch.debug = true,
                _ => {}
            }
        }
        Ok(launch)
    }
}

/// Joins strings with NUL separators and encodes them as base64url without padding.
fn encode_list(items: &[String]) -> Result<String, LaunchError> {
    if items.iter().any(|item| item.contains('\0')) {
        return Err(LaunchError::Nul);
    }
    Ok(base64url::encode(items.join("\0").as_bytes()))
}

fn decode_list(key: &'static str, value: &str) -> Result<Vec<String>, LaunchError> {
    let bytes = base64url::decode(value).ok_or(LaunchError::BadEncoding(key))?;
    let joined = String::from_utf8(bytes).map_err(|_| LaunchError::NotUtf8(key))?;
    Ok(joined.split('\0').map(str::to_string).collect())
}

/// RFC 4648 §5 base64url without padding: its alphabet holds no space, quote or `=` that the
/// kernel's command-line parser would split on.
pub mod base64url {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

    /// Encodes bytes.
    pub fn encode(bytes: &[u8]) -> String {
        let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
        for chunk in bytes.chunks(3) {
            let word = chunk
                .iter()
                .enumerate()
                .fold(0u32, |acc, (i, &b)| acc | (u32::from(b) << (16 - 8 * i)));
            for i in 0..=chunk.len() {
                let index = (word >> (18 - 6 * i)) & 0x3f;
                out.push(char::from(ALPHABET[index as usize]));
            }
        }
        out
    }

    /// Decodes text; `None` when it holds a character outside the alphabet or a dangling one.
    pub fn decode(text: &str) -> Option<Vec<u8>> {
        let mut out = Vec::with_capacity(text.len() * 3 / 4);
        for chunk in text.as_bytes().chunks(4) {
            if chunk.len() == 1 {
                return None;
            }
            let mut word = 0u32;
            for (i, &c) in chunk.iter().enumerate() {
                let value = ALPHABET.iter().position(|&a| a == c)? as u32;
                word |= value << (18 - 6 * i);
            }
            for i in 0..chunk.len() - 1 {
                out.push((word >> (16 - 8 * i)) as u8);
            }
        }
        Some(out)
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

    #[test]
    fn base64url_round_trips_every_length() {
        let data: Vec<u8> = (0..=255u8).collect();
        for len in 0..data.len() {
            let text = base64url::encode(&data[..len]);
            assert!(text
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'));
            assert_eq!(base64url::decode(&text).as_deref(), Some(&data[..len]));
        }
    }

    #[test]
    fn base64url_rejects_garbage() {
        assert_eq!(base64url::decode("a"), None);
        assert_eq!(base64url::decode("ab=c"), None);
        assert_eq!(base64url::decode("a b"), None);
    }

    #[test]
    fn launch_round_trips_through_a_cmdline() {
        let launch = Launch {
            argv: vec!["sh".into(), "-c".into(), "echo 'a b' \"c\"=d".into()],
            env: vec!["A=1".into(), "EMPTY=".into()],
            root: Some("/dev/vda".into()),
            debug: true,
        };
        let cmdline = format!(
            "console=ttyS0 quiet {} -- ignored",
            launch.to_cmdline().unwrap()
        );
        assert_eq!(Launch::from_cmdline(&cmdline).unwrap(), launch);
    }

    #[test]
    fn launch_refuses_nul_bytes() {
        let launch = Launch {
            argv: vec!["a\0b".into()],
            ..Launch::default()
        };
        assert_eq!(launch.to_cmdline(), Err(LaunchError::Nul));
    }

    #[test]
    fn launch_reports_a_bad_encoding() {
        assert_eq!(
            Launch::from_cmdline("moat.argv=!!"),
            Err(LaunchError::BadEncoding(CMDLINE_ARGV))
        );
    }
}
