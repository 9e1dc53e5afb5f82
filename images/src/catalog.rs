//! The images a tarball holds, by name, and how a user's `repo:tag` and `--platform` pick one.
//!
//! A Docker 25+ tarball describes each image twice, in `manifest.json` and in the OCI
//! `index.json`; the two are merged by config digest so that the image counts once.

use crate::archive::Archive;
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::image::Image;
use crate::manifest::{self, Descriptor, DockerEntry, Variant, VariantSource};
use crate::platform::Platform;
use crate::reference::{is_bare_tag, Reference};

/// containerd (and Docker 25+) put the full reference here.
const CONTAINERD_NAME_ANNOTATION: &str = "io.containerd.image.name";
/// OCI image spec "Pre-Defined Annotation Keys": a full reference, or just a tag.
const REF_NAME_ANNOTATION: &str = "org.opencontainers.image.ref.name";
/// Fewest hex digits accepted as an image id prefix.
const MIN_ID_PREFIX: usize = 4;

/// Every named image in a tarball.
pub(crate) struct Catalog {
    images: Vec<Named>,
}

/// An image a user can name: a top-level index entry or a `manifest.json` entry.
struct Named {
    names: Vec<Name>,
    source: Source,
}

enum Source {
    Oci { desc: Descriptor, digest: Digest },
    Docker(DockerEntry),
}

/// One name of an image, as given in the tarball.
struct Name {
    /// As shown to users: `alpine:latest`, or the raw string if it is not a reference.
    shown: String,
    reference: Option<Reference>,
}

impl Name {
    fn new(raw: &str) -> Name {
        let reference = Reference::parse(raw);
        let shown = reference
            .as_ref()
            .map_or_else(|| raw.to_owned(), Reference::familiar);
        Name { shown, reference }
    }

    fn matches(&self, input: &str, wanted: Option<&Reference>) -> bool {
        let by_reference = match (wanted, &self.reference) {
            (Some(wanted), Some(known)) => wanted.selects(known),
            _ => false,
        };
        by_reference || self.shown == input
    }
}

impl Named {
    fn add_name(&mut self, name: Name) {
        if !self.names.iter().any(|n| n.shown == name.shown) {
            self.names.push(name);
        }
    }

    fn repo_tags(&self) -> Vec<String> {
        self.names.iter().map(|n| n.shown.clone()).collect()
    }

    /// How an error message lists this image.
    fn describe(&self) -> String {
        if !self.names.is_empty() {
            return self.repo_tags().join(", ");
        }
        match &self.source {
            Source::Oci { digest, .. } => format!("untagged {}", digest.short()),
            Source::Docker(entry) => format!("untagged {}", entry.config),
        }
    }

    fn variants(&self, archive: &Archive) -> Result<Vec<Variant>> {
        match &self.source {
            Source::Oci { desc, .. } => manifest::oci_variants(archive, desc, "index.json"),
            Source::Docker(entry) => Ok(vec![Variant {
                platform: None,
                source: VariantSource::Docker(entry.clone()),
            }]),
        }
    }

    /// The digests a user may select this image by: top-level, manifests, configs.
    fn digests(&self, archive: &Archive) -> Vec<Digest> {
        let mut digests = Vec::new();
        if let Source::Oci { digest, .. } = &self.source {
            digests.push(*digest);
        }
        for variant in self.variants(archive).unwrap_or_default() {
            if let VariantSource::Oci { digest, .. } = &variant.source {
                digests.push(*digest);
            }
            if let Ok(Some(config)) = manifest::config_digest(archive, &variant) {
                digests.push(config);
            }
        }
        digests
    }
}

impl Catalog {
    /// Reads `index.json` and `manifest.json`, whichever the tarball has.
    pub(crate) fn read(archive: &Archive) -> Result<Catalog> {
        let has_index = archive.contains("index.json");
        let has_manifest = archive.contains("manifest.json");
        if !has_index && !has_manifest {
            if !archive.is_complete() {
                return Err(archive.truncated());
            }
            return Err(Error::NoManifest {
                path: archive.path().to_owned(),
            });
        }
        let mut images = Vec::new();
        if has_index {
            manifest::check_layout_version(archive)?;
            images = oci_images(manifest::read_index(archive)?)?;
        }
        if has_manifest {
            let entries = manifest::read_docker_manifest(archive)?;
            merge_docker(archive, &mut images, entries)?;
        }
        Ok(Catalog { images })
    }

