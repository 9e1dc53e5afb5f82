//! Image references (`alpine`, `alpine:3.19`, `ghcr.io/org/app:1`, `app@sha256:…`), normalised
//! as Docker normalises them so that `alpine` finds `docker.io/library/alpine:latest`.

use crate::digest::Digest;

/// Docker Hub, the registry a reference without a domain belongs to.
const DEFAULT_DOMAIN: &str = "docker.io";
/// Docker Hub's namespace for official images (`alpine` is `library/alpine`).
const OFFICIAL_NAMESPACE: &str = "library/";
/// The tag a reference without one means.
const DEFAULT_TAG: &str = "latest";

/// A parsed reference: `domain/path`, and a tag or a digest or both.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Reference {
    name: String,
    tag: Option<String>,
    digest: Option<Digest>,
}

impl Reference {
    /// Parses `s`; a reference with neither tag nor digest gets the tag `latest`.
    pub(crate) fn parse(s: &str) -> Option<Reference> {
        let (rest, digest) = match s.split_once('@') {
            Some((rest, digest)) => (rest, Some(digest.parse().ok()?)),
            None => (s, None),
        };
        let (name, tag) = match rest.rfind(':') {
            Some(colon) if !rest[colon..].contains('/') => {
                (&rest[..colon], Some(&rest[colon + 1..]))
            }
            _ => (rest, None),
        };
        if !valid_name(name) || tag.is_some_and(|tag| !valid_tag(tag)) {
            return None;
        }
        let tag = match (tag, digest) {
            (None, None) => Some(DEFAULT_TAG.to_owned()),
            (tag, _) => tag.map(str::to_owned),
        };
        Some(Reference {
            name: qualify(name),
            tag,
            digest,
        })
    }

    /// The digest part, for `name@sha256:…` references.
    pub(crate) fn digest(&self) -> Option<&Digest> {
        self.digest.as_ref()
    }

    /// Whether `self`, as a user typed it, selects an image known by `other`.
    ///
    /// Names must agree; a tag or digest the user gave must agree too.
    pub(crate) fn selects(&self, other: &Reference) -> bool {
        self.name == other.name
            && (self.tag.is_none() || self.tag == other.tag)
            && (self.digest.is_none() || self.digest == other.digest)
    }

    /// The short form Docker shows: `alpine:latest`, `ghcr.io/org/app:1`.
    pub(crate) fn familiar(&self) -> String {
        let name = self.name.strip_prefix("docker.io/").unwrap_or(&self.name);
        let name = name.strip_prefix(OFFICIAL_NAMESPACE).unwrap_or(name);
        let mut familiar = name.to_owned();
        if let Some(tag) = &self.tag {
            familiar.push(':');
            familiar.push_str(tag);
        }
        if let Some(digest) = &self.digest {
            familiar.push('@');
            familiar.push_str(&digest.to_string());
        }
        familiar
    }
}

/// `alpine` → `docker.io/library/alpine`; `ghcr.io/x/y` stays as it is.
fn qualify(name: &str) -> String {
    let (first, rest) = name.split_once('/').unwrap_or(("", name));
    let has_domain = !first.is_empty() && (first.contains(['.', ':']) || first == "localhost");
    if has_domain {
        let domain = if first == "index.docker.io" {
            DEFAULT_DOMAIN
        } else {
            first
        };
        return qualify_in(domain, rest);
    }
    qualify_in(DEFAULT_DOMAIN, name)
}

fn qualify_in(domain: &str, path: &str) -> String {
    if domain == DEFAULT_DOMAIN && !path.contains('/') {
        return format!("{domain}/{OFFICIAL_NAMESPACE}{path}");
    }
    format!("{domain}/{path}")
}

fn valid_name(name: &str) -> bool {
    let ok_byte = |b: u8| b.is_ascii_alphanumeric() || b"._-:".contains(&b);
    !name.is_empty()
        && name
            .split('/')
            .all(|c| !c.is_empty() && c.bytes().all(ok_byte))
}

/// Docker's tag grammar: `[\w][\w.-]{0,127}`.
fn valid_tag(tag: &str) -> bool {
    let ok_byte = |b: u8| b.is_ascii_alphanumeric() || b"_.-".contains(&b);
    tag.len() <= 128
        && tag
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_')
        && tag.bytes().all(ok_byte)
}

/// Whether `s` is a bare tag (`latest`, `3.19`), as `org.opencontainers.image.ref.name`
/// often is, rather than a full reference.
pub(crate) fn is_bare_tag(s: &str) -> bool {
    valid_tag(s) && !s.contains(['/', ':'])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(s: &str) -> Reference {
        Reference::parse(s).unwrap()
    }

    #[test]
    fn bare_name_means_official_image_latest() {
        assert_eq!(r("alpine"), r("docker.io/library/alpine:latest"));
        assert_eq!(r("alpine").familiar(), "alpine:latest");
    }

    #[test]
    fn user_namespace_and_other_registries_keep_their_domain() {
        assert_eq!(r("me/app:1").familiar(), "me/app:1");
        assert_eq!(r("ghcr.io/org/app").familiar(), "ghcr.io/org/app:latest");
        assert_eq!(
            r("localhost:5000/app:dev").familiar(),
            "localhost:5000/app:dev"
        );
    }

    #[test]
    fn tag_must_agree_when_given() {
        assert!(r("alpine").selects(&r("docker.io/library/alpine:latest")));
        assert!(!r("alpine:3.19").selects(&r("alpine:latest")));
        assert!(!r("alpine").selects(&r("alpine:3.19")));
    }

    #[test]
    fn digest_reference_has_no_default_tag() {
        let digest = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        let reference = r(&format!("alpine@{digest}"));

        assert_eq!(reference.digest().unwrap().to_string(), digest);
        assert_eq!(reference.familiar(), format!("alpine@{digest}"));
    }

    #[test]
    fn rejects_garbage() {
        for bad in [
            "",
            "a//b",
            "alpine:",
            "alpine:-x",
            "al pine",
            "alpine@sha256:zz",
        ] {
            assert!(Reference::parse(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn bare_tags_are_recognised() {
        assert!(is_bare_tag("latest"));
        assert!(!is_bare_tag("alpine:latest"));
        assert!(!is_bare_tag("docker.io/library/alpine"));
    }
}
