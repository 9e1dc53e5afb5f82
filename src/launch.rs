//! `moat launch`: an image tarball to a workload running in its own micro-VM, with Docker's
//! flags and override rules.

use std::collections::HashMap;
use std::fs::File;
use std::io::IsTerminal;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use moat_agent_protocol::channel::ChannelSpec;
use moat_agent_protocol::{
    caps, is_clean_absolute, LaunchSpec, Overlay, RootSpec, VolumeSpec, LAUNCH_SPEC_VERSION,
};
use moat_images::cache::{self, BuildSource, Cache, Lookup};
use moat_images::{Archive, ImageConfig, Platform};
use moat_vmm::timeline::Timeline;
use moat_vmm::{DiskConfig, VmConfig, VsockConfig};

use crate::agent::{Agent, CONNECT_PATIENCE};
use crate::progress::TerminalProgress;
use crate::session::{self, RawTerminal, Sink, Stdio};
use crate::state::{self, Status, VmDir, VmState};
use crate::vm::{Attachment, HostPhases};
use crate::{assets, exit, units, vm};

/// The guest's vsock context id. Each VM has its own vsock device and host socket, so every
/// guest can have the same one: the lowest a guest may have (virtio 1.2 §5.10.4).
const GUEST_CID: u32 = 3;

const LAUNCH_HELP: &str = "\
The image comes from a tarball: `docker save`, `podman save`, `skopeo copy ... oci-archive:` or
any OCI image layout. It is unpacked once into a read-only root disk cached by image id (see
`moat images`); the workload writes to an overlay in guest memory (or on --scratch).

Examples:
  moat launch busybox.tar echo hello
  moat launch -e GREETING=hi -w /tmp -u app busybox.tar sh -c 'echo $GREETING from $(pwd)'
  moat launch -v /srv/pg.img:/var/lib/postgresql/data --scratch 2G postgres.tar";

/// Flags of `moat launch`, named as `docker run` names them.
#[derive(Debug, Args)]
#[command(after_help = LAUNCH_HELP)]
pub struct LaunchArgs {
    /// Set an environment variable (`KEY=VALUE`, or `KEY` to pass the host's value)
    #[arg(short = 'e', long = "env", value_name = "KEY[=VALUE]")]
    env: Vec<String>,
    /// Read environment variables from a file of `KEY=VALUE` lines
    #[arg(long = "env-file", value_name = "FILE")]
    env_files: Vec<PathBuf>,
    /// Override the image's entrypoint (an empty string clears it)
    #[arg(long, value_name = "COMMAND")]
    entrypoint: Option<String>,
    /// Working directory inside the guest
    #[arg(short = 'w', long, value_name = "DIR")]
    workdir: Option<String>,
    /// User to run as: `name|uid[:group|gid]`, resolved in the image
    #[arg(short = 'u', long, value_name = "USER[:GROUP]")]
    user: Option<String>,
    /// Guest hostname [default: the launch's random id]
    #[arg(long, value_name = "NAME")]
    hostname: Option<String>,
    /// DNS server for the guest's /etc/resolv.conf [default: the host's]
    #[arg(long = "dns", value_name = "IP")]
    dns: Vec<String>,
    /// Guest memory, e.g. 512m or 1g (bytes without a unit)
    #[arg(short = 'm', long, value_name = "SIZE", default_value = "256m", value_parser = units::parse_size)]
    memory: u64,
    /// Number of vCPUs (a fraction is rounded up)
    #[arg(long, value_name = "N", default_value = "1", value_parser = parse_cpus)]
    cpus: u8,
    /// Mount the root filesystem read-only
    #[arg(long)]
    read_only: bool,
    /// Add a capability to Docker's default set (`ALL` for every one)
    #[arg(long = "cap-add", value_name = "CAP")]
    cap_add: Vec<String>,
    /// Drop a capability from Docker's default set (`ALL` for every one)
    #[arg(long = "cap-drop", value_name = "CAP")]
    cap_drop: Vec<String>,
    /// Give the workload every capability
    #[arg(long)]
    privileged: bool,
    /// Attach a disk image or block device at a path: HOST:GUEST[:ro]
    #[arg(short = 'v', long = "volume", value_name = "HOST:GUEST[:ro]", value_parser = parse_volume)]
    volumes: Vec<Volume>,
    /// Mount an empty tmpfs at a path
    #[arg(long = "tmpfs", value_name = "PATH")]
    tmpfs: Vec<String>,
    /// Keep the writable layer on a sparse scratch disk of this size instead of in memory
    #[arg(long, value_name = "SIZE", value_parser = units::parse_size)]
    scratch: Option<u64>,
    /// Remove the VM when it exits (always the case without -d; with -d, keep it for `moat logs`
    /// and `moat ps -a` unless this is given)
    #[arg(long)]
    rm: bool,
    /// The image to run when the tarball holds several: REPO[:TAG]
    #[arg(long = "ref", value_name = "REPO[:TAG]")]
    reference: Option<String>,
    /// The platform to run from a multi-platform image [default: linux/amd64]
    #[arg(long, value_name = "OS/ARCH[/VARIANT]")]
    platform: Option<String>,
    /// Run in the background and print the VM's id
    #[arg(short = 'd', long)]
    detach: bool,
    /// Keep stdin open and copy it to the workload
    #[arg(short = 'i', long)]
    interactive: bool,
    /// Run the workload on a terminal (a pty in the guest)
    #[arg(short = 't', long)]
    tty: bool,
    /// Name the VM (for `moat ps`, `exec`, `logs`, `kill`, `stop`, `rm`)
    #[arg(long, value_name = "NAME", value_parser = parse_name)]
    name: Option<String>,
    /// Publish a port (not yet: needs virtio-net)
    #[arg(short = 'p', long = "publish", hide = true)]
    publish: Vec<String>,
    /// Guest kernel [default: moat's own]
    #[arg(long, value_name = "PATH", help_heading = "VM")]
    kernel: Option<PathBuf>,
    /// Agent initramfs [default: moat's own]
    #[arg(long, value_name = "PATH", help_heading = "VM")]
    initrd: Option<PathBuf>,
    /// Extra kernel command-line arguments
    #[arg(long, value_name = "ARGS", help_heading = "VM")]
    cmdline: Option<String>,
    /// Print the launch's phases and their timings on stderr when the VM ends
    #[arg(long, help_heading = "VM")]
    boot_report: bool,
    /// Let the agent log its steps on the console
    #[arg(long, help_heading = "VM")]
    debug_agent: bool,
    /// The image tarball
    #[arg(value_name = "IMAGE.tar")]
    image: PathBuf,
    /// Command and arguments, replacing the image's Cmd
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "COMMAND"
    )]
    command: Vec<String>,
}