    /// One image per runnable variant the tarball has the blobs for.
    pub(crate) fn images(&self, archive: &Archive) -> Result<Vec<Image>> {
        let mut images = Vec::new();
        for named in &self.images {
            for variant in named.variants(archive)? {
                if variant.is_present(archive) {
                    images.push(manifest::load(archive, &variant, &named.repo_tags())?);
                }
            }
        }
        Ok(images)
    }

    /// The image `reference` names (or the only one), for `platform` (or the default).
    pub(crate) fn select(
        &self,
        archive: &Archive,
        reference: Option<&str>,
        platform: Option<&Platform>,
    ) -> Result<Image> {
        let named = self.find(archive, reference)?;
        let variant = choose_variant(archive, named, platform)?;
        manifest::load(archive, &variant, &named.repo_tags())
    }

    fn find(&self, archive: &Archive, reference: Option<&str>) -> Result<&Named> {
        let Some(input) = reference else {
            return match &self.images[..] {
                [] => Err(Error::NoImages),
                [only] => Ok(only),
                _ => Err(Error::AmbiguousImage {
                    reference: None,
                    available: self.describe(),
                }),
            };
        };
        let wanted = Reference::parse(input);
        let mut found: Vec<&Named> = self
            .images
            .iter()
            .filter(|named| {
                named
                    .names
                    .iter()
                    .any(|name| name.matches(input, wanted.as_ref()))
            })
            .collect();
        if found.is_empty() {
            found = self.find_by_digest(archive, input, wanted.as_ref());
        }
        match found[..] {
            [only] => Ok(only),
            [] if self.images.is_empty() => Err(Error::NoImages),
            [] => Err(Error::ImageNotFound {
                reference: input.to_owned(),
                available: self.describe(),
            }),
            _ => Err(Error::AmbiguousImage {
                reference: Some(input.to_owned()),
                available: found
                    .iter()
                    .map(|n| n.describe())
                    .collect::<Vec<_>>()
                    .join("; "),
            }),
        }
    }

    /// Images whose index, manifest or config digest is `name@sha256:…`, `sha256:…`, or starts
    /// with the hex prefix given (as `docker run 3f5ef9` does).
    fn find_by_digest(
        &self,
        archive: &Archive,
        input: &str,
        wanted: Option<&Reference>,
    ) -> Vec<&Named> {
        let exact = wanted
            .and_then(Reference::digest)
            .copied()
            .or_else(|| input.parse().ok());
        let prefix = input.strip_prefix("sha256:").unwrap_or(input);
        let is_prefix =
            prefix.len() >= MIN_ID_PREFIX && prefix.bytes().all(|b| b.is_ascii_hexdigit());
        if exact.is_none() && !is_prefix {
            return Vec::new();
        }
        let prefix = prefix.to_ascii_lowercase();
        let selects = |digest: &Digest| match exact {
            Some(exact) => *digest == exact,
            None => digest.hex().starts_with(&prefix),
        };
        self.images
            .iter()
            .filter(|named| named.digests(archive).iter().any(selects))
            .collect()
    }

    fn describe(&self) -> String {
        let all: Vec<String> = self.images.iter().map(Named::describe).collect();
        all.join("; ")
    }
}

/// Top-level `index.json` entries, one per digest, with their names.
fn oci_images(descs: Vec<Descriptor>) -> Result<Vec<Named>> {
    let mut images: Vec<Named> = Vec::new();
    for desc in descs {
        let digest = desc.parsed_digest("index.json")?;
        let names = oci_names(&desc);
        let existing = images
            .iter_mut()
            .find(|named| matches!(&named.source, Source::Oci { digest: d, .. } if *d == digest));
        let named = match existing {
            Some(named) => named,
            None => {
                images.push(Named {
                    names: Vec::new(),
                    source: Source::Oci { desc, digest },
                });
                images.last_mut().expect("just pushed")
            }
        };
        for name in names {
            named.add_name(name);
        }
    }
    Ok(images)
}

