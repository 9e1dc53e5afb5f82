//! The raw data of a benchmark as JSON (everything, nested) or CSV (one measurement a row).

use std::fmt::Write;
use std::path::Path;

use anyhow::Context;
use serde::Serialize;

use super::memory::MemorySample;
use super::results::{Results, Tally};

/// The JSON document: the results, and how many runs of each runtime succeeded and failed.
#[derive(Serialize)]
struct Document<'a> {
    #[serde(flatten)]
    results: &'a Results,
    tally: Vec<Tally>,
}

/// Writes `results` to `path` as JSON.
pub fn write_json(results: &Results, path: &Path) -> anyhow::Result<()> {
    let json = json(results)?;
    std::fs::write(path, json + "\n").with_context(|| format!("cannot write {}", path.display()))
}

/// Every run as JSON: `runs` that succeeded, `failures` with their reasons, `tally` per runtime.
fn json(results: &Results) -> serde_json::Result<String> {
    let document = Document {
        results,
        tally: results.tally(),
    };
    serde_json::to_string_pretty(&document)
}

/// Writes `results` to `path` as CSV.
pub fn write_csv(results: &Results, path: &Path) -> anyhow::Result<()> {
    std::fs::write(path, csv(results)).with_context(|| format!("cannot write {}", path.display()))
}

/// One row per measurement: `runtime,round,slot,measure,value,unit`. Phases are microseconds
/// since the runtime's process started; `spawn-to-exit` is the benchmark's own measure; memory
/// probes are rows of round `probe N`; each runtime ends with its `runs-ok` and `runs-failed`,
/// of no round. Failed runs have no other rows.
pub fn csv(results: &Results) -> String {
    let mut out = String::from("runtime,round,slot,measure,value,unit\n");
    for run in &results.runs {
        let name = run.runtime.name();
        for (phase, micros) in &run.phases {
            let _ = writeln!(out, "{name},{},{},{phase},{micros},us", run.round, run.slot);
        }
        let _ = writeln!(
            out,
            "{name},{},{},spawn-to-exit,{},us",
            run.round, run.slot, run.spawn_to_exit_us
        );
    }
    for tally in results.tally() {
        let name = tally.runtime.name();
        let _ = writeln!(out, "{name},,,runs-ok,{},runs", tally.ok);
        let _ = writeln!(out, "{name},,,runs-failed,{},runs", tally.failed);
    }
    for (probe, memory) in results.memory.iter().enumerate() {
        memory_rows(&mut out, probe, "after-boot", memory.after_boot);
        memory_rows(&mut out, probe, "after-workload", memory.after_workload);
    }
    out
}

fn memory_rows(out: &mut String, probe: usize, moment: &str, sample: Option<MemorySample>) {
    let Some(sample) = sample else {
        return;
    };
    let fields = [
        ("rss", sample.rss_kib),
        ("pss", sample.pss_kib),
        ("guest-rss", sample.guest_rss_kib),
        ("guest-pss", sample.guest_pss_kib),
    ];
    for (field, kib) in fields {
        let _ = writeln!(out, "moat,probe {probe},0,{moment} {field},{kib},KiB");
    }
}

#[cfg(test)]
mod tests {
    use super::super::results::fixtures;
    use super::*;

    #[test]
    fn csv_has_one_row_per_phase_and_total() {
        let text = csv(&fixtures::results());
        let lines: Vec<&str> = text.lines().collect();

        assert_eq!(lines[0], "runtime,round,slot,measure,value,unit");
        assert_eq!(lines[1], "moat,0,0,vm-created,2000,us");
        assert!(lines.contains(&"moat,0,0,spawn-to-exit,60000,us"));
        assert!(lines.contains(&"firecracker,0,0,agent-ready,70000,us"));
        assert!(lines.contains(&"moat,probe 0,0,after-boot rss,50000,KiB"));
        assert!(lines.iter().all(|l| l.split(',').count() == 6));
    }

    #[test]
    fn json_carries_every_run_with_its_phases() {
        let json = serde_json::to_value(fixtures::results()).unwrap();

        assert_eq!(json["runs"].as_array().unwrap().len(), 4);
        assert_eq!(json["runs"][0]["runtime"], "moat");
        assert_eq!(json["runs"][0]["phases"][0][0], "vm-created");
        assert_eq!(json["runs"][1]["runtime"], "firecracker");
        assert_eq!(json["machine"]["cores"], 2);
        assert_eq!(json["memory"][0]["after_boot"]["rss_kib"], 50000);
    }

    #[test]
    fn csv_counts_each_runtime_s_good_and_failed_runs() {
        let text = csv(&fixtures::results_with_failures());
        let lines: Vec<&str> = text.lines().collect();

        assert!(lines.contains(&"moat,,,runs-ok,2,runs"));
        assert!(lines.contains(&"moat,,,runs-failed,0,runs"));
        assert!(lines.contains(&"qemu,,,runs-ok,1,runs"));
        assert!(lines.contains(&"qemu,,,runs-failed,2,runs"));
    }

    #[test]
    fn json_lists_the_failures_and_counts_them() {
        let text = json(&fixtures::results_with_failures()).unwrap();
        let json: serde_json::Value = serde_json::from_str(&text).unwrap();

        assert_eq!(json["runs"].as_array().unwrap().len(), 4);
        assert_eq!(json["failures"][1]["runtime"], "qemu");
        assert_eq!(json["failures"][1]["round"], 2);
        assert_eq!(
            json["failures"][1]["reason"],
            "ended with exit status: 1: triple fault"
        );
        let qemu = &json["tally"][2];
        assert_eq!(
            (&qemu["runtime"], &qemu["ok"], &qemu["failed"]),
            (&"qemu".into(), &1.into(), &2.into())
        );
    }
}
