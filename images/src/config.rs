//! The image config (OCI image spec "Image Configuration", Docker's image JSON): what a launch
//! needs to know about the workload, and the layer diff ids that verify the root filesystem.

use std::collections::BTreeMap;

use serde::de::{self, Deserializer, IgnoredAny};
use serde::Deserialize;

use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::platform::Platform;

/// The parts of an image config that launching a workload needs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ImageConfig {
    /// `ENTRYPOINT`, if the image sets one (`Some(vec![])` when set to empty).
    pub entrypoint: Option<Vec<String>>,
    /// `CMD`, if the image sets one.
    pub cmd: Option<Vec<String>>,
    /// `ENV`, as `KEY=value` strings in image order.
    pub env: Vec<String>,
    /// `WORKDIR`; `None` means `/`.
    pub working_dir: Option<String>,
    /// `USER` (`name`, `uid`, `uid:gid`, `name:group`); `None` means root.
    pub user: Option<String>,
    /// The hostname a Docker config carries, if any (OCI configs have none).
    pub hostname: Option<String>,
    /// The domain name a Docker config carries, if any.
    pub domainname: Option<String>,
    /// `STOPSIGNAL` (`SIGTERM`, `15`, ...); `None` means SIGTERM.
    pub stop_signal: Option<String>,
    /// `LABEL`s.
    pub labels: BTreeMap<String, String>,
    /// `EXPOSE`d ports as `port/proto` (`80/tcp`), sorted.
    pub exposed_ports: Vec<String>,
    /// `VOLUME` mount points, sorted.
    pub volumes: Vec<String>,
    /// `SHELL` for the shell form of RUN/CMD/ENTRYPOINT, if set.
    pub shell: Option<Vec<String>>,
    /// CPU architecture (`amd64`).
    pub architecture: String,
    /// Operating system (`linux`).
    pub os: String,
    /// CPU variant (`v8`), if any.
    pub variant: Option<String>,
    /// When the image was created (RFC 3339), if recorded.
    pub created: Option<String>,
    /// Digests of the uncompressed layers, bottom first (`rootfs.diff_ids`).
    pub diff_ids: Vec<Digest>,
}

impl ImageConfig {
    /// Parses config JSON; `file` names it in errors.
    pub fn parse(bytes: &[u8], file: &str) -> Result<ImageConfig> {
        let raw: RawConfig = serde_json::from_slice(bytes).map_err(|source| Error::Json {
            file: file.to_owned(),
            source,
        })?;
        let diff_ids = parse_diff_ids(raw.rootfs, file)?;
        let container = raw.config.unwrap_or_default();
        Ok(ImageConfig {
            entrypoint: container.entrypoint.map(|s| s.0),
            cmd: container.cmd.map(|s| s.0),
            env: container.env.unwrap_or_default(),
            working_dir: non_empty(container.working_dir),
            user: non_empty(container.user),
            hostname: non_empty(container.hostname),
            domainname: non_empty(container.domainname),
            stop_signal: non_empty(container.stop_signal),
            labels: container.labels.unwrap_or_default(),
            exposed_ports: keys(container.exposed_ports),
            volumes: keys(container.volumes),
            shell: container.shell.map(|s| s.0),
            architecture: raw.architecture.unwrap_or_default(),
            os: raw.os.unwrap_or_default(),
            variant: non_empty(raw.variant),
            created: non_empty(raw.created),
            diff_ids,
        })
    }

    /// The platform the image was built for.
    pub fn platform(&self) -> Platform {
        Platform::new(&self.os, &self.architecture, self.variant.as_deref())
    }
}

fn parse_diff_ids(rootfs: Option<RawRootFs>, file: &str) -> Result<Vec<Digest>> {
    let Some(rootfs) = rootfs else {
        return Ok(Vec::new());
    };
    if rootfs.kind.as_deref().is_some_and(|kind| kind != "layers") {
        return Err(Error::InvalidMetadata {
            file: file.to_owned(),
            problem: format!(
                "rootfs type {:?} is not \"layers\"",
                rootfs.kind.unwrap_or_default()
            ),
        });
    }
    let invalid = |value: &str| Error::InvalidMetadata {
        file: file.to_owned(),
        problem: format!("invalid diff id {value:?}"),
    };
    let diff_ids = rootfs.diff_ids.unwrap_or_default();
    diff_ids
        .iter()
        .map(|id| id.parse().map_err(|_| invalid(id)))
        .collect()
}

/// Docker writes `""` for unset strings.
fn non_empty(value: Option<String>) -> Option<String> {
    value.filter(|v| !v.is_empty())
}

/// Docker writes sets (ports, volumes) as objects with empty values.
fn keys(map: Option<BTreeMap<String, IgnoredAny>>) -> Vec<String> {
    map.unwrap_or_default().into_keys().collect()
}

