//! `moat boot`: the kernel boots to the agent, commands run, statuses and disks behave.

use libtest_mimic::Trial;

use crate::support::{busybox_disk, expect_line, expect_status, explain, moat, run, Scratch};
use crate::{trials, Test};

/// moat's status when it cannot start the VM, and when the guest fails (see `src/exit.rs`).
const MOAT_FAILED: i32 = 125;
const GUEST_FAILED: i32 = 124;

pub fn tests() -> Vec<Trial> {
    const TESTS: &[Test] = &[
        ("boot::echo_prints_hello", echo_prints_hello),
        ("boot::exit_status_comes_back", exit_status_comes_back),
        (
            "boot::death_by_signal_is_128_plus_n",
            death_by_signal_is_128_plus_n,
        ),
        ("boot::command_not_found_is_127", command_not_found_is_127),
        (
            "boot::read_only_disk_refuses_writes",
            read_only_disk_refuses_writes,
        ),
        (
            "boot::writable_disk_keeps_guest_writes",
            writable_disk_keeps_guest_writes,
        ),
        ("boot::two_vcpus_are_visible", two_vcpus_are_visible),
        ("boot::boot_report_shows_phases", boot_report_shows_phases),
        (
            "boot::missing_kernel_is_one_line_error",
            missing_kernel_is_one_line_error,
        ),
        ("boot::non_elf_kernel_is_refused", non_elf_kernel_is_refused),
        (
            "boot::unmountable_root_is_agent_failure",
            unmountable_root_is_agent_failure,
        ),
        ("boot::kernel_panic_ends_the_vm", kernel_panic_ends_the_vm),
    ];
    trials(TESTS)
}

fn boot_busybox(extra: &[&str], command: &[&str]) -> Result<std::process::Output, String> {
    let disk = busybox_disk()?;
    let mut cmd = moat();
    cmd.arg("boot")
        .arg("--disk")
        .arg(format!("{}:ro", disk.display()));
    cmd.args(extra).arg("--").args(command);
    run(cmd)
}

fn echo_prints_hello() -> Result<(), String> {
    let output = boot_busybox(&[], &["echo", "hello"])?;
    expect_status(&output, 0)?;
    expect_line(&output, "hello")
}

fn exit_status_comes_back() -> Result<(), String> {
    let output = boot_busybox(&[], &["sh", "-c", "exit 7"])?;
    expect_status(&output, 7)
}

fn death_by_signal_is_128_plus_n() -> Result<(), String> {
    let output = boot_busybox(&[], &["sh", "-c", "kill -9 $$"])?;
    expect_status(&output, 128 + 9)
}

fn command_not_found_is_127() -> Result<(), String> {
    let output = boot_busybox(&[], &["no-such-command"])?;
    expect_status(&output, 127)
}

fn read_only_disk_refuses_writes() -> Result<(), String> {
    let scratch = Scratch::new("ro");
    let data = scratch.zero_file("data.img", 1 << 20);
    let disk = format!("{}:ro", data.display());
    // Writes through the filesystem and to the raw device both fail; each failure is reported.
    let script = "touch /new-file && echo root-written; \
                  dd if=/dev/zero of=/dev/vdb bs=512 count=1 2>/dev/null && echo vdb-written; \
                  echo checked";
    let output = boot_busybox(&["--disk", &disk], &["sh", "-c", script])?;
    expect_status(&output, 0)?;
    expect_line(&output, "checked")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if stdout.contains("root-written") || stdout.contains("vdb-written") {
        return Err(explain("a read-only disk accepted a write", &output));
    }
    let bytes = std::fs::read(&data).map_err(|e| e.to_string())?;
    if bytes.iter().any(|&b| b != 0) {
        return Err("the read-only disk's file changed on the host".into());
    }
    Ok(())
}