/// A `-v HOST:GUEST[:ro]` volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Volume {
    host: PathBuf,
    guest: String,
    read_only: bool,
}

fn parse_volume(spec: &str) -> Result<Volume, String> {
    let (rest, read_only) = match spec.rsplit_once(':') {
        Some((rest, "ro")) => (rest, true),
        Some((rest, "rw")) => (rest, false),
        _ => (spec, false),
    };
    let Some((host, guest)) = rest.split_once(':') else {
        return Err("a volume is HOST:GUEST[:ro]".to_string());
    };
    if !host.starts_with('/') {
        return Err(format!("{host:?} must be an absolute host path"));
    }
    if !is_clean_absolute(guest) || guest == "/" {
        return Err(format!(
            "{guest:?} must be an absolute path below / in the guest"
        ));
    }
    Ok(Volume {
        host: PathBuf::from(host),
        guest: guest.to_string(),
        read_only,
    })
}

fn parse_cpus(text: &str) -> Result<u8, String> {
    let cpus: f64 = text
        .parse()
        .map_err(|_| format!("{text:?} is not a number"))?;
    let max = f64::from(moat_vmm::MAX_VCPUS);
    if !(cpus > 0.0 && cpus <= max) {
        return Err(format!("must be more than 0 and at most {max}"));
    }
    Ok(cpus.ceil() as u8)
}

/// Runs `moat launch`; returns the exit status.
pub fn run(args: LaunchArgs, process_start: Instant) -> u8 {
    let timeline = Arc::new(Timeline::new(process_start));
    let mut phases = HostPhases::new();
    let prepared = match prepare(&args, &timeline, &mut phases) {
        Ok(prepared) => prepared,
        Err(e) => {
            exit::report(&e);
            return exit::MOAT_FAILED;
        }
    };
    if args.detach {
        return detach(&args, prepared, timeline);
    }
    let stdio = Stdio {
        tty: args.tty,
        stdin: args.interactive,
    };
    let raw = RawTerminal::for_stdio(stdio);
    let console = Box::new(std::io::stderr());
    let status = run_vm(
        prepared,
        timeline,
        (args.boot_report, &phases),
        stdio,
        Sink::Terminal,
        console,
    );
    drop(raw);
    status
}

