//! `moat bench`: boot time and overhead of moat's micro-VMs, measured run by run, optionally side
//! by side with Firecracker and QEMU booting the same guest.
//!
//! Each run is a child process: this same binary running `moat boot` (or `moat launch` with
//! `--image`), or a peer. moat's phases come from the child's own timeline, which it writes as
//! JSON when `MOAT_BOOT_REPORT_JSON` names a file ([`report`]); the benchmark adds its own spawn
//! to exit. Runtimes take turns run by run, so drift on the machine hits all of them alike.
//!
//! A run that fails (a status other than 0, no boot report, still running at the round's
//! timeout) is noted on stderr, listed in the results and left out of every figure; the
//! benchmark gives up only when more than half of one runtime's runs failed.

pub mod memory;
pub mod report;

mod machine;
mod output;
mod peers;
mod results;
mod runner;
mod stats;
mod svg;
mod table;
// Only `write` is used here; the ELF's layout is also read by its tests and tests/tiny.rs.
#[allow(dead_code)]
mod tiny;

use std::ffi::OsStr;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use moat_agent_protocol::{LaunchSpec, Overlay, RootSpec, LAUNCH_SPEC_VERSION};

use crate::{assets, exit, vm};
use machine::{GuestShape, Machine};
use peers::{PeerGuest, Peers};
use results::{Failure, MemoryRun, Results, Round, Run, Runtime, Tally};
use runner::{Failed, Finished, Launch, Outcome};

/// The root disk booted without `--image`: the build's busybox disk, found like the kernel.
const DEFAULT_DISK: &str = "busybox.ext4";

/// The workload of a timed run: nothing, so the run measures the runtime and the boot.
const WORKLOAD: &str = "true";

/// The line a memory probe's workload prints once it runs; the benchmark samples then.
const BOOTED_MARKER: &str = "moat-bench: workload started";

/// A memory probe's workload: say it runs, idle while the benchmark samples, end.
const PROBE_SCRIPT: &str = "echo 'moat-bench: workload started'; sleep 2";

/// A whole round must end within this; a hung guest is killed, not waited for forever.
const ROUND_TIMEOUT: Duration = Duration::from_secs(120);

/// Exit status when the user interrupted the benchmark (128 + SIGINT, as a shell reports it).
const INTERRUPTED_STATUS: u8 = 130;

const BENCH_HELP: &str = "\
Without --image, each run boots moat's kernel and agent with the build's busybox disk
(busybox.ext4, found where the kernel is) and runs `true`. With --image, each run is
`moat launch IMAGE true`. With --tiny, each run boots a guest that is no Linux at all, to
measure the VMM alone. Times are from each process's own start; `spawn to exit` is the
benchmark's own measure of the whole process.

Examples:
  moat bench --runs 20 --svg boot.svg
  moat bench --parallel 8 --runs 32
  moat bench --compare firecracker=/opt/firecracker,qemu=/usr/bin/qemu-system-x86_64";

/// Flags of `moat bench`.
#[derive(Debug, Args)]
#[command(after_help = BENCH_HELP)]
pub struct BenchArgs {
    /// Timed VMs per runtime
    #[arg(long, default_value_t = 10, value_name = "N", value_parser = at_least_one())]
    runs: u32,
    /// VMs started at once; rounds repeat until --runs VMs ran
    #[arg(long, default_value_t = 1, value_name = "K", value_parser = at_least_one())]
    parallel: u32,
    /// Untimed runs of each runtime first (page cache, image cache)
    #[arg(long, default_value_t = 1, value_name = "N")]
    warmup: u32,
    /// Runs that sample moat's memory (their workload sleeps 2 s; 0 to skip)
    #[arg(long, default_value_t = 3, value_name = "N")]
    memory_runs: u32,
    /// Launch this image tarball (`moat launch IMAGE true`) instead of booting a disk
    #[arg(long, value_name = "IMAGE.tar")]
    image: Option<PathBuf>,
    /// With --image: an empty image cache for every run, so each one unpacks the image
    #[arg(long, requires = "image")]
    cold: bool,
    /// Boot the tiny guest instead of Linux: no kernel, only the marker, the exit and a reset,
    /// so the VMM's own start and end are measured (it runs on PVM hosts too)
    #[arg(long, conflicts_with_all = ["image", "disk", "kernel", "initrd"])]
    tiny: bool,
    /// Root disk to boot without --image [default: the build's busybox.ext4]
    #[arg(long, value_name = "PATH", conflicts_with = "image")]
    disk: Option<PathBuf>,
    /// Guest kernel [default: moat's own]
    #[arg(long, value_name = "PATH")]
    kernel: Option<PathBuf>,
    /// Agent initramfs [default: moat's own]
    #[arg(long, value_name = "PATH")]
    initrd: Option<PathBuf>,
    /// Guest memory in MiB
    #[arg(long, default_value_t = 256, value_name = "MiB")]
    memory: u64,
    /// vCPUs
    #[arg(long, default_value_t = 1, value_name = "N")]
    cpus: u8,
    /// Also boot the same guest under these runtimes, interleaved with moat
    #[arg(long, value_name = "firecracker=PATH,qemu=PATH", value_parser = peers::parse_compare)]
    compare: Option<Peers>,
    /// Write every run's measurements as JSON
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Write every run's measurements as CSV
    #[arg(long, value_name = "FILE")]
    csv: Option<PathBuf>,
    /// Draw the results as an SVG chart
    #[arg(long, value_name = "FILE")]
    svg: Option<PathBuf>,
}

