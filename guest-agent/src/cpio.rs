//! A writer for cpio "newc" archives, the format the kernel unpacks into the initramfs
//! (Documentation/driver-api/early-userspace/buffer-format.rst).
//!
//! Ours rather than `cpio(1)`: device nodes can be packed without root, the output is
//! byte-for-byte reproducible (fixed mtimes, inode numbers and owners), and the host builds the
//! per-launch archive that carries the [`LaunchSpec`](crate::LaunchSpec) in memory.

use std::io::{self, Write};

/// Where an archive concatenated after another may start: the kernel looks for the next one at
/// a four-byte boundary (buffer-format.rst, "zero or more NUL bytes" between archives).
pub const ARCHIVE_ALIGN: u64 = 4;

/// The zero bytes to put after an archive of `len` bytes before the next one.
pub fn gap_after(len: u64) -> u64 {
    len.next_multiple_of(ARCHIVE_ALIGN) - len
}

/// Appends `next` to the archive `initramfs`, padded as the kernel expects.
pub fn concatenate(mut initramfs: Vec<u8>, next: &[u8]) -> Vec<u8> {
    let gap = gap_after(initramfs.len() as u64) as usize;
    initramfs.resize(initramfs.len() + gap, 0);
    initramfs.extend_from_slice(next);
    initramfs
}

/// File type bits of a directory.
pub const S_IFDIR: u32 = 0o040000;
/// File type bits of a regular file.
pub const S_IFREG: u32 = 0o100000;
/// File type bits of a character device.
pub const S_IFCHR: u32 = 0o020000;

/// One file of an archive, owned by root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry<'a> {
    /// Path inside the archive, without a leading `/`.
    pub name: &'a str,
    /// Type and permission bits.
    pub mode: u32,
    /// Device number (major, minor) of a device node.
    pub rdev: (u32, u32),
    /// Contents of a regular file.
    pub data: &'a [u8],
}

impl<'a> Entry<'a> {
    /// A directory with mode 0755.
    pub fn dir(name: &'a str) -> Self {
        Self {
            name,
            mode: S_IFDIR | 0o755,
            rdev: (0, 0),
            data: &[],
        }
    }

    /// A regular file with the given permission bits.
    pub fn file(name: &'a str, permissions: u32, data: &'a [u8]) -> Self {
        Self {
            name,
            mode: S_IFREG | (permissions & 0o7777),
            rdev: (0, 0),
            data,
        }
    }
}

/// Writes `entries` and the trailer. The output's length is a multiple of four, so archives
/// may be concatenated.
pub fn write_newc(out: &mut impl Write, entries: &[Entry<'_>]) -> io::Result<()> {
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

#[cfg(test)]
mod tests {

    #[test]
    fn a_concatenated_archive_starts_on_a_four_byte_boundary() {
        let joined = concatenate(vec![1; 5], &[2; 3]);
        assert_eq!(joined, [1, 1, 1, 1, 1, 0, 0, 0, 2, 2, 2]);
        assert_eq!(concatenate(vec![1; 4], &[2]), [1, 1, 1, 1, 2]);
    }
    use super::*;

    /// Walks an archive's headers; returns (name, mode, data) per entry.
    fn parse(out: &[u8]) -> Vec<(String, u32, Vec<u8>)> {
        let mut at = 0;
        let mut entries = Vec::new();
        while at < out.len() {
            assert_eq!(&out[at..at + 6], b"070701", "header at offset {at}");
            let field = |i: usize| {
                let start = at + 6 + 8 * i;
                usize::from_str_radix(std::str::from_utf8(&out[start..start + 8]).unwrap(), 16)
                    .unwrap()
            };
            let (mode, size, name_size) = (field(1), field(6), field(11));
            let name_at = at + 110;
            let name = String::from_utf8(out[name_at..name_at + name_size - 1].to_vec()).unwrap();
            let data_at = (name_at + name_size).next_multiple_of(4);
            entries.push((name, mode as u32, out[data_at..data_at + size].to_vec()));
            at = (data_at + size).next_multiple_of(4);
        }
        entries
    }

    #[test]
    fn every_header_and_body_is_four_byte_aligned() {
        let mut out = Vec::new();
        let entries = [Entry::dir("moat"), Entry::file("moat/x", 0o644, b"abcde")];
        write_newc(&mut out, &entries).unwrap();
        assert_eq!(out.len() % 4, 0);
        let parsed = parse(&out);
        let names: Vec<_> = parsed.iter().map(|(n, _, _)| n.as_str()).collect();
        assert_eq!(names, ["moat", "moat/x", "TRAILER!!!"]);
        assert_eq!(parsed[1].1, S_IFREG | 0o644);
        assert_eq!(parsed[1].2, b"abcde");
    }
}
