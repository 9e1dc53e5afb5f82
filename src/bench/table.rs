//! The benchmark's terminal table: the header, moat's phases, memory, the comparison.

use std::fmt::Write;

use super::memory::MemorySample;
use super::results::{Results, Runtime, AGENT_READY};
use super::stats::{ms, Summary};

/// Width of the label column.
const LABEL: usize = 34;

/// The whole report as text.
pub fn render(results: &Results) -> String {
    let mut out = String::new();
    header(&mut out, results);
    phases(&mut out, results);
    parallel(&mut out, results);
    memory(&mut out, results);
    comparison(&mut out, results);
    out
}

fn header(out: &mut String, results: &Results) {
    let runs = results.tally_of(Runtime::Moat).runs();
    let shape = match results.parallel {
        1 => "one at a time".to_string(),
        k => format!("{k} at a time"),
    };
    let _ = writeln!(out, "moat bench: {runs} runs, {shape}");
    let _ = writeln!(out, "{}", results.tally_line());
    let _ = writeln!(out, "host:  {}", results.machine.describe());
    let _ = writeln!(out, "{}", results.guest.describe());
}

fn summary_header(out: &mut String, title: &str) {
    let _ = writeln!(
        out,
        "\n{title:<LABEL$} {:>8} {:>8} {:>8} {:>8} {:>8}",
        "min", "p50", "p90", "p99", "max"
    );
}

fn summary_row(out: &mut String, label: &str, summary: &Summary) {
    let _ = writeln!(
        out,
        "  {label:<width$} {:>8.1} {:>8.1} {:>8.1} {:>8.1} {:>8.1}",
        ms(summary.min),
        ms(summary.p50),
        ms(summary.p90),
        ms(summary.p99),
        ms(summary.max),
        width = LABEL - 2,
    );
}

fn phases(out: &mut String, results: &Results) {
    summary_header(out, "moat, ms since process start");
    for name in results.phase_names(Runtime::Moat) {
        if let Some(summary) = results.phase(Runtime::Moat, &name) {
            summary_row(out, &name, &summary);
        }
    }
    if let Some(summary) = results.total(Runtime::Moat) {
        summary_row(out, "spawn to exit (seen by bench)", &summary);
    }
}

fn parallel(out: &mut String, results: &Results) {
    if results.parallel < 2 {
        return;
    }
    let rounds = results
        .rounds
        .iter()
        .filter(|r| r.runtime == Runtime::Moat)
        .count();
    if let Some(rate) = results.vms_per_second(Runtime::Moat) {
        let _ = writeln!(
            out,
            "\n{} VMs started at once, {rounds} round{}: {rate:.2} VMs/s \
             (VMs of a round / its wall time, mean over rounds)",
            results.parallel,
            if rounds == 1 { "" } else { "s" },
        );
    }
}

fn memory(out: &mut String, results: &Results) {
    let probed: Vec<Runtime> = [Runtime::Moat, Runtime::Firecracker, Runtime::Qemu]
        .into_iter()
        .filter(|&runtime| results.memory.iter().any(|m| m.runtime == runtime))
        .collect();
    let counts: Vec<String> = probed
        .iter()
        .map(|&runtime| match results.memory_probes(runtime) {
            (ok, 0) => format!("{} {ok}", runtime.name()),
            (ok, failed) => format!("{} {ok}, {failed} failed", runtime.name()),
        })
        .collect();
    let rows: Vec<(String, MemorySample)> = probed
        .iter()
        .flat_map(|&runtime| {
            let after_boot = results.median_memory(runtime, |m| m.after_boot);
            let after_exit = results.median_memory(runtime, |m| m.after_workload);
            [("after boot", after_boot), ("after exit", after_exit)]
                .into_iter()
                .filter_map(move |(moment, sample)| {
                    Some((format!("{} {moment}", runtime.name()), sample?))
                })
        })
        .collect();
    if counts.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "\nVMM memory overhead, MiB: each process's RSS and PSS minus the guest RAM the guest \
         touched,\nafter boot (workload started) and after exit (moat: workload exited, VM \
         stopped)\n(median of the probes: {})",
        counts.join("; ")
    );
    let _ = writeln!(
        out,
        "{:<LABEL$} {:>8} {:>8} {:>8} {:>8} {:>8}",
        "", "RSS", "PSS", "guest", "VMM RSS", "VMM PSS"
    );
    for (label, sample) in rows {
        memory_row(out, &label, &sample);
    }
}

fn memory_row(out: &mut String, label: &str, sample: &MemorySample) {
    let mib = |kib: u64| kib as f64 / 1024.0;
    let _ = writeln!(
        out,
        "  {label:<width$} {:>8.1} {:>8.1} {:>8.1} {:>8.1} {:>8.1}",
        mib(sample.rss_kib),
        mib(sample.pss_kib),
        mib(sample.guest_rss_kib),
        mib(sample.overhead_rss_kib()),
        mib(sample.overhead_pss_kib()),
        width = LABEL - 2,
    );
}