/// A count of 1 or more.
fn at_least_one() -> clap::builder::RangedI64ValueParser<u32> {
    clap::value_parser!(u32).range(1..)
}

/// Runs `moat bench`; returns the exit status.
pub fn run(args: BenchArgs) -> u8 {
    runner::catch_interrupts();
    match bench(&args) {
        Ok(()) => 0,
        Err(e) if e.is::<runner::Interrupted>() => {
            exit::report(&e);
            INTERRUPTED_STATUS
        }
        Err(e) => {
            exit::report(&e);
            exit::MOAT_FAILED
        }
    }
}

fn bench(args: &BenchArgs) -> anyhow::Result<()> {
    let plan = Plan::new(args)?;
    let results = plan.measure().inspect_err(|e| {
        if !e.is::<runner::Interrupted>() {
            // The error names a run's log: keep it for reading.
            plan.work.keep();
        }
    })?;
    let failed_probes = results
        .memory
        .iter()
        .filter(|m| m.failure.is_some())
        .count();
    let failed = results.failures.len() + failed_probes;
    if failed > 0 {
        // Their reasons name their logs: keep them for reading.
        plan.work.keep();
        plan.note(&format!(
            "{failed} run{} failed; the logs are kept in {}",
            if failed == 1 { "" } else { "s" },
            plan.work.root.display()
        ));
    }
    print!("{}", table::render(&results));
    write_outputs(args, &results)
}

