//! Damaged input of every kind: any result is fine, a panic or a write outside is not.

use std::path::Path;

use super::support::*;
use crate::{Archive, NoProgress};

/// Runs everything a launch does on `path`, ignoring errors.
fn exercise(path: &Path, dest: &Path) {
    let Ok(archive) = Archive::open(path) else {
        return;
    };
    let _ = archive.images();
    if let Ok(image) = archive.select(None, None) {
        let _ = archive.unpack(&image, dest, &mut NoProgress);
    }
}

fn sample() -> Vec<u8> {
    let lower = Tar::new()
        .dir("etc/")
        .file("etc/a", b"a")
        .symlink("l", "etc")
        .hard_link("h", "etc/a")
        .finish();
    let upper = Tar::new()
        .file("etc/.wh.a", b"")
        .file("l/b", &[9u8; 5000])
        .finish();
    let image = TestImage::new(
        "amd64",
        "sh",
        vec![TestLayer::gzip(lower), TestLayer::zstd(upper)],
    );
    let dir = tempfile::tempdir().unwrap();
    let path = write_tarball(
        dir.path(),
        &docker25(&[(&image, &["x:1"], "docker.io/library/x:1")]),
        "",
    );
    std::fs::read(path).unwrap()
}

/// A fixed-seed linear congruential generator (Knuth's MMIX constants), for repeatable tests.
fn positions(len: usize, count: usize) -> impl Iterator<Item = usize> {
    let mut state: u64 = 0x5eed;
    (0..count).map(move |_| {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 33) as usize % len
    })
}

#[test]
fn truncation_anywhere_never_panics() {
    let bytes = sample();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cut.tar");
    // Every 97 bytes: prime, so cuts land at every offset within blocks over the run.
    for (i, cut) in (0..bytes.len()).step_by(97).enumerate() {
        std::fs::write(&path, &bytes[..cut]).unwrap();
        exercise(&path, &dir.path().join(format!("root{i}")));
    }
}

#[test]
fn flipped_bytes_never_panic() {
    let bytes = sample();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("flipped.tar");
    for (i, at) in positions(bytes.len(), 400).enumerate() {
        let mut damaged = bytes.clone();
        damaged[at] ^= 1 << (i % 8);
        std::fs::write(&path, &damaged).unwrap();
        exercise(&path, &dir.path().join(format!("root{i}")));
    }
}

#[test]
fn damaged_layer_streams_never_panic_or_escape() {
    let layer = Tar::new()
        .dir("d/")
        .symlink("d/up", "../..")
        .file("d/f", b"data")
        .hard_link("d/h", "d/f")
        .file("d/.wh..wh..opq", b"")
        .finish();
    for (i, at) in positions(layer.len(), 400).enumerate() {
        let mut damaged = layer.clone();
        damaged[at] ^= 1 << (i % 8);
        let scratch = tempfile::tempdir().unwrap();
        let dest = scratch.path().join("dest");
        std::fs::create_dir(&dest).unwrap();

        let _ = apply(&dest, &[damaged]);

        let outside: Vec<_> = std::fs::read_dir(scratch.path()).unwrap().collect();
        assert_eq!(
            outside.len(),
            1,
            "flip at {at} wrote outside the destination"
        );
    }
}
