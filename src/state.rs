//! Where running VMs are found: one directory per VM under the runtime directory, holding its
//! state, its vsock socket and its workload's logs. `moat ps`, `exec`, `logs`, `kill`, `stop`
//! and `rm` read it; the `moat` process that runs a VM writes it.

use std::fs::File;
use std::io::Write;
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

/// The state file's name in a VM's directory.
const STATE_FILE: &str = "state.json";

/// The runtime directory: `$MOAT_RUNTIME_DIR`, else `/run/moat` for root, else
/// `$XDG_RUNTIME_DIR/moat`, else a per-user directory under `/tmp`.
pub fn runtime_dir() -> PathBuf {
    let var = |name| std::env::var_os(name).filter(|v| !v.is_empty());
    if let Some(dir) = var("MOAT_RUNTIME_DIR") {
        return PathBuf::from(dir);
    }
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
    if uid == 0 {
        return PathBuf::from("/run/moat");
    }
    match var("XDG_RUNTIME_DIR") {
        Some(dir) => PathBuf::from(dir).join("moat"),
        None => PathBuf::from(format!("/tmp/moat-{uid}")),
    }
}

/// Whether a VM's workload still runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "status", content = "code")]
pub enum Status {
    /// Booting or running.
    Running,
    /// The VM ended; the workload's (or moat's) exit status.
    Exited(u8),
}

/// What `moat ps` shows of a VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmState {
    /// The VM's id (12 hex digits).
    pub id: String,
    /// `--name`, if given.
    pub name: Option<String>,
    /// The image tarball it runs.
    pub image: String,
    /// The workload's command.
    pub command: Vec<String>,
    /// The process that runs the VMM.
    pub pid: i32,
    /// That process's start time in clock ticks since boot (/proc/PID/stat), so that a reused
    /// pid is not taken for the VM.
    pub pid_start: u64,
    /// When the VM was created, in seconds since the epoch.
    pub created: u64,
    /// vCPUs.
    pub cpus: u8,
    /// Guest memory in MiB.
    pub memory_mib: u64,
    /// Running or exited.
    pub status: Status,
    /// Remove the directory when the VM ends.
    pub auto_remove: bool,
}

impl VmState {
    /// Whether the VMM process recorded here is still alive (and is the same process).
    pub fn is_alive(&self) -> bool {
        start_time(self.pid) == Some(self.pid_start)
    }
}

/// One VM's directory.
#[derive(Debug, Clone)]
pub struct VmDir {
    path: PathBuf,
}

impl VmDir {
    /// Creates the directory of a new VM `id`, private to its owner.
    pub fn create(id: &str) -> anyhow::Result<Self> {
        let root = runtime_dir();
        std::fs::create_dir_all(&root)
            .with_context(|| format!("cannot create runtime directory {}", root.display()))?;
        let path = root.join(id);
        std::fs::DirBuilder::new()
            .mode_private()
            .create(&path)
            .with_context(|| format!("cannot create VM directory {}", path.display()))?;
        Ok(Self { path })
    }

    /// The VM's vsock socket.
    pub fn socket(&self) -> PathBuf {
        self.path.join("vsock.sock")
    }

    /// The workload's output log: its stdout and stderr as records in the order they arrived
    /// (see [`crate::session::OutputLog`]), rotated to `output.log.1`.
    pub fn output_log(&self) -> PathBuf {
        self.path.join("output.log")
    }