fn write_outputs(args: &BenchArgs, results: &Results) -> anyhow::Result<()> {
    if let Some(path) = &args.json {
        output::write_json(results, path)?;
    }
    if let Some(path) = &args.csv {
        output::write_csv(results, path)?;
    }
    if let Some(path) = &args.svg {
        std::fs::write(path, svg::render(results))
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

/// How each runtime's child is started.
enum Guest {
    /// `moat boot` of a disk; the peers boot the same.
    Disk {
        disk: PathBuf,
        peers: Option<PeerSetup>,
    },
    /// `moat launch` of an image.
    Image { image: PathBuf, cold: bool },
    /// `moat boot --bare` of the tiny guest; the peers boot the same.
    Tiny { peers: Option<PeerSetup> },
}

/// The peers' binaries and the files they boot.
struct PeerSetup {
    peers: Peers,
    guest: PeerGuest,
    firecracker_config: PathBuf,
    /// The same guest whose workload is the memory probe's (Linux guests only).
    probe: Option<Box<PeerSetup>>,
}

/// Everything resolved before the first run.
struct Plan {
    exe: PathBuf,
    kernel: PathBuf,
    initrd: Option<PathBuf>,
    memory_mib: u64,
    vcpus: u8,
    guest: Guest,
    runs: usize,
    parallel: usize,
    warmup: usize,
    memory_runs: usize,
    work: WorkDir,
}

impl Plan {
    fn new(args: &BenchArgs) -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("cannot find the moat binary itself")?;
        let work = WorkDir::create()?;
        let (kernel, initrd, guest) = if args.tiny {
            let (kernel, guest) = tiny_guest(args, &work)?;
            (kernel, None, guest)
        } else {
            let kernel = existing(args.kernel.clone(), assets::KERNEL, "--kernel")?;
            let initrd = existing(args.initrd.clone(), assets::INITRAMFS, "--initrd")?;
            let guest = linux_guest(args, &kernel, &initrd, &work)?;
            (kernel, Some(initrd), guest)
        };
        Ok(Self {
            exe,
            kernel,
            initrd,
            memory_mib: args.memory,
            vcpus: args.cpus,
            guest,
            runs: args.runs as usize,
            parallel: args.parallel as usize,
            warmup: args.warmup as usize,
            memory_runs: args.memory_runs as usize,
            work,
        })
    }

    /// The peers, when there are any.
    fn peers(&self) -> Option<&PeerSetup> {
        match &self.guest {
            Guest::Disk { peers, .. } | Guest::Tiny { peers } => peers.as_ref(),
            Guest::Image { .. } => None,
        }
    }

    /// The runtimes in the order they take turns.
    fn runtimes(&self) -> Vec<Runtime> {
        let mut runtimes = vec![Runtime::Moat];
        if let Some(setup) = self.peers() {
            if setup.peers.firecracker.is_some() {
                runtimes.push(Runtime::Firecracker);
            }
            if setup.peers.qemu.is_some() {
                runtimes.push(Runtime::Qemu);
            }
        }
        runtimes
    }

    fn measure(&self) -> anyhow::Result<Results> {
        let mut shape = GuestShape::new(&self.kernel, self.memory_mib, self.vcpus, self.describe());
        if let Guest::Tiny { .. } = self.guest {
            // Its file lives in the work directory, which is gone when anyone reads this.
            shape.kernel = "the tiny guest".to_string();
        }
        let mut results = Results {
            machine: Machine::probe(),
            guest: shape,
            parallel: self.parallel,
            runs: Vec::new(),
            failures: Vec::new(),
            rounds: Vec::new(),
            memory: Vec::new(),
        };
        self.warm_up()?;
        self.timed_rounds(&mut results)?;
        for probe in 0..self.memory_runs {
            results.memory.push(self.memory_probe(probe)?);
            for runtime in self.runtimes().into_iter().skip(1) {
                if let Some(run) = self.peer_memory_probe(runtime, probe)? {
                    results.memory.push(run);
                }
            }
        }
        self.progress("");
        Ok(results)
    }

    /// Untimed runs of each runtime. Nothing of them is measured, so a failed one is tried once
    /// more and a second failure only noted.
    fn warm_up(&self) -> anyhow::Result<()> {
        for index in 0..self.warmup {
            for runtime in self.runtimes() {
                self.progress(&format!("warming up {}", runtime.name()));
                let name = |attempt| format!("{}-warmup-{index}-{attempt}", runtime.name());
                let run = |attempt| self.run_one(self.launch(runtime, &name(attempt))?);
                let note = |attempt, failed: &Failed| {
                    let then = match attempt {
                        0 => "trying once more",
                        _ => "going on without it",
                    };
                    self.note(&format!(
                        "warm-up {} failed, {then}: {failed}",
                        name(attempt)
                    ));
                };
                retry_once(run, note)?;
            }
        }
        Ok(())
    }

    /// Rounds of `parallel` VMs until `runs` ran, each runtime taking its turn every round. A
    /// failed run is noted and left out, until more than half of a runtime's runs failed.
    fn timed_rounds(&self, results: &mut Results) -> anyhow::Result<()> {
        let mut done = 0;
        let mut round = 0;
        while done < self.runs {
            let vms = self.parallel.min(self.runs - done);
            for runtime in self.runtimes() {
                let runs = format!("{}..{} of {}", done + 1, done + vms, self.runs);
                self.progress(&format!("{} runs {runs}", runtime.name()));
                self.timed_round(results, runtime, round, vms)?;
                check_failures(&results.tally_of(runtime), self.runs)?;
            }
            done += vms;
            round += 1;
        }
        Ok(())
    }

    /// One round: `vms` VMs of `runtime` started at once, recorded in `results`.
    fn timed_round(
        &self,
        results: &mut Results,
        runtime: Runtime,
        round: usize,
        vms: usize,
    ) -> anyhow::Result<()> {
        let names: Vec<String> = (0..vms)
            .map(|slot| run_name(runtime, round, slot))
            .collect();
        let launches = names
            .iter()
            .map(|name| self.launch(runtime, name))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let outcomes = runner::run_all(launches, ROUND_TIMEOUT)?;
        let measured = names
            .iter()
            .zip(outcomes)
            .map(|(name, outcome)| self.measured(runtime, name, outcome))
            .collect();
        for failure in record_round(results, runtime, round, measured) {
            let name = run_name(runtime, failure.round, failure.slot);
            self.note(&format!("run {name} failed: {}", failure.reason));
        }
        Ok(())
    }

    /// A run's outcome with the phases it reported, or why it counts as failed.
    fn measured(&self, runtime: Runtime, name: &str, outcome: Outcome) -> Result<Measured, String> {
        let finished = outcome.map_err(|failed| failed.to_string())?;
        let phases = self.phases(runtime, name)?;
        Ok(Measured { finished, phases })
    }

    /// The phases a finished run reported: moat's report, Firecracker's boot timer.
    fn phases(&self, runtime: Runtime, name: &str) -> Result<Vec<(String, u64)>, String> {
        match runtime {
            Runtime::Moat => Ok(self.boot_report(name)?.phases),
            Runtime::Firecracker => {
                let log = std::fs::read_to_string(self.work.log(name)).unwrap_or_default();
                let timer = peers::boot_timer(&log);
                Ok(timer
                    .map(|at| vec![(results::AGENT_READY.to_string(), micros(at))])
                    .unwrap_or_default())
            }
            Runtime::Qemu => Ok(Vec::new()),
        }
    }

    /// The report of moat's run `name`, or why there is none: the run then counts as failed,
    /// though it exited with status 0.
    fn boot_report(&self, name: &str) -> Result<report::BootReport, String> {
        let path = self.work.report(name);
        report::BootReport::read(&path).map_err(|e| {
            let output = runner::output_note(&self.work.log(name));
            format!(
                "ended with status 0 but left no boot report at {} ({e}){output}",
                path.display()
            )
        })
    }

    /// One moat run whose workload idles while its memory is sampled from outside, then again
    /// by moat itself once the VM stopped. A failed probe is noted and has no samples.
    fn memory_probe(&self, probe: usize) -> anyhow::Result<MemoryRun> {
        let name = format!("memory-{probe}");
        self.progress(&format!(
            "memory probe {} of {}",
            probe + 1,
            self.memory_runs
        ));
        let argv = ["sh", "-c", PROBE_SCRIPT];
        let mut launch = self.moat_launch(&name, &argv)?;
        launch.command.env(report::MEMORY_ENV, "1");
        if !matches!(self.guest, Guest::Tiny { .. }) {
            // The tiny guest runs no workload: only moat's own sample after it, in the report.
            launch.sample_at_line = Some((BOOTED_MARKER, self.memory_mib));
        }
        let outcome = self.run_one(launch)?;
        let probed = outcome
            .map_err(|failed| failed.to_string())
            .and_then(|finished| {
                Ok(MemoryRun {
                    after_boot: finished.sample,
                    after_workload: self.boot_report(&name)?.memory,
                    ..MemoryRun::default()
                })
            });
        Ok(self.probe_outcome(&name, Runtime::Moat, probed))
    }

    /// A peer's run of the memory probe's workload, sampled from outside the same way as
    /// moat's, once (a peer says nothing after its guest stopped). `None` for a guest the peers
    /// have no probe for (the tiny guest).
    fn peer_memory_probe(
        &self,
        runtime: Runtime,
        probe: usize,
    ) -> anyhow::Result<Option<MemoryRun>> {
        let Some(setup) = self.peers().and_then(|setup| setup.probe.as_deref()) else {
            return Ok(None);
        };
        let name = format!("memory-{}-{probe}", runtime.name());
        let launch = Launch {
            command: peer_command(runtime, setup)?,
            log: self.work.log(&name),
            sample_at_line: Some((BOOTED_MARKER, self.memory_mib)),
        };
        let probed = self
            .run_one(launch)?
            .map_err(|failed| failed.to_string())
            .and_then(|finished| match finished.sample {
                Some(sample) => Ok(MemoryRun {
                    after_boot: Some(sample),
                    ..MemoryRun::default()
                }),
                None => Err(format!(
                    "no sample: the guest RAM mapping was not found or the marker never came{}",
                    runner::output_note(&self.work.log(&name))
                )),
            });
        Ok(Some(self.probe_outcome(&name, runtime, probed)))
    }

    /// A probe's run as results keep it: its samples, or why it failed (noted on stderr).
    fn probe_outcome(
        &self,
        name: &str,
        runtime: Runtime,
        probed: Result<MemoryRun, String>,
    ) -> MemoryRun {
        let run = probed.unwrap_or_else(|reason| {
            self.note(&format!("memory probe {name} failed: {reason}"));
            MemoryRun {
                failure: Some(reason),
                ..MemoryRun::default()
            }
        });
        MemoryRun { runtime, ..run }
    }

    /// Runs one child to its end, or until the round's timeout.
    fn run_one(&self, launch: Launch) -> anyhow::Result<Outcome> {
        let mut outcomes = runner::run_all(vec![launch], ROUND_TIMEOUT)?;
        Ok(outcomes
            .pop()
            .expect("run_all gives one outcome per launch"))
    }

    fn launch(&self, runtime: Runtime, name: &str) -> anyhow::Result<Launch> {
        match (runtime, &self.guest) {
            (Runtime::Moat, _) => self.moat_launch(name, &[WORKLOAD]),
            (peer, _) => {
                let setup = self
                    .peers()
                    .with_context(|| format!("{} is not set up for this benchmark", peer.name()))?;
                Ok(Launch {
                    command: peer_command(peer, setup)?,
                    log: self.work.log(name),
                    sample_at_line: None,
                })
            }
        }
    }

    /// `moat boot` or `moat launch` of `argv`, reporting its phases to the run's report file.
    fn moat_launch(&self, name: &str, argv: &[&str]) -> anyhow::Result<Launch> {
        let mut command = Command::new(&self.exe);
        match &self.guest {
            Guest::Disk { disk, .. } => {
                command.arg("boot").arg("--disk").arg(disk_ro(disk));
                self.vm_flags(&mut command, "--memory", self.memory_mib.to_string());
                command.arg("--").args(argv);
            }
            Guest::Image { image, cold } => {
                command.arg("launch");
                self.vm_flags(&mut command, "-m", format!("{}m", self.memory_mib));
                command.arg(image).args(argv);
                if *cold {
                    command.env("MOAT_CACHE_DIR", self.work.fresh_cache(name)?);
                }
            }
            Guest::Tiny { .. } => {
                command
                    .args(["boot", "--bare", "--kernel"])
                    .arg(&self.kernel);
                command.args(["--cpus", &self.vcpus.to_string()]);
                command.args(["--memory", &self.memory_mib.to_string()]);
            }
        }
        let report = self.work.report(name);
        let _ = std::fs::remove_file(&report);
        command.env(report::JSON_ENV, &report);
        Ok(Launch {
            command,
            log: self.work.log(name),
            sample_at_line: None,
        })
    }

    fn vm_flags(&self, command: &mut Command, memory_flag: &str, memory: String) {
        command
            .arg("--kernel")
            .arg(&self.kernel)
            .args(
                self.initrd
                    .iter()
                    .flat_map(|initrd| [OsStr::new("--initrd"), initrd.as_os_str()]),
            )
            .arg("--cpus")
            .arg(self.vcpus.to_string())
            .arg(memory_flag)
            .arg(memory);
    }

    /// Prints one line on stderr (below the progress line, on a terminal): a run that failed.
    fn note(&self, text: &str) {
        self.progress("");
        eprintln!("moat bench: {text}");
    }

    /// Shows what runs now on stderr's line when it is a terminal; "" clears it.
    fn progress(&self, text: &str) {
        if !std::io::stderr().is_terminal() {
            if !text.is_empty() {
                log::info!("bench: {text}");
            }
            return;
        }
        if text.is_empty() {
            eprint!("\r\x1b[2K");
        } else {
            eprint!("\r\x1b[2Kmoat bench: {text}");
        }
        let _ = std::io::stderr().flush();
    }

    /// The workload line of the header.
    fn describe(&self) -> String {
        match &self.guest {
            Guest::Disk { disk, .. } => {
                format!("moat boot --disk {} -- {WORKLOAD}", disk_ro(disk).display())
            }
            Guest::Image { image, cold } => {
                let cache = if *cold { "cold" } else { "warm" };
                format!(
                    "moat launch {} {WORKLOAD} ({cache} image cache)",
                    image.display()
                )
            }
            Guest::Tiny { .. } => {
                "moat boot --bare (no Linux: a boot marker, an exit, a reset)".to_string()
            }
        }
    }
}

/// A timed run that ended well: its times and the phases it reported.
struct Measured {
    finished: Finished,
    phases: Vec<(String, u64)>,
}

/// Adds one round of `runtime` to `results`: the runs that ended well as runs, and the round's
/// wall time over them; the others as failures. Returns the failures it added.
fn record_round(
    results: &mut Results,
    runtime: Runtime,
    round: usize,
    outcomes: Vec<Result<Measured, String>>,
) -> &[Failure] {
    let first_failure = results.failures.len();
    let mut finished = Vec::new();
    for (slot, outcome) in outcomes.into_iter().enumerate() {
        match outcome {
            Ok(measured) => {
                results.runs.push(Run {
                    runtime,
                    round,
                    slot,
                    spawn_to_exit_us: micros(measured.finished.elapsed()),
                    phases: measured.phases,
                });
                finished.push(measured.finished);
            }
            Err(reason) => results.failures.push(Failure {
                runtime,
                round,
                slot,
                reason,
            }),
        }
    }
    results.rounds.extend(round_over(runtime, &finished));
    &results.failures[first_failure..]
}

/// A round of the VMs that ended well: from the first one's spawn to the last one's exit.
fn round_over(runtime: Runtime, finished: &[Finished]) -> Option<Round> {
    let first_spawn = finished.iter().map(|f| f.spawned).min()?;
    let last_exit = finished.iter().map(|f| f.exited).max()?;
    Some(Round {
        runtime,
        vms: finished.len(),
        wall_us: micros(last_exit.duration_since(first_spawn)),
    })
}

/// Runs `attempt(0)` and, when that run fails, `attempt(1)`, telling `on_failure` of each
/// failed one. Returns whether one succeeded; an error (Ctrl-C) ends it at once.
fn retry_once(
    mut attempt: impl FnMut(usize) -> anyhow::Result<Outcome>,
    mut on_failure: impl FnMut(usize, &Failed),
) -> anyhow::Result<bool> {
    for number in 0..2 {
        match attempt(number)? {
            Ok(_) => return Ok(true),
            Err(failed) => on_failure(number, &failed),
        }
    }
    Ok(false)
}

/// Too many of a runtime's runs failed for its figures to mean much.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "{failed} of {planned} runs of {runtime} failed ({ok} succeeded); the benchmark gives up when \
     more than half of a runtime's runs fail (their reasons are above)"
)]
struct TooManyFailures {
    runtime: &'static str,
    ok: usize,
    failed: usize,
    planned: usize,
}

