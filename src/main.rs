//! `moat`: run container workloads in micro-VMs.
//!
//! The binary is a thin command layer: each verb parses its flags and calls the `moat-vmm`
//! library. Errors are printed once, as one line with their whole cause chain, and every exit
//! status is either the workload's own or one of the codes in [`exit`].

mod agent;
mod assets;
mod bench;
mod boot;
mod exit;
mod images;
mod launch;
mod progress;
mod session;
mod signals;
mod state;
mod units;
mod vm;
mod vms;

use std::process::ExitCode;
use std::time::Instant;

use clap::{Parser, Subcommand};

/// KVM micro-VMs for container workloads: each workload gets its own guest kernel.
#[derive(Debug, Parser)]
#[command(name = "moat", version, about, long_about = None, after_help = exit::HELP)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run an image tarball's workload in its own micro-VM
    Launch(Box<launch::LaunchArgs>),
    /// List the cached root disks of images
    Images(images::ImagesArgs),
    /// Remove cached images
    Rmi(images::RmiArgs),
    /// Remove abandoned image builds (and with --all, every cached image)
    Prune(images::PruneArgs),
    /// List VMs
    Ps(vms::PsArgs),
    /// Run a new process in a running VM
    Exec(Box<vms::ExecArgs>),
    /// Print a VM's workload output
    Logs(vms::LogsArgs),
    /// Send a signal to VMs' workloads
    Kill(vms::KillArgs),
    /// Stop VMs: SIGTERM to the workload, then end the VM after a timeout
    Stop(vms::StopArgs),
    /// Remove ended VMs (with -f, running ones too)
    Rm(vms::RmArgs),
    /// Boot a guest kernel with moat's agent and run one command in it (low-level entry point)
    Boot(boot::BootArgs),
    /// Measure boot time and overhead, optionally side by side with Firecracker and QEMU
    Bench(Box<bench::BenchArgs>),
}

/// The verbs that start a VM, parsed on their own first: clap builds the arguments of every verb
/// to parse any one of them, which was most of moat's time before the VM exists (0.3 ms of a
/// tiny guest's 3.5 ms here, and 50 ms under the test harness's emulation). Anything this parser
/// does not accept as it is (another verb, `--help`, an error) goes to [`Cli`], so that help and
/// errors read the same.
#[derive(Debug, Parser)]
#[command(name = "moat")]
enum VmVerb {
    Launch(Box<launch::LaunchArgs>),
    Boot(boot::BootArgs),
}

impl From<VmVerb> for Command {
    fn from(verb: VmVerb) -> Self {
        match verb {
            VmVerb::Launch(args) => Command::Launch(args),
            VmVerb::Boot(args) => Command::Boot(args),
        }
    }
}

fn parse_command(args: Vec<std::ffi::OsString>) -> Result<Command, clap::Error> {
    if let Ok(verb) = VmVerb::try_parse_from(&args) {
        return Ok(verb.into());
    }
    Cli::try_parse_from(args).map(|cli| cli.command)
}

fn main() -> ExitCode {
    let process_start = Instant::now();
    env_logger::Builder::from_env(env_logger::Env::new().filter_or("MOAT_LOG", "warn"))
        .format_timestamp_micros()
        .init();

    let command = match parse_command(std::env::args_os().collect()) {
        Ok(command) => command,
        Err(e) => return exit::usage_error(e),
    };
    let code = match command {
        Command::Launch(args) => launch::run(*args, process_start),
        Command::Images(args) => images::list(args),
        Command::Rmi(args) => images::remove(args),
        Command::Prune(args) => images::prune(args),
        Command::Ps(args) => vms::ps(args),
        Command::Exec(args) => vms::exec(*args),
        Command::Logs(args) => vms::logs(args),
        Command::Kill(args) => vms::kill(args),
        Command::Stop(args) => vms::stop(args),
        Command::Rm(args) => vms::rm(args),
        Command::Boot(args) => boot::run(args, process_start),
        Command::Bench(args) => bench::run(*args),
    };
    exit::now(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Command, clap::Error> {
        parse_command(args.iter().map(Into::into).collect())
    }

    #[test]
    fn the_vm_verbs_parse_as_the_full_parser_does() {
        for args in [
            &["moat", "boot", "--bare", "--kernel", "tiny.elf"][..],
            &["moat", "launch", "-e", "A=1", "--rm", "img.tar", "--", "sh"][..],
        ] {
            let fast = format!(
                "{:?}",
                VmVerb::try_parse_from(args).map(Command::from).unwrap()
            );
            let full = format!("{:?}", Cli::try_parse_from(args).unwrap().command);
            assert_eq!(fast, full);
        }
    }

    #[test]
    fn other_verbs_help_and_errors_go_to_the_full_parser() {
        assert!(matches!(parse(&["moat", "ps", "-a"]), Ok(Command::Ps(_))));
        let help = parse(&["moat", "boot", "--help"]).unwrap_err();
        assert_eq!(help.kind(), clap::error::ErrorKind::DisplayHelp);
        assert!(help.to_string().contains("moat boot"));
        let wrong = parse(&["moat", "launch", "--bogus", "img.tar"]).unwrap_err();
        assert_eq!(wrong.kind(), clap::error::ErrorKind::UnknownArgument);
        assert!(parse(&["moat", "--version"]).is_err_and(|e| e.to_string().contains("0.1")));
    }
}