fn writable_disk_keeps_guest_writes() -> Result<(), String> {
    let scratch = Scratch::new("rw");
    let data = scratch.zero_file("data.img", 1 << 20);
    let disk = data.display().to_string();
    let script = "printf moat-was-here | dd of=/dev/vdb bs=512 seek=3 conv=sync,fsync 2>/dev/null";
    let output = boot_busybox(&["--disk", &disk], &["sh", "-c", script])?;
    expect_status(&output, 0)?;
    let bytes = std::fs::read(&data).map_err(|e| e.to_string())?;
    let at = 3 * 512;
    if &bytes[at..at + 13] != b"moat-was-here" {
        return Err(explain(
            "the guest's write did not reach the disk file",
            &output,
        ));
    }
    Ok(())
}

fn two_vcpus_are_visible() -> Result<(), String> {
    let output = boot_busybox(
        &["--cpus", "2"],
        &["grep", "-c", "^processor", "/proc/cpuinfo"],
    )?;
    expect_status(&output, 0)?;
    expect_line(&output, "2")
}

fn boot_report_shows_phases() -> Result<(), String> {
    let output = boot_busybox(&["--boot-report"], &["true"])?;
    expect_status(&output, 0)?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    // Shown in the test log on purpose: this is where boot times are measured.
    eprintln!("{stderr}");
    for phase in [
        "vm-created",
        "memory-ready",
        "kernel-entry",
        "agent-ready",
        "workload-exited",
    ] {
        if !stderr.lines().any(|l| l.trim_start().starts_with(phase)) {
            return Err(explain(&format!("the boot report lacks {phase}"), &output));
        }
    }
    Ok(())
}

fn missing_kernel_is_one_line_error() -> Result<(), String> {
    let mut cmd = moat();
    cmd.args(["boot", "--kernel", "/nonexistent/vmlinux", "--", "true"]);
    let output = run(cmd)?;
    expect_status(&output, MOAT_FAILED)?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    if stderr.lines().count() != 1 || !stderr.contains("/nonexistent/vmlinux") {
        return Err(explain("expected one line naming the kernel", &output));
    }
    Ok(())
}

fn non_elf_kernel_is_refused() -> Result<(), String> {
    let scratch = Scratch::new("notelf");
    let not_elf = scratch.zero_file("vmlinux", 4096);
    let mut cmd = moat();
    cmd.arg("boot")
        .arg("--kernel")
        .arg(&not_elf)
        .args(["--", "true"]);
    let output = run(cmd)?;
    expect_status(&output, MOAT_FAILED)?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !stderr.contains("cannot load kernel") {
        return Err(explain("expected a kernel load error", &output));
    }
    Ok(())
}

fn unmountable_root_is_agent_failure() -> Result<(), String> {
    let scratch = Scratch::new("badroot");
    let blank = scratch.zero_file("blank.img", 1 << 20);
    let mut cmd = moat();
    cmd.arg("boot")
        .arg("--disk")
        .arg(&blank)
        .args(["--", "true"]);
    let output = run(cmd)?;
    expect_status(&output, GUEST_FAILED)?;
    if !String::from_utf8_lossy(&output.stderr).contains("could not mount the root disk") {
        return Err(explain("expected the agent's root mount failure", &output));
    }
    Ok(())
}

fn kernel_panic_ends_the_vm() -> Result<(), String> {
    // An empty initramfs has no /init and no root= either: the kernel panics, and with
    // panic=-1 and reboot=k the reset must end the VM rather than hang it.
    let scratch = Scratch::new("panic");
    let empty = scratch.zero_file("empty.cpio", 0);
    let mut cmd = moat();
    cmd.arg("boot")
        .arg("--initrd")
        .arg(&empty)
        .args(["--", "true"]);
    let output = run(cmd)?;
    expect_status(&output, GUEST_FAILED)?;
    if !String::from_utf8_lossy(&output.stderr).contains("reset before the workload finished") {
        return Err(explain("expected the guest reset to be reported", &output));
    }
    Ok(())
}
