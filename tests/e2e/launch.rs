//! `moat launch`: image tarballs run as workloads, with Docker's flags and override rules.

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::{Duration, Instant};

use libtest_mimic::Trial;

use crate::support::{expect_line, expect_status, explain, image, moat, run, Scratch};
use crate::{trials, Test};

const MOAT_FAILED: i32 = 125;

pub fn tests() -> Vec<Trial> {
    const TESTS: &[Test] = &[
        ("launch::echo_round_trip", echo_round_trip),
        ("launch::image_defaults_apply", image_defaults_apply),
        ("launch::exit_and_signal_statuses", exit_and_signal_statuses),
        ("launch::env_workdir_and_user", env_workdir_and_user),
        ("launch::unknown_user_is_refused", unknown_user_is_refused),
        (
            "launch::overlay_writes_leave_the_image_unchanged",
            overlay_writes_leave_the_image_unchanged,
        ),
        ("launch::read_only_refuses_writes", read_only_refuses_writes),
        (
            "launch::scratch_disk_holds_writes",
            scratch_disk_holds_writes,
        ),
        (
            "launch::raw_disk_volume_keeps_data",
            raw_disk_volume_keeps_data,
        ),
        (
            "launch::oci_layout_with_gzip_layers",
            oci_layout_with_gzip_layers,
        ),
        (
            "launch::zstd_layers_and_whiteouts",
            zstd_layers_and_whiteouts,
        ),
        (
            "launch::ctrl_c_reaches_the_workload",
            ctrl_c_reaches_the_workload,
        ),
        ("launch::container_mounts_and_etc", container_mounts_and_etc),
        (
            "launch::boot_report_shows_cache_phases",
            boot_report_shows_cache_phases,
        ),
        (
            "launch::capabilities_follow_docker",
            capabilities_follow_docker,
        ),
    ];
    trials(TESTS)
}

/// `moat launch [flags] IMAGE command...` with the suite's cache.
fn launch(
    flags: &[&str],
    image_name: &str,
    command: &[&str],
) -> Result<std::process::Output, String> {
    let mut cmd = moat();
    cmd.arg("launch")
        .args(flags)
        .arg(image(image_name)?)
        .args(command);
    run(cmd)
}

fn echo_round_trip() -> Result<(), String> {
    let output = launch(&[], "busybox.tar", &["echo", "hello", "from", "an image"])?;
    expect_status(&output, 0)?;
    expect_line(&output, "hello from an image")
}

/// layers-test.tar: Entrypoint `/bin/sh -c`, a Cmd that prints $GREETING, the working
/// directory and the user; WorkingDir /home/app, User app, Env GREETING=hello.
fn image_defaults_apply() -> Result<(), String> {
    let output = launch(&[], "layers-test.tar", &[])?;
    expect_status(&output, 0)?;
    expect_line(&output, "hello from /home/app as app")?;

    // A trailing command replaces Cmd and keeps the Entrypoint: here it is the script for
    // `/bin/sh -c`.
    let output = launch(&[], "layers-test.tar", &["echo $GREETING in $(pwd)"])?;
    expect_status(&output, 0)?;
    expect_line(&output, "hello in /home/app")?;

    // --entrypoint replaces the Entrypoint and drops the image's Cmd.
    let output = launch(&["--entrypoint", "id"], "layers-test.tar", &["-un"])?;
    expect_status(&output, 0)?;
    expect_line(&output, "app")
}

fn exit_and_signal_statuses() -> Result<(), String> {
    let output = launch(&[], "busybox.tar", &["sh", "-c", "exit 7"])?;
    expect_status(&output, 7)?;
    let output = launch(&[], "busybox.tar", &["sh", "-c", "kill -TERM $$"])?;
    expect_status(&output, 128 + 15)?;
    let output = launch(&[], "busybox.tar", &["no-such-command"])?;
    expect_status(&output, 127)
}

fn env_workdir_and_user() -> Result<(), String> {
    let scratch = Scratch::new("envfile");
    let env_file = scratch.path().join("env");
    std::fs::write(&env_file, "# comment\nFROM_FILE=file\nOVERRIDDEN=file\n").unwrap();
    let env_file = env_file.display().to_string();
    let output = launch(
        &[
            "-e",
            "OVERRIDDEN=flag",
            "--env-file",
            &env_file,
            "-e",
            "PLAIN=1",
            "-w",
            "/work/dir",
            "-u",
            "app",
        ],
        "busybox.tar",
        &[
            "sh",
            "-c",
            "echo $FROM_FILE-$OVERRIDDEN-$PLAIN $(pwd) $(id -u):$(id -g) $HOME",
        ],
    )?;
    expect_status(&output, 0)?;
    expect_line(&output, "file-flag-1 /work/dir 1000:1000 /home/app")?;

    let output = launch(
        &["-u", "1234:5678"],
        "busybox.tar",
        &["sh", "-c", "echo $(id -u):$(id -g)"],
    )?;
    expect_status(&output, 0)?;
    expect_line(&output, "1234:5678")
}

