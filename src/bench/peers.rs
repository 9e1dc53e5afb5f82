//! The runtimes moat is compared with: Firecracker and QEMU's `microvm` machine, booting the same
//! kernel, agent, launch spec, disk, command line, memory and vCPUs.
//!
//! The agent ends a peer's VM the way it ends any VM it cannot report to: the kernel resets.
//! Under Firecracker that is through the i8042 (`reboot=k`, moat's own setting); QEMU's
//! `microvm` has no i8042, so its guest resets by a triple fault instead (`reboot=t`), which ends
//! QEMU with `-no-reboot`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::Context;
use moat_agent_protocol::{cpio, LaunchSpec};

/// Firecracker's boot timer line (`--boot-timer`): the time from its process start to the guest's
/// write of 123 to its MMIO register at 0xc0000000 (the tiny guest's, and the agent's where the
/// guest kernel has /dev/mem).
const FIRECRACKER_BOOT_TIMER: &str = "Guest-boot-time =";

/// How a guest under QEMU `microvm` resets: a triple fault (it has no i8042).
const QEMU_REBOOT: &str = "reboot=t";

/// The peer binaries given with `--compare`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Peers {
    /// Firecracker's binary.
    pub firecracker: Option<PathBuf>,
    /// `qemu-system-x86_64`.
    pub qemu: Option<PathBuf>,
}

/// Parses `firecracker=PATH,qemu=PATH` (either or both).
pub fn parse_compare(text: &str) -> Result<Peers, String> {
    let mut peers = Peers::default();
    for item in text.split(',').filter(|item| !item.is_empty()) {
        let (name, path) = item
            .split_once('=')
            .ok_or_else(|| format!("{item:?}: give the peer as NAME=PATH"))?;
        let slot = match name {
            "firecracker" => &mut peers.firecracker,
            "qemu" => &mut peers.qemu,
            _ => return Err(format!("{name:?}: the peers are firecracker and qemu")),
        };
        if path.is_empty() {
            return Err(format!("{name}: needs the path of its binary"));
        }
        *slot = Some(PathBuf::from(path));
    }
    if peers == Peers::default() {
        return Err("name at least one peer: firecracker=PATH,qemu=PATH".to_string());
    }
    Ok(peers)
}

/// The peer's binary: `binary` itself when it names a path, else found on `PATH`; fails with one
/// line when there is no executable file.
pub fn resolve_binary(name: &str, binary: &Path) -> anyhow::Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;

    let executable = |path: &Path| {
        std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    let found = if binary.components().count() > 1 {
        executable(binary).then(|| binary.to_path_buf())
    } else {
        let path = std::env::var_os("PATH").unwrap_or_default();
        std::env::split_paths(&path)
            .map(|dir| dir.join(binary))
            .find(|candidate| executable(candidate))
    };
    found.with_context(|| {
        format!(
            "no {name} executable at {}: give its path with --compare {name}=PATH",
            binary.display()
        )
    })
}

/// What every peer boots: the guest moat boots, in the files a peer takes.
#[derive(Clone)]
pub struct PeerGuest {
    /// The guest kernel (an ELF with a PVH entry: both peers take it).
    pub kernel: PathBuf,
    /// The agent's initramfs with the launch spec's archive appended, as one file.
    pub initrd: Option<PathBuf>,
    /// The root disk, attached read-only as the first virtio-blk device.
    pub disk: Option<PathBuf>,
    /// The kernel command line, moat's own.
    pub cmdline: String,
    /// Guest memory.
    pub memory_mib: u64,
    /// vCPUs.
    pub vcpus: u8,
}

/// Writes the agent's initramfs with `spec` appended to `out`, as moat loads them: the spec's
/// archive starts at the next 4-byte boundary, where the kernel looks for a following archive.
pub fn write_initrd(agent_initrd: &Path, spec: &LaunchSpec, out: &Path) -> anyhow::Result<()> {
    let agent = std::fs::read(agent_initrd)
        .with_context(|| format!("cannot read {}", agent_initrd.display()))?;
    let initrd = cpio::concatenate(agent, &spec.to_initramfs());
    std::fs::write(out, initrd).with_context(|| format!("cannot write {}", out.display()))
}

/// Firecracker's configuration file for `guest` (its `--config-file` JSON).
pub fn firecracker_config(guest: &PeerGuest) -> serde_json::Value {
    let mut boot_source = serde_json::json!({ "kernel_image_path": guest.kernel });
    if let Some(initrd) = &guest.initrd {
        boot_source["initrd_path"] = serde_json::json!(initrd);
    }
    if !guest.cmdline.is_empty() {
        boot_source["boot_args"] = serde_json::json!(guest.cmdline);
    }
    // Not a root device: the agent mounts /dev/vda itself, as under moat.
    let drives: Vec<serde_json::Value> = guest
        .disk
        .iter()
        .map(|disk| {
            serde_json::json!({
                "drive_id": "root",
                "path_on_host": disk,
                "is_root_device": false,
                "is_read_only": true,
            })
        })
        .collect();
    serde_json::json!({
        "boot-source": boot_source,
        "drives": drives,
        "machine-config": {
            "vcpu_count": guest.vcpus,
            "mem_size_mib": guest.memory_mib,
        },
    })
}

