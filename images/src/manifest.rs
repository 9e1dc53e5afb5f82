//! The metadata formats: Docker's `manifest.json`, and OCI indexes, manifests and descriptors
//! (OCI image spec v1.1, with the Docker distribution v2 media types it grew from). This module
//! walks them down to one image's config and layers.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer};

use crate::archive::{blob_path, check_size, digest_from_name, Archive};
use crate::config::ImageConfig;
use crate::digest::{self, Digest};
use crate::error::{Error, Result};
use crate::image::{Image, Layer};
use crate::platform::Platform;

const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
/// Layer media types start with one of these (OCI image spec "Image Layer Filesystem
/// Changeset"; Docker's `rootfs.diff.tar[.gzip]` and `rootfs.foreign.diff.tar.gzip`).
const LAYER_PREFIXES: [&str; 2] = [
    "application/vnd.oci.image.layer.",
    "application/vnd.docker.image.rootfs.",
];
/// BuildKit marks provenance and SBOM manifests in an index with this annotation.
const REFERENCE_TYPE_ANNOTATION: &str = "vnd.docker.reference.type";
/// Indexes nested deeper than this are refused (real ones nest at most twice).
const MAX_INDEX_DEPTH: usize = 4;

/// A descriptor (OCI image spec "Descriptors"): a typed, sized, digested pointer to a blob.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Descriptor {
    #[serde(default)]
    pub(crate) media_type: Option<String>,
    pub(crate) digest: String,
    pub(crate) size: u64,
    #[serde(default, deserialize_with = "null_as_default")]
    pub(crate) annotations: BTreeMap<String, String>,
    #[serde(default)]
    pub(crate) platform: Option<RawPlatform>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub(crate) urls: Vec<String>,
}

impl Descriptor {
    /// The parsed digest; `file` is where the descriptor was read, for the error.
    pub(crate) fn parsed_digest(&self, file: &str) -> Result<Digest> {
        self.digest.parse().map_err(|_| Error::InvalidMetadata {
            file: file.to_owned(),
            problem: format!("invalid digest {:?}", truncate(&self.digest)),
        })
    }

    /// Whether this is a BuildKit attestation (provenance, SBOM), not a runnable image.
    fn is_attestation(&self) -> bool {
        let unknown = self
            .platform
            .as_ref()
            .is_some_and(|p| p.os == "unknown" && p.architecture == "unknown");
        unknown || self.annotations.contains_key(REFERENCE_TYPE_ANNOTATION)
    }
}

/// The `platform` object of an index entry.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct RawPlatform {
    #[serde(default)]
    architecture: String,
    #[serde(default)]
    os: String,
    #[serde(default)]
    variant: Option<String>,
}

impl RawPlatform {
    fn to_platform(&self) -> Platform {
        Platform::new(&self.os, &self.architecture, self.variant.as_deref())
    }
}

/// An index or a manifest: which one is told by its media type, or by which fields it has.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct RawManifest {
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default)]
    pub(crate) manifests: Option<Vec<Descriptor>>,
    #[serde(default)]
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Option<Vec<Descriptor>>,
}

/// One entry of Docker's `manifest.json`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct DockerEntry {
    pub(crate) config: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub(crate) repo_tags: Vec<String>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub(crate) layers: Vec<String>,
}

/// Go writes empty lists and maps as `null`.
fn null_as_default<'de, D, T>(deserializer: D) -> std::result::Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

/// Parses JSON, naming `file` if it does not parse.
pub(crate) fn parse_json<'a, T: Deserialize<'a>>(bytes: &'a [u8], file: &str) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|source| Error::Json {
        file: file.to_owned(),
        source,
    })
}

fn truncate(s: &str) -> String {
    s.chars().take(100).collect()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Index,
    Manifest,
}

fn kind_of_media_type(media_type: &str) -> Option<Kind> {
    match media_type {
        OCI_INDEX | DOCKER_MANIFEST_LIST => Some(Kind::Index),
        OCI_MANIFEST | DOCKER_MANIFEST => Some(Kind::Manifest),
        _ => None,
    }
}

/// A single-platform image the tarball describes, found by walking an index, or one entry of
/// `manifest.json`.
#[derive(Debug, Clone)]
pub(crate) struct Variant {
    /// The platform the index entry declares, if any.
    pub(crate) platform: Option<Platform>,
    pub(crate) source: VariantSource,
}

