//! The machine-readable boot report a `moat` process writes for `moat bench`.
//!
//! With `MOAT_BOOT_REPORT_JSON=FILE` in its environment, `moat boot` and `moat launch` write,
//! when the VM has ended, `{"phases":[["vm-created",MICROS],...,["exit",MICROS]]}` to FILE:
//! each phase in microseconds since the process started, `exit` the moment the report is made.
//! With `MOAT_BOOT_REPORT_MEMORY=1` as well, the report adds `"memory":{...}`: the process's
//! memory (see [`super::memory`]) sampled after the VM stopped, before anything was torn down.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::memory::MemorySample;

/// The variable naming the report's file.
pub const JSON_ENV: &str = "MOAT_BOOT_REPORT_JSON";
/// The variable asking for a memory sample in the report.
pub const MEMORY_ENV: &str = "MOAT_BOOT_REPORT_MEMORY";

/// One VM's boot report.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BootReport {
    /// Phase names and microseconds since the process started, in the order of the VM's life.
    pub phases: Vec<(String, u64)>,
    /// The process's memory when the VM stopped, when asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<MemorySample>,
}

impl BootReport {
    /// A report of `phases` (and `exit` after them, at `exit`).
    pub fn new(phases: impl IntoIterator<Item = (String, Duration)>, exit: Duration) -> Self {
        let micros = |d: Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        let mut phases: Vec<_> = phases.into_iter().map(|(n, at)| (n, micros(at))).collect();
        phases.push(("exit".to_string(), micros(exit)));
        Self {
            phases,
            memory: None,
        }
    }

    /// Reads a report written by a `moat` process.
    pub fn read(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read(path)?;
        Ok(serde_json::from_slice(&text)?)
    }
}

/// Where this process should write its report, if anywhere.
pub fn requested_path() -> Option<PathBuf> {
    std::env::var_os(JSON_ENV)
        .filter(|path| !path.is_empty())
        .map(PathBuf::from)
}

/// Whether the report should carry a memory sample.
pub fn memory_requested() -> bool {
    std::env::var_os(MEMORY_ENV).is_some_and(|value| value == "1")
}

/// Writes `report` to `path`; a failure is logged, since the VM's own outcome matters more.
pub fn write(path: &Path, report: &BootReport) {
    let written = serde_json::to_vec(report)
        .map_err(std::io::Error::other)
        .and_then(|json| std::fs::write(path, json));
    if let Err(e) = written {
        log::warn!("cannot write the boot report to {}: {e}", path.display());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_ends_with_exit_and_round_trips_through_json() {
        let phases = [("vm-created".to_string(), Duration::from_micros(1500))];
        let report = BootReport::new(phases, Duration::from_millis(20));

        let json = serde_json::to_string(&report).unwrap();

        assert_eq!(json, r#"{"phases":[["vm-created",1500],["exit",20000]]}"#);
        assert_eq!(serde_json::from_str::<BootReport>(&json).unwrap(), report);
    }
}
