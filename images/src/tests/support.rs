//! Builders for layers and image tarballs in the forms tools write them, made in memory.

use std::io::Write;
use std::path::{Path, PathBuf};

use ruzstd::encoding::{compress_to_vec, CompressionLevel};
use serde_json::{json, Value};

use crate::digest::Digest;
use crate::layer::{UnpackStats, Unpacker};

/// A fixed modification time for built entries (2020-09-13T12:26:40Z), so tests can check it.
pub(crate) const MTIME: u64 = 1_600_000_000;

/// A tar stream built entry by entry, names written verbatim (hostile ones included).
pub(crate) struct Tar {
    builder: tar::Builder<Vec<u8>>,
}

impl Tar {
    pub(crate) fn new() -> Tar {
        Tar {
            builder: tar::Builder::new(Vec::new()),
        }
    }

    /// Appends an entry; `name` goes into the header as it is (at most 100 bytes).
    pub(crate) fn entry(
        &mut self,
        kind: tar::EntryType,
        name: &str,
        link: Option<&str>,
        mode: u32,
        data: &[u8],
    ) -> &mut Tar {
        let mut header = tar::Header::new_gnu();
        let slot = &mut header.as_gnu_mut().expect("gnu header").name;
        slot[..name.len()].copy_from_slice(name.as_bytes());
        if let Some(link) = link {
            header.set_link_name_literal(link).unwrap();
        }
        header.set_entry_type(kind);
        header.set_mode(mode);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(MTIME);
        header.set_size(data.len() as u64);
        header.set_cksum();
        self.builder.append(&header, data).unwrap();
        self
    }

    pub(crate) fn file(&mut self, name: &str, data: &[u8]) -> &mut Tar {
        self.entry(tar::EntryType::Regular, name, None, 0o644, data)
    }

    pub(crate) fn dir(&mut self, name: &str) -> &mut Tar {
        self.entry(tar::EntryType::Directory, name, None, 0o755, b"")
    }

    pub(crate) fn symlink(&mut self, name: &str, target: &str) -> &mut Tar {
        self.entry(tar::EntryType::Symlink, name, Some(target), 0o777, b"")
    }

    pub(crate) fn hard_link(&mut self, name: &str, target: &str) -> &mut Tar {
        self.entry(tar::EntryType::Link, name, Some(target), 0o644, b"")
    }

    /// PAX records that apply to the next entry.
    pub(crate) fn pax(&mut self, records: &[(&str, &[u8])]) -> &mut Tar {
        self.builder
            .append_pax_extensions(records.iter().copied())
            .unwrap();
        self
    }

    /// A regular file with a name longer than a ustar header holds (GNU long name).
    pub(crate) fn long_file(&mut self, name: &str, data: &[u8]) -> &mut Tar {
        let mut header = tar::Header::new_gnu();
        header.set_mode(0o644);
        header.set_size(data.len() as u64);
        header.set_mtime(MTIME);
        self.builder.append_data(&mut header, name, data).unwrap();
        self
    }

    pub(crate) fn finish(&mut self) -> Vec<u8> {
        let builder = std::mem::replace(&mut self.builder, tar::Builder::new(Vec::new()));
        builder.into_inner().unwrap()
    }
}

/// Applies uncompressed layer tars to `dest` directly, as `Archive::unpack` does.
pub(crate) fn apply(dest: &Path, layers: &[Vec<u8>]) -> crate::Result<UnpackStats> {
    let mut unpacker = Unpacker::new(dest)?;
    for (i, layer) in layers.iter().enumerate() {
        unpacker.apply_layer(&format!("layer {}", i + 1), &mut &layer[..])?;
    }
    unpacker.finish()
}

pub(crate) fn gzip(data: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(data).unwrap();
    encoder.finish().unwrap()
}

pub(crate) fn zstd(data: &[u8]) -> Vec<u8> {
    compress_to_vec(data, CompressionLevel::Fastest)
}

/// A layer: its blob as stored and the digest of its uncompressed tar.
#[derive(Clone)]
pub(crate) struct TestLayer {
    pub(crate) blob: Vec<u8>,
    pub(crate) diff_id: Digest,
    pub(crate) media_type: &'static str,
}

