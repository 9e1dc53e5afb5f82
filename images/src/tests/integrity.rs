//! Damaged, tampered and incomplete tarballs: each fails with an error that names the culprit.

use serde_json::json;

use super::support::*;
use crate::{Archive, Digest, Error, NoProgress};

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

fn unpack_error(path: &std::path::Path, dest: &std::path::Path) -> Error {
    let archive = Archive::open(path).unwrap();
    let image = archive.select(None, None).unwrap();
    archive.unpack(&image, dest, &mut NoProgress).unwrap_err()
}

#[test]
fn tampered_layer_blob_is_named() {
    let dir = tmp();
    let image = TestImage::simple("genuine");
    let mut members = docker25(&[(&image, &["x:1"], "docker.io/library/x:1")]);
    let blob_name = format!("blobs/sha256/{}", image.layers[0].digest().hex());
    // Same size, other content: a gzip stream of a different tar of equal length.
    let evil = TestLayer::gzip(Tar::new().file("hello", b"GENUINE").finish());
    let mut evil_blob = evil.blob.clone();
    evil_blob.resize(image.layers[0].blob.len(), 0);
    replace(&mut members, &blob_name, evil_blob);
    let path = write_tarball(dir.path(), &members, "");

    let err = unpack_error(&path, &dir.path().join("root"));

    let Error::DigestMismatch { blob, expected, .. } = &err else {
        panic!("{err}")
    };
    assert_eq!(expected, &image.layers[0].digest());
    assert!(
        blob.starts_with("layer 1 (sha256:") && blob.ends_with(&blob_name),
        "{err}"
    );
}

#[test]
fn legacy_layer_is_checked_against_its_diff_id() {
    let dir = tmp();
    let genuine = Tar::new().file("a", b"1").finish();
    let image = TestImage::new("amd64", "sh", vec![TestLayer::plain(genuine)]);
    let evil = Tar::new().file("a", b"2").finish();
    let path = write_tarball(
        dir.path(),
        &docker_legacy(&[(&image, &["x:1"])], &[&[evil]]),
        "",
    );

    let err = unpack_error(&path, &dir.path().join("root"));

    assert!(err.to_string().starts_with("layer 1 (sha256:"), "{err}");
    assert!(
        err.to_string()
            .contains(", uncompressed: content has digest"),
        "{err}"
    );
}

#[test]
fn wrong_diff_id_behind_a_good_compressed_digest_is_caught() {
    let dir = tmp();
    let mut layer = TestLayer::gzip(Tar::new().file("a", b"1").finish());
    layer.diff_id = Digest::of(b"something else");
    let image = TestImage::new("amd64", "sh", vec![layer]);
    let mut oci = Oci::default();
    let desc = oci.image(&image);
    let path = write_tarball(dir.path(), &oci.finish(vec![desc]), "");

    let err = unpack_error(&path, &dir.path().join("root"));

    assert!(
        matches!(&err, Error::DigestMismatch { expected, .. } if *expected == Digest::of(b"something else")),
        "{err}"
    );
}

#[test]
fn tampered_config_is_named() {
    let dir = tmp();
    let image = TestImage::simple("x");
    let tar = Tar::new().file("hello", b"x").finish();
    let mut members = docker_legacy(&[(&image, &["x:1"])], &[&[tar]]);
    let config_name = format!("{}.json", image.id().hex());
    let mut config = image.config.clone();
    config[0] = b' ';
    replace(&mut members, &config_name, config);
    let path = write_tarball(dir.path(), &members, "");

    let err = Archive::open(&path)
        .unwrap()
        .select(None, None)
        .unwrap_err();

    assert!(
        err.to_string()
            .starts_with(&format!("config {config_name}: content has digest")),
        "{err}"
    );
}

