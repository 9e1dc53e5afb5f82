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

fn main() -> ExitCode {
    let process_start = Instant::now();
    env_logger::Builder::from_env(env_logger::Env::new().filter_or("MOAT_LOG", "warn"))
        .format_timestamp_micros()
        .init();

    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return exit::usage_error(e),
    };
    let code = match cli.command {
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
