//! Layers applied on top of each other: whiteouts, links, replacements, metadata.

use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;

use super::support::*;
use crate::{Archive, Digest, Progress};

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

fn exists(path: &Path) -> bool {
    fs::symlink_metadata(path).is_ok()
}

fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

#[test]
fn whiteout_hides_a_lower_file_and_never_appears() {
    let dest = tmp();
    let lower = Tar::new().file("etc/a", b"1").file("etc/b", b"2").finish();
    let upper = Tar::new().file("etc/.wh.a", b"").finish();

    let stats = apply(dest.path(), &[lower, upper]).unwrap();

    assert_eq!(names(&dest.path().join("etc")), ["b"]);
    assert_eq!(stats.whiteouts, 1);
}

#[test]
fn whiteout_removes_a_whole_directory() {
    let dest = tmp();
    let lower = Tar::new()
        .dir("d/")
        .file("d/x", b"")
        .dir("d/sub/")
        .file("d/sub/y", b"")
        .finish();
    let upper = Tar::new().file(".wh.d", b"").finish();

    apply(dest.path(), &[lower, upper]).unwrap();

    assert!(names(dest.path()).is_empty());
}

#[test]
fn whiteout_spares_its_own_layer() {
    let dest = tmp();
    let lower = Tar::new().file("a", b"old").finish();
    let upper = Tar::new().file("a", b"new").file(".wh.a", b"").finish();

    apply(dest.path(), &[lower, upper]).unwrap();

    assert_eq!(fs::read(dest.path().join("a")).unwrap(), b"new");
}

#[test]
fn opaque_directory_hides_lower_content_only() {
    let dest = tmp();
    let lower = Tar::new()
        .dir("d/")
        .file("d/x", b"")
        .dir("d/sub/")
        .file("d/sub/old", b"")
        .finish();
    let upper = Tar::new()
        .dir("d/")
        .dir("d/sub/")
        .file("d/sub/new", b"")
        .file("d/.wh..wh..opq", b"")
        .file("d/z", b"")
        .finish();

    apply(dest.path(), &[lower, upper]).unwrap();

    assert_eq!(names(&dest.path().join("d")), ["sub", "z"]);
    assert_eq!(names(&dest.path().join("d/sub")), ["new"]);
}

#[test]
fn aufs_metadata_is_skipped() {
    let dest = tmp();
    let layer = Tar::new()
        .dir(".wh..wh.plnk/")
        .file(".wh..wh.plnk/1.2", b"")
        .file("a", b"")
        .finish();

    apply(dest.path(), &[layer]).unwrap();

    assert_eq!(names(dest.path()), ["a"]);
}

#[test]
fn hard_link_shares_the_inode() {
    let dest = tmp();
    let layer = Tar::new()
        .file("bin/busybox", b"elf")
        .hard_link("bin/sh", "bin/busybox")
        .finish();

    apply(dest.path(), &[layer]).unwrap();

    let a = fs::metadata(dest.path().join("bin/busybox")).unwrap();
    let b = fs::metadata(dest.path().join("bin/sh")).unwrap();
    assert_eq!((a.ino(), a.nlink()), (b.ino(), 2));
}

#[test]
fn hard_link_to_a_lower_layer_file_works() {
    let dest = tmp();
    let lower = Tar::new().file("a", b"x").finish();
    let upper = Tar::new().hard_link("b", "./a").finish();

    apply(dest.path(), &[lower, upper]).unwrap();

    assert_eq!(fs::read(dest.path().join("b")).unwrap(), b"x");
}

#[test]
fn symlink_target_is_kept_verbatim() {
    let dest = tmp();
    let layer = Tar::new()
        .symlink("lib64", "/usr/lib/../lib64")
        .symlink("rel", "../nowhere")
        .finish();

    apply(dest.path(), &[layer]).unwrap();

    assert_eq!(
        fs::read_link(dest.path().join("lib64"))
            .unwrap()
            .as_os_str(),
        "/usr/lib/../lib64"
    );
    assert_eq!(
        fs::read_link(dest.path().join("rel")).unwrap().as_os_str(),
        "../nowhere"
    );
}