/// Runs the prepared VM with its workload attached over the agent channel, then records its
/// end in the VM's directory; returns the exit status. `report` is `--boot-report` and the
/// phases before the VM.
fn run_vm(
    prepared: Prepared,
    timeline: Arc<Timeline>,
    report: (bool, &HostPhases),
    stdio: Stdio,
    sink: Sink,
    console: Box<dyn std::io::Write + Send>,
) -> u8 {
    let attachment = Attachment::Channel {
        agent: Agent::new(&prepared.dir.socket()),
        stdio,
        sink,
        console,
    };
    let (print_report, phases) = report;
    let status = vm::run(&prepared.config, timeline, print_report, phases, attachment);
    prepared.dir.finish(status);
    status
}

/// `-d`: the VM runs in a child process of its own session, its workload's output goes to logs;
/// the id is printed once the child runs.
fn detach(args: &LaunchArgs, prepared: Prepared, timeline: Arc<Timeline>) -> u8 {
    if let Err(e) = only_thread() {
        exit::report(&e);
        return exit::MOAT_FAILED;
    }
    // SAFETY: this process has one thread (checked just above), so the child is a full copy
    // with no lock held by a thread that does not exist in it.
    match unsafe { libc::fork() } {
        -1 => {
            exit::report(&anyhow::anyhow!(
                "cannot start the VM's process: {}",
                std::io::Error::last_os_error()
            ));
            exit::MOAT_FAILED
        }
        0 => {
            let status = run_detached(args, prepared, timeline);
            let _ = exit::now(status);
            status
        }
        child => match wait_started(&prepared.dir, child) {
            Ok(()) => {
                println!("{}", prepared.dir.id());
                0
            }
            Err(status) => {
                prepared.dir.remove();
                status
            }
        },
    }
}

