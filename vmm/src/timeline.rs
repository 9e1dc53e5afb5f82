//! Boot-time phases, each measured from the moat process's start.
//!
//! The VMM marks phases it sees itself (VM created, memory ready, first vCPU entry) and those the
//! agent reports on the control port (agent ready, workload started and exited). Each phase is
//! recorded once: the first mark wins, so a repeated report from the guest changes nothing.

use std::fmt;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A moment in the life of a VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    /// The KVM VM exists.
    VmCreated,
    /// Guest memory is mapped and registered with KVM.
    MemoryReady,
    /// Kernel, initramfs and boot structures are in guest memory.
    KernelLoaded,
    /// The irqchip and devices are attached and vCPUs configured.
    DevicesReady,
    /// The boot vCPU entered the guest: kernel entry.
    KernelEntry,
    /// The agent's first act, the boot-time marker.
    AgentReady,
    /// The agent started the workload.
    WorkloadStarted,
    /// The agent reported the workload's exit.
    WorkloadExited,
}

impl Phase {
    /// The phase's name as reports print it.
    pub fn name(self) -> &'static str {
        match self {
            Self::VmCreated => "vm-created",
            Self::MemoryReady => "memory-ready",
            Self::KernelLoaded => "kernel-loaded",
            Self::DevicesReady => "devices-ready",
            Self::KernelEntry => "kernel-entry",
            Self::AgentReady => "agent-ready",
            Self::WorkloadStarted => "workload-started",
            Self::WorkloadExited => "workload-exited",
        }
    }
}

/// Phase timestamps of one VM, relative to an origin (the process start).
#[derive(Debug)]
pub struct Timeline {
    origin: Instant,
    marks: Mutex<Vec<(Phase, Duration)>>,
}

impl Timeline {
    /// A timeline whose times count from `origin`.
    pub fn new(origin: Instant) -> Self {
        Self {
            origin,
            marks: Mutex::new(Vec::with_capacity(8)),
        }
    }

    /// Records `phase` now, unless it was already recorded.
    pub fn mark(&self, phase: Phase) {
        let elapsed = self.origin.elapsed();
        let mut marks = self
            .marks
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if !marks.iter().any(|(p, _)| *p == phase) {
            marks.push((phase, elapsed));
        }
    }

    /// Time from the origin to `phase`, if it was reached.
    pub fn get(&self, phase: Phase) -> Option<Duration> {
        self.snapshot()
            .into_iter()
            .find(|(p, _)| *p == phase)
            .map(|(_, d)| d)
    }

    /// Every recorded phase in the order of the VM's life.
    pub fn snapshot(&self) -> Vec<(Phase, Duration)> {
        let mut marks = self
            .marks
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone();
        marks.sort();
        marks
    }

    /// Time since the origin.
    pub fn now(&self) -> Duration {
        self.origin.elapsed()
    }
}

impl fmt::Display for Timeline {
    /// One line per phase: name, time since process start, and delta from the phase before.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut previous = Duration::ZERO;
        for (phase, at) in self.snapshot() {
            let delta = at.saturating_sub(previous);
            writeln!(
                f,
                "  {:<18} {:>9.3} ms  (+{:.3} ms)",
                phase.name(),
                at.as_secs_f64() * 1e3,
                delta.as_secs_f64() * 1e3
            )?;
            previous = at;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_mark_of_a_phase_wins() {
        let timeline = Timeline::new(Instant::now());
        timeline.mark(Phase::AgentReady);
        let first = timeline.get(Phase::AgentReady).unwrap();
        std::thread::sleep(Duration::from_millis(2));
        timeline.mark(Phase::AgentReady);
        assert_eq!(timeline.get(Phase::AgentReady), Some(first));
    }

    #[test]
    fn snapshot_is_in_life_order_whatever_the_marking_order() {
        let timeline = Timeline::new(Instant::now());
        timeline.mark(Phase::AgentReady);
        timeline.mark(Phase::VmCreated);
        let phases: Vec<_> = timeline.snapshot().into_iter().map(|(p, _)| p).collect();
        assert_eq!(phases, [Phase::VmCreated, Phase::AgentReady]);
    }
}
