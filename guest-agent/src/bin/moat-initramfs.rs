//! Packs the agent as `/init` of an uncompressed initramfs (cpio "newc", the format the kernel
//! unpacks: Documentation/driver-api/early-userspace/buffer-format.rst).
//!
//! Usage: `moat-initramfs AGENT OUT`. Written by us rather than by `cpio(1)` so that the device
//! node the kernel needs (`/dev/console`) can be packed without root, and the output is
//! byte-for-byte reproducible (fixed mtimes, inode numbers and owners); the format itself is
//! written by `moat_agent_protocol::cpio`.

use std::fs;
use std::io;
use std::path::Path;
use std::process::ExitCode;

use moat_agent_protocol::cpio::{write_newc, Entry, S_IFCHR, S_IFREG};

/// The initramfs: the kernel opens `/dev/console` for init's stdio before /dev is mounted, so
/// the node must be in the archive; the directories are the agent's mount points.
fn entries(agent: &[u8]) -> Vec<Entry<'_>> {
    let dir = Entry::dir;
    vec![
        dir("dev"),
        Entry {
            name: "dev/console",
            mode: S_IFCHR | 0o600,
            rdev: (5, 1),
            data: &[],
        },
        dir("proc"),
        dir("sys"),
        dir("newroot"),
        dir("moat"),
        Entry {
            name: "init",
            mode: S_IFREG | 0o755,
            rdev: (0, 0),
            data: agent,
        },
    ]
}

fn pack(agent_path: &Path, out_path: &Path) -> io::Result<()> {
    let agent = fs::read(agent_path)?;
    let mut archive = Vec::with_capacity(agent.len() + 4096);
    write_newc(&mut archive, &entries(&agent))?;
    let tmp = out_path.with_extension("tmp");
    fs::write(&tmp, &archive)?;
    fs::rename(&tmp, out_path)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let [_, agent, out] = args.as_slice() else {
        eprintln!("usage: moat-initramfs AGENT OUT");
        return ExitCode::from(2);
    };
    match pack(Path::new(agent), Path::new(out)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("moat-initramfs: cannot pack {agent} into {out}: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_header_and_body_is_four_byte_aligned() {
        let mut out = Vec::new();
        write_newc(&mut out, &entries(b"abcde")).unwrap();
        assert_eq!(out.len() % 4, 0);
        let mut at = 0;
        let mut names = Vec::new();
        while at < out.len() {
            assert_eq!(&out[at..at + 6], b"070701", "header at offset {at}");
            let field = |i: usize| {
                let start = at + 6 + 8 * i;
                usize::from_str_radix(std::str::from_utf8(&out[start..start + 8]).unwrap(), 16)
                    .unwrap()
            };
            let (size, name_size) = (field(6), field(11));
            let name_at = at + 110;
            names.push(String::from_utf8(out[name_at..name_at + name_size - 1].to_vec()).unwrap());
            let data_at = (name_at + name_size).next_multiple_of(4);
            at = (data_at + size).next_multiple_of(4);
        }
        assert_eq!(
            names,
            [
                "dev",
                "dev/console",
                "proc",
                "sys",
                "newroot",
                "moat",
                "init",
                "TRAILER!!!"
            ]
        );
    }

    #[test]
    fn console_is_the_kernel_console_device() {
        let console = entries(b"")
            .into_iter()
            .find(|e| e.name == "dev/console")
            .unwrap();
        assert_eq!(console.rdev, (5, 1));
        assert_eq!(console.mode & 0o170000, S_IFCHR);
    }
}