    /// The VM's id.
    pub fn id(&self) -> String {
        self.path
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned())
    }

    /// moat's own messages about a VM in the background.
    pub fn moat_log(&self) -> PathBuf {
        self.path.join("moat.log")
    }

    /// The guest console's log (kernel messages, agent errors).
    pub fn console_log(&self) -> PathBuf {
        self.path.join("console.log")
    }

    /// Reads the state file.
    pub fn read(&self) -> anyhow::Result<VmState> {
        let path = self.path.join(STATE_FILE);
        let bytes = std::fs::read(&path).with_context(|| format!("read {}", path.display()))?;
        serde_json::from_slice(&bytes).with_context(|| format!("parse {}", path.display()))
    }

    /// Writes the state file atomically: a reader sees the old state or the new one.
    pub fn write(&self, state: &VmState) -> anyhow::Result<()> {
        let tmp = self.path.join(format!("{STATE_FILE}.tmp"));
        let mut file = File::create(&tmp).with_context(|| format!("write {}", tmp.display()))?;
        file.write_all(&serde_json::to_vec_pretty(state)?)?;
        std::fs::rename(&tmp, self.path.join(STATE_FILE))
            .with_context(|| format!("write {}", self.path.display()))
    }

    /// Marks the VM ended with `status`, or removes it when it was launched with `--rm`.
    pub fn finish(&self, status: u8) {
        match self.read() {
            Ok(state) if !state.auto_remove => {
                let state = VmState {
                    status: Status::Exited(status),
                    ..state
                };
                if let Err(e) = self.write(&state) {
                    log::warn!("cannot record the VM's end: {e:#}");
                }
            }
            _ => self.remove(),
        }
    }

    /// Removes the directory and everything in it.
    pub fn remove(&self) {
        if let Err(e) = std::fs::remove_dir_all(&self.path) {
            if e.kind() != std::io::ErrorKind::NotFound {
                log::warn!("cannot remove {}: {e}", self.path.display());
            }
        }
    }
}

trait PrivateDir {
    fn mode_private(&mut self) -> &mut Self;
}

impl PrivateDir for std::fs::DirBuilder {
    fn mode_private(&mut self) -> &mut Self {
        use std::os::unix::fs::DirBuilderExt;
        self.mode(0o700)
    }
}

/// Every VM with a readable state, oldest first. A VM whose VMM process died without saying so
/// (it was SIGKILLed) is gone: its directory is removed here.
pub fn list() -> Vec<(VmDir, VmState)> {
    let Ok(entries) = std::fs::read_dir(runtime_dir()) else {
        return Vec::new();
    };
    let mut vms: Vec<(VmDir, VmState)> = entries
        .filter_map(Result::ok)
        .filter(|e| e.path().is_dir())
        .filter_map(|e| {
            let dir = VmDir { path: e.path() };
            match dir.read() {
                Ok(state) if state.status == Status::Running && !state.is_alive() => {
                    dir.remove();
                    None
                }
                Ok(state) => Some((dir, state)),
                // A VM being created has no state yet; leave it alone.
                Err(_) => None,
            }
        })
        .collect();
    vms.sort_by_key(|(_, state)| state.created);
    vms
}

/// The VM named `name` or whose id starts with it.
pub fn find(name: &str) -> anyhow::Result<(VmDir, VmState)> {
    if name.is_empty() {
        bail!("no VM named \"\"");
    }
    let vms = list();
    if let Some(found) = vms
        .iter()
        .find(|(_, s)| s.name.as_deref() == Some(name) || s.id == name)
    {
        return Ok(found.clone());
    }
    let mut matches = vms.into_iter().filter(|(_, s)| s.id.starts_with(name));
    match (matches.next(), matches.next()) {
        (Some(found), None) => Ok(found),
        (Some(_), Some(_)) => bail!("{name:?} names more than one VM: give more of its id"),
        (None, _) => bail!("no such VM: {name}"),
    }
}

/// Whether a name is already taken by a VM that exists.
pub fn name_taken(name: &str) -> bool {
    list().iter().any(|(_, s)| s.name.as_deref() == Some(name))
}

/// Seconds since the epoch.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A process's start time in clock ticks since boot, field 22 of /proc/PID/stat.
pub fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces: count after it.
    let after_name = &stat[stat.rfind(')')? + 1..];
    after_name.split_whitespace().nth(19)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_a_start_time() {
        let pid = std::process::id() as i32;
        assert!(start_time(pid).is_some());
        assert_eq!(start_time(pid), start_time(pid));
    }

    #[test]
    fn a_missing_process_has_none() {
        // Linux pids stop at 2^22.
        assert_eq!(start_time(1 << 23), None);
    }

    #[test]
    fn states_round_trip() {
        let state = VmState {
            id: "0123456789ab".into(),
            name: Some("web".into()),
            image: "busybox.tar".into(),
            command: vec!["sh".into()],
            pid: 1,
            pid_start: 2,
            created: 3,
            cpus: 1,
            memory_mib: 256,
            status: Status::Exited(3),
            auto_remove: false,
        };
        let json = serde_json::to_vec(&state).expect("a plain struct serializes");
        let back: VmState = serde_json::from_slice(&json).expect("written just above");
        assert_eq!(back, state);
    }
}
