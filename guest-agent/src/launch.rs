//! [`LaunchSpec`]: everything the agent needs to run one workload, written by the host as JSON.

use serde::{Deserialize, Serialize};

/// Where the spec appears in the guest's initramfs.
pub const LAUNCH_SPEC_PATH: &str = "moat/launch.json";

/// Version of the spec's layout; the agent refuses a spec of another version.
pub const LAUNCH_SPEC_VERSION: u32 = 1;

/// Largest spec the agent reads: argv and environment of a container stay far below this.
pub const LAUNCH_SPEC_MAX: u64 = 1 << 20;

/// What the agent must run and the filesystem it runs in.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LaunchSpec {
    /// [`LAUNCH_SPEC_VERSION`] of the writer.
    pub version: u32,
    /// The workload's argv; `argv[0]` is looked up on the workload's `PATH` when it has no `/`.
    pub argv: Vec<String>,
    /// Environment, `KEY=VALUE`, after the defaults a container gets (`PATH`, `HOME`).
    #[serde(default)]
    pub env: Vec<String>,
    /// Working directory, created when missing (as Docker does); `/` when unset.
    #[serde(default)]
    pub cwd: Option<String>,
    /// `user[:group]`, by name or number, resolved against the root's /etc/passwd and /etc/group.
    #[serde(default)]
    pub user: Option<String>,
    /// The guest's hostname; also written to /etc/hostname and /etc/hosts.
    #[serde(default)]
    pub hostname: Option<String>,
    /// Name servers for /etc/resolv.conf; the image's own file is kept when empty.
    #[serde(default)]
    pub dns: Vec<String>,
    /// The root filesystem; the initramfs itself stays root when unset.
    #[serde(default)]
    pub root: Option<RootSpec>,
    /// Disks mounted at paths inside the root, in order.
    #[serde(default)]
    pub volumes: Vec<VolumeSpec>,
    /// Capabilities the workload keeps, by name ([`crate::caps::NAMES`]); all of them when
    /// unset.
    #[serde(default)]
    pub capabilities: Option<Vec<String>>,
    /// Paths inside the root that get an empty tmpfs.
    #[serde(default)]
    pub tmpfs: Vec<String>,
    /// Whether the agent reports its steps on the console.
    #[serde(default)]
    pub debug: bool,
    /// The workload's stdio goes over the agent channel (virtio-vsock) instead of the console,
    /// and the VM ends when the host asks ([`crate::channel::Request::PowerOff`]).
    #[serde(default)]
    pub channel: Option<crate::channel::ChannelSpec>,
}

/// The root filesystem and how it becomes writable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RootSpec {
    /// Block device holding the root filesystem (`/dev/vda`).
    pub device: String,
    /// How writes to the root are kept.
    pub overlay: Overlay,
    /// The workload sees a read-only root (Docker's `--read-only`).
    #[serde(default)]
    pub read_only: bool,
}

/// Where a root's writes go.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Overlay {
    /// No overlay: the device is mounted as is (read-write unless the disk is read-only).
    None,
    /// An overlay whose upper layer lives in guest memory.
    Tmpfs,
    /// An overlay whose upper layer lives on this ext4-formatted scratch disk.
    Disk(String),
}

/// A disk mounted at a path of the root.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeSpec {
    /// Block device (`/dev/vdc`).
    pub device: String,
    /// Absolute path inside the root; created when missing.
    pub target: String,
    /// Mount read-only.
    #[serde(default)]
    pub read_only: bool,
}