/// Names from an index entry's annotations. A bare tag in `ref.name` is only used when there
/// is no full name beside it (Docker 25 writes `latest` there next to the full name).
fn oci_names(desc: &Descriptor) -> Vec<Name> {
    let full = desc.annotations.get(CONTAINERD_NAME_ANNOTATION);
    let ref_name = desc.annotations.get(REF_NAME_ANNOTATION);
    let mut names = Vec::new();
    if let Some(full) = full {
        names.push(Name::new(full));
    }
    match ref_name {
        Some(tag) if is_bare_tag(tag) && full.is_some() => {}
        Some(tag) if is_bare_tag(tag) => names.push(Name {
            shown: tag.clone(),
            reference: None,
        }),
        Some(reference) => names.push(Name::new(reference)),
        None => {}
    }
    names
}

/// Adds `manifest.json` entries, folding each into the OCI image with the same config.
fn merge_docker(
    archive: &Archive,
    images: &mut Vec<Named>,
    entries: Vec<DockerEntry>,
) -> Result<()> {
    let oci_configs: Vec<Vec<Digest>> = images
        .iter()
        .map(|named| oci_config_digests(archive, named))
        .collect();
    for entry in entries {
        let config = manifest::docker_config_digest(archive, &entry)?;
        let same_oci =
            config.and_then(|c| oci_configs.iter().position(|configs| configs.contains(&c)));
        let same_docker = images.iter().position(
            |named| matches!(&named.source, Source::Docker(e) if e.config == entry.config),
        );
        let names: Vec<Name> = entry.repo_tags.iter().map(|tag| Name::new(tag)).collect();
        let index = match same_oci.or(same_docker) {
            Some(index) => index,
            None => {
                images.push(Named {
                    names: Vec::new(),
                    source: Source::Docker(entry),
                });
                images.len() - 1
            }
        };
        for name in names {
            images[index].add_name(name);
        }
    }
    Ok(())
}

/// Config digests of an OCI image's variants that are present; failures are left for `select`
/// to report.
fn oci_config_digests(archive: &Archive, named: &Named) -> Vec<Digest> {
    let Source::Oci { .. } = &named.source else {
        return Vec::new();
    };
    let variants = named.variants(archive).unwrap_or_default();
    variants
        .iter()
        .filter_map(|variant| manifest::config_digest(archive, variant).ok().flatten())
        .collect()
}

/// Picks the variant for `wanted`, or for linux/amd64 when there are several to choose from.
fn choose_variant(archive: &Archive, named: &Named, wanted: Option<&Platform>) -> Result<Variant> {
    let mut variants = named.variants(archive)?;
    if variants.len() == 1 && (wanted.is_none() || !variants[0].is_present(archive)) {
        return present_or_missing(archive, variants.remove(0));
    }
    let wanted = wanted.cloned().unwrap_or_default();
    let mut platforms = Vec::new();
    for variant in &mut variants {
        if variant.platform.is_none() && variant.is_present(archive) {
            variant.platform = Some(manifest::platform_of(archive, variant)?);
        }
        platforms.push(variant.platform.clone());
    }
    let candidates: Vec<usize> = (0..variants.len())
        .filter(|&i| platforms[i].as_ref().is_some_and(|p| wanted.matches(p)))
        .collect();
    let rank = |&i: &usize| {
        let present = variants[i].is_present(archive);
        let exact = platforms[i].as_ref() == Some(&wanted);
        (!present, !exact)
    };
    match candidates.iter().min_by_key(|i| rank(i)) {
        Some(&best) => present_or_missing(archive, variants.swap_remove(best)),
        None => Err(Error::PlatformNotFound {
            image: named.describe(),
            wanted,
            available: describe_platforms(archive, &variants),
        }),
    }
}

fn present_or_missing(archive: &Archive, variant: Variant) -> Result<Variant> {
    if variant.is_present(archive) {
        return Ok(variant);
    }
    match &variant.source {
        VariantSource::Oci {
            digest, referrer, ..
        } => Err(archive.missing(referrer, "manifest", &digest.to_string())),
        VariantSource::Docker(entry) => {
            Err(archive.missing("manifest.json", "config", &entry.config))
        }
    }
}

fn describe_platforms(archive: &Archive, variants: &[Variant]) -> String {
    let listed: Vec<String> = variants
        .iter()
        .map(|variant| {
            let platform = variant
                .platform
                .as_ref()
                .map_or("unknown platform".to_owned(), |p| p.to_string());
            if variant.is_present(archive) {
                platform
            } else {
                format!("{platform} (not in the tarball)")
            }
        })
        .collect();
    if listed.is_empty() {
        return "no runnable variant".to_owned();
    }
    listed.join(", ")
}