/// Gives up on a runtime as soon as more than half of its `planned` runs failed: then no later
/// run can make up for them. That includes a runtime none of whose runs succeeded.
fn check_failures(tally: &Tally, planned: usize) -> Result<(), TooManyFailures> {
    if tally.failed * 2 <= planned {
        return Ok(());
    }
    Err(TooManyFailures {
        runtime: tally.runtime.name(),
        ok: tally.ok,
        failed: tally.failed,
        planned,
    })
}

/// The name of a timed run's files in the work directory.
fn run_name(runtime: Runtime, round: usize, slot: usize) -> String {
    format!("{}-{round}-{slot}", runtime.name())
}

fn disk_ro(disk: &Path) -> PathBuf {
    let mut spec = disk.as_os_str().to_owned();
    spec.push(":ro");
    PathBuf::from(spec)
}

fn micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX)
}

/// The path given with `flag`, or moat's own file `name`; either way one that exists.
fn existing(given: Option<PathBuf>, name: &str, flag: &str) -> anyhow::Result<PathBuf> {
    match given {
        Some(path) if path.exists() => Ok(path),
        Some(path) => bail!("no such file: {} (given with {flag})", path.display()),
        None => assets::find(name),
    }
}

/// `moat boot` of a disk or `moat launch` of an image, with the peers set up for a disk.
fn linux_guest(
    args: &BenchArgs,
    kernel: &Path,
    initrd: &Path,
    work: &WorkDir,
) -> anyhow::Result<Guest> {
    if let Some(image) = &args.image {
        if args.compare.is_some() {
            // TODO(#5): boot the image's cached root disk under the peers too.
            bail!("--compare boots a disk with `true`; it cannot be used with --image");
        }
        if !image.is_file() {
            bail!("no image tarball at {}", image.display());
        }
        return Ok(Guest::Image {
            image: image.clone(),
            cold: args.cold,
        });
    }
    let disk = existing(args.disk.clone(), DEFAULT_DISK, "--disk")?;
    let peers = match &args.compare {
        Some(peers) => {
            let peer_initrd = work.path("peer-initrd.cpio");
            peers::write_initrd(initrd, &peer_spec(&[WORKLOAD]), &peer_initrd)?;
            let probe_initrd = work.path("peer-probe-initrd.cpio");
            let probe_argv = ["sh", "-c", PROBE_SCRIPT];
            peers::write_initrd(initrd, &peer_spec(&probe_argv), &probe_initrd)?;
            let guest = PeerGuest {
                kernel: kernel.to_path_buf(),
                initrd: Some(peer_initrd),
                disk: Some(disk.clone()),
                cmdline: vm::kernel_cmdline(None),
                memory_mib: args.memory,
                vcpus: args.cpus,
            };
            let probe_guest = PeerGuest {
                initrd: Some(probe_initrd),
                ..guest.clone()
            };
            let mut setup = peer_setup(peers, guest, work, "firecracker.json")?;
            setup.probe = Some(Box::new(peer_setup(
                peers,
                probe_guest,
                work,
                "firecracker-probe.json",
            )?));
            Some(setup)
        }
        None => None,
    };
    Ok(Guest::Disk { disk, peers })
}