/// Firecracker without its API socket, configured by `config`, with its boot timer.
pub fn firecracker_command(binary: &Path, config: &Path) -> Command {
    let mut command = Command::new(binary);
    command
        .args(["--no-api", "--boot-timer", "--config-file"])
        .arg(config);
    command
}

/// QEMU's `microvm` machine on KVM, with nothing the guest does not use: no option ROMs, no
/// RTC, no ACPI (the guest kernel has none; QEMU declares the virtio-mmio devices on the
/// command line instead), the serial console on stdout.
pub fn qemu_command(binary: &Path, guest: &PeerGuest) -> Command {
    let mut command = Command::new(binary);
    command
        .args([
            "-M",
            "microvm,x-option-roms=off,isa-serial=on,rtc=off,acpi=off",
        ])
        .args(["-nodefaults", "-no-user-config", "-display", "none"])
        .args(["-no-reboot", "-serial", "stdio"])
        .args(["-cpu", "host", "-enable-kvm"])
        .args(["-m", &guest.memory_mib.to_string()])
        .args(["-smp", &guest.vcpus.to_string()])
        .arg("-kernel")
        .arg(&guest.kernel);
    if let Some(initrd) = &guest.initrd {
        command.arg("-initrd").arg(initrd);
    }
    if !guest.cmdline.is_empty() {
        // The last `reboot=` wins: without it the kernel's reset would fall back to restarting
        // through the firmware, which boots the guest again.
        command.args(["-append", &format!("{} {QEMU_REBOOT}", guest.cmdline)]);
    }
    if let Some(disk) = &guest.disk {
        let drive = format!(
            "id=root,file={},format=raw,if=none,readonly=on",
            qemu_escape(disk)
        );
        command.args(["-drive", &drive]);
        command.args(["-device", "virtio-blk-device,drive=root"]);
    }
    command
}

/// A QEMU option value: a comma is written twice.
fn qemu_escape(path: &Path) -> String {
    path.display().to_string().replace(',', ",,")
}

/// Firecracker's boot time from its output: `Guest-boot-time =  1234567 us 1234 ms, ...`.
pub fn boot_timer(output: &str) -> Option<Duration> {
    output.lines().find_map(|line| {
        let (_, rest) = line.split_once(FIRECRACKER_BOOT_TIMER)?;
        let mut words = rest.split_whitespace();
        let micros = words.next()?.parse().ok()?;
        (words.next()? == "us").then(|| Duration::from_micros(micros))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compare_names_either_peer_or_both() {
        let both = parse_compare("firecracker=/opt/fc,qemu=/usr/bin/qemu-system-x86_64").unwrap();
        let one = parse_compare("qemu=/q").unwrap();

        assert_eq!(both.firecracker.as_deref(), Some(Path::new("/opt/fc")));
        assert_eq!(one.firecracker, None);
        assert_eq!(one.qemu.as_deref(), Some(Path::new("/q")));
    }

    #[test]
    fn compare_refuses_unknown_peers_and_empty_paths() {
        assert!(parse_compare("cloud-hypervisor=/x").is_err());
        assert!(parse_compare("qemu=").is_err());
        assert!(parse_compare("qemu").is_err());
        assert!(parse_compare("").is_err());
    }

    #[test]
    fn boot_timer_is_read_from_firecracker_log_line() {
        let log = "2026-12-04T07:00:00.000 [anonymous-instance:fc_vcpu 0] \
                   Guest-boot-time =  24123 us 24 ms,  20000 CPU us 20 CPU ms\n";

        assert_eq!(boot_timer(log), Some(Duration::from_micros(24123)));
        assert_eq!(boot_timer("no timer here\n"), None);
    }

    #[test]
    fn firecracker_config_names_the_same_guest() {
        let guest = PeerGuest {
            kernel: "/k".into(),
            initrd: Some("/i".into()),
            disk: Some("/d".into()),
            cmdline: "console=ttyS0".into(),
            memory_mib: 256,
            vcpus: 2,
        };

        let config = firecracker_config(&guest);

        assert_eq!(config["boot-source"]["kernel_image_path"], "/k");
        assert_eq!(config["drives"][0]["is_read_only"], true);
        assert_eq!(config["machine-config"]["mem_size_mib"], 256);
        assert_eq!(config["machine-config"]["vcpu_count"], 2);
    }

    #[test]
    fn firecracker_config_of_a_bare_guest_has_no_initrd_or_drives() {
        let guest = PeerGuest {
            kernel: "/tiny.elf".into(),
            initrd: None,
            disk: None,
            cmdline: String::new(),
            memory_mib: 256,
            vcpus: 1,
        };

        let config = firecracker_config(&guest);

        assert!(config["boot-source"].get("initrd_path").is_none());
        assert_eq!(config["drives"].as_array().map(Vec::len), Some(0));
    }
}