#[derive(Debug, Clone)]
pub(crate) enum VariantSource {
    /// An OCI (or Docker v2) manifest; `referrer` names what pointed at it.
    Oci {
        manifest: Descriptor,
        digest: Digest,
        referrer: String,
        present: bool,
    },
    /// An entry of Docker's `manifest.json`.
    Docker(DockerEntry),
}

impl Variant {
    /// Whether the manifest or config it needs is in the tarball.
    pub(crate) fn is_present(&self, archive: &Archive) -> bool {
        match &self.source {
            VariantSource::Oci { present, .. } => *present,
            VariantSource::Docker(entry) => archive.contains(&entry.config),
        }
    }
}

/// The single-platform manifests under descriptor `top` (itself, if it is a manifest).
pub(crate) fn oci_variants(
    archive: &Archive,
    top: &Descriptor,
    referrer: &str,
) -> Result<Vec<Variant>> {
    let mut variants = Vec::new();
    walk(archive, top, referrer, 0, &mut variants)?;
    Ok(variants)
}

fn walk(
    archive: &Archive,
    desc: &Descriptor,
    referrer: &str,
    depth: usize,
    out: &mut Vec<Variant>,
) -> Result<()> {
    let digest = desc.parsed_digest(referrer)?;
    let present = archive.contains(&blob_path(&digest));
    let kind = match desc.media_type.as_deref() {
        Some(media_type) => kind_of_media_type(media_type),
        // Media type is optional in old indexes; the content says what it is.
        None if present => Some(sniff(archive, desc, &digest, referrer)?),
        None => Some(Kind::Manifest),
    };
    match kind {
        Some(Kind::Manifest) => {
            out.push(Variant {
                platform: desc.platform.as_ref().map(RawPlatform::to_platform),
                source: VariantSource::Oci {
                    manifest: desc.clone(),
                    digest,
                    referrer: referrer.to_owned(),
                    present,
                },
            });
            Ok(())
        }
        Some(Kind::Index) => walk_index(archive, desc, &digest, referrer, depth, out),
        None if depth == 0 => Err(Error::UnsupportedMediaType {
            what: format!("{referrer} entry {digest}"),
            media_type: truncate(desc.media_type.as_deref().unwrap_or_default()),
        }),
        None => {
            log::debug!(
                "{referrer}: skipping {digest} of media type {:?}",
                desc.media_type
            );
            Ok(())
        }
    }
}

fn walk_index(
    archive: &Archive,
    desc: &Descriptor,
    digest: &Digest,
    referrer: &str,
    depth: usize,
    out: &mut Vec<Variant>,
) -> Result<()> {
    let file = format!("index {digest}");
    if depth >= MAX_INDEX_DEPTH {
        return Err(Error::InvalidMetadata {
            file,
            problem: format!("indexes nest more than {MAX_INDEX_DEPTH} deep"),
        });
    }
    let bytes = archive.read_blob(digest, Some(desc.size), referrer, "index")?;
    let index: RawManifest = parse_json(&bytes, &file)?;
    for child in index.manifests.unwrap_or_default() {
        if child.is_attestation() {
            continue;
        }
        walk(archive, &child, &file, depth + 1, out)?;
    }
    Ok(())
}

/// Tells an index from a manifest by its fields, for descriptors without a media type.
fn sniff(archive: &Archive, desc: &Descriptor, digest: &Digest, referrer: &str) -> Result<Kind> {
    let bytes = archive.read_blob(digest, Some(desc.size), referrer, "manifest")?;
    let raw: RawManifest = parse_json(&bytes, &blob_path(digest))?;
    let by_type = raw.media_type.as_deref().and_then(kind_of_media_type);
    Ok(by_type.unwrap_or(if raw.manifests.is_some() {
        Kind::Index
    } else {
        Kind::Manifest
    }))
}

/// Reads a variant's manifest and config, and finds its layers: everything but layer content.
pub(crate) fn load(archive: &Archive, variant: &Variant, repo_tags: &[String]) -> Result<Image> {
    let mut image = match &variant.source {
        VariantSource::Oci {
            manifest,
            digest,
            referrer,
            ..
        } => load_oci(archive, manifest, digest, referrer)?,
        VariantSource::Docker(entry) => load_docker(archive, entry)?,
    };
    image.repo_tags = repo_tags.to_vec();
    Ok(image)
}