/// The tiny guest, written into the work directory, and the peers set up to boot it.
fn tiny_guest(args: &BenchArgs, work: &WorkDir) -> anyhow::Result<(PathBuf, Guest)> {
    let elf = work.path("tiny.elf");
    tiny::write(&elf).with_context(|| format!("cannot write {}", elf.display()))?;
    let peers = match &args.compare {
        Some(peers) => {
            let guest = PeerGuest {
                kernel: elf.clone(),
                initrd: None,
                disk: None,
                cmdline: String::new(),
                memory_mib: args.memory,
                vcpus: args.cpus,
            };
            Some(peer_setup(peers, guest, work, "firecracker.json")?)
        }
        None => None,
    };
    Ok((elf, Guest::Tiny { peers }))
}

/// Checks the peers' binaries and writes Firecracker's configuration for `guest` to the work
/// directory's `config_name`.
fn peer_setup(
    peers: &Peers,
    guest: PeerGuest,
    work: &WorkDir,
    config_name: &str,
) -> anyhow::Result<PeerSetup> {
    let resolve = |name, binary: &Option<PathBuf>| match binary {
        Some(binary) => peers::resolve_binary(name, binary).map(Some),
        None => Ok(None),
    };
    let peers = Peers {
        firecracker: resolve("firecracker", &peers.firecracker)?,
        qemu: resolve("qemu", &peers.qemu)?,
    };
    let firecracker_config = work.path(config_name);
    let config = serde_json::to_vec_pretty(&peers::firecracker_config(&guest))?;
    std::fs::write(&firecracker_config, config)
        .with_context(|| format!("cannot write {}", firecracker_config.display()))?;
    Ok(PeerSetup {
        peers,
        guest,
        firecracker_config,
        probe: None,
    })
}

