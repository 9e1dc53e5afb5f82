//! Layers that try to write outside the destination. Each test unpacks into `<tmp>/dest` and
//! checks that `<tmp>` holds nothing else afterwards.

use std::fs;
use std::path::{Path, PathBuf};

use super::support::*;
use crate::{Archive, EntryProblem, Error, NoProgress};

/// A scratch directory with the destination inside it and a decoy file beside it.
struct Scene {
    tmp: tempfile::TempDir,
}

impl Scene {
    fn new() -> Scene {
        let tmp = tempfile::tempdir().unwrap();
        fs::create_dir(tmp.path().join("dest")).unwrap();
        fs::write(tmp.path().join("decoy"), b"untouched").unwrap();
        Scene { tmp }
    }

    fn dest(&self) -> PathBuf {
        self.tmp.path().join("dest")
    }

    fn outside(&self) -> &Path {
        self.tmp.path()
    }

    /// Fails the test if anything beside `dest` and the decoy appeared or the decoy changed.
    fn assert_nothing_outside(&self) {
        let mut names: Vec<String> = fs::read_dir(self.outside())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["decoy", "dest"]);
        assert_eq!(
            fs::read(self.outside().join("decoy")).unwrap(),
            b"untouched"
        );
    }
}

fn problem(err: &Error) -> &EntryProblem {
    match err {
        Error::BadEntry { problem, .. } => problem,
        other => panic!("expected a refused entry, got: {other}"),
    }
}

#[test]
fn absolute_path_lands_inside_the_root() {
    let scene = Scene::new();
    let absolute = format!("{}/decoy", scene.outside().display());
    let layer = Tar::new()
        .file("/etc/x", b"in")
        .file(&absolute, b"overwritten?")
        .finish();

    apply(&scene.dest(), &[layer]).unwrap();

    assert_eq!(fs::read(scene.dest().join("etc/x")).unwrap(), b"in");
    assert!(scene
        .dest()
        .join(absolute.trim_start_matches('/'))
        .is_file());
    scene.assert_nothing_outside();
}

#[test]
fn dot_dot_path_is_refused() {
    let scene = Scene::new();
    let layer = Tar::new().file("../escaped", b"x").finish();

    let err = apply(&scene.dest(), &[layer]).unwrap_err();

    assert_eq!(
        err.to_string(),
        "layer 1: entry \"../escaped\": path leaves the image root"
    );
    scene.assert_nothing_outside();
}

#[test]
fn dot_dot_inside_the_root_is_cleaned() {
    let scene = Scene::new();
    let layer = Tar::new().file("a/../b", b"x").finish();

    apply(&scene.dest(), &[layer]).unwrap();

    assert!(scene.dest().join("b").is_file());
    scene.assert_nothing_outside();
}

#[test]
fn symlink_climbing_out_then_write_is_refused() {
    let scene = Scene::new();
    let layer = Tar::new()
        .symlink("link", "../../..")
        .file("link/x", b"x")
        .finish();

    let err = apply(&scene.dest(), &[layer]).unwrap_err();

    assert_eq!(problem(&err), &EntryProblem::SymlinkLeavesRoot);
    assert!(err.to_string().contains("entry \"link/x\""), "{err}");
    scene.assert_nothing_outside();
}

#[test]
fn symlink_climbing_out_in_a_lower_layer_is_refused_too() {
    let scene = Scene::new();
    let lower = Tar::new().symlink("link", "..").finish();
    let upper = Tar::new().file("link/decoy", b"gotcha").finish();

    let err = apply(&scene.dest(), &[lower, upper]).unwrap_err();

    assert_eq!(problem(&err), &EntryProblem::SymlinkLeavesRoot);
    scene.assert_nothing_outside();
}

#[test]
fn symlink_to_root_is_the_image_root() {
    let scene = Scene::new();
    let layer = Tar::new()
        .symlink("link", "/")
        .file("link/etc/x", b"x")
        .finish();

    apply(&scene.dest(), &[layer]).unwrap();

    assert_eq!(fs::read(scene.dest().join("etc/x")).unwrap(), b"x");
    scene.assert_nothing_outside();
}

#[test]
fn absolute_symlink_to_a_host_path_resolves_inside_the_root() {
    let scene = Scene::new();
    let host_dir = scene.outside().display().to_string();
    let layer = Tar::new()
        .symlink("link", &host_dir)
        .file("link/decoy", b"gotcha")
        .finish();

    apply(&scene.dest(), &[layer]).unwrap();

    let inside = scene
        .dest()
        .join(host_dir.trim_start_matches('/'))
        .join("decoy");
    assert_eq!(fs::read(inside).unwrap(), b"gotcha");
    scene.assert_nothing_outside();
}

#[test]
fn directory_entry_through_a_symlink_replaces_the_symlink() {
    let scene = Scene::new();
    let host_dir = scene.outside().display().to_string();
    let layer = Tar::new()
        .symlink("d", &host_dir)
        .dir("d/")
        .file("d/new", b"")
        .finish();

    apply(&scene.dest(), &[layer]).unwrap();

    assert!(fs::symlink_metadata(scene.dest().join("d"))
        .unwrap()
        .is_dir());
    scene.assert_nothing_outside();
}

#[test]
fn hard_link_to_outside_is_refused() {
    let scene = Scene::new();
    let layer = Tar::new().hard_link("passwd", "../../etc/passwd").finish();

    let err = apply(&scene.dest(), &[layer]).unwrap_err();

    assert_eq!(problem(&err), &EntryProblem::LinkTargetLeavesRoot);
    assert_eq!(
        err.to_string(),
        "layer 1: entry \"passwd\": hard link target leaves the image root"
    );
    scene.assert_nothing_outside();
}

