//! The mounts the agent makes: the kernel's pseudo filesystems, the workload's root (the image
//! disk under an overlay whose upper layer is in memory or on a scratch disk), the switch to it,
//! and what a container expects inside it.

use std::ffi::CString;
use std::io;

use moat_agent_protocol::{Overlay, RootSpec, VolumeSpec};

/// Where the root is assembled before it becomes `/`.
const NEW_ROOT: &str = "/newroot";
/// Where the image disk is mounted under an overlay.
const LOWER: &str = "/moat/lower";
/// Where the overlay's writable layer lives (a tmpfs or the scratch disk).
const WRITABLE: &str = "/moat/rw";

/// Filesystems the agent tries on a disk, most likely first.
const DISK_FSTYPES: [&str; 2] = ["erofs", "ext4"];

/// Mounts /proc, /sys and /dev in the initramfs.
pub fn mount_base() -> io::Result<()> {
    let hardened = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    mount_fs("proc", "/proc", "proc", hardened, None)?;
    mount_fs("sysfs", "/sys", "sysfs", hardened, None)?;
    mount_fs("devtmpfs", "/dev", "devtmpfs", libc::MS_NOSUID, None)
}

/// Assembles the root at [`NEW_ROOT`]; returns a description for the debug log.
pub fn prepare_root(root: &RootSpec) -> Result<String, RootError> {
    match &root.overlay {
        Overlay::None => {
            let fstype = mount_disk(&root.device, NEW_ROOT, false).map_err(RootError::Disk)?;
            Ok(format!("{} ({fstype})", root.device))
        }
        Overlay::Tmpfs | Overlay::Disk(_) => {
            let fstype = mount_disk(&root.device, LOWER, true).map_err(RootError::Disk)?;
            let upper = match &root.overlay {
                Overlay::Disk(scratch) => {
                    std::fs::create_dir_all(WRITABLE).map_err(RootError::Writable)?;
                    mount(scratch, WRITABLE, Some("ext4"), libc::MS_NOATIME, None).map_err(
                        |e| RootError::Writable(annotate(e, &format!("mount {scratch}"))),
                    )?;
                    scratch.as_str()
                }
                _ => {
                    mount_fs(
                        "tmpfs",
                        WRITABLE,
                        "tmpfs",
                        libc::MS_NOATIME,
                        Some("mode=0755"),
                    )
                    .map_err(RootError::Writable)?;
                    "tmpfs"
                }
            };
            overlay().map_err(RootError::Writable)?;
            Ok(format!(
                "{} ({fstype}) under an overlay on {upper}",
                root.device
            ))
        }
    }
}

/// Why the root could not be assembled.
#[derive(Debug)]
pub enum RootError {
    /// The image disk did not mount.
    Disk(io::Error),
    /// The writable layer did not.
    Writable(io::Error),
}

fn overlay() -> io::Result<()> {
    let upper = format!("{WRITABLE}/upper");
    let work = format!("{WRITABLE}/work");
    std::fs::create_dir_all(&upper)?;
    std::fs::create_dir_all(&work)?;
    std::fs::create_dir_all(NEW_ROOT)?;
    let options = format!("lowerdir={LOWER},upperdir={upper},workdir={work}");
    mount("overlay", NEW_ROOT, Some("overlay"), 0, Some(&options))
        .map_err(|e| annotate(e, "mount the overlay"))
}

/// Makes [`NEW_ROOT`] the root, carrying /proc, /sys and /dev along.
pub fn switch_root() -> io::Result<()> {
    for dir in ["/proc", "/sys", "/dev"] {
        let target = format!("{NEW_ROOT}{dir}");
        // An image may lack the directory; a read-only root without it fails on the move.
        let _ = std::fs::create_dir_all(&target);
        mount(dir, &target, None, libc::MS_MOVE, None)
            .map_err(|e| annotate(e, &format!("move {dir} to the root disk")))?;
    }
    std::env::set_current_dir(NEW_ROOT)?;
    mount(".", "/", None, libc::MS_MOVE, None)?;
    chroot(".")?;
    std::env::set_current_dir("/")
}

/// Inside the new root: /dev/pts, /dev/shm, /dev/mqueue and the /dev/fd links a container has.
pub fn container_mounts() -> io::Result<()> {
    mount_fs(
        "devpts",
        "/dev/pts",
        "devpts",
        libc::MS_NOSUID | libc::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=0620,gid=5"),
    )?;
    let hardened = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    mount_fs("shm", "/dev/shm", "tmpfs", hardened, Some("mode=1777"))?;
    mount_fs("mqueue", "/dev/mqueue", "mqueue", hardened, None)?;
    for (link, target) in [
        ("/dev/fd", "/proc/self/fd"),
        ("/dev/stdin", "/proc/self/fd/0"),
        ("/dev/stdout", "/proc/self/fd/1"),
        ("/dev/stderr", "/proc/self/fd/2"),
    ] {
        let _ = std::os::unix::fs::symlink(target, link);
    }
    // The devpts instance's own ptmx, so ptys opened through /dev/ptmx live in /dev/pts.
    let _ = std::fs::remove_file("/dev/ptmx");
    let _ = std::os::unix::fs::symlink("pts/ptmx", "/dev/ptmx");
    Ok(())
}

/// Mounts a volume disk at its path in the (new) root, creating the directory when missing.
pub fn mount_volume(volume: &VolumeSpec) -> io::Result<&'static str> {
    std::fs::create_dir_all(&volume.target)
        .map_err(|e| annotate(e, &format!("create {}", volume.target)))?;
    mount_disk(&volume.device, &volume.target, volume.read_only)
}