/// The platform a variant is for: its index entry's, or else its config's.
pub(crate) fn platform_of(archive: &Archive, variant: &Variant) -> Result<Platform> {
    match &variant.platform {
        Some(platform) => Ok(platform.clone()),
        None => Ok(load(archive, variant, &[])?.platform()),
    }
}

/// The config digest of a present OCI variant, without reading the config.
pub(crate) fn config_digest(archive: &Archive, variant: &Variant) -> Result<Option<Digest>> {
    match &variant.source {
        VariantSource::Oci {
            manifest,
            digest,
            referrer,
            present: true,
        } => {
            let (_, config) = read_manifest(archive, manifest, digest, referrer)?;
            Ok(Some(config.parsed_digest(&format!("manifest {digest}"))?))
        }
        VariantSource::Oci { .. } => Ok(None),
        VariantSource::Docker(entry) => docker_config_digest(archive, entry),
    }
}

/// A Docker entry's config digest: from its file name when it has the `<hex>.json` or
/// `blobs/sha256/<hex>` form, else by hashing it.
pub(crate) fn docker_config_digest(
    archive: &Archive,
    entry: &DockerEntry,
) -> Result<Option<Digest>> {
    if let Some(digest) = digest_from_name(&entry.config) {
        return Ok(Some(digest));
    }
    match archive.locate(&entry.config) {
        Some((offset, size)) => archive.hash_member(offset, size).map(Some),
        None => Ok(None),
    }
}

fn read_manifest(
    archive: &Archive,
    desc: &Descriptor,
    digest: &Digest,
    referrer: &str,
) -> Result<(RawManifest, Descriptor)> {
    let file = format!("manifest {digest}");
    let bytes = archive.read_blob(digest, Some(desc.size), referrer, "manifest")?;
    let mut manifest: RawManifest = parse_json(&bytes, &file)?;
    let media_type = manifest
        .media_type
        .as_deref()
        .or(desc.media_type.as_deref());
    if media_type.and_then(kind_of_media_type) == Some(Kind::Index) || manifest.manifests.is_some()
    {
        return Err(Error::InvalidMetadata {
            file,
            problem: "is an index where a manifest was expected".to_owned(),
        });
    }
    let config = manifest
        .config
        .take()
        .ok_or_else(|| Error::InvalidMetadata {
            file: file.clone(),
            problem: "has no config".to_owned(),
        })?;
    match config.media_type.as_deref() {
        None | Some(OCI_CONFIG | DOCKER_CONFIG) => Ok((manifest, config)),
        // Helm charts, signatures and other artifacts share the manifest format.
        Some(other) => Err(Error::UnsupportedMediaType {
            what: format!("the config of {file} (not a container image?)"),
            media_type: truncate(other),
        }),
    }
}

fn load_oci(
    archive: &Archive,
    desc: &Descriptor,
    digest: &Digest,
    referrer: &str,
) -> Result<Image> {
    let file = format!("manifest {digest}");
    let (manifest, config_desc) = read_manifest(archive, desc, digest, referrer)?;
    let id = config_desc.parsed_digest(&file)?;
    let raw_config = archive.read_blob(&id, Some(config_desc.size), &file, "config")?;
    let config = ImageConfig::parse(&raw_config, &blob_path(&id))?;
    let descs = manifest.layers.unwrap_or_default();
    check_layer_count(&file, descs.len(), &config)?;
    let layers = descs
        .iter()
        .zip(&config.diff_ids)
        .map(|(layer, diff_id)| oci_layer(archive, &file, layer, *diff_id))
        .collect::<Result<Vec<_>>>()?;
    Ok(Image {
        id,
        config,
        raw_config,
        layers,
        repo_tags: Vec::new(),
        manifest_digest: Some(*digest),
    })
}

