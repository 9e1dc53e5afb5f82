//! What the benchmark ran on, for the header of every report: numbers mean little without it.

use std::path::Path;

use moat_vmm::host::KvmKind;
use serde::Serialize;

use crate::units::human;

/// The host and the VM shape of a benchmark.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    /// CPU model, from `/proc/cpuinfo`.
    pub cpu: String,
    /// Online CPUs.
    pub cores: usize,
    /// Host kernel release (`uname -r`).
    pub host_kernel: String,
    /// What backs `/dev/kvm`: `hardware`, `pvm` or `none`.
    pub kvm: String,
    /// Whether this is the nested harness's L2 (software-emulated: every time is inflated).
    pub nested: bool,
}

impl Machine {
    /// Describes this host.
    pub fn probe() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        Self {
            cpu: cpu_model(&cpuinfo).unwrap_or_else(|| "unknown CPU".to_string()),
            cores: std::thread::available_parallelism().map_or(1, usize::from),
            host_kernel: host_kernel(),
            kvm: kvm_name(moat_vmm::host::kvm_kind()).to_string(),
            nested: std::env::var_os("MOAT_NESTED").is_some() || moat_vmm::host::is_qemu_tcg(),
        }
    }

    /// One line: `AMD EPYC 7B13, 2 cores, Linux 6.1.0-21-amd64, KVM: hardware`.
    pub fn describe(&self) -> String {
        let nested = if self.nested {
            " (nested harness: software-emulated L2, times inflated)"
        } else {
            ""
        };
        format!(
            "{}, {} cores, Linux {}, KVM: {}{nested}",
            self.cpu, self.cores, self.host_kernel, self.kvm
        )
    }
}

/// The guest side of a benchmark: the same for every runtime compared.
#[derive(Debug, Clone, Serialize)]
pub struct GuestShape {
    /// The guest kernel.
    pub kernel: String,
    /// Its size in bytes.
    pub kernel_bytes: u64,
    /// Guest memory in MiB.
    pub memory_mib: u64,
    /// vCPUs.
    pub vcpus: u8,
    /// What runs: `moat boot ... -- true` or `moat launch IMG true`.
    pub workload: String,
}

impl GuestShape {
    /// The guest line of the header.
    pub fn describe(&self) -> String {
        let size = human(self.kernel_bytes);
        format!(
            "guest: {} ({size}), {} MiB, {} vCPU{}; {}",
            self.kernel,
            self.memory_mib,
            self.vcpus,
            if self.vcpus == 1 { "" } else { "s" },
            self.workload
        )
    }

    /// The shape for `kernel`, whose size is read now.
    pub fn new(kernel: &Path, memory_mib: u64, vcpus: u8, workload: String) -> Self {
        Self {
            kernel: kernel.display().to_string(),
            kernel_bytes: std::fs::metadata(kernel).map_or(0, |m| m.len()),
            memory_mib,
            vcpus,
            workload,
        }
    }
}

fn cpu_model(cpuinfo: &str) -> Option<String> {
    cpuinfo.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        (key.trim() == "model name").then(|| value.trim().to_string())
    })
}

fn host_kernel() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|release| release.trim().to_string())
        .unwrap_or_else(|_| "unknown".to_string())
}

fn kvm_name(kind: KvmKind) -> &'static str {
    match kind {
        KvmKind::Hardware => "hardware",
        KvmKind::Pvm => "pvm",
        KvmKind::Missing => "none",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_model_is_the_first_model_name() {
        let cpuinfo = "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 7B13\n\
                       processor\t: 1\nmodel name\t: AMD EPYC 7B13\n";

        assert_eq!(cpu_model(cpuinfo).as_deref(), Some("AMD EPYC 7B13"));
    }
}
