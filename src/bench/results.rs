//! What a benchmark measured, run by run, and the summaries every output draws from it.

use std::time::Duration;

use serde::Serialize;

use super::machine::{GuestShape, Machine};
use super::memory::MemorySample;
use super::stats::Summary;

/// The phase moat and Firecracker's boot timer both mark: the agent's boot marker.
pub const AGENT_READY: &str = "agent-ready";

/// A micro-VM runtime under measurement.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Runtime {
    /// This binary.
    #[default]
    Moat,
    /// Firecracker, `--no-api --config-file`.
    Firecracker,
    /// QEMU `-M microvm`.
    Qemu,
}

impl Runtime {
    /// The runtime's name in reports.
    pub fn name(self) -> &'static str {
        match self {
            Self::Moat => "moat",
            Self::Firecracker => "firecracker",
            Self::Qemu => "qemu",
        }
    }
}

/// One VM's run.
#[derive(Debug, Clone, Serialize)]
pub struct Run {
    /// Which runtime ran it.
    pub runtime: Runtime,
    /// The round (a batch of `--parallel` VMs started at once), from 0.
    pub round: usize,
    /// Its place in the round, from 0.
    pub slot: usize,
    /// From the benchmark's spawn of the process to its exit being seen, in microseconds.
    pub spawn_to_exit_us: u64,
    /// The runtime's own phases, in microseconds since its process started: moat's timeline,
    /// Firecracker's boot timer as `agent-ready`, nothing for QEMU.
    pub phases: Vec<(String, u64)>,
}

impl Run {
    /// Spawn to exit.
    pub fn total(&self) -> Duration {
        Duration::from_micros(self.spawn_to_exit_us)
    }

    /// The time of `phase`, if the run reports it.
    pub fn phase(&self, phase: &str) -> Option<Duration> {
        self.phases
            .iter()
            .find(|(name, _)| name == phase)
            .map(|&(_, micros)| Duration::from_micros(micros))
    }
}

/// One round: VMs of one runtime started at once, of which `vms` ended well.
#[derive(Debug, Clone, Serialize)]
pub struct Round {
    /// The runtime.
    pub runtime: Runtime,
    /// VMs started together that ended well; the failed ones are left out.
    pub vms: usize,
    /// From the first spawn to the last exit of those VMs, in microseconds.
    pub wall_us: u64,
}

/// A timed run that failed: it counts in no figure, only here.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Failure {
    /// Which runtime ran it.
    pub runtime: Runtime,
    /// Its round, from 0.
    pub round: usize,
    /// Its place in the round, from 0.
    pub slot: usize,
    /// Why it failed: its exit status or the timeout, and the end of its output; one line.
    pub reason: String,
}

/// How many of a runtime's timed runs succeeded and how many failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Tally {
    /// The runtime.
    pub runtime: Runtime,
    /// Runs that succeeded: every figure is over these.
    pub ok: usize,
    /// Runs that failed.
    pub failed: usize,
}

impl Tally {
    /// Runs started.
    pub fn runs(&self) -> usize {
        self.ok + self.failed
    }
}

/// One memory probe of a runtime: its process sampled while the workload idles and (moat's only)
/// after it ended.
#[derive(Debug, Clone, Default, Serialize)]
pub struct MemoryRun {
    /// Whose process.
    pub runtime: Runtime,
    /// Sampled from outside when the workload has started (the agent is up, the guest idle).
    pub after_boot: Option<MemorySample>,
    /// Sampled by moat itself once the workload exited and the VM stopped.
    pub after_workload: Option<MemorySample>,
    /// Why the probe failed, when it did; it then has no samples.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
}

/// Everything one benchmark measured.
#[derive(Debug, Clone, Serialize)]
pub struct Results {
    /// The host.
    pub machine: Machine,
    /// The guest every runtime booted.
    pub guest: GuestShape,
    /// VMs started at once.
    pub parallel: usize,
    /// Every timed run that succeeded, in the order they ran.
    pub runs: Vec<Run>,
    /// Every timed run that failed, in the order they ran.
    pub failures: Vec<Failure>,
    /// Every round.
    pub rounds: Vec<Round>,
    /// moat's memory probes.
    pub memory: Vec<MemoryRun>,
}