/// Unmounts the volumes before the VM ends, so that a disk's filesystem is clean for its next
/// user (a journal left to replay makes a later read-only mount fail). A volume still busy is
/// remounted read-only instead, which also commits its journal.
pub fn unmount_volumes(volumes: &[VolumeSpec]) {
    for volume in volumes.iter().rev().filter(|v| !v.read_only) {
        let Ok(target) = cstring(&volume.target) else {
            continue;
        };
        // SAFETY: target is a valid NUL-terminated path alive for the call.
        if unsafe { libc::umount2(target.as_ptr(), 0) } != 0 {
            let _ = mount(
                &volume.device,
                &volume.target,
                None,
                libc::MS_REMOUNT | libc::MS_RDONLY,
                None,
            );
        }
    }
}

/// An empty tmpfs at `target` (Docker's `--tmpfs`).
pub fn mount_tmpfs(target: &str) -> io::Result<()> {
    mount_fs(
        "tmpfs",
        target,
        "tmpfs",
        libc::MS_NOSUID | libc::MS_NODEV,
        Some("mode=1777"),
    )
}

/// Makes the root mount read-only for the workload; mounts below it keep their own flags.
pub fn make_root_read_only() -> io::Result<()> {
    mount(
        "/",
        "/",
        None,
        libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY,
        None,
    )
    .map_err(|e| annotate(e, "remount / read-only"))
}

/// Mounts a block device at `target`, trying each known filesystem; returns the one that took.
///
/// A device the kernel marks read-only (virtio-blk's VIRTIO_BLK_F_RO) is mounted read-only from
/// the start: a read-write attempt would fail anyway, after logging an error on the console.
fn mount_disk(device: &str, target: &str, read_only: bool) -> io::Result<&'static str> {
    std::fs::create_dir_all(target)?;
    let flags = if read_only || is_read_only(device) {
        libc::MS_RDONLY
    } else {
        0
    };
    // Probing by trial makes the kernel log an error for every wrong guess: read the
    // superblock first, and fall back to trying only for a disk nothing here recognises.
    let candidates = match detect_fstype(device) {
        Some(fstype) => vec![fstype],
        None => DISK_FSTYPES.to_vec(),
    };
    let mut last_error = io::Error::from(io::ErrorKind::Unsupported);
    for fstype in candidates {
        // erofs is read-only by nature; asking for a writable mount only earns an error.
        let flags = if fstype == "erofs" {
            flags | libc::MS_RDONLY
        } else {
            flags
        };
        match mount(device, target, Some(fstype), flags, None) {
            Ok(()) => return Ok(fstype),
            Err(e) => last_error = e,
        }
        // A read-only ext4 whose journal needs replaying (its last writer never unmounted it)
        // cannot replay it on a read-only device: mount it as the journal last committed it.
        if fstype == "ext4" && flags & libc::MS_RDONLY != 0 {
            match mount(device, target, Some(fstype), flags, Some("noload")) {
                Ok(()) => return Ok(fstype),
                Err(e) => last_error = e,
            }
        }
    }
    Err(annotate(
        last_error,
        &format!("mount {device} (tried {})", DISK_FSTYPES.join(", ")),
    ))
}

/// The filesystem on `device`, from its superblock magic: EROFS and ext2/3/4 both keep theirs
/// in the superblock at byte 1024.
fn detect_fstype(device: &str) -> Option<&'static str> {
    use std::io::Read;
    let mut block = [0u8; 2048];
    std::fs::File::open(device)
        .ok()?
        .read_exact(&mut block)
        .ok()?;
    fstype_of(&block)
}

fn fstype_of(block: &[u8; 2048]) -> Option<&'static str> {
    const EROFS_MAGIC: [u8; 4] = 0xE0F5_E1E2u32.to_le_bytes();
    const EXT_MAGIC: [u8; 2] = 0xEF53u16.to_le_bytes();
    if block[1024..1028] == EROFS_MAGIC {
        Some("erofs")
    } else if block[1024 + 56..1024 + 58] == EXT_MAGIC {
        Some("ext4")
    } else {
        None
    }
}

/// Whether the kernel marks the block device read-only.
fn is_read_only(device: &str) -> bool {
    let name = device.rsplit('/').next().unwrap_or(device);
    std::fs::read_to_string(format!("/sys/class/block/{name}/ro")).is_ok_and(|ro| ro.trim() == "1")
}

/// Mounts a pseudo filesystem, creating the mount point when it is missing.
fn mount_fs(
    source: &str,
    target: &str,
    fstype: &str,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> io::Result<()> {
    // A read-only root may lack the directory and refuse to create it: the mount then says so.
    let _ = std::fs::create_dir_all(target);
    mount(source, target, Some(fstype), flags, data)
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

/// Prefixes an error with what was being done, keeping its kind.
pub fn annotate(error: io::Error, what: &str) -> io::Error {
    io::Error::new(error.kind(), format!("{what}: {error}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn superblock_magics_name_the_filesystem() {
        let mut block = [0u8; 2048];
        assert_eq!(fstype_of(&block), None);
        block[1024 + 56..1024 + 58].copy_from_slice(&[0x53, 0xef]);
        assert_eq!(fstype_of(&block), Some("ext4"));
        block[1024..1028].copy_from_slice(&[0xe2, 0xe1, 0xf5, 0xe0]);
        assert_eq!(fstype_of(&block), Some("erofs"));
    }
}
