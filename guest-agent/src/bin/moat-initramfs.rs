//! Packs the agent as `/init` of an uncompressed initramfs (cpio "newc", the format the kernel
//! unpacks: Documentation/driver-api/early-userspace/buffer-format.rst).
//!
//! Usage: `moat-initramfs AGENT OUT`. Written by us rather than by `cpio(1)` so that the device
//! node the kernel needs (`/dev/console`) can be packed without root, and the output is
//! byte-for-byte reproducible (fixed mtimes, inode numbers and owners).

use std::fs;
use std::io::{self, Write};
use std::path::Path;
use std::process::ExitCode;

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFCHR: u32 = 0o020000;

/// One file of the archive.
struct Entry<'a> {
    name: &'a str,
    mode: u32,
    rdev: (u32, u32),
    data: &'a [u8],
}

/// The initramfs: the kernel opens `/dev/console` for init's stdio before /dev is mounted, so
/// the node must be in the archive; the directories are the agent's mount points.
fn entries(agent: &[u8]) -> Vec<Entry<'_>> {
    let dir = |name| Entry {
        name,
        mode: S_IFDIR | 0o755,
        rdev: (0, 0),
        data: &[],
    };
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
        Entry {
            name: "init",
            mode: S_IFREG | 0o755,
            rdev: (0, 0),
            data: agent,
        },
    ]
}

fn write_newc(out: &mut impl Write, entries: &[Entry<'_>]) -> io::Result<()> {
    let trailer = Entry {
        name: "TRAILER!!!",
        mode: 0,
        rdev: (0, 0),
        data: &[],
    };
    let mut offset = 0usize;
    for (ino, entry) in entries.iter().chain(std::iter::once(&trailer)).enumerate() {
        let name_size = entry.name.len() + 1;
        let header = format!(
            "070701{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
            ino + 1,
            entry.mode,
            0, // uid
            0, // gid
            if entry.mode & S_IFDIR != 0 { 2 } else { 1 },
            0, // mtime: fixed for reproducible output
            entry.data.len(),
            0, // dev major
            0, // dev minor
            entry.rdev.0,
            entry.rdev.1,
            name_size,
            0, // checksum: unused by "newc"
        );
        out.write_all(header.as_bytes())?;
        out.write_all(entry.name.as_bytes())?;
        out.write_all(&[0])?;
        offset += header.len() + name_size;
        offset += pad4(out, offset)?;
        out.write_all(entry.data)?;
        offset += entry.data.len();
        offset += pad4(out, offset)?;
    }
    Ok(())
}

/// Pads to the next multiple of four bytes, as newc requires after names and data.
fn pad4(out: &mut impl Write, offset: usize) -> io::Result<usize> {
    let padding = (4 - offset % 4) % 4;
    out.write_all(&[0; 3][..padding])?;
    Ok(padding)
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
