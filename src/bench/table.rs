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
    let after_boot = results.median_memory(|m| m.after_boot);
    let after_workload = results.median_memory(|m| m.after_workload);
    if after_boot.is_none() && after_workload.is_none() {
        return;
    }
    let probes = results.memory_probes().count();
    let failed = match results.memory.len() - probes {
        0 => String::new(),
        n => format!("; {n} failed"),
    };
    let _ = writeln!(
        out,
        "\nVMM memory overhead, MiB: the moat process's RSS and PSS minus the guest RAM the guest \
         touched\n(median of {probes} run{}{failed})",
        if probes == 1 { "" } else { "s" }
    );
    let _ = writeln!(
        out,
        "{:<LABEL$} {:>8} {:>8} {:>8} {:>8} {:>8}",
        "", "RSS", "PSS", "guest", "VMM RSS", "VMM PSS"
    );
    let moments = [
        ("after boot (workload started)", after_boot),
        ("after the workload exited", after_workload),
    ];
    for (label, sample) in moments {
        if let Some(sample) = sample {
            memory_row(out, label, &sample);
        }
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

        assert!(text.contains("(median of 1 run; 1 failed)"), "{text}");
    }

    #[test]
    fn memory_overhead_is_shown_in_mib() {
        let text = render(&fixtures::results());

        let row = text.lines().find(|l| l.contains("after boot")).unwrap();

        // RSS 50 000 KiB and PSS 48 000 KiB, of which 40 960 KiB guest RAM.
        let numbers: Vec<&str> = row.split_whitespace().rev().take(5).collect();
        assert_eq!(numbers, ["6.9", "8.8", "40.0", "46.9", "48.8"]);
    }
}
