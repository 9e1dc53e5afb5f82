//! Every tarball form tools write, and choosing an image in it.

use serde_json::json;

use super::support::*;
use crate::{Archive, Error, NoProgress, Platform};

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

#[test]
fn docker_legacy_single_image_needs_no_name() {
    let dir = tmp();
    let tar = Tar::new().dir("etc/").file("etc/hostname", b"box").finish();
    let image = TestImage::new("amd64", "/bin/sh", vec![TestLayer::plain(tar.clone())]);
    let path = write_tarball(
        dir.path(),
        &docker_legacy(&[(&image, &["busybox:latest"])], &[&[tar]]),
        "",
    );

    let archive = Archive::open(&path).unwrap();
    let selected = archive.select(None, None).unwrap();
    archive
        .unpack(&selected, &dir.path().join("root"), &mut NoProgress)
        .unwrap();

    assert_eq!(selected.id(), &image.id());
    assert_eq!(selected.repo_tags(), ["busybox:latest"]);
    assert_eq!(selected.config().cmd, Some(vec!["/bin/sh".to_owned()]));
    assert_eq!(selected.manifest_digest(), None);
    assert_eq!(
        std::fs::read(dir.path().join("root/etc/hostname")).unwrap(),
        b"box"
    );
}

#[test]
fn member_names_may_start_with_dot_slash() {
    let dir = tmp();
    let image = TestImage::simple("hi");
    let path = write_tarball(
        dir.path(),
        &docker25(&[(&image, &["hi:1"], "docker.io/library/hi:1")]),
        "./",
    );

    let archive = Archive::open(&path).unwrap();
    let selected = archive.select(Some("hi:1"), None).unwrap();
    archive
        .unpack(&selected, &dir.path().join("root"), &mut NoProgress)
        .unwrap();

    assert_eq!(std::fs::read(dir.path().join("root/hello")).unwrap(), b"hi");
}

#[test]
fn docker25_lists_each_image_once_with_both_names() {
    let dir = tmp();
    let image = TestImage::simple("x");
    let members = docker25(&[(
        &image,
        &["alpine:latest"],
        "docker.io/library/alpine:latest",
    )]);
    let path = write_tarball(dir.path(), &members, "");

    let archive = Archive::open(&path).unwrap();
    let images = archive.images().unwrap();
    let selected = archive.select(Some("alpine"), None).unwrap();

    assert_eq!(images.len(), 1);
    assert_eq!(images[0].repo_tags, ["alpine:latest"]);
    assert_eq!(images[0].id, image.id());
    assert!(selected.manifest_digest().is_some());
    assert_eq!(
        selected.layers()[0].blob_digest(),
        Some(&image.layers[0].digest())
    );
}

#[test]
fn docker_legacy_shared_layer_symlink_is_followed() {
    let dir = tmp();
    let tar_data = Tar::new().file("a", b"shared").finish();
    let image = TestImage::new("amd64", "sh", vec![TestLayer::plain(tar_data.clone())]);
    let mut members = docker_legacy(&[(&image, &["a:1"])], &[&[tar_data]]);
    let layer = members
        .iter()
        .position(|(n, _)| n.ends_with("layer.tar"))
        .unwrap();
    let real = members[layer].0.replace("/layer.tar", "-real/layer.tar");
    members[layer].0 = real.clone();
    let mut tar = Tar::new();
    for (name, data) in &members {
        tar.file(name, data);
    }
    let link_name = real.replace("-real", "");
    tar.symlink(&link_name, &format!("../{}", real));
    let path = dir.path().join("image.tar");
    std::fs::write(&path, tar.finish()).unwrap();

    let archive = Archive::open(&path).unwrap();
    let selected = archive.select(None, None).unwrap();
    archive
        .unpack(&selected, &dir.path().join("root"), &mut NoProgress)
        .unwrap();

    assert_eq!(std::fs::read(dir.path().join("root/a")).unwrap(), b"shared");
}

fn multi_platform() -> (Members, TestImage, TestImage) {
    let amd64 = TestImage::simple("amd64");
    let arm64 = TestImage::new(
        "arm64/v8",
        "arm64",
        vec![TestLayer::zstd(Tar::new().file("hello", b"arm64").finish())],
    );
    let mut oci = Oci::default();
    let manifests = vec![oci.image(&arm64), oci.image(&amd64)];
    let index = oci.index(manifests);
    let members = oci.finish(vec![named(
        index,
        "docker.io/library/multi:latest",
        "latest",
    )]);
    (members, amd64, arm64)
}

#[test]
fn multi_platform_index_picks_linux_amd64_by_default() {
    let dir = tmp();
    let (members, amd64, _) = multi_platform();
    let path = write_tarball(dir.path(), &members, "");

    let selected = Archive::open(&path).unwrap().select(None, None).unwrap();

    assert_eq!(selected.id(), &amd64.id());
    assert_eq!(selected.platform(), Platform::linux_amd64());
}

