//! The mounts the agent makes: the kernel's pseudo filesystems, and the switch to the root disk.

use std::ffi::CString;
use std::io;

/// Where the root disk is mounted before it becomes `/`.
const NEW_ROOT: &str = "/newroot";

/// Filesystems the agent tries on a root disk, most likely first.
const ROOT_FSTYPES: [&str; 2] = ["ext4", "erofs"];

/// Mounts /proc, /sys and /dev in the initramfs.
pub fn mount_base() -> io::Result<()> {
    mount_fs(
        "proc",
        "/proc",
        "proc",
        libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
    )?;
    mount_fs(
        "sysfs",
        "/sys",
        "sysfs",
        libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
    )?;
    mount_fs("devtmpfs", "/dev", "devtmpfs", libc::MS_NOSUID)
}

/// Mounts `device` and makes it the root, carrying /proc, /sys and /dev along.
///
/// Returns the filesystem type that mounted. A read-only device is mounted read-only.
pub fn switch_root(device: &str) -> io::Result<&'static str> {
    let fstype = mount_root_disk(device)?;
    for dir in ["/proc", "/sys", "/dev"] {
        let target = format!("{NEW_ROOT}{dir}");
        mount(dir, &target, None, libc::MS_MOVE, None)
            .map_err(|e| annotate(e, &format!("move {dir} to the root disk")))?;
    }
    std::env::set_current_dir(NEW_ROOT)?;
    mount(".", "/", None, libc::MS_MOVE, None)?;
    chroot(".")?;
    std::env::set_current_dir("/")?;
    mount_fs(
        "devpts",
        "/dev/pts",
        "devpts",
        libc::MS_NOSUID | libc::MS_NOEXEC,
    )?;
    Ok(fstype)
}

fn mount_root_disk(device: &str) -> io::Result<&'static str> {
    std::fs::create_dir_all(NEW_ROOT)?;
    // Mount a read-only device read-only from the start: a read-write attempt would fail
    // anyway, after the kernel logged an error on the console.
    let flag_sets: &[libc::c_ulong] = if is_read_only(device) {
        &[libc::MS_RDONLY]
    } else {
        &[0, libc::MS_RDONLY]
    };
    let mut last_error = io::Error::from(io::ErrorKind::Unsupported);
    for fstype in ROOT_FSTYPES {
        for &flags in flag_sets {
            match mount(device, NEW_ROOT, Some(fstype), flags, None) {
                Ok(()) => return Ok(fstype),
                // A device that refuses a read-write mount may still mount read-only.
                Err(e) if matches!(e.raw_os_error(), Some(libc::EROFS | libc::EACCES)) => {
                    last_error = e;
                }
                Err(e) => {
                    last_error = e;
                    break;
                }
            }
        }
    }
    Err(annotate(last_error, &format!("mount {device}")))
}

/// Whether the kernel marks the block device read-only (virtio-blk's VIRTIO_BLK_F_RO).
fn is_read_only(device: &str) -> bool {
    let name = device.rsplit('/').next().unwrap_or(device);
    std::fs::read_to_string(format!("/sys/class/block/{name}/ro")).is_ok_and(|ro| ro.trim() == "1")
}

/// Mounts a pseudo filesystem, creating the mount point when it is missing.
fn mount_fs(source: &str, target: &str, fstype: &str, flags: libc::c_ulong) -> io::Result<()> {
    // A read-only root may lack the directory and refuse to create it: the mount then says so.
    let _ = std::fs::create_dir_all(target);
    mount(source, target, Some(fstype), flags, None)
        .map_err(|e| annotate(e, &format!("mount {fstype} on {target}")))
}

fn mount(
    source: &str,
    target: &str,
    fstype: Option<&str>,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> io::Result<()> {
    let source = cstring(source)?;
    let target = cstring(target)?;
    let fstype = fstype.map(cstring).transpose()?;
    let data = data.map(cstring).transpose()?;
    let ptr_or_null = |s: &Option<CString>| s.as_ref().map_or(std::ptr::null(), |s| s.as_ptr());
    // SAFETY: every pointer is a valid NUL-terminated string or null, alive for the call.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            ptr_or_null(&fstype),
            flags,
            ptr_or_null(&data).cast(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn chroot(path: &str) -> io::Result<()> {
    let path = cstring(path)?;
    // SAFETY: path is a valid NUL-terminated string.
    if unsafe { libc::chroot(path.as_ptr()) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn cstring(s: &str) -> io::Result<CString> {
    CString::new(s).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

fn annotate(error: io::Error, what: &str) -> io::Error {
    io::Error::new(error.kind(), format!("{what}: {error}"))
}
