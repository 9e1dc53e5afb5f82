//! The tiny guest (`src/bench/tiny.rs`) booted by `moat boot --bare` on the host's own /dev/kvm.
//!
//! The guest is no Linux and takes no exception or interrupt, so it runs on hardware KVM and on
//! PVM alike: this test needs no nested harness. Without /dev/kvm it fails, saying why, unless
//! `MOAT_E2E_ALLOW_SKIP=1` lets it pass without booting.

#[allow(dead_code)]
#[path = "../src/bench/tiny.rs"]
mod tiny;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The guest runs for microseconds; this bound only catches a hang.
const TIMEOUT: Duration = Duration::from_secs(30);

fn tiny_elf() -> PathBuf {
    let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join("tiny.elf");
    tiny::write(&path).unwrap();
    path
}

/// Runs `moat` with `args`, killing it after [`TIMEOUT`].
fn moat(args: &[&std::ffi::OsStr]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_moat"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > TIMEOUT {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    child.wait_with_output().unwrap()
}

fn kvm_present() -> bool {
    if Path::new("/dev/kvm").exists() {
        return true;
    }
    let allow_skip = std::env::var("MOAT_E2E_ALLOW_SKIP").as_deref() == Ok("1");
    assert!(
        allow_skip,
        "/dev/kvm is missing: the tiny guest cannot boot (set MOAT_E2E_ALLOW_SKIP=1 to skip)"
    );
    eprintln!("skipped: /dev/kvm is missing and MOAT_E2E_ALLOW_SKIP=1");
    false
}

#[test]
fn the_tiny_guest_exits_zero_after_its_ready_marker() {
    if !kvm_present() {
        return;
    }
    let elf = tiny_elf();

    let output = moat(&[
        "boot".as_ref(),
        "--bare".as_ref(),
        "--kernel".as_ref(),
        elf.as_os_str(),
        "--boot-report".as_ref(),
    ]);

    let report = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "moat said: {report}");
    assert!(
        report.contains("agent-ready"),
        "no agent-ready in: {report}"
    );
    assert!(
        report.contains("workload-exited"),
        "no workload-exited in: {report}"
    );
}