/// Waits until the agent of the VM in `child` answers; on failure, passes on the child's error
/// and returns the status it should end with.
fn wait_started(dir: &VmDir, child: libc::pid_t) -> Result<(), u8> {
    let fail = |e: anyhow::Error| {
        // SAFETY: kill has no memory-safety preconditions; the child is ours.
        unsafe { libc::kill(child, libc::SIGKILL) };
        exit::report(&e);
        exit::MOAT_FAILED
    };
    record_pid(dir, child).map_err(fail)?;
    let agent = Agent::new(&dir.socket());
    let deadline = Instant::now() + CONNECT_PATIENCE;
    loop {
        let mut status = 0;
        // SAFETY: waitpid writes only to `status`; the child is ours.
        if unsafe { libc::waitpid(child, &mut status, libc::WNOHANG) } == child {
            // The child said why on its log: pass it on.
            let log = std::fs::read_to_string(dir.moat_log()).unwrap_or_default();
            eprint!("{log}");
            let code = if libc::WIFEXITED(status) {
                libc::WEXITSTATUS(status) as u8
            } else {
                exit::MOAT_FAILED
            };
            return Err(code);
        }
        if agent.control(Duration::ZERO).is_ok() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(fail(anyhow::anyhow!(
                "the VM's agent did not answer within {CONNECT_PATIENCE:?}"
            )));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The child of `-d`: a session of its own, no terminal, the VM until it ends.
fn run_detached(args: &LaunchArgs, prepared: Prepared, timeline: Arc<Timeline>) -> u8 {
    // SAFETY: setsid has no preconditions; it detaches this process from the terminal.
    unsafe { libc::setsid() };
    detach_stdio(&prepared.dir);
    let console = File::create(prepared.dir.console_log())
        .map(|f| Box::new(f) as Box<dyn std::io::Write + Send>)
        .unwrap_or_else(|_| Box::new(std::io::sink()));
    // The workload's stdin stays open with -i, for nobody: there is no terminal to copy.
    let stdio = Stdio {
        tty: args.tty,
        stdin: false,
    };
    let sink = Sink::Log(prepared.dir.output_log());
    run_vm(
        prepared,
        timeline,
        (false, &Vec::new()),
        stdio,
        sink,
        console,
    )
}

/// Points stdin and stdout at /dev/null and stderr (moat's own messages) at the VM's log.
fn detach_stdio(dir: &VmDir) {
    let null = File::options().read(true).write(true).open("/dev/null");
    let log = File::create(dir.moat_log());
    if let (Ok(null), Ok(log)) = (null, log) {
        for (fd, to) in [(0, &null), (1, &null), (2, &log)] {
            // SAFETY: dup2 onto the standard descriptors, which this process owns.
            unsafe { libc::dup2(to.as_raw_fd(), fd) };
        }
    }
}

/// Writes the child's pid into the VM's state.
fn record_pid(dir: &VmDir, pid: libc::pid_t) -> anyhow::Result<()> {
    let state = dir.read()?;
    let pid_start = state::start_time(pid).context("the VM's process ended at once")?;
    dir.write(&VmState {
        pid,
        pid_start,
        ..state
    })
}

/// Fails unless this process runs a single thread (a fork copies only the calling one).
fn only_thread() -> anyhow::Result<()> {
    let threads = std::fs::read_dir("/proc/self/task")
        .context("cannot count this process's threads")?
        .count();
    if threads != 1 {
        bail!("cannot run in the background: moat runs {threads} threads (a bug)");
    }
    Ok(())
}

/// Checks a `--name`: Docker's alphabet, so it is a safe file name too.
fn parse_name(name: &str) -> Result<String, String> {
    let valid = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric())
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if valid {
        Ok(name.to_string())
    } else {
        Err("a name is 1 to 64 of [a-zA-Z0-9_.-], starting with a letter or digit".into())
    }
}

/// A VM ready to boot, and the files it holds open.
struct Prepared {
    config: VmConfig,
    /// The VM's runtime directory.
    dir: VmDir,
    /// The scratch disk, unlinked: the VM reaches it through /proc/self/fd, so nothing is left
    /// behind however moat ends.
    _scratch: Option<File>,
}

fn prepare(
    args: &LaunchArgs,
    timeline: &Timeline,
    phases: &mut HostPhases,
) -> anyhow::Result<Prepared> {
    refuse_unsupported(args)?;
    if let Some(name) = &args.name {
        if state::name_taken(name) {
            bail!(
                "the name {name:?} is taken by another VM (see `moat ps -a`; `moat rm` frees it)"
            );
        }
    }
    let platform = args
        .platform
        .as_deref()
        .map(|p| p.parse::<Platform>().map_err(anyhow::Error::msg))
        .transpose()
        .context("--platform")?;

    let archive = Archive::open(&args.image)?;
    let image = archive.select(args.reference.as_deref(), platform.as_ref())?;
    phases.push(("image-resolved".into(), timeline.now()));
    let image_name = image.repo_tags().first().cloned().unwrap_or_else(|| {
        let file = args.image.file_name().unwrap_or(args.image.as_os_str());
        file.to_string_lossy().into_owned()
    });

    let cache = Cache::open(cache::default_location())?;
    let id = image.id().to_string();
    let source = BuildSource {
        id: &id,
        repo_tags: image.repo_tags(),
        source: &args.image,
        config: image.raw_config(),
    };
    let unpack = Box::new(|tree: &Path| {
        let mut progress = TerminalProgress::new(std::io::stderr().is_terminal());
        let result = archive.unpack(&image, tree, &mut progress);
        progress.finish();
        result.map(drop).map_err(Into::into)
    });
    let (entry, lookup) = cache.get_or_build(&source, unpack)?;
    let phase = match lookup {
        Lookup::Hit => "cache-hit",
        Lookup::Built => "cache-built",
    };
    phases.push((phase.into(), timeline.now()));

    let mut disks = vec![DiskConfig {
        path: entry.disk(),
        read_only: true,
    }];
    let scratch = args.scratch.map(make_scratch).transpose()?;
    let overlay = match &scratch {
        Some(file) => {
            disks.push(DiskConfig {
                path: PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd())),
                read_only: false,
            });
            Overlay::Disk(device_name(1))
        }
        None => Overlay::Tmpfs,
    };
    let mut volumes = Vec::new();
    for volume in &args.volumes {
        check_volume(volume)?;
        volumes.push(VolumeSpec {
            device: device_name(disks.len()),
            target: volume.guest.clone(),
            read_only: volume.read_only,
        });
        disks.push(DiskConfig {
            path: volume.host.clone(),
            read_only: volume.read_only,
        });
    }
    for path in &args.tmpfs {
        if !is_clean_absolute(path) || path == "/" {
            bail!("--tmpfs {path:?}: must be an absolute path below /");
        }
    }

    let vm_id = random_id();
    let spec = LaunchSpec {
        version: LAUNCH_SPEC_VERSION,
        argv: command(image.config(), args)?,
        env: environment(image.config(), args)?,
        cwd: Some(workdir(image.config(), args)?),
        user: args
            .user
            .clone()
            .or_else(|| image.config().user.clone())
            .filter(|u| !u.is_empty()),
        hostname: Some(args.hostname.clone().unwrap_or_else(|| vm_id.clone())),
        dns: if args.dns.is_empty() {
            host_nameservers()
        } else {
            args.dns.clone()
        },
        root: Some(RootSpec {
            device: device_name(0),
            overlay,
            read_only: args.read_only,
        }),
        volumes,
        tmpfs: args.tmpfs.clone(),
        capabilities: capabilities(args)?,
        debug: args.debug_agent,
        channel: Some(ChannelSpec {
            tty: args.tty,
            stdin: args.interactive,
            size: session::pty_size(args.tty),
        }),
    };
    let kernel = match &args.kernel {
        Some(path) => path.clone(),
        None => assets::find(assets::KERNEL)?,
    };
    let initrd = match &args.initrd {
        Some(path) => path.clone(),
        None => assets::find(assets::INITRAMFS)?,
    };
    let dir = VmDir::create(&vm_id)?;
    let state = VmState {
        id: vm_id,
        name: args.name.clone(),
        image: image_name,
        command: spec.argv.clone(),
        pid: std::process::id() as i32,
        pid_start: state::start_time(std::process::id() as i32).unwrap_or_default(),
        created: state::now(),
        cpus: args.cpus,
        memory_mib: args.memory.div_ceil(1 << 20),
        status: Status::Running,
        auto_remove: !args.detach || args.rm,
    };
    if let Err(e) = dir.write(&state) {
        dir.remove();
        return Err(e);
    }
    Ok(Prepared {
        config: VmConfig {
            kernel,
            initrd: Some(initrd),
            initrd_appendix: spec.to_initramfs(),
            cmdline: vm::kernel_cmdline(args.cmdline.as_deref()),
            vcpus: args.cpus,
            memory_mib: args.memory.div_ceil(1 << 20),
            disks,
            vsock: Some(VsockConfig {
                guest_cid: GUEST_CID,
                uds_path: dir.socket(),
            }),
            bare_guest: false,
        },
        dir,
        _scratch: scratch,
    })
}

