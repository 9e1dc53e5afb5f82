//! The files a container runtime provides in /etc: hostname, hosts, resolv.conf.
//!
//! Written into the root after the switch, that is into the overlay's upper layer: the image
//! disk never changes.

use std::io;

/// Sets the kernel hostname and writes /etc/hostname and /etc/hosts to match.
pub fn set_hostname(hostname: &str) -> io::Result<()> {
    // SAFETY: the pointer and length describe a live byte slice.
    let rc = unsafe { libc::sethostname(hostname.as_ptr().cast(), hostname.len()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    std::fs::create_dir_all("/etc")?;
    std::fs::write("/etc/hostname", format!("{hostname}\n"))?;
    std::fs::write("/etc/hosts", hosts(hostname))
}

/// Writes /etc/resolv.conf naming `servers`.
pub fn write_resolv_conf(servers: &[String]) -> io::Result<()> {
    std::fs::create_dir_all("/etc")?;
    std::fs::write("/etc/resolv.conf", resolv_conf(servers))
}

fn hosts(hostname: &str) -> String {
    format!(
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\t{hostname}\n"
    )
}

fn resolv_conf(servers: &[String]) -> String {
    servers
        .iter()
        .map(|s| format!("nameserver {s}\n"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_names_the_guest() {
        let text = hosts("box");
        assert!(text.starts_with("127.0.0.1\tlocalhost\n"));
        assert!(text.ends_with("127.0.1.1\tbox\n"));
    }

    #[test]
    fn resolv_conf_lists_servers_in_order() {
        assert_eq!(
            resolv_conf(&["10.0.0.1".into(), "10.0.0.2".into()]),
            "nameserver 10.0.0.1\nnameserver 10.0.0.2\n"
        );
    }
}
