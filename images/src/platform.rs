//! Platforms (`os/arch[/variant]`, OCI image index "platform") and how a request matches one.

use std::fmt;
use std::str::FromStr;

use crate::error::Error;

/// An operating system and CPU architecture, in OCI (Go `GOOS`/`GOARCH`) spelling.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Platform {
    /// `linux`, `windows`, ...
    pub os: String,
    /// `amd64`, `arm64`, `arm`, `386`, `riscv64`, ...
    pub architecture: String,
    /// `v7` for `arm`, `v8` for `arm64`, `v2`/`v3` for `amd64`, when given.
    pub variant: Option<String>,
}

impl Platform {
    /// A platform from its parts, with common aliases (`x86_64`, `aarch64`) normalised.
    pub fn new(os: &str, architecture: &str, variant: Option<&str>) -> Platform {
        let os = os.to_ascii_lowercase();
        let architecture = architecture.to_ascii_lowercase();
        let variant = variant
            .filter(|v| !v.is_empty())
            .map(str::to_ascii_lowercase);
        let (architecture, variant) = match (architecture.as_str(), variant) {
            ("x86_64" | "x86-64", variant) => ("amd64".to_owned(), variant),
            ("aarch64", variant) => ("arm64".to_owned(), variant),
            ("armhf", None) => ("arm".to_owned(), Some("v7".to_owned())),
            ("armel", None) => ("arm".to_owned(), Some("v6".to_owned())),
            ("i386" | "i686", variant) => ("386".to_owned(), variant),
            (_, variant) => (architecture, variant),
        };
        Platform {
            os,
            architecture,
            variant,
        }
    }

    /// `linux/amd64`: the platform moat runs, and the default choice in a multi-platform image.
    pub fn linux_amd64() -> Platform {
        Platform::new("linux", "amd64", None)
    }

    /// Whether an image built for `candidate` satisfies a request for `self`.
    ///
    /// A request without a variant takes any variant; `arm64` means `v8` and `arm` means `v7`
    /// when the variant is left out, as containerd's platform matcher treats them.
    pub fn matches(&self, candidate: &Platform) -> bool {
        if self.os != candidate.os || self.architecture != candidate.architecture {
            return false;
        }
        match &self.variant {
            None => true,
            Some(wanted) => candidate.effective_variant() == Some(wanted.as_str()),
        }
    }

    fn effective_variant(&self) -> Option<&str> {
        match (self.architecture.as_str(), self.variant.as_deref()) {
            ("arm64", None) => Some("v8"),
            ("arm", None) => Some("v7"),
            (_, variant) => variant,
        }
    }
}

impl Default for Platform {
    fn default() -> Platform {
        Platform::linux_amd64()
    }
}

impl FromStr for Platform {
    type Err = Error;

    /// Parses `os/arch[/variant]`; a bare `arch` means `linux/arch`.
    fn from_str(s: &str) -> Result<Platform, Error> {
        let parts: Vec<&str> = s.split('/').collect();
        let valid = |part: &&str| {
            !part.is_empty()
                && part
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        };
        if !parts.iter().all(valid) {
            return Err(Error::InvalidPlatform {
                value: s.to_owned(),
            });
        }
        match parts[..] {
            [arch] => Ok(Platform::new("linux", arch, None)),
            [os, arch] => Ok(Platform::new(os, arch, None)),
            [os, arch, variant] => Ok(Platform::new(os, arch, Some(variant))),
            _ => Err(Error::InvalidPlatform {
                value: s.to_owned(),
            }),
        }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(variant) = &self.variant {
            write!(f, "/{variant}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Platform {
        s.parse().unwrap()
    }

    #[test]
    fn parses_os_arch_and_variant() {
        assert_eq!(
            p("linux/arm64/v8"),
            Platform::new("linux", "arm64", Some("v8"))
        );
        assert_eq!(p("linux/amd64").to_string(), "linux/amd64");
        assert_eq!(p("arm64").to_string(), "linux/arm64");
    }

    #[test]
    fn normalises_aliases() {
        assert_eq!(p("linux/x86_64"), Platform::linux_amd64());
        assert_eq!(p("linux/aarch64"), p("linux/arm64"));
    }

    #[test]
    fn rejects_malformed_strings() {
        for bad in ["", "linux/", "/amd64", "a/b/c/d", "linux/amd 64"] {
            assert!(bad.parse::<Platform>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn request_without_variant_takes_any_variant() {
        assert!(p("linux/arm").matches(&p("linux/arm/v6")));
        assert!(!p("linux/arm").matches(&p("linux/arm64")));
    }

    #[test]
    fn missing_variant_means_the_architecture_default() {
        assert!(p("linux/arm64/v8").matches(&p("linux/arm64")));
        assert!(!p("linux/arm/v6").matches(&p("linux/arm")));
    }
}