/// The capabilities the workload keeps: Docker's default set, `--cap-drop`s, then `--cap-add`s.
fn capabilities(args: &LaunchArgs) -> anyhow::Result<Option<Vec<String>>> {
    if args.privileged {
        return Ok(None);
    }
    let kept = caps::resolve(&args.cap_add, &args.cap_drop).map_err(anyhow::Error::msg)?;
    Ok(Some(kept.into_iter().map(str::to_string).collect()))
}

/// Docker flags whose machinery is not built yet: a clear refusal, never a silent no-op.
fn refuse_unsupported(args: &LaunchArgs) -> anyhow::Result<()> {
    if !args.publish.is_empty() {
        bail!("-p is not supported yet: guests have no network device");
    }
    Ok(())
}

/// The workload's argv by Docker's rules: `--entrypoint` replaces the image's entrypoint and
/// drops its Cmd; a command on the command line replaces Cmd.
fn command(config: &ImageConfig, args: &LaunchArgs) -> anyhow::Result<Vec<String>> {
    let entrypoint = match &args.entrypoint {
        Some(e) if e.is_empty() => Vec::new(),
        Some(e) => vec![e.clone()],
        None => config.entrypoint.clone().unwrap_or_default(),
    };
    let cmd = if !args.command.is_empty() {
        args.command.clone()
    } else if args.entrypoint.is_some() {
        Vec::new()
    } else {
        config.cmd.clone().unwrap_or_default()
    };
    let argv: Vec<String> = entrypoint.into_iter().chain(cmd).collect();
    if argv.is_empty() {
        bail!("no command: the image has no Entrypoint or Cmd, and none was given");
    }
    Ok(argv)
}

/// The image's Env, then `--env-file`s, then `-e`s: later settings win.
fn environment(config: &ImageConfig, args: &LaunchArgs) -> anyhow::Result<Vec<String>> {
    let host: HashMap<String, String> = std::env::vars().collect();
    let mut settings: Vec<String> = config.env.clone();
    for file in &args.env_files {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("--env-file {}", file.display()))?;
        for line in text.lines() {
            let line = line.trim_start();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            settings.extend(env_setting(line, &host)?);
        }
    }
    for setting in &args.env {
        settings.extend(env_setting(setting, &host)?);
    }
    // Keep the last setting of each key, in first-seen order.
    let mut env: Vec<String> = Vec::new();
    for setting in settings {
        let key = setting
            .split_once('=')
            .map_or(setting.as_str(), |(k, _)| k)
            .to_string();
        env.retain(|e| e.split_once('=').map(|(k, _)| k) != Some(key.as_str()));
        env.push(setting);
    }
    Ok(env)
}