fn comparison(out: &mut String, results: &Results) {
    let runtimes = results.runtimes();
    if runtimes.len() < 2 {
        return;
    }
    comparison_block(out, results, "spawn to exit, ms", |r| results.total(r));
    let agent_ready = |r| results.phase(r, AGENT_READY);
    if runtimes
        .iter()
        .filter(|&&r| agent_ready(r).is_some())
        .count()
        > 1
    {
        comparison_block(
            out,
            results,
            "process start to agent ready, ms",
            agent_ready,
        );
    }
}

fn comparison_block(
    out: &mut String,
    results: &Results,
    title: &str,
    summary: impl Fn(Runtime) -> Option<Summary>,
) {
    let _ = writeln!(
        out,
        "\n{title:<LABEL$} {:>8} {:>8} {:>8} {:>8} {:>8}  {:>8}",
        "min", "p50", "p90", "p99", "max", "moat/it"
    );
    let moat = summary(Runtime::Moat);
    for runtime in results.runtimes() {
        let Some(this) = summary(runtime) else {
            continue;
        };
        let mut row = String::new();
        summary_row(&mut row, runtime.name(), &this);
        let ratio = moat.map_or("".to_string(), |moat| {
            format!("{:.2}x", ms(moat.p50) / ms(this.p50).max(f64::MIN_POSITIVE))
        });
        let _ = writeln!(out, "{}  {ratio:>8}", row.trim_end());
    }
}

#[cfg(test)]
mod tests {
    use super::super::results::{fixtures, MemoryRun};
    use super::*;

    #[test]
    fn table_has_a_row_per_phase_with_its_percentiles() {
        let text = render(&fixtures::results());

        let row = text
            .lines()
            .find(|l| l.trim_start().starts_with("vm-created"));

        assert_eq!(
            row.unwrap().split_whitespace().collect::<Vec<_>>(),
            ["vm-created", "2.0", "2.0", "2.0", "2.0", "2.0"]
        );
    }

    #[test]
    fn header_describes_host_and_guest() {
        let text = render(&fixtures::results());

        assert!(text.contains("Test CPU, 2 cores, Linux 6.1.0-test, KVM: hardware"));
        assert!(text.contains("build/vmlinux (18.7 MiB), 256 MiB, 1 vCPU"));
    }

    #[test]
    fn comparison_gives_moat_median_over_each_peer_median() {
        let text = render(&fixtures::results());

        // moat's spawn-to-exit median is 60 ms (nearest rank of 60 and 80), qemu's 120 ms.
        let qemu = text
            .lines()
            .find(|l| l.trim_start().starts_with("qemu"))
            .unwrap();

        assert!(qemu.ends_with("0.50x"), "{qemu}");
    }

    #[test]
    fn header_says_how_many_runs_of_each_runtime_failed() {
        let text = render(&fixtures::results_with_failures());

        let line = "runs ok: moat 2/2, firecracker 1/1, qemu 1/3 (the figures leave the failed \
                    runs out)";
        assert_eq!(text.lines().nth(1), Some(line));
    }

    #[test]
    fn a_failed_memory_probe_is_counted_apart() {
        let mut results = fixtures::results();
        results.memory.push(MemoryRun {
            failure: Some("ended with exit status: 1".into()),
            ..MemoryRun::default()
        });

        let text = render(&results);

        assert!(
            text.contains("(median of the probes: moat 1, 1 failed)"),
            "{text}"
        );
    }

    #[test]
    fn a_peer_s_memory_has_its_own_rows() {
        let mut results = fixtures::results();
        let peer = results.memory[0].after_boot.map(|mut sample| {
            sample.rss_kib += 1024;
            sample
        });
        results.memory.push(MemoryRun {
            runtime: Runtime::Firecracker,
            after_boot: peer,
            ..MemoryRun::default()
        });

        let text = render(&results);

        assert!(
            text.contains("(median of the probes: moat 1; firecracker 1)"),
            "{text}"
        );
        let row = text
            .lines()
            .find(|l| l.contains("firecracker after boot"))
            .unwrap();
        let numbers: Vec<&str> = row.split_whitespace().rev().take(5).collect();
        assert_eq!(numbers, ["6.9", "9.8", "40.0", "46.9", "49.8"]);
        assert!(!text.contains("firecracker after exit"), "{text}");
    }

    #[test]
    fn memory_overhead_is_shown_in_mib() {
        let text = render(&fixtures::results());

        let row = text
            .lines()
            .find(|l| l.contains("moat after boot"))
            .unwrap();

        // RSS 50 000 KiB and PSS 48 000 KiB, of which 40 960 KiB guest RAM.
        let numbers: Vec<&str> = row.split_whitespace().rev().take(5).collect();
        assert_eq!(numbers, ["6.9", "8.8", "40.0", "46.9", "48.8"]);
    }
}