impl Results {
    /// The runtimes measured, in the order they ran (moat first), then any whose every run
    /// failed.
    pub fn runtimes(&self) -> Vec<Runtime> {
        let ran = self.runs.iter().map(|run| run.runtime);
        let failed = self.failures.iter().map(|failure| failure.runtime);
        let mut runtimes = Vec::new();
        for runtime in ran.chain(failed) {
            if !runtimes.contains(&runtime) {
                runtimes.push(runtime);
            }
        }
        runtimes
    }

    /// The runs of `runtime` that succeeded.
    pub fn runs_of(&self, runtime: Runtime) -> impl Iterator<Item = &Run> {
        self.runs.iter().filter(move |run| run.runtime == runtime)
    }

    /// The runs of `runtime` that succeeded and those that failed.
    pub fn tally_of(&self, runtime: Runtime) -> Tally {
        let failed = self.failures.iter().filter(|f| f.runtime == runtime);
        Tally {
            runtime,
            ok: self.runs_of(runtime).count(),
            failed: failed.count(),
        }
    }

    /// The tally of every runtime, in the order of [`Self::runtimes`].
    pub fn tally(&self) -> Vec<Tally> {
        self.runtimes()
            .into_iter()
            .map(|runtime| self.tally_of(runtime))
            .collect()
    }

    /// `runs ok: moat 28/30, qemu 30/30`, and a word on the failed runs when there are any.
    pub fn tally_line(&self) -> String {
        let tally = self.tally();
        let counts: Vec<String> = tally
            .iter()
            .map(|t| format!("{} {}/{}", t.runtime.name(), t.ok, t.runs()))
            .collect();
        let mut line = format!("runs ok: {}", counts.join(", "));
        if tally.iter().any(|t| t.failed > 0) {
            line.push_str(" (the figures leave the failed runs out)");
        }
        line
    }

    /// The memory probes of `runtime`: how many succeeded and how many failed.
    pub fn memory_probes(&self, runtime: Runtime) -> (usize, usize) {
        let probes = self.memory.iter().filter(|probe| probe.runtime == runtime);
        let (ok, failed): (Vec<_>, Vec<_>) = probes.partition(|probe| probe.failure.is_none());
        (ok.len(), failed.len())
    }

    /// Spawn to exit of `runtime`'s runs.
    pub fn total(&self, runtime: Runtime) -> Option<Summary> {
        let totals: Vec<Duration> = self.runs_of(runtime).map(Run::total).collect();
        Summary::of(&totals)
    }

    /// `phase` over the runs of `runtime` that reached it.
    pub fn phase(&self, runtime: Runtime, phase: &str) -> Option<Summary> {
        let times: Vec<Duration> = self
            .runs_of(runtime)
            .filter_map(|r| r.phase(phase))
            .collect();
        Summary::of(&times)
    }

    /// The phases `runtime` reported, ordered by their median time.
    pub fn phase_names(&self, runtime: Runtime) -> Vec<String> {
        let mut names: Vec<String> = Vec::new();
        for run in self.runs_of(runtime) {
            for (name, _) in &run.phases {
                if !names.contains(name) {
                    names.push(name.clone());
                }
            }
        }
        names.sort_by_key(|name| self.phase(runtime, name).map(|s| s.p50));
        names
    }

    /// VMs started per second: a round's VMs over its wall time, averaged over the rounds.
    pub fn vms_per_second(&self, runtime: Runtime) -> Option<f64> {
        let rates: Vec<f64> = self
            .rounds
            .iter()
            .filter(|round| round.runtime == runtime && round.wall_us > 0)
            .map(|round| round.vms as f64 / (round.wall_us as f64 / 1e6))
            .collect();
        (!rates.is_empty()).then(|| rates.iter().sum::<f64>() / rates.len() as f64)
    }

    /// The median memory sample of `runtime` at one moment over its probes, field by field.
    pub fn median_memory(
        &self,
        runtime: Runtime,
        moment: impl Fn(&MemoryRun) -> Option<MemorySample>,
    ) -> Option<MemorySample> {
        let samples: Vec<MemorySample> = self
            .memory
            .iter()
            .filter(|probe| probe.runtime == runtime)
            .filter_map(moment)
            .collect();
        let median = |field: fn(&MemorySample) -> u64| {
            let mut values: Vec<u64> = samples.iter().map(field).collect();
            values.sort_unstable();
            super::stats::percentile(&values, 50.0)
        };
        Some(MemorySample {
            rss_kib: median(|s| s.rss_kib)?,
            pss_kib: median(|s| s.pss_kib)?,
            guest_rss_kib: median(|s| s.guest_rss_kib)?,
            guest_pss_kib: median(|s| s.guest_pss_kib)?,
        })
    }
}

