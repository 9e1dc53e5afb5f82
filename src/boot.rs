//! `moat boot`: boot a kernel with the agent initramfs, optional disks, and run one command; or,
//! with `--bare`, boot a guest that is no Linux at all (the tiny benchmark guest).

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

Example: moat boot --disk rootfs.ext4:ro -- echo hello

--bare boots a guest that is not Linux and needs no agent, such as the tiny guest of moat bench:
it runs on PVM hosts too, and its exit status comes from the control port as usual.";

/// Flags of `moat boot`.
#[derive(Debug, Args)]
#[command(after_help = SEARCH_HELP)]
pub struct BootArgs {
    /// Guest kernel: an uncompressed vmlinux with a PVH entry [default: moat's own]
    #[arg(long, value_name = "PATH")]
    kernel: Option<PathBuf>,
    /// Initramfs whose /init is moat's agent [default: moat's own]
    #[arg(long, value_name = "PATH", conflicts_with = "bare")]
    initrd: Option<PathBuf>,
    /// Attach a disk (file or block device); the first one is the root filesystem. Append
    /// `:ro` to make it read-only. Repeatable.
    #[arg(
        long = "disk",
        value_name = "PATH[:ro]",
        value_parser = parse_disk,
        conflicts_with = "bare"
    )]
    disks: Vec<DiskConfig>,
    /// Boot --kernel as a bare guest: no initramfs, agent, disks or command (allowed on PVM)
    #[arg(long, requires = "kernel")]
    bare: bool,
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
    #[arg(long, conflicts_with = "bare")]
    debug_agent: bool,
    /// Command to run in the guest, after `--`
    #[arg(
        last = true,
        required_unless_present = "bare",
        conflicts_with = "bare",
        value_name = "COMMAND"
    )]
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
    if args.bare {
        return Ok(bare_config(args));
    }
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
        bare_guest: false,
    })
}

/// A bare guest gets only its kernel file, memory and vCPUs (and a command line, should it read
/// one).
// TODO(#5): VMM memory overhead with the tiny guest is 2.4 MiB RSS and 1.3 MiB PSS (static,
// size-optimized build), over the 2 MiB target by RSS: most of it is the binary's text, paged in
// 64 KiB at a time by fault-around; a separate, smaller binary for the VM path would shrink it.
fn bare_config(args: BootArgs) -> VmConfig {
    VmConfig {
        kernel: args.kernel.expect("clap requires --kernel with --bare"),
        initrd: None,
        initrd_appendix: Vec::new(),
        cmdline: args.cmdline.unwrap_or_default(),
        vcpus: args.cpus,
        memory_mib: args.memory,
        disks: Vec::new(),
        vsock: None,
        bare_guest: true,
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        boot: BootArgs,
    }

    #[test]
    fn a_bare_boot_needs_no_command_and_gives_no_initramfs() {
        let cli = Cli::try_parse_from(["moat", "--bare", "--kernel", "tiny.elf"]).unwrap();

        let config = config(cli.boot).unwrap();

        assert!(config.bare_guest);
        assert_eq!(config.initrd, None);
        assert_eq!(config.kernel, PathBuf::from("tiny.elf"));
    }

    #[test]
    fn a_bare_boot_refuses_a_command_or_an_initramfs() {
        let with_command = ["moat", "--bare", "--kernel", "k", "--", "true"];
        let with_initrd = ["moat", "--bare", "--kernel", "k", "--initrd", "i"];

        assert!(Cli::try_parse_from(with_command).is_err());
        assert!(Cli::try_parse_from(with_initrd).is_err());
    }

    #[test]
    fn a_bare_boot_needs_its_kernel() {
        assert!(Cli::try_parse_from(["moat", "--bare"]).is_err());
    }

    #[test]
    fn an_ordinary_boot_needs_a_command() {
        assert!(Cli::try_parse_from(["moat", "--kernel", "k"]).is_err());
    }

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