#[derive(Deserialize)]
struct RawConfig {
    architecture: Option<String>,
    os: Option<String>,
    variant: Option<String>,
    created: Option<String>,
    config: Option<RawContainerConfig>,
    rootfs: Option<RawRootFs>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
struct RawContainerConfig {
    entrypoint: Option<StringList>,
    cmd: Option<StringList>,
    env: Option<Vec<String>>,
    working_dir: Option<String>,
    user: Option<String>,
    hostname: Option<String>,
    domainname: Option<String>,
    stop_signal: Option<String>,
    labels: Option<BTreeMap<String, String>>,
    exposed_ports: Option<BTreeMap<String, IgnoredAny>>,
    volumes: Option<BTreeMap<String, IgnoredAny>>,
    shell: Option<StringList>,
}

#[derive(Deserialize)]
struct RawRootFs {
    #[serde(rename = "type")]
    kind: Option<String>,
    diff_ids: Option<Vec<String>>,
}

/// Docker's `strslice`: a JSON array of strings, or a single string meaning a one-element list.
struct StringList(Vec<String>);

impl<'de> Deserialize<'de> for StringList {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum OneOrMany {
            One(String),
            Many(Vec<String>),
        }
        match OneOrMany::deserialize(deserializer) {
            Ok(OneOrMany::One(s)) => Ok(StringList(vec![s])),
            Ok(OneOrMany::Many(v)) => Ok(StringList(v)),
            Err(_) => Err(de::Error::custom(
                "expected a string or an array of strings",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_launch_needs() {
        let json = br#"{
            "architecture": "amd64", "os": "linux", "created": "2024-01-01T00:00:00Z",
            "config": {
                "User": "nginx:nginx", "Env": ["PATH=/usr/bin", "A=b"],
                "Entrypoint": ["/docker-entrypoint.sh"], "Cmd": ["nginx", "-g", "daemon off;"],
                "WorkingDir": "/srv", "ExposedPorts": {"80/tcp": {}, "443/tcp": {}},
                "Volumes": {"/data": {}}, "Labels": {"maintainer": "me"},
                "StopSignal": "SIGQUIT", "Hostname": "web"
            },
            "rootfs": {"type": "layers", "diff_ids": [
                "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"]}
        }"#;

        let config = ImageConfig::parse(json, "config.json").unwrap();

        assert_eq!(
            config.entrypoint.as_deref(),
            Some(&["/docker-entrypoint.sh".to_owned()][..])
        );
        assert_eq!(config.cmd.as_ref().map(Vec::len), Some(3));
        assert_eq!(config.env, ["PATH=/usr/bin", "A=b"]);
        assert_eq!(config.working_dir.as_deref(), Some("/srv"));
        assert_eq!(config.user.as_deref(), Some("nginx:nginx"));
        assert_eq!(config.exposed_ports, ["443/tcp", "80/tcp"]);
        assert_eq!(config.volumes, ["/data"]);
        assert_eq!(config.labels["maintainer"], "me");
        assert_eq!(config.stop_signal.as_deref(), Some("SIGQUIT"));
        assert_eq!(config.hostname.as_deref(), Some("web"));
        assert_eq!(config.platform(), Platform::linux_amd64());
        assert_eq!(config.diff_ids, [Digest::of(b"")]);
    }

    #[test]
    fn nulls_and_empty_strings_mean_unset() {
        let json = br#"{"architecture": "amd64", "os": "linux", "config": {
            "Env": null, "Entrypoint": null, "Cmd": null, "Labels": null, "ExposedPorts": null,
            "WorkingDir": "", "User": ""}, "rootfs": {"type": "layers", "diff_ids": []}}"#;

        let config = ImageConfig::parse(json, "c").unwrap();

        assert_eq!(config.entrypoint, None);
        assert_eq!(config.working_dir, None);
        assert_eq!(config.user, None);
        assert!(config.env.is_empty() && config.labels.is_empty());
    }

    #[test]
    fn single_string_command_is_a_one_element_list() {
        let json = br#"{"config": {"Cmd": "/bin/sh"}}"#;

        let config = ImageConfig::parse(json, "c").unwrap();

        assert_eq!(config.cmd, Some(vec!["/bin/sh".to_owned()]));
    }

    #[test]
    fn garbage_names_the_file() {
        let err = ImageConfig::parse(b"{not json", "abc.json").unwrap_err();

        assert_eq!(err.to_string(), "invalid JSON in abc.json");
    }

    #[test]
    fn bad_diff_id_names_the_file_and_value() {
        let json = br#"{"rootfs": {"type": "layers", "diff_ids": ["md5:00"]}}"#;

        let err = ImageConfig::parse(json, "abc.json").unwrap_err();

        assert_eq!(err.to_string(), "abc.json: invalid diff id \"md5:00\"");
    }
}
