//! Cross-check: moat's guest kernel and agent, booted by plain QEMU (`-M microvm`, software
//! emulation) instead of moat's VMM.
//!
//! When an end-to-end test fails, this one tells whether the kernel and agent are at fault
//! (this fails too) or moat's VMM is (this passes). It runs on any x86_64 host, KVM or not.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use moat_agent_protocol::{cpio, LaunchSpec, Overlay, RootSpec, LAUNCH_SPEC_VERSION};

/// QEMU under TCG boots the guest in seconds; this bound only catches a hang.
const TIMEOUT: Duration = Duration::from_secs(180);

fn build_file(name: &str) -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("build")
        .join(name);
    assert!(
        path.is_file(),
        "{} is missing: run `make all testdisk`",
        path.display()
    );
    path
}

fn qemu() -> &'static str {
    let qemu = "qemu-system-x86_64";
    let found = Command::new(qemu)
        .arg("--version")
        .stdout(Stdio::null())
        .status();
    assert!(
        found.is_ok_and(|s| s.success()),
        "{qemu} is missing: apt-get install qemu-system-x86"
    );
    qemu
}

/// Boots the busybox disk under QEMU microvm running `argv`; returns the console output.
fn boot_under_qemu(argv: &[&str]) -> String {
    let spec = LaunchSpec {
        version: LAUNCH_SPEC_VERSION,
        argv: argv.iter().map(|s| s.to_string()).collect(),
        root: Some(RootSpec {
            device: "/dev/vda".into(),
            overlay: Overlay::Tmpfs,
            read_only: false,
        }),
        ..LaunchSpec::default()
    };
    // QEMU takes one initrd file: the agent's archive with the spec's appended, as moat loads them.
    let agent = std::fs::read(build_file("moat-agent.cpio")).unwrap();
    let initrd = cpio::concatenate(agent, &spec.to_initramfs());
    let initrd_path =
        std::env::temp_dir().join(format!("moat-microvm-{}.cpio", std::process::id()));
    std::fs::write(&initrd_path, &initrd).unwrap();
    let cmdline = "console=ttyS0 reboot=k panic=-1 quiet";
    let disk = build_file("busybox.ext4");
    let mut child = Command::new(qemu())
        .args([
            "-M",
            "microvm,x-option-roms=off,acpi=off,rtc=on,isa-serial=on",
        ])
        .args(["-accel", "tcg", "-cpu", "max", "-m", "256", "-smp", "1"])
        .args([
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-no-reboot",
        ])
        .args(["-serial", "stdio"])
        .arg("-kernel")
        .arg(build_file("vmlinux"))
        .arg("-initrd")
        .arg(&initrd_path)
        .args(["-append", cmdline])
        .arg("-drive")
        .arg(format!(
            "id=root,file={},format=raw,if=none,readonly=on",
            disk.display()
        ))
        .args(["-device", "virtio-blk-device,drive=root"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("QEMU starts");

    let started = Instant::now();
    while child.try_wait().expect("QEMU can be waited for").is_none() {
        if started.elapsed() > TIMEOUT {
            let _ = child.kill();
            panic!("QEMU did not finish within {TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = std::fs::remove_file(&initrd_path);
    let mut console = String::new();
    child
        .stdout
        .take()
        .expect("stdout is piped")
        .read_to_string(&mut console)
        .unwrap();
    console
}

#[test]
fn kernel_and_agent_run_a_command_under_plain_qemu() {
    // Writing to / exercises the overlay on tmpfs over the read-only image disk.
    let console = boot_under_qemu(&[
        "sh",
        "-c",
        "echo hello > /greeting && echo $(cat /greeting)-from-qemu",
    ]);
    assert!(
        console
            .lines()
            .any(|l| l.trim_end_matches('\r') == "hello-from-qemu"),
        "the agent did not run the command under QEMU; console:\n{console}"
    );
}
