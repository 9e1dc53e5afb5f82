//! `moat boot`: boot a kernel with the agent initramfs, optional disks, and run one command.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use clap::Args;
use moat_agent_protocol::{LaunchSpec, Overlay, RootSpec, LAUNCH_SPEC_VERSION};
use moat_vmm::timeline::Timeline;
use moat_vmm::{DiskConfig, VmConfig};

use crate::{assets, exit, vm};

/// Where the default kernel and initramfs are looked for, shown by `moat boot --help`.
const SEARCH_HELP: &str = "\
Without --kernel and --initrd, moat uses its own vmlinux and moat-agent.cpio, found in:
$MOAT_HOME, then <prefix>/share/moat (for <prefix>/bin/moat), then the directory of the moat
binary, then the source tree's build/ directory.

Example: moat boot --disk rootfs.ext4:ro -- echo hello";

/// Flags of `moat boot`.
#[derive(Debug, Args)]
#[command(after_help = SEARCH_HELP)]
pub struct BootArgs {
    /// Guest kernel: an uncompressed vmlinux with a PVH entry [default: moat's own]
    #[arg(long, value_name = "PATH")]
    kernel: Option<PathBuf>,
    /// Initramfs whose /init is moat's agent [default: moat's own]
    #[arg(long, value_name = "PATH")]
    initrd: Option<PathBuf>,
    /// Attach a disk (file or block device); the first one is the root filesystem. Append
    /// `:ro` to make it read-only. Repeatable.
    #[arg(long = "disk", value_name = "PATH[:ro]", value_parser = parse_disk)]
    disks: Vec<DiskConfig>,
    /// Extra kernel command-line arguments, appended to moat's defaults
    #[arg(long, value_name = "ARGS")]
    cmdline: Option<String>,
    /// Number of vCPUs
    #[arg(long, default_value_t = 1, value_name = "N")]
    cpus: u8,
    /// Guest memory in MiB
    #[arg(long, default_value_t = 256, value_name = "MiB")]
    memory: u64,
    /// Print the boot phases and their timings on stderr when the VM ends
    #[arg(long)]
    boot_report: bool,
    /// Let the agent log its steps on the console
    #[arg(long)]
    debug_agent: bool,
    /// Command to run in the guest, after `--`
    #[arg(last = true, required = true, value_name = "COMMAND")]
    command: Vec<String>,
}

fn parse_disk(spec: &str) -> Result<DiskConfig, String> {
    let (path, read_only) = match spec.strip_suffix(":ro") {
        Some(path) => (path, true),
        None => (spec.strip_suffix(":rw").unwrap_or(spec), false),
    };
    if path.is_empty() {
        return Err("a disk needs a path".to_string());
    }
    Ok(DiskConfig {
        path: PathBuf::from(path),
        read_only,
    })
}

/// Runs `moat boot`; returns the exit status.
pub fn run(args: BootArgs, process_start: Instant) -> u8 {
    let report = args.boot_report;
    let timeline = Arc::new(Timeline::new(process_start));
    match config(args) {
        Ok(config) => vm::run(
            &config,
            timeline,
            report,
            &Vec::new(),
            vm::Attachment::Console,
        ),
        Err(e) => {
            exit::report(&e);
            exit::MOAT_FAILED
        }
    }
}

fn config(args: BootArgs) -> anyhow::Result<VmConfig> {
    let kernel = match args.kernel {
        Some(path) => path,
        None => assets::find(assets::KERNEL)?,
    };
    let initrd = match args.initrd {
        Some(path) => path,
        None => assets::find(assets::INITRAMFS)?,
    };
    // The first disk is the root, as it is: no overlay, writable unless marked `:ro`.
    let spec = LaunchSpec {
        version: LAUNCH_SPEC_VERSION,
        argv: args.command,
        root: (!args.disks.is_empty()).then(|| RootSpec {
            device: "/dev/vda".to_string(),
            overlay: Overlay::None,
            read_only: false,
        }),
        debug: args.debug_agent,
        channel: None,
        ..LaunchSpec::default()
    };
    Ok(VmConfig {
        kernel,
        initrd: Some(initrd),
        initrd_appendix: spec.to_initramfs(),
        cmdline: vm::kernel_cmdline(args.cmdline.as_deref()),
        vcpus: args.cpus,
        memory_mib: args.memory,
        disks: args.disks,
        vsock: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disks_are_read_write_unless_marked_ro() {
        assert_eq!(
            parse_disk("a.img").unwrap(),
            DiskConfig {
                path: "a.img".into(),
                read_only: false
            }
        );
        assert_eq!(
            parse_disk("a.img:ro").unwrap(),
            DiskConfig {
                path: "a.img".into(),
                read_only: true
            }
        );
        assert_eq!(
            parse_disk("a.img:rw").unwrap(),
            DiskConfig {
                path: "a.img".into(),
                read_only: false
            }
        );
        assert!(parse_disk(":ro").is_err());
    }
}