impl TestLayer {
    pub(crate) fn plain(tar: Vec<u8>) -> TestLayer {
        TestLayer {
            diff_id: Digest::of(&tar),
            blob: tar,
            media_type: "application/vnd.oci.image.layer.v1.tar",
        }
    }

    pub(crate) fn gzip(tar: Vec<u8>) -> TestLayer {
        TestLayer {
            diff_id: Digest::of(&tar),
            blob: gzip(&tar),
            media_type: "application/vnd.oci.image.layer.v1.tar+gzip",
        }
    }

    pub(crate) fn zstd(tar: Vec<u8>) -> TestLayer {
        TestLayer {
            diff_id: Digest::of(&tar),
            blob: zstd(&tar),
            media_type: "application/vnd.oci.image.layer.v1.tar+zstd",
        }
    }

    pub(crate) fn digest(&self) -> Digest {
        Digest::of(&self.blob)
    }
}

/// An image: config JSON and layers.
#[derive(Clone)]
pub(crate) struct TestImage {
    pub(crate) config: Vec<u8>,
    pub(crate) layers: Vec<TestLayer>,
}

impl TestImage {
    /// A linux image for `arch` (`amd64`, `arm64/v8`) running `cmd`.
    pub(crate) fn new(arch: &str, cmd: &str, layers: Vec<TestLayer>) -> TestImage {
        let (architecture, variant) = arch
            .split_once('/')
            .map_or((arch, None), |(a, v)| (a, Some(v)));
        let diff_ids: Vec<String> = layers.iter().map(|l| l.diff_id.to_string()).collect();
        let mut config = json!({
            "architecture": architecture,
            "os": "linux",
            "config": {"Cmd": [cmd], "Env": ["PATH=/bin"], "WorkingDir": "/"},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        });
        if let Some(variant) = variant {
            config["variant"] = json!(variant);
        }
        TestImage {
            config: serde_json::to_vec(&config).unwrap(),
            layers,
        }
    }

    /// A one-layer amd64 image holding `/hello` with `content`.
    pub(crate) fn simple(content: &str) -> TestImage {
        let tar = Tar::new().file("hello", content.as_bytes()).finish();
        TestImage::new("amd64", content, vec![TestLayer::gzip(tar)])
    }

    pub(crate) fn id(&self) -> Digest {
        Digest::of(&self.config)
    }
}

/// The members of a tarball, in order.
pub(crate) type Members = Vec<(String, Vec<u8>)>;

/// `docker save` as Docker 20.10 writes it: `<config hex>.json`, `<id>/layer.tar`,
/// `manifest.json`, `repositories`. Layers go in uncompressed (their tar, not their blob).
pub(crate) fn docker_legacy(
    images: &[(&TestImage, &[&str])],
    layer_tars: &[&[Vec<u8>]],
) -> Members {
    let mut members = Members::new();
    let mut manifest = Vec::new();
    for ((image, tags), tars) in images.iter().zip(layer_tars) {
        let config_name = format!("{}.json", image.id().hex());
        let mut layer_paths = Vec::new();
        for (i, tar) in tars.iter().enumerate() {
            // A v1 layer id: any 64 hex digits, not a content digest.
            let id = Digest::of(format!("{}-{i}", image.id()).as_bytes()).hex();
            members.push((format!("{id}/VERSION"), b"1.0".to_vec()));
            members.push((format!("{id}/layer.tar"), tar.clone()));
            layer_paths.push(format!("{id}/layer.tar"));
        }
        members.push((config_name.clone(), image.config.clone()));
        manifest.push(json!({"Config": config_name, "RepoTags": tags, "Layers": layer_paths}));
    }
    members.push((
        "manifest.json".into(),
        serde_json::to_vec(&manifest).unwrap(),
    ));
    members.push(("repositories".into(), b"{}".to_vec()));
    members
}

/// An OCI image layout under construction.
#[derive(Default)]
pub(crate) struct Oci {
    members: Members,
}

impl Oci {
    pub(crate) fn blob(&mut self, media_type: &str, bytes: &[u8]) -> Value {
        let digest = Digest::of(bytes);
        let path = format!("blobs/sha256/{}", digest.hex());
        if !self.members.iter().any(|(name, _)| *name == path) {
            self.members.push((path, bytes.to_vec()));
        }
        json!({"mediaType": media_type, "digest": digest.to_string(), "size": bytes.len()})
    }