fn unknown_user_is_refused() -> Result<(), String> {
    let output = launch(&["-u", "nobody-here"], "busybox.tar", &["true"])?;
    expect_status(&output, MOAT_FAILED)?;
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    if all.contains("nobody-here") {
        Ok(())
    } else {
        Err(explain("the error does not name the user", &output))
    }
}

fn overlay_writes_leave_the_image_unchanged() -> Result<(), String> {
    // The first launch builds the cache entry; its disk is hashed before and after writes.
    let output = launch(&[], "busybox.tar", &["true"])?;
    expect_status(&output, 0)?;
    let disk = cached_disk("busybox.tar")?;
    let before = std::fs::read(&disk).map_err(|e| e.to_string())?;

    let output = launch(
        &[],
        "busybox.tar",
        &[
            "sh",
            "-c",
            "echo written > /etc/new-file && rm /bin/ls && cat /etc/new-file",
        ],
    )?;
    expect_status(&output, 0)?;
    expect_line(&output, "written")?;

    let output = launch(
        &[],
        "busybox.tar",
        &[
            "sh",
            "-c",
            "test ! -e /etc/new-file && test -e /bin/ls && echo pristine",
        ],
    )?;
    expect_status(&output, 0)?;
    expect_line(&output, "pristine")?;
    let after = std::fs::read(&disk).map_err(|e| e.to_string())?;
    if before != after {
        return Err(format!("the cached disk {} changed", disk.display()));
    }
    Ok(())
}

fn read_only_refuses_writes() -> Result<(), String> {
    let output = launch(
        &["--read-only", "--tmpfs", "/scratch"],
        "busybox.tar",
        &[
            "sh",
            "-c",
            "echo ok > /scratch/f && cat /scratch/f; touch /etc/x; echo status=$?",
        ],
    )?;
    expect_status(&output, 0)?;
    expect_line(&output, "ok")?;
    expect_line(&output, "status=1")
}

fn scratch_disk_holds_writes() -> Result<(), String> {
    // 64 MiB is more than a tmpfs upper layer gets from 96 MiB of guest RAM (half of it), so
    // the write succeeds only on the scratch disk.
    let write = [
        "sh",
        "-c",
        "dd if=/dev/zero of=/big bs=1M count=64 2>/dev/null && echo wrote-64m",
    ];
    let output = launch(&["-m", "96m"], "busybox.tar", &write)?;
    if String::from_utf8_lossy(&output.stdout).contains("wrote-64m") {
        return Err(explain(
            "64 MiB fit in the in-memory upper layer: the test proves nothing",
            &output,
        ));
    }
    let output = launch(&["--scratch", "256m", "-m", "96m"], "busybox.tar", &write)?;
    expect_status(&output, 0)?;
    expect_line(&output, "wrote-64m")
}

fn raw_disk_volume_keeps_data() -> Result<(), String> {
    let scratch = Scratch::new("volume");
    let disk = scratch.zero_file("data.img", 64 << 20);
    let status = std::process::Command::new("mkfs.ext4")
        .args(["-q", "-F"])
        .arg(&disk)
        .status()
        .map_err(|e| format!("mkfs.ext4: {e}"))?;
    if !status.success() {
        return Err("mkfs.ext4 failed".into());
    }
    let volume = format!("{}:/data", disk.display());
    let output = launch(
        &["-v", &volume],
        "busybox.tar",
        &["sh", "-c", "echo kept > /data/file && sync"],
    )?;
    expect_status(&output, 0)?;
    let output = launch(
        &["-v", &format!("{volume}:ro")],
        "busybox.tar",
        &[
            "sh",
            "-c",
            "cat /data/file; touch /data/other; echo status=$?",
        ],
    )?;
    expect_status(&output, 0)?;
    expect_line(&output, "kept")?;
    expect_line(&output, "status=1")
}

fn oci_layout_with_gzip_layers() -> Result<(), String> {
    let output = launch(
        &[],
        "busybox-oci.tar",
        &["sh", "-c", "echo oci $(cat /etc/passwd | wc -l)"],
    )?;
    expect_status(&output, 0)?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if stdout.lines().any(|l| l.starts_with("oci ")) {
        Ok(())
    } else {
        Err(explain("the OCI image did not run", &output))
    }
}

/// layers-test.tar: zstd layers; the upper one whites out /etc/lower-only and /gone,
/// overwrites /etc/overwritten and makes /opaque opaque (images/samples/layers-test-image.sh).
fn zstd_layers_and_whiteouts() -> Result<(), String> {
    let script = "test ! -e /etc/lower-only && echo lower-only-hidden; \
                  test ! -e /gone && echo gone-hidden; \
                  echo kept=$(cat /etc/kept) overwritten=$(cat /etc/overwritten); \
                  echo opaque: $(ls -A /opaque)";
    let output = launch(&[], "layers-test.tar", &[script])?;
    expect_status(&output, 0)?;
    expect_line(&output, "lower-only-hidden")?;
    expect_line(&output, "gone-hidden")?;
    expect_line(&output, "kept=lower overwritten=upper")?;
    expect_line(&output, "opaque: upper-file")
}