#[cfg(test)]
pub mod fixtures {
    //! Results to test the outputs with.

    use super::*;

    /// Two moat runs and one of each peer, in one-VM rounds.
    pub fn results() -> Results {
        let moat = |round, total, agent| Run {
            runtime: Runtime::Moat,
            round,
            slot: 0,
            spawn_to_exit_us: total,
            phases: vec![
                ("vm-created".into(), 2_000),
                ("kernel-entry".into(), 8_000),
                (AGENT_READY.into(), agent),
                ("exit".into(), total - 500),
            ],
        };
        let peer = |runtime, phases| Run {
            runtime,
            round: 0,
            slot: 0,
            spawn_to_exit_us: 120_000,
            phases,
        };
        let sample = MemorySample {
            rss_kib: 50_000,
            pss_kib: 48_000,
            guest_rss_kib: 40_960,
            guest_pss_kib: 40_960,
        };
        Results {
            machine: Machine {
                cpu: "Test CPU".into(),
                cores: 2,
                host_kernel: "6.1.0-test".into(),
                kvm: "hardware".into(),
                nested: false,
            },
            guest: GuestShape {
                kernel: "build/vmlinux".into(),
                kernel_bytes: 19_600_000,
                memory_mib: 256,
                vcpus: 1,
                workload: "moat boot -- true".into(),
            },
            parallel: 1,
            runs: vec![
                moat(0, 60_000, 40_000),
                peer(Runtime::Firecracker, vec![(AGENT_READY.into(), 70_000)]),
                peer(Runtime::Qemu, vec![]),
                moat(1, 80_000, 50_000),
            ],
            rounds: vec![
                Round {
                    runtime: Runtime::Moat,
                    vms: 1,
                    wall_us: 60_000,
                },
                Round {
                    runtime: Runtime::Moat,
                    vms: 1,
                    wall_us: 80_000,
                },
            ],
            failures: Vec::new(),
            memory: vec![MemoryRun {
                runtime: Runtime::Moat,
                after_boot: Some(sample),
                after_workload: Some(sample),
                failure: None,
            }],
        }
    }

    /// [`results`] with two failed runs of qemu, one timed out and one that ended badly.
    pub fn results_with_failures() -> Results {
        let mut results = results();
        let failure = |round, reason: &str| Failure {
            runtime: Runtime::Qemu,
            round,
            slot: 0,
            reason: reason.into(),
        };
        results.failures = vec![
            failure(1, "still running after 120s, killed"),
            failure(2, "ended with exit status: 1: triple fault"),
        ];
        results
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_are_ordered_by_median_time() {
        let results = fixtures::results();

        let names = results.phase_names(Runtime::Moat);

        assert_eq!(names, ["vm-created", "kernel-entry", AGENT_READY, "exit"]);
    }

    #[test]
    fn runtimes_appear_in_the_order_they_ran() {
        let results = fixtures::results();

        assert_eq!(
            results.runtimes(),
            [Runtime::Moat, Runtime::Firecracker, Runtime::Qemu]
        );
    }

    #[test]
    fn vms_per_second_averages_the_rounds() {
        let results = fixtures::results();

        // One VM in 60 ms and one in 80 ms: 16.67 and 12.5 per second.
        let rate = results.vms_per_second(Runtime::Moat).unwrap();

        assert!((rate - 14.583).abs() < 0.01, "{rate}");
    }

    #[test]
    fn tally_counts_the_failed_runs_apart() {
        let results = fixtures::results_with_failures();

        let qemu = results.tally_of(Runtime::Qemu);

        assert_eq!((qemu.ok, qemu.failed, qemu.runs()), (1, 2, 3));
        assert_eq!(results.tally_of(Runtime::Moat).failed, 0);
    }

    #[test]
    fn a_runtime_whose_every_run_failed_is_still_listed() {
        let mut results = fixtures::results_with_failures();
        results.runs.retain(|run| run.runtime != Runtime::Qemu);

        assert_eq!(results.runtimes().last(), Some(&Runtime::Qemu));
        assert_eq!(
            results.tally_line(),
            "runs ok: moat 2/2, firecracker 1/1, qemu 0/2 (the figures leave the failed runs out)"
        );
    }
}
