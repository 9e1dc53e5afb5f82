//! The VMM's own memory: a `moat` process's RSS and PSS minus the guest memory the guest touched.
//!
//! Guest RAM is an anonymous mapping of the VM's memory size (two around the MMIO gap above
//! 3 GiB) in the process that runs the VM. Its resident pages are the guest's; everything else
//! resident is the VMM's overhead: code, heap, thread stacks, device buffers.

use std::io;

use serde::{Deserialize, Serialize};

/// Guest RAM above this address is mapped after the MMIO gap: a second mapping (the VMM's
/// memory layout, `arch::x86_64::layout::MMIO_GAP_START`).
const MMIO_GAP_START_MIB: u64 = 3 * 1024;

/// One look at a process's memory, in KiB.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemorySample {
    /// Resident set of the whole process.
    pub rss_kib: u64,
    /// Proportional set of the whole process (shared pages divided among their users).
    pub pss_kib: u64,
    /// Resident pages of guest RAM.
    pub guest_rss_kib: u64,
    /// Proportional set of guest RAM (equal to its RSS: it is private).
    pub guest_pss_kib: u64,
}

impl MemorySample {
    /// RSS that is not guest memory.
    pub fn overhead_rss_kib(&self) -> u64 {
        self.rss_kib.saturating_sub(self.guest_rss_kib)
    }

    /// PSS that is not guest memory.
    pub fn overhead_pss_kib(&self) -> u64 {
        self.pss_kib.saturating_sub(self.guest_pss_kib)
    }
}

/// Samples process `pid` (this process with `None`) running a VM of `memory_mib` MiB.
pub fn sample(pid: Option<u32>, memory_mib: u64) -> io::Result<MemorySample> {
    let dir = pid.map_or_else(|| "/proc/self".to_string(), |pid| format!("/proc/{pid}"));
    let rollup = std::fs::read_to_string(format!("{dir}/smaps_rollup"))?;
    let smaps = std::fs::read_to_string(format!("{dir}/smaps"))?;
    let (guest_rss_kib, guest_pss_kib) = guest_usage(&smaps, &guest_mapping_sizes(memory_mib))
        .ok_or_else(|| {
            io::Error::other(format!(
                "no mapping of the guest's {memory_mib} MiB of RAM in {dir}/smaps"
            ))
        })?;
    Ok(MemorySample {
        rss_kib: field_kib(&rollup, "Rss").unwrap_or(0),
        pss_kib: field_kib(&rollup, "Pss").unwrap_or(0),
        guest_rss_kib,
        guest_pss_kib,
    })
}

/// The sizes in KiB of the mappings that hold guest RAM of `memory_mib` MiB.
fn guest_mapping_sizes(memory_mib: u64) -> Vec<u64> {
    if memory_mib <= MMIO_GAP_START_MIB {
        vec![memory_mib * 1024]
    } else {
        vec![
            MMIO_GAP_START_MIB * 1024,
            (memory_mib - MMIO_GAP_START_MIB) * 1024,
        ]
    }
}

/// Sums the Rss and Pss of the first mapping of each size in `sizes_kib` found in `smaps`;
/// `None` unless there is one of each (another runtime may lay guest RAM out differently).
fn guest_usage(smaps: &str, sizes_kib: &[u64]) -> Option<(u64, u64)> {
    let mut wanted = sizes_kib.to_vec();
    let (mut rss, mut pss) = (0, 0);
    for mapping in mappings(smaps) {
        if let Some(at) = wanted.iter().position(|&size| size == mapping.size_kib) {
            wanted.remove(at);
            rss += field_kib(mapping.fields, "Rss").unwrap_or(0);
            pss += field_kib(mapping.fields, "Pss").unwrap_or(0);
        }
    }
    wanted.is_empty().then_some((rss, pss))
}

/// One mapping of `/proc/PID/smaps`: its size and its `Name: N kB` lines.
struct Mapping<'a> {
    size_kib: u64,
    fields: &'a str,
}

/// The mappings of an smaps file, each from its header line (`start-end perms ...`).
fn mappings(smaps: &str) -> Vec<Mapping<'_>> {
    let mut headers = Vec::new();
    let mut offset = 0;
    for line in smaps.split_inclusive('\n') {
        if let Some(size_kib) = header_size_kib(line) {
            headers.push((offset, offset + line.len(), size_kib));
        }
        offset += line.len();
    }
    let ends = headers.iter().skip(1).map(|&(start, _, _)| start);
    headers
        .iter()
        .zip(ends.chain([smaps.len()]))
        .map(|(&(_, fields_start, size_kib), end)| Mapping {
            size_kib,
            fields: &smaps[fields_start..end],
        })
        .collect()
}

/// The size of a mapping from its header line, `None` for any other line.
fn header_size_kib(line: &str) -> Option<u64> {
    let range = line.split_whitespace().next()?;
    let (start, end) = range.split_once('-')?;
    let start = u64::from_str_radix(start, 16).ok()?;
    let end = u64::from_str_radix(end, 16).ok()?;
    Some(end.checked_sub(start)? / 1024)
}

/// The value of a `Name:   N kB` line.
fn field_kib(text: &str, name: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let value = line.strip_prefix(name)?.strip_prefix(':')?;
        value.trim().strip_suffix("kB")?.trim().parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A trimmed smaps: the binary, a 256 MiB anonymous mapping (guest RAM, 0x10000000 bytes)
    /// and a 2 MiB thread stack.
    const SMAPS: &str = "\
55d0c0000000-55d0c0200000 r-xp 00000000 08:01 1234   /usr/bin/moat
Size:               2048 kB
Rss:                1500 kB
Pss:                1400 kB
7f0000000000-7f0010000000 rw-p 00000000 00:00 0
Size:             262144 kB
Rss:               40960 kB
Pss:               40960 kB
7f0010000000-7f0010200000 rw-p 00000000 00:00 0
Size:               2048 kB
Rss:                  16 kB
Pss:                  16 kB
";

    #[test]
    fn guest_ram_is_the_mapping_of_the_vm_memory_size() {
        assert_eq!(
            guest_usage(SMAPS, &guest_mapping_sizes(256)),
            Some((40960, 40960))
        );
    }

    #[test]
    fn no_mapping_of_that_size_means_no_guest_ram() {
        assert_eq!(guest_usage(SMAPS, &guest_mapping_sizes(512)), None);
    }

    #[test]
    fn memory_above_the_mmio_gap_is_a_second_mapping() {
        assert_eq!(guest_mapping_sizes(4096), [3 * 1024 * 1024, 1024 * 1024]);
    }

    #[test]
    fn rollup_fields_are_read_by_name() {
        let rollup = "55d0c0000000-7ffd00000000 ---p 00000000 00:00 0  [rollup]\n\
                      Rss:               45000 kB\nPss:               43000 kB\n";

        assert_eq!(field_kib(rollup, "Rss"), Some(45000));
        assert_eq!(field_kib(rollup, "Pss"), Some(43000));
        assert_eq!(field_kib(rollup, "Swap"), None);
    }

    #[test]
    fn overhead_is_what_is_not_guest_memory() {
        let sample = MemorySample {
            rss_kib: 45000,
            pss_kib: 43000,
            guest_rss_kib: 40960,
            guest_pss_kib: 40960,
        };

        assert_eq!(sample.overhead_rss_kib(), 4040);
        assert_eq!(sample.overhead_pss_kib(), 2040);
    }
}