#[test]
fn platform_option_picks_another_variant() {
    let dir = tmp();
    let (members, _, arm64) = multi_platform();
    let path = write_tarball(dir.path(), &members, "");
    let archive = Archive::open(&path).unwrap();

    let selected = archive
        .select(Some("multi"), Some(&"linux/arm64".parse().unwrap()))
        .unwrap();
    archive
        .unpack(&selected, &dir.path().join("root"), &mut NoProgress)
        .unwrap();

    assert_eq!(selected.id(), &arm64.id());
    assert_eq!(
        std::fs::read(dir.path().join("root/hello")).unwrap(),
        b"arm64"
    );
}

#[test]
fn missing_platform_lists_the_available_ones() {
    let dir = tmp();
    let (members, _, _) = multi_platform();
    let path = write_tarball(dir.path(), &members, "");

    let err = Archive::open(&path)
        .unwrap()
        .select(None, Some(&"linux/riscv64".parse().unwrap()))
        .unwrap_err();

    assert_eq!(
        err.to_string(),
        "image multi:latest has no linux/riscv64 variant; it has linux/arm64/v8, linux/amd64"
    );
}

#[test]
fn explicit_platform_must_match_a_single_platform_image() {
    let dir = tmp();
    let image = TestImage::simple("x");
    let path = write_tarball(
        dir.path(),
        &docker25(&[(&image, &["x:1"], "docker.io/library/x:1")]),
        "",
    );

    let err = Archive::open(&path)
        .unwrap()
        .select(None, Some(&"linux/arm64".parse().unwrap()))
        .unwrap_err();

    assert!(matches!(err, Error::PlatformNotFound { .. }), "{err}");
}

#[test]
fn nested_indexes_are_walked() {
    let dir = tmp();
    let amd64 = TestImage::simple("deep");
    let arm64 = TestImage::new("arm64", "arm", vec![TestLayer::plain(Tar::new().finish())]);
    let mut oci = Oci::default();
    let inner = vec![oci.image(&arm64), oci.image(&amd64)];
    let inner = oci.index(inner);
    let middle = oci.index(vec![inner]);
    let path = write_tarball(dir.path(), &oci.finish(vec![middle]), "");

    let selected = Archive::open(&path).unwrap().select(None, None).unwrap();

    assert_eq!(selected.id(), &amd64.id());
}

#[test]
fn attestation_manifests_are_not_images() {
    let dir = tmp();
    let image = TestImage::simple("real");
    let attestation = TestImage::new("unknown", "none", vec![]);
    let mut oci = Oci::default();
    let mut att = oci.image(&attestation);
    att["platform"] = json!({"os": "unknown", "architecture": "unknown"});
    att["annotations"] = json!({"vnd.docker.reference.type": "attestation-manifest"});
    let manifests = vec![oci.image(&image), att];
    let index = oci.index(manifests);
    let path = write_tarball(dir.path(), &oci.finish(vec![index]), "");

    let images = Archive::open(&path).unwrap().images().unwrap();

    assert_eq!(images.len(), 1);
    assert_eq!(images[0].id, image.id());
    assert!(images[0].repo_tags.is_empty());
}

fn two_images() -> (Members, TestImage, TestImage) {
    let alpine = TestImage::simple("alpine");
    let busybox = TestImage::simple("busybox");
    let a = Tar::new().file("hello", b"alpine").finish();
    let b = Tar::new().file("hello", b"busybox").finish();
    let members = docker_legacy(
        &[
            (&alpine, &["alpine:latest", "alpine:3.19"]),
            (&busybox, &["busybox:1.36"]),
        ],
        &[&[a], &[b]],
    );
    (members, alpine, busybox)
}

#[test]
fn several_images_need_a_name() {
    let dir = tmp();
    let (members, _, _) = two_images();
    let path = write_tarball(dir.path(), &members, "");

    let err = Archive::open(&path)
        .unwrap()
        .select(None, None)
        .unwrap_err();

    assert_eq!(
        err.to_string(),
        "the tarball holds several images; choose one of alpine:latest, alpine:3.19; busybox:1.36"
    );
}

#[test]
fn bare_repo_means_latest_and_tags_select() {
    let dir = tmp();
    let (members, alpine, busybox) = two_images();
    let path = write_tarball(dir.path(), &members, "");
    let archive = Archive::open(&path).unwrap();

    assert_eq!(
        archive.select(Some("alpine"), None).unwrap().id(),
        &alpine.id()
    );
    assert_eq!(
        archive
            .select(Some("docker.io/library/alpine:3.19"), None)
            .unwrap()
            .id(),
        &alpine.id()
    );
    assert_eq!(
        archive.select(Some("busybox:1.36"), None).unwrap().id(),
        &busybox.id()
    );
    assert!(matches!(
        archive.select(Some("busybox"), None),
        Err(Error::ImageNotFound { .. })
    ));
}