/// The launch spec `moat boot --disk D -- ARGV` gives its agent: the disk as it is for root.
fn peer_spec(argv: &[&str]) -> LaunchSpec {
    LaunchSpec {
        version: LAUNCH_SPEC_VERSION,
        argv: argv.iter().map(|arg| arg.to_string()).collect(),
        root: Some(RootSpec {
            device: "/dev/vda".to_string(),
            overlay: Overlay::None,
            read_only: false,
        }),
        channel: None,
        ..LaunchSpec::default()
    }
}

fn peer_command(runtime: Runtime, setup: &PeerSetup) -> anyhow::Result<Command> {
    let binary = |path: &Option<PathBuf>| {
        path.clone()
            .with_context(|| format!("no {} binary given", runtime.name()))
    };
    Ok(match runtime {
        Runtime::Firecracker => peers::firecracker_command(
            &binary(&setup.peers.firecracker)?,
            &setup.firecracker_config,
        ),
        Runtime::Qemu => peers::qemu_command(&binary(&setup.peers.qemu)?, &setup.guest),
        Runtime::Moat => bail!("moat is not a peer"),
    })
}

/// The benchmark's scratch directory: run logs, boot reports, the peers' files, cold caches.
/// Removed when the benchmark ends, however it ends.
struct WorkDir {
    root: PathBuf,
    keep: std::cell::Cell<bool>,
}