/// `KEY=VALUE` as is; a bare `KEY` takes the host's value, or nothing when the host has none.
fn env_setting(text: &str, host: &HashMap<String, String>) -> anyhow::Result<Option<String>> {
    let key = text.split_once('=').map_or(text, |(k, _)| k);
    if key.is_empty() || key.contains(char::is_whitespace) || text.contains('\0') {
        bail!("invalid environment variable {text:?}");
    }
    if text.contains('=') {
        return Ok(Some(text.to_string()));
    }
    Ok(host.get(key).map(|value| format!("{key}={value}")))
}

fn workdir(config: &ImageConfig, args: &LaunchArgs) -> anyhow::Result<String> {
    let dir = args
        .workdir
        .clone()
        .or_else(|| config.working_dir.clone())
        .filter(|d| !d.is_empty())
        .unwrap_or_else(|| "/".to_string());
    if !dir.starts_with('/') {
        bail!("the working directory {dir:?} must be an absolute path");
    }
    Ok(dir)
}

/// A volume must be a disk image or a block device the user can open as asked.
fn check_volume(volume: &Volume) -> anyhow::Result<()> {
    use std::os::unix::fs::FileTypeExt;
    let what = || format!("volume {}", volume.host.display());
    let meta = std::fs::metadata(&volume.host).with_context(what)?;
    let kind = meta.file_type();
    if kind.is_dir() {
        // TODO(#3): host directory sharing comes with virtio-fs, its own issue.
        bail!(
            "{}: is a directory; moat attaches disk images and block devices as volumes \
             (directory sharing is not supported yet)",
            what()
        );
    }
    if !kind.is_file() && !kind.is_block_device() {
        bail!("{}: neither a disk image nor a block device", what());
    }
    File::options()
        .read(true)
        .write(!volume.read_only)
        .open(&volume.host)
        .with_context(what)?;
    Ok(())
}

/// A sparse ext4 scratch disk of `size` bytes for the overlay's upper layer, already unlinked.
fn make_scratch(size: u64) -> anyhow::Result<File> {
    const MIN: u64 = 16 << 20;
    if size < MIN {
        bail!("--scratch must be at least 16m");
    }
    let dir = std::env::var_os("TMPDIR").map_or_else(|| PathBuf::from("/var/tmp"), PathBuf::from);
    let path = dir.join(format!(
        "moat-scratch-{}-{}",
        std::process::id(),
        random_id()
    ));
    let file = File::options()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .with_context(|| format!("create scratch disk {}", path.display()))?;
    let result = file
        .set_len(size)
        .context("size the scratch disk")
        .and_then(|()| mkfs_ext4(&path));
    // Unlinked now: the open file keeps it alive exactly as long as moat runs.
    let _ = std::fs::remove_file(&path);
    result.map(|()| file)
}

fn mkfs_ext4(path: &Path) -> anyhow::Result<()> {
    let output = std::process::Command::new("mkfs.ext4")
        .args([
            "-q",
            "-F",
            "-E",
            "lazy_itable_init=1,lazy_journal_init=1",
            "-O",
            "^has_journal",
        ])
        .arg(path)
        .stdin(std::process::Stdio::null())
        .output()
        .context("run mkfs.ext4 for the scratch disk (apt-get install e2fsprogs)")?;
    if !output.status.success() {
        bail!(
            "mkfs.ext4 failed on the scratch disk: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

/// The guest's name for the disk at `index`: vda, vdb, ...
fn device_name(index: usize) -> String {
    let letter = char::from(b'a' + u8::try_from(index).expect("at most a few disks"));
    format!("/dev/vd{letter}")
}

/// Twelve random hex digits, as Docker shows a container id.
fn random_id() -> String {
    let mut bytes = [0u8; 6];
    // SAFETY: getrandom writes at most `bytes.len()` bytes into the live buffer.
    let n = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    if n != bytes.len() as isize {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        bytes[..4].copy_from_slice(&(nanos ^ std::process::id()).to_le_bytes());
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The host's name servers that a guest could reach: not loopback ones (Docker drops them too).
fn host_nameservers() -> Vec<String> {
    let text = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .map(|s| s.trim().to_string())
        .filter(|s| !s.starts_with("127.") && s != "::1" && !s.is_empty())
        .collect()
}

#[cfg(test)]
mod tests;