    /// Adds an image's blobs and manifest; returns the manifest's descriptor, with platform.
    pub(crate) fn image(&mut self, image: &TestImage) -> Value {
        let config = self.blob("application/vnd.oci.image.config.v1+json", &image.config);
        let layers: Vec<Value> = image
            .layers
            .iter()
            .map(|l| self.blob(l.media_type, &l.blob))
            .collect();
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": config,
            "layers": layers,
        });
        let mut desc = self.blob(
            "application/vnd.oci.image.manifest.v1+json",
            &serde_json::to_vec(&manifest).unwrap(),
        );
        let parsed: Value = serde_json::from_slice(&image.config).unwrap();
        let mut platform = json!({"os": parsed["os"], "architecture": parsed["architecture"]});
        if let Some(variant) = parsed.get("variant") {
            platform["variant"] = variant.clone();
        }
        desc["platform"] = platform;
        desc
    }

    /// Adds an index over `manifests`; returns its descriptor.
    pub(crate) fn index(&mut self, manifests: Vec<Value>) -> Value {
        let index = json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": manifests,
        });
        self.blob(
            "application/vnd.oci.image.index.v1+json",
            &serde_json::to_vec(&index).unwrap(),
        )
    }

    /// The layout's members with `index.json` listing `top` and the `oci-layout` marker.
    pub(crate) fn finish(mut self, top: Vec<Value>) -> Members {
        let index = json!({"schemaVersion": 2, "manifests": top});
        self.members
            .push(("index.json".into(), serde_json::to_vec(&index).unwrap()));
        self.members.push((
            "oci-layout".into(),
            br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
        ));
        self.members
    }

    /// Adds a Docker 25 `manifest.json` pointing into `blobs/sha256/`.
    pub(crate) fn docker_manifest(&mut self, images: &[(&TestImage, &[&str])]) {
        let entries: Vec<Value> = images
            .iter()
            .map(|(image, tags)| {
                let layers: Vec<String> =
                    image.layers.iter().map(|l| format!("blobs/sha256/{}", l.digest().hex())).collect();
                json!({"Config": format!("blobs/sha256/{}", image.id().hex()), "RepoTags": tags, "Layers": layers})
            })
            .collect();
        self.members.push((
            "manifest.json".into(),
            serde_json::to_vec(&entries).unwrap(),
        ));
    }
}

/// Names an OCI descriptor as Docker 25 and containerd do.
pub(crate) fn named(mut desc: Value, full_name: &str, tag: &str) -> Value {
    desc["annotations"] = json!({
        "io.containerd.image.name": full_name,
        "org.opencontainers.image.ref.name": tag,
    });
    desc
}

/// `docker save` as Docker 25+ writes it, for single-platform images.
pub(crate) fn docker25(images: &[(&TestImage, &[&str], &str)]) -> Members {
    let mut oci = Oci::default();
    let mut top = Vec::new();
    for (image, _, full_name) in images {
        let desc = oci.image(image);
        let tag = full_name.rsplit_once(':').map_or("latest", |(_, t)| t);
        top.push(named(desc, full_name, tag));
    }
    let docker: Vec<(&TestImage, &[&str])> = images.iter().map(|(i, t, _)| (*i, *t)).collect();
    oci.docker_manifest(&docker);
    oci.finish(top)
}

/// Writes `members` as a tarball in `dir`; `prefix` (`""` or `"./"`) goes before every name.
pub(crate) fn write_tarball(dir: &Path, members: &Members, prefix: &str) -> PathBuf {
    let mut tar = Tar::new();
    for (name, data) in members {
        tar.file(&format!("{prefix}{name}"), data);
    }
    let path = dir.join("image.tar");
    std::fs::write(&path, tar.finish()).unwrap();
    path
}

/// Replaces the content of member `name`.
pub(crate) fn replace(members: &mut Members, name: &str, data: Vec<u8>) {
    let member = members
        .iter_mut()
        .find(|(n, _)| n == name)
        .expect("member exists");
    member.1 = data;
}

/// Whether the process may chown and mknod.
pub(crate) fn is_root() -> bool {
    crate::sys::geteuid() == 0
}
