//! A selected image: its identity, config and layers, ready to unpack.

use crate::config::ImageConfig;
use crate::digest::Digest;
use crate::platform::Platform;

/// One image chosen from a tarball by [`Archive::select`](crate::Archive::select).
///
/// Its config has been read and verified, and every layer has been found in the tarball; the
/// layers themselves are verified while [`Archive::unpack`](crate::Archive::unpack) reads them.
#[derive(Debug, Clone)]
pub struct Image {
    pub(crate) id: Digest,
    pub(crate) config: ImageConfig,
    pub(crate) raw_config: Vec<u8>,
    pub(crate) layers: Vec<Layer>,
    pub(crate) repo_tags: Vec<String>,
    pub(crate) manifest_digest: Option<Digest>,
}

impl Image {
    /// The image id: the digest of its config JSON, as `docker images --no-trunc` shows it.
    pub fn id(&self) -> &Digest {
        &self.id
    }

    /// What launching the image needs to know.
    pub fn config(&self) -> &ImageConfig {
        &self.config
    }

    /// The config JSON exactly as stored (its sha256 is [`Image::id`]).
    pub fn raw_config(&self) -> &[u8] {
        &self.raw_config
    }

    /// The layers, bottom first.
    pub fn layers(&self) -> &[Layer] {
        &self.layers
    }

    /// The names the tarball gives the image (`alpine:3.19`, `ghcr.io/org/app:1`).
    pub fn repo_tags(&self) -> &[String] {
        &self.repo_tags
    }

    /// The digest of the image manifest, when the tarball has one (OCI layouts, Docker 25+).
    pub fn manifest_digest(&self) -> Option<&Digest> {
        self.manifest_digest.as_ref()
    }

    /// The platform the image's config declares.
    pub fn platform(&self) -> Platform {
        self.config.platform()
    }

    /// The layers' total size as stored in the tarball (compressed, if they are).
    pub fn total_layer_bytes(&self) -> u64 {
        self.layers.iter().map(|l| l.size).sum()
    }
}

/// One layer of an image.
#[derive(Debug, Clone)]
pub struct Layer {
    pub(crate) member: String,
    pub(crate) blob_digest: Option<Digest>,
    pub(crate) diff_id: Digest,
    pub(crate) size: u64,
    pub(crate) media_type: Option<String>,
}

impl Layer {
    /// The digest that best names the layer: its blob's digest when known, else its diff id.
    pub fn digest(&self) -> &Digest {
        self.blob_digest.as_ref().unwrap_or(&self.diff_id)
    }

    /// The digest of the blob as stored (compressed, if it is). A Docker 20.10 tarball does
    /// not record it.
    pub fn blob_digest(&self) -> Option<&Digest> {
        self.blob_digest.as_ref()
    }

    /// The digest of the uncompressed tar stream (`rootfs.diff_ids` in the config).
    pub fn diff_id(&self) -> &Digest {
        &self.diff_id
    }

    /// The blob's size in the tarball.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The media type its manifest gives, if any.
    pub fn media_type(&self) -> Option<&str> {
        self.media_type.as_deref()
    }

    /// Where the blob is inside the tarball.
    pub fn path_in_tarball(&self) -> &str {
        &self.member
    }
}

/// One runnable image in a tarball, as [`Archive::images`](crate::Archive::images) lists them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageSummary {
    /// The names the tarball gives it; empty for an untagged image.
    pub repo_tags: Vec<String>,
    /// Its config digest.
    pub id: Digest,
    /// The platform its config declares.
    pub platform: Platform,
    /// Its manifest's digest, when the tarball has one.
    pub manifest_digest: Option<Digest>,
    /// How many layers it has.
    pub layers: usize,
    /// The layers' total size in the tarball.
    pub size: u64,
}

impl From<&Image> for ImageSummary {
    fn from(image: &Image) -> ImageSummary {
        ImageSummary {
            repo_tags: image.repo_tags.clone(),
            id: image.id,
            platform: image.platform(),
            manifest_digest: image.manifest_digest,
            layers: image.layers.len(),
            size: image.total_layer_bytes(),
        }
    }
}