impl WorkDir {
    fn create() -> anyhow::Result<Self> {
        let root = std::env::temp_dir().join(format!("moat-bench.{}", std::process::id()));
        std::fs::create_dir_all(&root)
            .with_context(|| format!("cannot create {}", root.display()))?;
        Ok(Self {
            root,
            keep: std::cell::Cell::new(false),
        })
    }

    /// Leaves the directory in place when the benchmark ends.
    fn keep(&self) {
        self.keep.set(true);
    }

    fn path(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    fn log(&self, run: &str) -> PathBuf {
        self.path(&format!("{run}.log"))
    }

    fn report(&self, run: &str) -> PathBuf {
        self.path(&format!("{run}.json"))
    }

    /// An empty image cache directory for `run`.
    fn fresh_cache(&self, run: &str) -> anyhow::Result<PathBuf> {
        let dir = self.path(&format!("{run}.cache"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        Ok(dir)
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if !self.keep.get() {
            let _ = std::fs::remove_dir_all(&self.root);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::ExitStatusExt;
    use std::process::ExitStatus;
    use std::time::Instant;

    use super::results::fixtures;
    use super::*;

    /// A run spawned `start_ms` after `base` that exited `end_ms` after it.
    fn finished(base: Instant, start_ms: u64, end_ms: u64) -> Finished {
        Finished {
            spawned: base + Duration::from_millis(start_ms),
            exited: base + Duration::from_millis(end_ms),
            sample: None,
        }
    }

    fn measured(finished: Finished) -> Result<Measured, String> {
        let phases = vec![(results::AGENT_READY.to_string(), 1_000)];
        Ok(Measured { finished, phases })
    }

    /// A child that exited with status 3.
    fn exited_3() -> Failed {
        Failed::Status {
            // A wait status holds the exit code in its second byte.
            status: ExitStatus::from_raw(3 << 8),
            output: String::new(),
        }
    }

    fn tally(ok: usize, failed: usize) -> Tally {
        Tally {
            runtime: Runtime::Qemu,
            ok,
            failed,
        }
    }

    #[test]
    fn a_round_keeps_its_good_runs_and_lists_its_failures() {
        let mut results = fixtures::results();
        results.runs.clear();
        results.rounds.clear();
        let base = Instant::now();
        let outcomes = vec![
            measured(finished(base, 0, 40)),
            Err("still running after 120s, killed".to_string()),
            measured(finished(base, 5, 30)),
        ];

        let failures = record_round(&mut results, Runtime::Moat, 7, outcomes).to_vec();

        assert_eq!(
            failures,
            [Failure {
                runtime: Runtime::Moat,
                round: 7,
                slot: 1,
                reason: "still running after 120s, killed".to_string(),
            }]
        );
        assert_eq!(results.failures, failures);
        let slots: Vec<usize> = results.runs.iter().map(|run| run.slot).collect();
        assert_eq!(slots, [0, 2]);
        assert_eq!(results.runs[0].spawn_to_exit_us, 40_000);
    }

    #[test]
    fn a_round_spans_only_its_good_runs() {
        let mut results = fixtures::results();
        results.rounds.clear();
        let base = Instant::now();
        let outcomes = vec![
            measured(finished(base, 0, 40)),
            Err("ended with exit status: 3".to_string()),
            measured(finished(base, 5, 60)),
        ];

        record_round(&mut results, Runtime::Moat, 0, outcomes);

        // Two VMs, from the first spawn (0 ms) to the last exit (60 ms).
        assert_eq!(results.rounds.len(), 1);
        assert_eq!(results.rounds[0].vms, 2);
        assert_eq!(results.rounds[0].wall_us, 60_000);
    }

    #[test]
    fn a_round_whose_every_run_failed_has_no_wall_time() {
        let mut results = fixtures::results();
        results.rounds.clear();
        let outcomes = vec![Err("a".to_string()), Err("b".to_string())];

        let failed = record_round(&mut results, Runtime::Qemu, 0, outcomes).len();

        assert_eq!(failed, 2);
        assert!(results.rounds.is_empty());
    }

    #[test]
    fn statistics_leave_the_failed_runs_out() {
        let mut results = fixtures::results();
        let base = Instant::now();
        let outcomes = vec![
            Err("ended with exit status: 3".to_string()),
            measured(finished(base, 0, 100)),
        ];

        record_round(&mut results, Runtime::Qemu, 1, outcomes);

        // The fixture's one qemu run took 120 ms; the new good one 100 ms; the failure none.
        let total = results.total(Runtime::Qemu).unwrap();
        assert_eq!(total.count, 2);
        assert_eq!(total.min, Duration::from_millis(100));
        assert_eq!(results.tally_of(Runtime::Qemu).failed, 1);
    }

    #[test]
    fn half_the_runs_may_fail() {
        assert_eq!(check_failures(&tally(15, 15), 30), Ok(()));
        assert_eq!(check_failures(&tally(0, 15), 30), Ok(()));
    }

    #[test]
    fn more_than_half_failed_gives_up_at_once() {
        let gave_up = check_failures(&tally(3, 16), 30).unwrap_err();

        assert_eq!(
            (gave_up.runtime, gave_up.failed, gave_up.planned),
            ("qemu", 16, 30)
        );
        assert!(gave_up
            .to_string()
            .starts_with("16 of 30 runs of qemu failed (3 succeeded)"));
    }

    #[test]
    fn a_runtime_without_a_good_run_gives_up() {
        assert!(check_failures(&tally(0, 1), 1).is_err());
        assert!(check_failures(&tally(0, 2), 3).is_err());
    }

    #[test]
    fn a_failed_warm_up_is_tried_once_more() {
        let mut attempts = Vec::new();
        let mut noted = Vec::new();

        let succeeded = retry_once(
            |attempt| {
                attempts.push(attempt);
                Ok(match attempt {
                    0 => Err(exited_3()),
                    _ => Ok(finished(Instant::now(), 0, 1)),
                })
            },
            |attempt, _| noted.push(attempt),
        );

        assert!(succeeded.unwrap());
        assert_eq!(attempts, [0, 1]);
        assert_eq!(noted, [0]);
    }

    #[test]
    fn a_warm_up_that_fails_twice_is_given_up() {
        let mut attempts = 0;
        let mut noted = Vec::new();

        let succeeded = retry_once(
            |_| {
                attempts += 1;
                Ok(Err(exited_3()))
            },
            |attempt, failed| noted.push((attempt, failed.to_string())),
        );

        assert!(!succeeded.unwrap());
        assert_eq!(attempts, 2);
        assert_eq!(
            noted,
            [
                (0, "ended with exit status: 3".to_string()),
                (1, "ended with exit status: 3".to_string())
            ]
        );
    }

    #[test]
    fn an_interrupted_warm_up_is_not_retried() {
        let mut attempts = 0;

        let result = retry_once(
            |_| {
                attempts += 1;
                Err(runner::Interrupted.into())
            },
            |_, _| panic!("an interrupt is no failed run"),
        );

        assert!(result.unwrap_err().is::<runner::Interrupted>());
        assert_eq!(attempts, 1);
    }
}