fn ctrl_c_reaches_the_workload() -> Result<(), String> {
    let mut cmd = moat();
    cmd.arg("launch")
        .arg(image("busybox.tar")?)
        .args([
            "sh",
            "-c",
            "trap 'echo got-sigint; exit 3' INT; echo ready; while :; do sleep 0.2; done",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| e.to_string())?;
    let pid = child.id() as i32;
    let stdout = child.stdout.take().expect("piped");
    let mut lines = BufReader::new(stdout).lines();
    let started = Instant::now();
    let mut seen = Vec::new();
    loop {
        match lines.next() {
            Some(Ok(line)) => {
                let ready = line == "ready";
                seen.push(line);
                if ready {
                    break;
                }
            }
            _ => {
                let _ = child.kill();
                return Err(format!("the workload never became ready; output: {seen:?}"));
            }
        }
        if started.elapsed() > Duration::from_secs(120) {
            let _ = child.kill();
            return Err("timed out waiting for the workload".into());
        }
    }
    // SAFETY: signalling our own child.
    unsafe { libc::kill(pid, libc::SIGINT) };
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let status = child.wait().map_err(|e| e.to_string())?;
    if status.code() != Some(3) || !rest.iter().any(|l| l == "got-sigint") {
        return Err(format!(
            "expected got-sigint and status 3; got {status:?}, output {rest:?}"
        ));
    }
    Ok(())
}

fn container_mounts_and_etc() -> Result<(), String> {
    let output = launch(
        &["--hostname", "moat-box"],
        "busybox.tar",
        &["sh", "-c", "hostname; grep -c moat-box /etc/hosts; for m in /proc /sys /dev/pts /dev/shm /dev/mqueue; do grep -q \" $m \" /proc/mounts && echo mounted $m; done; test -w /dev/shm && echo shm-writable"],
    )?;
    expect_status(&output, 0)?;
    expect_line(&output, "moat-box")?;
    expect_line(&output, "1")?;
    for m in ["/proc", "/sys", "/dev/pts", "/dev/shm", "/dev/mqueue"] {
        expect_line(&output, &format!("mounted {m}"))?;
    }
    expect_line(&output, "shm-writable")
}

fn boot_report_shows_cache_phases() -> Result<(), String> {
    let output = launch(&["--boot-report"], "busybox.tar", &["true"])?;
    expect_status(&output, 0)?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    eprintln!("{stderr}");
    for phase in [
        "image-resolved",
        "cache-",
        "kernel-entry",
        "agent-ready",
        "workload-started",
        "workload-exited",
    ] {
        if !stderr.lines().any(|l| l.trim_start().starts_with(phase)) {
            return Err(explain(&format!("the boot report lacks {phase}"), &output));
        }
    }
    Ok(())
}

fn capabilities_follow_docker() -> Result<(), String> {
    let show = ["sh", "-c", "grep -E '^Cap(Eff|Bnd)' /proc/self/status"];
    let output = launch(&[], "busybox.tar", &show)?;
    expect_status(&output, 0)?;
    expect_line(&output, "CapEff:\t00000000a80425fb")?;
    expect_line(&output, "CapBnd:\t00000000a80425fb")?;
    let output = launch(
        &["--cap-drop", "ALL", "--cap-add", "chown"],
        "busybox.tar",
        &show,
    )?;
    expect_status(&output, 0)?;
    expect_line(&output, "CapEff:\t0000000000000001")?;
    let output = launch(&["--privileged"], "busybox.tar", &show)?;
    expect_status(&output, 0)?;
    expect_line(&output, "CapEff:\t000001ffffffffff")?;
    // A non-root user holds no capabilities, and cannot regain dropped ones.
    let output = launch(&["-u", "app"], "busybox.tar", &show)?;
    expect_status(&output, 0)?;
    expect_line(&output, "CapEff:\t0000000000000000")?;
    expect_line(&output, "CapBnd:\t00000000a80425fb")
}

/// The cached root disk of an image, from `moat images`.
fn cached_disk(image_name: &str) -> Result<std::path::PathBuf, String> {
    let cache = crate::support::cache_dir();
    let tarball = image(image_name)?;
    for entry in std::fs::read_dir(cache.join("images")).map_err(|e| e.to_string())? {
        let dir = entry.map_err(|e| e.to_string())?.path();
        let meta = std::fs::read_to_string(dir.join("meta.json")).unwrap_or_default();
        if meta.contains(&*tarball.display().to_string()) {
            return Ok(dir.join("rootfs.img"));
        }
    }
    Err(format!(
        "no cache entry for {image_name} in {}",
        cache.display()
    ))
}