#[test]
fn tampered_manifest_is_named() {
    let dir = tmp();
    let image = TestImage::simple("x");
    let mut oci = Oci::default();
    let desc = oci.image(&image);
    let manifest_digest: Digest = desc["digest"].as_str().unwrap().parse().unwrap();
    let mut members = oci.finish(vec![desc]);
    let name = format!("blobs/sha256/{}", manifest_digest.hex());
    let mut manifest = members.iter().find(|(n, _)| *n == name).unwrap().1.clone();
    manifest.push(b' ');
    manifest.remove(0);
    replace(&mut members, &name, manifest);
    let path = write_tarball(dir.path(), &members, "");

    let err = Archive::open(&path)
        .unwrap()
        .select(None, None)
        .unwrap_err();

    assert!(
        err.to_string()
            .starts_with(&format!("manifest {name}: content has digest")),
        "{err}"
    );
}

#[test]
fn missing_legacy_layer_is_named() {
    let dir = tmp();
    let image = TestImage::simple("x");
    let tar = Tar::new().file("hello", b"x").finish();
    let mut members = docker_legacy(&[(&image, &["x:1"])], &[&[tar]]);
    let layer = members
        .iter()
        .position(|(n, _)| n.ends_with("layer.tar"))
        .unwrap();
    let name = members.remove(layer).0;
    let path = write_tarball(dir.path(), &members, "");

    let err = Archive::open(&path)
        .unwrap()
        .select(None, None)
        .unwrap_err();

    assert_eq!(
        err.to_string(),
        format!("manifest.json names layer {name} which is not in the tarball")
    );
}

#[test]
fn missing_oci_layer_is_named() {
    let dir = tmp();
    let image = TestImage::simple("x");
    let mut oci = Oci::default();
    let desc = oci.image(&image);
    let manifest = desc["digest"].as_str().unwrap().to_owned();
    let mut members = oci.finish(vec![desc]);
    let layer = image.layers[0].digest();
    members.retain(|(n, _)| !n.ends_with(&layer.hex()));
    let path = write_tarball(dir.path(), &members, "");

    let err = Archive::open(&path)
        .unwrap()
        .select(None, None)
        .unwrap_err();

    assert_eq!(
        err.to_string(),
        format!("manifest {manifest} names layer {layer} which is not in the tarball")
    );
}

#[test]
fn descriptor_size_must_match() {
    let dir = tmp();
    let image = TestImage::simple("x");
    let mut oci = Oci::default();
    let mut desc = oci.image(&image);
    desc["size"] = json!(3);
    let path = write_tarball(dir.path(), &oci.finish(vec![desc]), "");

    let err = Archive::open(&path)
        .unwrap()
        .select(None, None)
        .unwrap_err();

    assert!(
        matches!(err, Error::SizeMismatch { expected: 3, .. }),
        "{err}"
    );
}

#[test]
fn garbage_manifest_names_the_file() {
    let dir = tmp();
    let members = vec![("manifest.json".to_owned(), b"[{\"Config\": 12".to_vec())];
    let path = write_tarball(dir.path(), &members, "");

    let err = Archive::open(&path)
        .unwrap()
        .select(None, None)
        .unwrap_err();

    assert_eq!(err.to_string(), "invalid JSON in manifest.json");
}

#[test]
fn manifest_of_the_wrong_shape_names_the_file() {
    let dir = tmp();
    let members = vec![("manifest.json".to_owned(), br#"{"Config": "x"}"#.to_vec())];
    let path = write_tarball(dir.path(), &members, "");

    let err = Archive::open(&path).unwrap().images().unwrap_err();

    assert_eq!(err.to_string(), "invalid JSON in manifest.json");
}

#[test]
fn layer_count_must_match_diff_ids() {
    let dir = tmp();
    let image = TestImage::new("amd64", "sh", vec![]);
    let tar = Tar::new().finish();
    let path = write_tarball(
        dir.path(),
        &docker_legacy(&[(&image, &["x:1"])], &[&[tar]]),
        "",
    );

    let err = Archive::open(&path)
        .unwrap()
        .select(None, None)
        .unwrap_err();

    assert!(
        err.to_string()
            .ends_with("lists 1 layers but the config lists 0 diff ids"),
        "{err}"
    );
}

#[test]
fn huge_json_is_refused() {
    let dir = tmp();
    let members = vec![("index.json".to_owned(), vec![b' '; (16 << 20) + 1])];
    let path = write_tarball(dir.path(), &members, "");

    let err = Archive::open(&path)
        .unwrap()
        .select(None, None)
        .unwrap_err();

    assert!(matches!(err, Error::TooLarge { .. }), "{err}");
}

#[test]
fn tarball_cut_inside_a_member_is_truncated() {
    let dir = tmp();
    let image = TestImage::simple("x");
    let path = write_tarball(
        dir.path(),
        &docker25(&[(&image, &["x:1"], "docker.io/library/x:1")]),
        "",
    );
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2 + 100]).unwrap();

    let err = Archive::open(&path).err().unwrap();

    assert!(matches!(err, Error::Truncated { .. }), "{err}");
    assert!(err
        .to_string()
        .ends_with("is truncated (an interrupted download or copy?)"));
}