#[test]
fn file_replaces_directory_and_directory_replaces_file() {
    let dest = tmp();
    let lower = Tar::new()
        .dir("a/")
        .file("a/inner", b"")
        .file("b", b"file")
        .finish();
    let upper = Tar::new()
        .file("a", b"now a file")
        .dir("b/")
        .file("b/inner", b"")
        .finish();

    apply(dest.path(), &[lower, upper]).unwrap();

    assert_eq!(fs::read(dest.path().join("a")).unwrap(), b"now a file");
    assert_eq!(names(&dest.path().join("b")), ["inner"]);
}

#[test]
fn symlink_replaces_directory_and_directory_merges_with_directory() {
    let dest = tmp();
    let lower = Tar::new()
        .dir("a/")
        .file("a/x", b"")
        .dir("m/")
        .file("m/lower", b"")
        .finish();
    let upper = Tar::new()
        .symlink("a", "elsewhere")
        .dir("m/")
        .file("m/upper", b"")
        .finish();

    apply(dest.path(), &[lower, upper]).unwrap();

    assert!(fs::symlink_metadata(dest.path().join("a"))
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(names(&dest.path().join("m")), ["lower", "upper"]);
}

#[test]
fn file_over_symlink_replaces_the_link_not_its_target() {
    let dest = tmp();
    let lower = Tar::new()
        .file("target", b"keep")
        .symlink("link", "target")
        .finish();
    let upper = Tar::new().file("link", b"new").finish();

    apply(dest.path(), &[lower, upper]).unwrap();

    assert_eq!(fs::read(dest.path().join("target")).unwrap(), b"keep");
    assert!(fs::symlink_metadata(dest.path().join("link"))
        .unwrap()
        .is_file());
}

#[test]
fn modes_including_setuid_and_sticky_are_kept() {
    let dest = tmp();
    let layer = Tar::new()
        .entry(tar::EntryType::Regular, "bin/su", None, 0o4755, b"")
        .entry(tar::EntryType::Directory, "tmp/", None, 0o1777, b"")
        .entry(tar::EntryType::Regular, "secret", None, 0o600, b"")
        .finish();

    apply(dest.path(), &[layer]).unwrap();

    let mode = |p: &str| {
        fs::symlink_metadata(dest.path().join(p))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777
    };
    assert_eq!(mode("bin/su"), 0o4755);
    assert_eq!(mode("tmp"), 0o1777);
    assert_eq!(mode("secret"), 0o600);
    // Parents a layer leaves out are created 0755.
    assert_eq!(mode("bin"), 0o755);
}

#[test]
fn mtimes_are_kept_for_files_links_and_directories() {
    let dest = tmp();
    let layer = Tar::new()
        .dir("d/")
        .file("d/f", b"x")
        .symlink("d/l", "f")
        .finish();

    apply(dest.path(), &[layer]).unwrap();

    for path in ["d", "d/f", "d/l"] {
        let meta = fs::symlink_metadata(dest.path().join(path)).unwrap();
        assert_eq!(meta.mtime(), MTIME as i64, "{path}");
    }
}

#[test]
fn pax_mtime_with_fraction_is_kept() {
    let dest = tmp();
    let layer = Tar::new()
        .pax(&[("mtime", b"1234567890.5")])
        .file("f", b"")
        .finish();

    apply(dest.path(), &[layer]).unwrap();

    let meta = fs::metadata(dest.path().join("f")).unwrap();
    assert_eq!(
        (meta.mtime(), meta.mtime_nsec()),
        (1_234_567_890, 500_000_000)
    );
}

#[test]
fn read_only_lower_directory_still_takes_new_entries() {
    let dest = tmp();
    let lower = Tar::new()
        .entry(tar::EntryType::Directory, "ro/", None, 0o555, b"")
        .finish();
    let upper = Tar::new().file("ro/new", b"").finish();

    apply(dest.path(), &[lower, upper]).unwrap();

    assert!(exists(&dest.path().join("ro/new")));
    assert_eq!(
        fs::metadata(dest.path().join("ro"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o555
    );
}

fn get_xattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    let path = CString::new(path.as_os_str().as_bytes()).unwrap();
    let name = CString::new(name).unwrap();
    let mut buf = vec![0u8; 256];
    // SAFETY: both strings are NUL-terminated; `buf` is writable for its length.
    let len = unsafe {
        libc::lgetxattr(
            path.as_ptr(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    let len = usize::try_from(len).ok()?;
    buf.truncate(len);
    Some(buf)
}

#[test]
fn user_xattrs_are_kept_where_the_filesystem_has_them() {
    let dest = tmp();
    let layer = Tar::new()
        .pax(&[("SCHILY.xattr.user.moat", b"v\x00\x01")])
        .file("f", b"")
        .finish();

    let stats = apply(dest.path(), &[layer]).unwrap();

    match get_xattr(&dest.path().join("f"), "user.moat") {
        Some(value) => assert_eq!(value, b"v\x00\x01"),
        // tmpfs before 6.6 and some overlays have no user xattrs: skipped, counted, not fatal.
        None => assert_eq!(stats.skipped_xattrs, 1),
    }
}

#[test]
fn file_capabilities_are_kept_when_root() {
    if !is_root() {
        return;
    }
    let dest = tmp();
    // VFS_CAP_REVISION_2 with cap_net_raw (bit 13) permitted and effective (linux/capability.h).
    let cap: &[u8] = &[
        1, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ];
    let layer = Tar::new()
        .pax(&[("SCHILY.xattr.security.capability", cap)])
        .file("bin/ping", b"elf")
        .finish();

    let stats = apply(dest.path(), &[layer]).unwrap();

    if stats.skipped_xattrs == 0 {
        assert_eq!(
            get_xattr(&dest.path().join("bin/ping"), "security.capability").unwrap(),
            cap
        );
    }
}

#[test]
fn ownership_is_kept_when_root() {
    if !is_root() {
        return;
    }
    let dest = tmp();
    let mut tar = tar::Builder::new(Vec::new());
    for (name, kind, uid) in [
        ("d", tar::EntryType::Directory, 1000),
        ("d/f", tar::EntryType::Regular, 1001),
    ] {
        let mut header = tar::Header::new_gnu();
        header.set_path(name).unwrap();
        header.set_entry_type(kind);
        header.set_mode(0o755);
        header.set_uid(uid);
        header.set_gid(uid + 1);
        header.set_size(0);
        header.set_cksum();
        tar.append(&header, &b""[..]).unwrap();
    }
    let mut link = tar::Header::new_gnu();
    link.set_path("d/l").unwrap();
    link.set_entry_type(tar::EntryType::Symlink);
    link.set_link_name("f").unwrap();
    link.set_uid(1002);
    link.set_gid(1003);
    link.set_size(0);
    link.set_cksum();
    tar.append(&link, &b""[..]).unwrap();

    apply(dest.path(), &[tar.into_inner().unwrap()]).unwrap();

    let owner = |p: &str| {
        let meta = fs::symlink_metadata(dest.path().join(p)).unwrap();
        (meta.uid(), meta.gid())
    };
    assert_eq!(owner("d"), (1000, 1001));
    assert_eq!(owner("d/f"), (1001, 1002));
    assert_eq!(owner("d/l"), (1002, 1003));
}

#[test]
fn devices_are_created_as_root_and_skipped_otherwise() {
    let dest = tmp();
    let mut header = tar::Header::new_gnu();
    header.set_path("dev/null").unwrap();
    header.set_entry_type(tar::EntryType::Char);
    header.set_mode(0o666);
    // Linux's /dev/null is character device 1:3 (Documentation/admin-guide/devices.txt).
    header.set_device_major(1).unwrap();
    header.set_device_minor(3).unwrap();
    header.set_size(0);
    header.set_cksum();
    let mut tar = tar::Builder::new(Vec::new());
    tar.append(&header, &b""[..]).unwrap();
    let layer = tar.into_inner().unwrap();

    let stats = apply(dest.path(), &[layer]).unwrap();

    let node = dest.path().join("dev/null");
    if stats.skipped_devices == 0 {
        let meta = fs::metadata(&node).unwrap();
        assert!(meta.file_type().is_char_device());
        assert_eq!(meta.rdev(), libc::makedev(1, 3));
        assert_eq!(meta.permissions().mode() & 0o777, 0o666);
    } else {
        assert!(!exists(&node));
    }
}

#[test]
fn fifos_are_created() {
    let dest = tmp();
    let layer = Tar::new()
        .entry(tar::EntryType::Fifo, "run/pipe", None, 0o620, b"")
        .finish();

    apply(dest.path(), &[layer]).unwrap();

    let meta = fs::symlink_metadata(dest.path().join("run/pipe")).unwrap();
    assert!(meta.file_type().is_fifo());
    assert_eq!(meta.permissions().mode() & 0o777, 0o620);
}

#[test]
fn long_names_and_zero_filled_files_survive() {
    let dest = tmp();
    let long = format!("{}/file", "d".repeat(150));
    let zeros = vec![0u8; 300_000];
    let layer = Tar::new()
        .long_file(&long, b"deep")
        .file("zeros", &zeros)
        .finish();

    apply(dest.path(), &[layer]).unwrap();

    assert_eq!(fs::read(dest.path().join(&long)).unwrap(), b"deep");
    assert_eq!(fs::read(dest.path().join("zeros")).unwrap(), zeros);
}

#[test]
fn root_directory_entry_is_accepted() {
    let dest = tmp();
    let layer = Tar::new()
        .entry(tar::EntryType::Directory, "./", None, 0o755, b"")
        .file("./a", b"")
        .finish();

    apply(dest.path(), &[layer]).unwrap();

    assert_eq!(names(dest.path()), ["a"]);
    assert_eq!(fs::metadata(dest.path()).unwrap().mtime(), MTIME as i64);
}

#[derive(Default)]
struct Recorder {
    events: Vec<String>,
    last: (u64, u64),
}

impl Progress for Recorder {
    fn layer_started(&mut self, index: usize, count: usize, _: &Digest, size: u64) {
        self.events.push(format!("layer {index}/{count} {size}"));
    }

    fn bytes_read(&mut self, done: u64, total: u64) {
        assert!(done >= self.last.0, "progress never goes back");
        self.last = (done, total);
    }

    fn finished(&mut self) {
        self.events.push("finished".into());
    }
}

#[test]
fn progress_reports_layers_and_bytes() {
    let dir = tmp();
    let first = TestLayer::gzip(Tar::new().file("a", &[1u8; 3_000_000]).finish());
    let second = TestLayer::plain(Tar::new().file("b", b"2").finish());
    let sizes = (first.blob.len() as u64, second.blob.len() as u64);
    let image = TestImage::new("amd64", "sh", vec![first, second]);
    let mut oci = Oci::default();
    let desc = oci.image(&image);
    let path = write_tarball(dir.path(), &oci.finish(vec![desc]), "");
    let archive = Archive::open(&path).unwrap();
    let selected = archive.select(None, None).unwrap();
    let mut recorder = Recorder::default();

    let stats = archive
        .unpack(&selected, &dir.path().join("root"), &mut recorder)
        .unwrap();

    assert_eq!(
        recorder.events,
        [
            format!("layer 0/2 {}", sizes.0),
            format!("layer 1/2 {}", sizes.1),
            "finished".into()
        ]
    );
    assert_eq!(recorder.last, (sizes.0 + sizes.1, sizes.0 + sizes.1));
    assert_eq!(
        (stats.layers, stats.files, stats.file_bytes),
        (2, 2, 3_000_001)
    );
}
