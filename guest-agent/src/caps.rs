//! Linux capabilities by name, and the set a container gets by default.
//!
//! The host turns `--cap-add`/`--cap-drop` into the list of capability names the workload
//! keeps; the agent drops every other one from the bounding set and, for a root workload, from
//! its effective, permitted and inheritable sets.

/// Capability names in number order (`CAP_CHOWN` is 0), up to `CAP_CHECKPOINT_RESTORE` (40),
/// the last one of the guest kernel.
pub const NAMES: [&str; 41] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

/// What `docker run` grants a container unless told otherwise.
pub const DOCKER_DEFAULT: [&str; 14] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "FSETID",
    "FOWNER",
    "MKNOD",
    "NET_RAW",
    "SETGID",
    "SETUID",
    "SETFCAP",
    "SETPCAP",
    "NET_BIND_SERVICE",
    "SYS_CHROOT",
    "KILL",
    "AUDIT_WRITE",
];

/// The number of a capability named with or without its `CAP_` prefix, in any case.
pub fn number(name: &str) -> Option<u32> {
    let upper = name.to_ascii_uppercase();
    let bare = upper.strip_prefix("CAP_").unwrap_or(&upper);
    NAMES.iter().position(|n| *n == bare).map(|i| i as u32)
}

/// Applies Docker's `--cap-add`/`--cap-drop` rules to the default set: drops first, then adds;
/// `ALL` stands for every capability. Returns the kept names in number order, or the first
/// unknown name.
pub fn resolve(add: &[String], drop: &[String]) -> Result<Vec<&'static str>, String> {
    let mut keep: Vec<bool> = NAMES.iter().map(|n| DOCKER_DEFAULT.contains(n)).collect();
    let mut apply = |names: &[String], value: bool| -> Result<(), String> {
        for name in names {
            if name.eq_ignore_ascii_case("ALL") {
                keep.fill(value);
            } else {
                let n = number(name).ok_or_else(|| format!("unknown capability {name:?}"))?;
                keep[n as usize] = value;
            }
        }
        Ok(())
    };
    apply(drop, false)?;
    apply(add, true)?;
    Ok(NAMES
        .iter()
        .zip(keep)
        .filter_map(|(name, kept)| kept.then_some(*name))
        .collect())
}

/// The bit mask of a list of names (unknown names are ignored).
pub fn mask<S: AsRef<str>>(names: &[S]) -> u64 {
    names
        .iter()
        .filter_map(|n| number(n.as_ref()))
        .fold(0, |mask, n| mask | (1 << n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_to_kernel_numbers() {
        assert_eq!(number("CHOWN"), Some(0));
        assert_eq!(number("cap_net_raw"), Some(13));
        assert_eq!(number("SYS_ADMIN"), Some(21));
        assert_eq!(number("CHECKPOINT_RESTORE"), Some(40));
        assert_eq!(number("NOPE"), None);
    }

    #[test]
    fn the_default_set_is_dockers() {
        // `grep CapEff /proc/self/status` in `docker run busybox` prints this mask.
        assert_eq!(mask(&resolve(&[], &[]).unwrap()), 0xa804_25fb);
    }

    #[test]
    fn drops_then_adds() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(resolve(&s(&["CHOWN"]), &s(&["ALL"])).unwrap(), ["CHOWN"]);
        assert_eq!(resolve(&s(&["ALL"]), &[]).unwrap().len(), NAMES.len());
        let kept = resolve(&s(&["sys_admin"]), &s(&["NET_RAW"])).unwrap();
        assert!(kept.contains(&"SYS_ADMIN") && !kept.contains(&"NET_RAW"));
        assert!(resolve(&s(&["BOGUS"]), &[]).is_err());
    }
}