impl LaunchSpec {
    /// The spec as the JSON bytes the agent reads.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a LaunchSpec always serialises")
    }

    /// A cpio archive holding the spec at [`LAUNCH_SPEC_PATH`], to load after the agent's
    /// initramfs.
    pub fn to_initramfs(&self) -> Vec<u8> {
        let json = self.to_json();
        let (dir, _) = LAUNCH_SPEC_PATH
            .split_once('/')
            .expect("the spec path has a directory");
        let entries = [
            crate::cpio::Entry::dir(dir),
            crate::cpio::Entry::file(LAUNCH_SPEC_PATH, 0o600, &json),
        ];
        let mut archive = Vec::with_capacity(json.len() + 512);
        crate::cpio::write_newc(&mut archive, &entries).expect("writing to a Vec cannot fail");
        archive
    }

    /// Parses and checks a spec written by the host.
    pub fn from_json(bytes: &[u8]) -> Result<Self, String> {
        let spec: Self = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        if spec.version != LAUNCH_SPEC_VERSION {
            return Err(format!(
                "spec version {} (this agent reads version {LAUNCH_SPEC_VERSION})",
                spec.version
            ));
        }
        if spec.argv.is_empty() {
            return Err("no command to run".to_string());
        }
        let strings = spec.argv.iter().chain(&spec.env).chain(&spec.cwd);
        if strings.clone().any(|s| s.contains('\0')) {
            return Err("an argument or variable contains a NUL byte".to_string());
        }
        let targets = spec.volumes.iter().map(|v| &v.target).chain(&spec.tmpfs);
        if let Some(bad) = targets.clone().find(|t| !is_clean_absolute(t)) {
            return Err(format!("mount target {bad:?} is not a clean absolute path"));
        }
        let caps = spec.capabilities.iter().flatten();
        if let Some(bad) = caps.clone().find(|c| crate::caps::number(c).is_none()) {
            return Err(format!("unknown capability {bad:?}"));
        }
        Ok(spec)
    }
}

/// An absolute path without `.`/`..` components, so it cannot leave the root it is joined to.
pub fn is_clean_absolute(path: &str) -> bool {
    path.starts_with('/')
        && !path.contains('\0')
        && path.split('/').skip(1).all(|c| c != "." && c != "..")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> LaunchSpec {
        LaunchSpec {
            version: LAUNCH_SPEC_VERSION,
            argv: vec!["sh".into(), "-c".into(), "echo 'a b' \"c\"=d".into()],
            env: vec!["A=1".into(), "EMPTY=".into()],
            cwd: Some("/work".into()),
            user: Some("app:staff".into()),
            hostname: Some("box".into()),
            dns: vec!["10.0.0.1".into()],
            root: Some(RootSpec {
                device: "/dev/vda".into(),
                overlay: Overlay::Disk("/dev/vdb".into()),
                read_only: false,
            }),
            volumes: vec![VolumeSpec {
                device: "/dev/vdc".into(),
                target: "/data".into(),
                read_only: true,
            }],
            tmpfs: vec!["/run".into()],
            capabilities: Some(vec!["CHOWN".into()]),
            debug: true,
            channel: None,
        }
    }

    #[test]
    fn specs_round_trip_through_json() {
        let spec = spec();
        assert_eq!(LaunchSpec::from_json(&spec.to_json()).unwrap(), spec);
    }

    #[test]
    fn other_versions_are_refused() {
        let mut spec = spec();
        spec.version = 99;
        let error = LaunchSpec::from_json(&spec.to_json()).unwrap_err();
        assert!(error.contains("version 99"), "{error}");
    }

    #[test]
    fn bad_specs_are_refused() {
        let mut empty = spec();
        empty.argv.clear();
        assert!(LaunchSpec::from_json(&empty.to_json()).is_err());
        let mut nul = spec();
        nul.env.push("A=\0".into());
        assert!(LaunchSpec::from_json(&nul.to_json()).is_err());
        let mut escape = spec();
        escape.volumes[0].target = "/data/../../etc".into();
        assert!(LaunchSpec::from_json(&escape.to_json()).is_err());
        let mut relative = spec();
        relative.tmpfs = vec!["run".into()];
        assert!(LaunchSpec::from_json(&relative.to_json()).is_err());
        assert!(LaunchSpec::from_json(b"{").is_err());
        assert!(LaunchSpec::from_json(b"{\"version\":1,\"argv\":[\"x\"],\"evil\":1}").is_err());
    }

    #[test]
    fn clean_absolute_paths() {
        assert!(is_clean_absolute("/"));
        assert!(is_clean_absolute("/a/b"));
        assert!(!is_clean_absolute("a"));
        assert!(!is_clean_absolute("/a/../b"));
        assert!(!is_clean_absolute("/a/./b"));
    }
}