#[test]
fn unknown_name_lists_what_there_is() {
    let dir = tmp();
    let (members, _, _) = two_images();
    let path = write_tarball(dir.path(), &members, "");

    let err = Archive::open(&path)
        .unwrap()
        .select(Some("nginx"), None)
        .unwrap_err();

    assert_eq!(
        err.to_string(),
        "no image nginx in the tarball; it has alpine:latest, alpine:3.19; busybox:1.36"
    );
}

#[test]
fn image_id_prefix_selects() {
    let dir = tmp();
    let (members, _, busybox) = two_images();
    let path = write_tarball(dir.path(), &members, "");
    let archive = Archive::open(&path).unwrap();

    let by_prefix = archive
        .select(Some(&busybox.id().hex()[..12]), None)
        .unwrap();
    let by_digest = archive
        .select(Some(&busybox.id().to_string()), None)
        .unwrap();

    assert_eq!(by_prefix.id(), &busybox.id());
    assert_eq!(by_digest.id(), &busybox.id());
}

#[test]
fn bare_ref_name_tag_is_a_name() {
    let dir = tmp();
    let image = TestImage::simple("x");
    let mut oci = Oci::default();
    let mut desc = oci.image(&image);
    desc["annotations"] = json!({"org.opencontainers.image.ref.name": "v1"});
    let path = write_tarball(dir.path(), &oci.finish(vec![desc]), "");

    let archive = Archive::open(&path).unwrap();

    assert_eq!(archive.images().unwrap()[0].repo_tags, ["v1"]);
    assert_eq!(archive.select(Some("v1"), None).unwrap().id(), &image.id());
}

#[test]
fn gzip_and_zstd_layers_are_detected_by_magic() {
    let dir = tmp();
    let first = Tar::new().file("a", b"1").finish();
    let second = Tar::new().file("b", b"2").finish();
    let third = Tar::new().file("c", b"3").finish();
    let mut mislabelled = TestLayer::gzip(third);
    mislabelled.media_type = "application/vnd.oci.image.layer.v1.tar";
    let image = TestImage::new(
        "amd64",
        "sh",
        vec![TestLayer::gzip(first), TestLayer::zstd(second), mislabelled],
    );
    let mut oci = Oci::default();
    let desc = oci.image(&image);
    let path = write_tarball(dir.path(), &oci.finish(vec![desc]), "");
    let archive = Archive::open(&path).unwrap();

    let selected = archive.select(None, None).unwrap();
    archive
        .unpack(&selected, &dir.path().join("root"), &mut NoProgress)
        .unwrap();

    for (name, content) in [("a", "1"), ("b", "2"), ("c", "3")] {
        assert_eq!(
            std::fs::read_to_string(dir.path().join("root").join(name)).unwrap(),
            content
        );
    }
}

#[test]
fn config_fields_reach_the_image() {
    let dir = tmp();
    let mut image = TestImage::simple("x");
    let mut config: serde_json::Value = serde_json::from_slice(&image.config).unwrap();
    config["config"]["Entrypoint"] = json!(["/init"]);
    config["config"]["User"] = json!("1000:1000");
    config["config"]["ExposedPorts"] = json!({"8080/tcp": {}});
    image.config = serde_json::to_vec(&config).unwrap();
    let mut oci = Oci::default();
    let desc = oci.image(&image);
    let path = write_tarball(dir.path(), &oci.finish(vec![desc]), "");

    let selected = Archive::open(&path).unwrap().select(None, None).unwrap();

    assert_eq!(selected.raw_config(), image.config);
    assert_eq!(selected.config().entrypoint, Some(vec!["/init".to_owned()]));
    assert_eq!(selected.config().user.as_deref(), Some("1000:1000"));
    assert_eq!(selected.config().exposed_ports, ["8080/tcp"]);
}

#[test]
fn crane_tarball_with_digest_names_and_gzip_layers() {
    let dir = tmp();
    let image = TestImage::simple("crane");
    let layer = &image.layers[0];
    let layer_name = format!("{}.tar.gz", layer.digest().hex());
    let manifest =
        json!([{"Config": image.id().to_string(), "RepoTags": ["c:1"], "Layers": [layer_name]}]);
    let members = vec![
        (image.id().to_string(), image.config.clone()),
        (layer_name, layer.blob.clone()),
        (
            "manifest.json".to_owned(),
            serde_json::to_vec(&manifest).unwrap(),
        ),
    ];
    let path = write_tarball(dir.path(), &members, "");
    let archive = Archive::open(&path).unwrap();

    let selected = archive.select(Some("c:1"), None).unwrap();
    archive
        .unpack(&selected, &dir.path().join("root"), &mut NoProgress)
        .unwrap();

    assert_eq!(selected.id(), &image.id());
    assert_eq!(
        std::fs::read(dir.path().join("root/hello")).unwrap(),
        b"crane"
    );
}