#[test]
fn tarball_cut_between_members_is_truncated() {
    let dir = tmp();
    let image = TestImage::simple("x");
    let tar = Tar::new().file("hello", b"x").finish();
    let mut members = docker_legacy(&[(&image, &["x:1"])], &[&[tar]]);
    // manifest.json first, so that the cut loses a layer the manifest names.
    members.rotate_right(2);
    let path = write_tarball(dir.path(), &members, "");
    let bytes = std::fs::read(&path).unwrap();
    let cut = (512 + 1024).max(bytes.len() / 4 / 512 * 512);
    std::fs::write(&path, &bytes[..cut]).unwrap();

    let err = Archive::open(&path)
        .and_then(|a| a.select(None, None))
        .unwrap_err();

    assert!(matches!(err, Error::Truncated { .. }), "{err}");
}

#[test]
fn not_a_tarball() {
    let dir = tmp();
    let path = dir.path().join("x.tar");
    std::fs::write(&path, vec![b'x'; 2000]).unwrap();

    let err = Archive::open(&path).err().unwrap();

    assert!(matches!(err, Error::NotTarball { .. }), "{err}");
}

#[test]
fn empty_file_is_not_a_tarball() {
    let dir = tmp();
    let path = dir.path().join("x.tar");
    std::fs::write(&path, b"").unwrap();

    assert!(matches!(
        Archive::open(&path),
        Err(Error::NotTarball { .. })
    ));
}

#[test]
fn compressed_tarball_says_how_to_fix_it() {
    let dir = tmp();
    let path = dir.path().join("x.tar.gz");
    std::fs::write(&path, gzip(&Tar::new().file("a", b"").finish())).unwrap();

    let err = Archive::open(&path).err().unwrap();

    assert!(
        err.to_string()
            .ends_with("is gzip-compressed; decompress it first (for example `gzip -dk`)"),
        "{err}"
    );
}

#[test]
fn missing_file_is_not_found() {
    let err = Archive::open("/nonexistent/moat.tar".as_ref())
        .err()
        .unwrap();

    assert_eq!(err.to_string(), "/nonexistent/moat.tar: no such file");
}

#[test]
fn tarball_without_metadata_says_so() {
    let dir = tmp();
    let path = write_tarball(
        dir.path(),
        &vec![("etc/passwd".to_owned(), b"root".to_vec())],
        "",
    );

    let err = Archive::open(&path)
        .unwrap()
        .select(None, None)
        .unwrap_err();

    assert!(matches!(err, Error::NoManifest { .. }), "{err}");
}

#[test]
fn corrupt_gzip_layer_is_reported() {
    let dir = tmp();
    let mut layer = TestLayer::gzip(Tar::new().file("a", &[7u8; 10_000]).finish());
    let middle = layer.blob.len() / 2;
    layer.blob[middle] ^= 0xff;
    let image = TestImage::new("amd64", "sh", vec![layer]);
    let mut oci = Oci::default();
    let desc = oci.image(&image);
    let path = write_tarball(dir.path(), &oci.finish(vec![desc]), "");

    let err = unpack_error(&path, &dir.path().join("root"));

    // The blob digest is of the damaged bytes, so the stream itself is what is wrong; where
    // the damage shows first depends on which bits the flip hit.
    assert!(
        matches!(
            err,
            Error::LayerRead { .. } | Error::DigestMismatch { .. } | Error::BadEntry { .. }
        ),
        "{err}"
    );
    assert!(err.to_string().starts_with("layer 1 (sha256:"), "{err}");
}