#[test]
fn hard_link_to_an_absolute_host_path_stays_inside() {
    let scene = Scene::new();
    let decoy = format!("{}/decoy", scene.outside().display());
    let layer = Tar::new().hard_link("stolen", &decoy).finish();

    let err = apply(&scene.dest(), &[layer]).unwrap_err();

    assert!(
        matches!(problem(&err), EntryProblem::LinkTargetMissing(_)),
        "{err}"
    );
    scene.assert_nothing_outside();
}

#[test]
fn hard_link_through_an_escaping_symlink_is_refused() {
    let scene = Scene::new();
    let layer = Tar::new()
        .symlink("up", "../..")
        .hard_link("stolen", "up/decoy")
        .finish();

    let err = apply(&scene.dest(), &[layer]).unwrap_err();

    assert_eq!(problem(&err), &EntryProblem::LinkTargetLeavesRoot);
    scene.assert_nothing_outside();
}

#[test]
fn hard_link_to_a_symlink_links_the_symlink_itself() {
    let scene = Scene::new();
    let decoy = format!("{}/decoy", scene.outside().display());
    let layer = Tar::new().symlink("s", &decoy).hard_link("h", "s").finish();

    apply(&scene.dest(), &[layer]).unwrap();

    assert!(fs::symlink_metadata(scene.dest().join("h"))
        .unwrap()
        .file_type()
        .is_symlink());
    scene.assert_nothing_outside();
}

#[test]
fn file_over_a_symlink_to_outside_does_not_write_through_it() {
    let scene = Scene::new();
    let decoy = format!("{}/decoy", scene.outside().display());
    let lower = Tar::new().symlink("f", &decoy).finish();
    let upper = Tar::new().file("f", b"gotcha").finish();

    apply(&scene.dest(), &[lower, upper]).unwrap();

    assert_eq!(fs::read(scene.dest().join("f")).unwrap(), b"gotcha");
    scene.assert_nothing_outside();
}

#[test]
fn whiteout_through_an_escaping_symlink_is_refused() {
    let scene = Scene::new();
    let layer = Tar::new()
        .symlink("up", "..")
        .file("up/.wh.decoy", b"")
        .finish();

    let err = apply(&scene.dest(), &[layer]).unwrap_err();

    assert_eq!(problem(&err), &EntryProblem::SymlinkLeavesRoot);
    scene.assert_nothing_outside();
}

#[test]
fn opaque_marker_through_an_escaping_symlink_is_refused() {
    let scene = Scene::new();
    let layer = Tar::new()
        .symlink("up", "..")
        .file("up/.wh..wh..opq", b"")
        .finish();

    let err = apply(&scene.dest(), &[layer]).unwrap_err();

    assert_eq!(problem(&err), &EntryProblem::SymlinkLeavesRoot);
    scene.assert_nothing_outside();
}

#[test]
fn whiteout_of_dot_dot_is_refused() {
    let scene = Scene::new();
    let layer = Tar::new().file("a/.wh..", b"").finish();

    let err = apply(&scene.dest(), &[layer]).unwrap_err();

    assert_eq!(problem(&err), &EntryProblem::InvalidWhiteout);
    scene.assert_nothing_outside();
}

#[test]
fn symlink_loop_is_refused() {
    let scene = Scene::new();
    let layer = Tar::new()
        .symlink("a", "b")
        .symlink("b", "a")
        .file("a/x", b"")
        .finish();

    let err = apply(&scene.dest(), &[layer]).unwrap_err();

    assert_eq!(problem(&err), &EntryProblem::TooManySymlinks);
}

#[test]
fn huge_pax_header_is_refused_without_reading_it_into_memory() {
    let scene = Scene::new();
    // A PAX extension header that claims 8 MiB; the budget stops reading it at 1 MiB.
    let mut header = tar::Header::new_ustar();
    header.set_path("pax").unwrap();
    header.set_entry_type(tar::EntryType::XHeader);
    header.set_size(8 << 20);
    header.set_cksum();
    let mut layer = header.as_bytes().to_vec();
    layer.extend(std::iter::repeat_n(b'9', 8 << 20));

    let err = apply(&scene.dest(), &[layer]).unwrap_err();

    assert!(matches!(err, Error::LayerRead { .. }), "{err}");
}

#[test]
fn escape_through_an_archive_names_layer_and_digest() {
    let scene = Scene::new();
    let good = TestLayer::plain(Tar::new().file("ok", b"").finish());
    let evil = TestLayer::gzip(
        Tar::new()
            .file("../../etc/passwd", b"root::0:0::/:/bin/sh")
            .finish(),
    );
    let digest = evil.digest();
    let image = TestImage::new("amd64", "sh", vec![good, evil]);
    let mut oci = Oci::default();
    let desc = oci.image(&image);
    let path = write_tarball(&scene.outside().join("dest"), &oci.finish(vec![desc]), "");
    let archive = Archive::open(&path).unwrap();
    let selected = archive.select(None, None).unwrap();
    let root = scene.dest().join("root");

    let err = archive
        .unpack(&selected, &root, &mut NoProgress)
        .unwrap_err();

    assert_eq!(
        err.to_string(),
        format!(
            "layer 2 ({}): entry \"../../etc/passwd\": path leaves the image root",
            digest.short()
        )
    );
    scene.assert_nothing_outside();
}