fn oci_layer(archive: &Archive, file: &str, desc: &Descriptor, diff_id: Digest) -> Result<Layer> {
    let digest = desc.parsed_digest(file)?;
    if let Some(media_type) = desc.media_type.as_deref() {
        let known = LAYER_PREFIXES
            .iter()
            .any(|prefix| media_type.starts_with(prefix));
        if !known || media_type.ends_with("+encrypted") {
            return Err(Error::UnsupportedMediaType {
                what: format!("layer {digest}"),
                media_type: truncate(media_type),
            });
        }
    }
    let member = blob_path(&digest);
    // TODO(#3): foreign layers (descriptor `urls`, Windows base images) are never downloaded.
    let what = if desc.urls.is_empty() {
        "layer"
    } else {
        "foreign layer"
    };
    let (_, size) = archive
        .locate(&member)
        .ok_or_else(|| archive.missing(file, what, &digest.to_string()))?;
    check_size(|| format!("layer {member}"), desc.size, size)?;
    Ok(Layer {
        member,
        blob_digest: Some(digest),
        diff_id,
        size,
        media_type: desc.media_type.clone(),
    })
}

fn load_docker(archive: &Archive, entry: &DockerEntry) -> Result<Image> {
    const REFERRER: &str = "manifest.json";
    let raw_config = archive.read_small(&entry.config, REFERRER, "config")?;
    let id = Digest::of(&raw_config);
    if let Some(expected) = digest_from_name(&entry.config) {
        digest::verify(|| format!("config {}", entry.config), &expected, &id)?;
    }
    let config = ImageConfig::parse(&raw_config, &entry.config)?;
    check_layer_count(&entry.config, entry.layers.len(), &config)?;
    let layers = entry
        .layers
        .iter()
        .zip(&config.diff_ids)
        .map(|(path, diff_id)| docker_layer(archive, REFERRER, path, *diff_id))
        .collect::<Result<Vec<_>>>()?;
    Ok(Image {
        id,
        config,
        raw_config,
        layers,
        repo_tags: Vec::new(),
        manifest_digest: None,
    })
}

fn docker_layer(archive: &Archive, referrer: &str, path: &str, diff_id: Digest) -> Result<Layer> {
    let (_, size) = archive
        .locate(path)
        .ok_or_else(|| archive.missing(referrer, "layer", path))?;
    Ok(Layer {
        member: path.to_owned(),
        // Docker 25+ points into `blobs/sha256/`; Docker 20.10's `<id>/layer.tar` ids are not
        // content digests, so there only the diff id verifies the layer.
        blob_digest: digest_from_name(path).filter(|_| path.contains("blobs/")),
        diff_id,
        size,
        media_type: None,
    })
}

fn check_layer_count(file: &str, layers: usize, config: &ImageConfig) -> Result<()> {
    if layers == config.diff_ids.len() {
        return Ok(());
    }
    Err(Error::InvalidMetadata {
        file: file.to_owned(),
        problem: format!(
            "lists {layers} layers but the config lists {} diff ids",
            config.diff_ids.len()
        ),
    })
}

/// Checks `oci-layout` (OCI image spec "OCI Image Layout"): version 1.x only.
pub(crate) fn check_layout_version(archive: &Archive) -> Result<()> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Layout {
        image_layout_version: String,
    }
    if !archive.contains("oci-layout") {
        return Ok(());
    }
    let bytes = archive.read_small("oci-layout", "the tarball", "file")?;
    let layout: Layout = parse_json(&bytes, "oci-layout")?;
    if layout.image_layout_version.split('.').next() == Some("1") {
        return Ok(());
    }
    Err(Error::InvalidMetadata {
        file: "oci-layout".to_owned(),
        problem: format!(
            "unsupported imageLayoutVersion {:?}",
            truncate(&layout.image_layout_version)
        ),
    })
}

/// Reads and parses `index.json`.
pub(crate) fn read_index(archive: &Archive) -> Result<Vec<Descriptor>> {
    let bytes = archive.read_small("index.json", "the tarball", "file")?;
    let index: RawManifest = parse_json(&bytes, "index.json")?;
    Ok(index.manifests.unwrap_or_default())
}

/// Reads and parses `manifest.json`.
pub(crate) fn read_docker_manifest(archive: &Archive) -> Result<Vec<DockerEntry>> {
    let bytes = archive.read_small("manifest.json", "the tarball", "file")?;
    parse_json(&bytes, "manifest.json")
}
