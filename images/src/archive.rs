//! An image tarball, indexed in one pass: every member's data offset and size, so blobs are read
//! later by position, in any order, without scanning the tarball again.

use std::cell::Cell;
use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufReader, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::budget::{with_header_budget, Budgeted};
use crate::catalog::Catalog;
use crate::compression::{Compression, MAGIC_LEN};
use crate::digest::{self, Digest, HashingReader};
use crate::error::{Error, Result};
use crate::image::{Image, ImageSummary};
use crate::platform::Platform;
use crate::resolve::ImagePath;

/// More members than any image tarball has; bounds the index's memory.
const MAX_MEMBERS: usize = 1 << 20;
/// Manifests, indexes and configs larger than this are refused (real ones are kilobytes).
pub(crate) const MAX_JSON_SIZE: u64 = 16 << 20;
/// Symlinks and hard links followed to find a member (`docker save` uses one level).
const MAX_LINK_HOPS: usize = 16;
/// tar block size (POSIX ustar).
const BLOCK: u64 = 512;

/// An image tarball: `docker save` output (Docker 20.10 or 25+) or an OCI image layout.
pub struct Archive {
    path: PathBuf,
    file: File,
    members: HashMap<String, Member>,
    /// Whether the tarball ends with its end-of-archive marker. Without it the tarball may have
    /// been cut at a member boundary, and a missing member is reported as truncation.
    complete: bool,
}

/// One member of the tarball, by normalised name.
#[derive(Debug, Clone)]
enum Member {
    File { offset: u64, size: u64 },
    Symlink(Vec<u8>),
    HardLink(Vec<u8>),
}

impl Archive {
    /// Opens and indexes the tarball at `path`.
    pub fn open(path: &Path) -> Result<Archive> {
        let file = File::open(path).map_err(|source| match source.kind() {
            io::ErrorKind::NotFound => Error::NotFound {
                path: path.to_owned(),
            },
            _ => io_error("open", path, source),
        })?;
        let len = file
            .metadata()
            .map_err(|e| io_error("read", path, e))?
            .len();
        check_not_compressed(&file, path)?;
        let (members, data_end) = index(&file, path, len)?;
        let complete =
            has_end_marker(&file, data_end, len).map_err(|e| io_error("read", path, e))?;
        log::debug!(
            "{}: {} members, complete: {complete}",
            path.display(),
            members.len()
        );
        Ok(Archive {
            path: path.to_owned(),
            file,
            members,
            complete,
        })
    }

    /// The tarball's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every runnable image the tarball has the blobs for, one per platform variant.
    pub fn images(&self) -> Result<Vec<ImageSummary>> {
        let images = Catalog::read(self)?.images(self)?;
        Ok(images.iter().map(ImageSummary::from).collect())
    }

    /// Chooses an image and reads its config.
    ///
    /// `reference` is `repo:tag` (a bare `repo` means `repo:latest`), `repo@sha256:…`, or an
    /// image id or id prefix; it may be left out when the tarball holds one image.
    /// `platform` picks a variant of a multi-platform image (default linux/amd64) and, when
    /// given, must match the image's.
    pub fn select(&self, reference: Option<&str>, platform: Option<&Platform>) -> Result<Image> {
        Catalog::read(self)?.select(self, reference, platform)
    }

    /// Whether the tarball has a member `name` (following links).
    pub(crate) fn contains(&self, name: &str) -> bool {
        self.locate(name).is_some()
    }

    /// The data offset and size of member `name`, following symlinks and hard links.
    pub(crate) fn locate(&self, name: &str) -> Option<(u64, u64)> {
        let mut name = normalise(name.as_bytes())?;
        for _ in 0..MAX_LINK_HOPS {
            match self.members.get(&name)? {
                Member::File { offset, size } => return Some((*offset, *size)),
                // `docker save` links a layer saved twice: `<id>/layer.tar -> ../<id2>/layer.tar`.
                Member::Symlink(target) if target.starts_with(b"/") => name = normalise(target)?,
                Member::Symlink(target) => {
                    let dir = name.rsplit_once('/').map_or("", |(dir, _)| dir);
                    let mut joined = dir.as_bytes().to_vec();
                    joined.push(b'/');
                    joined.extend_from_slice(target);
                    name = normalise(&joined)?;
                }
                Member::HardLink(target) => name = normalise(target)?,
            }
        }
        None
    }

    /// The error for a tarball that ends early.
    pub(crate) fn truncated(&self) -> Error {
        Error::Truncated {
            path: self.path.clone(),
        }
    }

    /// The error for a member that is named but absent: truncation, if the tarball looks cut.
    pub(crate) fn missing(&self, referrer: &str, what: &'static str, name: &str) -> Error {
        if !self.complete {
            return Error::Truncated {
                path: self.path.clone(),
            };
        }
        Error::Missing {
            referrer: referrer.to_owned(),
            what,
            name: name.to_owned(),
        }
    }

    /// Whether the tarball ended with its end-of-archive marker.
    pub(crate) fn is_complete(&self) -> bool {
        self.complete
    }

    /// Reads a small member (JSON) wholly, refusing anything over [`MAX_JSON_SIZE`].
    pub(crate) fn read_small(
        &self,
        name: &str,
        referrer: &str,
        what: &'static str,
    ) -> Result<Vec<u8>> {
        let (offset, size) = self
            .locate(name)
            .ok_or_else(|| self.missing(referrer, what, name))?;
        if size > MAX_JSON_SIZE {
            return Err(Error::TooLarge {
                file: name.to_owned(),
                size,
                limit: MAX_JSON_SIZE,
            });
        }
        let mut bytes = Vec::with_capacity(size as usize);
        self.reader(offset, size)
            .read_to_end(&mut bytes)
            .map_err(|e| self.read_error(e))?;
        Ok(bytes)
    }

    /// Reads a small blob named by a descriptor, checking its size and digest.
    pub(crate) fn read_blob(
        &self,
        digest: &Digest,
        size: Option<u64>,
        referrer: &str,
        what: &'static str,
    ) -> Result<Vec<u8>> {
        let name = blob_path(digest);
        let described = || format!("{what} {name}");
        if let (Some(expected), Some((_, actual))) = (size, self.locate(&name)) {
            check_size(described, expected, actual)?;
        }
        let bytes = self.read_small(&name, referrer, what)?;
        digest::verify(described, digest, &Digest::of(&bytes))?;
        Ok(bytes)
    }

    /// A reader of `size` bytes at `offset` in the tarball.
    pub(crate) fn reader(&self, offset: u64, size: u64) -> MemberReader<'_> {
        MemberReader {
            file: &self.file,
            pos: offset,
            end: offset.saturating_add(size),
        }
    }

    /// Up to [`MAGIC_LEN`] bytes at `offset`, for telling the compression.
    pub(crate) fn magic(&self, offset: u64, size: u64) -> Result<Vec<u8>> {
        let len = size.min(MAGIC_LEN as u64) as usize;
        let mut magic = vec![0; len];
        self.file
            .read_exact_at(&mut magic, offset)
            .map_err(|e| self.read_error(e))?;
        Ok(magic)
    }

    /// An I/O error reading the tarball; an early end means it shrank after it was indexed.
    pub(crate) fn read_error(&self, source: io::Error) -> Error {
        if source.kind() == io::ErrorKind::UnexpectedEof {
            return Error::Truncated {
                path: self.path.clone(),
            };
        }
        io_error("read", &self.path, source)
    }

    /// The digest of member `name` hashed in full (a Docker 20.10 config has no other).
    pub(crate) fn hash_member(&self, offset: u64, size: u64) -> Result<Digest> {
        let mut reader = HashingReader::new(self.reader(offset, size));
        reader.drain().map_err(|e| self.read_error(e))?;
        Ok(reader.finish().0)
    }
}

/// `blobs/sha256/<hex>`, where an OCI image layout keeps the blob with this digest.
pub(crate) fn blob_path(digest: &Digest) -> String {
    format!("blobs/sha256/{}", digest.hex())
}

/// The digest a `blobs/sha256/<hex>`, `sha256:<hex>` or `<hex>.json` member name implies, if it
/// has that form.
pub(crate) fn digest_from_name(name: &str) -> Option<Digest> {
    let name = normalise(name.as_bytes())?;
    if let Some(hex) = name.strip_prefix("blobs/sha256/") {
        return Digest::from_hex(hex);
    }
    // go-containerregistry (`crane pull`) names the config by its digest.
    if let Ok(digest) = name.parse() {
        return Some(digest);
    }
    Digest::from_hex(name.strip_suffix(".json")?)
}

/// Fails unless a blob has the size its descriptor gives.
pub(crate) fn check_size(blob: impl FnOnce() -> String, expected: u64, actual: u64) -> Result<()> {
    if expected == actual {
        return Ok(());
    }
    Err(Error::SizeMismatch {
        blob: blob(),
        expected,
        actual,
    })
}

fn io_error(action: &'static str, path: &Path, source: io::Error) -> Error {
    Error::Io {
        action,
        path: path.to_owned(),
        source,
    }
}

/// A member name in canonical form (`./a/b` is `a/b`), `None` if it is not UTF-8 or climbs out.
fn normalise(raw: &[u8]) -> Option<String> {
    let path = ImagePath::parse(raw).ok()?;
    String::from_utf8(path.components().join(&b'/')).ok()
}

/// `docker save | gzip` is common; say so rather than "not a tar archive".
///
/// TODO(#3): decompress such a tarball to a temporary file instead of refusing it.
fn check_not_compressed(file: &File, path: &Path) -> Result<()> {
    let mut magic = [0u8; MAGIC_LEN];
    let len = read_at_most(file, &mut magic, 0).map_err(|e| io_error("read", path, e))?;
    if len == 0 {
        return Err(Error::NotTarball {
            path: path.to_owned(),
            source: None,
        });
    }
    match Compression::detect(&magic[..len]) {
        Compression::None => Ok(()),
        compression => Err(Error::CompressedTarball {
            path: path.to_owned(),
            compression: compression.name(),
            tool: compression.tool(),
        }),
    }
}

/// Reads the tar headers, seeking over data; returns the members and where the data ends.
fn index(file: &File, path: &Path, len: u64) -> Result<(HashMap<String, Member>, u64)> {
    let budget = Cell::new(u64::MAX);
    let mut tar = tar::Archive::new(Budgeted::new(BufReader::new(file), &budget));
    let mut entries = tar
        .entries_with_seek()
        .map_err(|e| io_error("read", path, e))?;
    let mut members = HashMap::new();
    let mut data_end = 0;
    loop {
        let entry = match with_header_budget(&budget, || entries.next()) {
            None => break,
            Some(Ok(entry)) => entry,
            Some(Err(source)) => {
                return Err(index_error(path, source, members.is_empty(), data_end, len))
            }
        };
        let end = entry
            .size()
            .div_ceil(BLOCK)
            .checked_mul(BLOCK)
            .and_then(|padded| entry.raw_file_position().checked_add(padded))
            .filter(|&end| end <= len)
            .ok_or_else(|| Error::Truncated {
                path: path.to_owned(),
            })?;
        data_end = data_end.max(end);
        if let Some((name, member)) = member(&entry) {
            members.insert(name, member);
        }
        if members.len() > MAX_MEMBERS {
            return Err(Error::TooManyEntries {
                path: path.to_owned(),
                limit: MAX_MEMBERS,
            });
        }
    }
    Ok((members, data_end))
}

fn member<R: Read>(entry: &tar::Entry<'_, R>) -> Option<(String, Member)> {
    let name = normalise(&entry.path_bytes())?;
    let link = || entry.link_name_bytes().map(|l| l.into_owned());
    let member = match entry.header().entry_type() {
        tar::EntryType::Regular | tar::EntryType::Continuous => Member::File {
            offset: entry.raw_file_position(),
            size: entry.size(),
        },
        tar::EntryType::Symlink => Member::Symlink(link()?),
        tar::EntryType::Link => Member::HardLink(link()?),
        _ => return None,
    };
    Some((name, member))
}

/// A failure while reading headers: not a tarball at all, cut short, or damaged in the middle.
fn index_error(path: &Path, source: io::Error, first: bool, data_end: u64, len: u64) -> Error {
    if data_end.saturating_add(BLOCK) > len {
        return Error::Truncated {
            path: path.to_owned(),
        };
    }
    if first {
        return Error::NotTarball {
            path: path.to_owned(),
            source: Some(source),
        };
    }
    io_error("read", path, source)
}

/// Whether a zero block follows the last member (POSIX: two zero blocks end the archive; the
/// first is what marks it, the second is often cut by tools that strip padding).
fn has_end_marker(file: &File, data_end: u64, len: u64) -> io::Result<bool> {
    if data_end.saturating_add(BLOCK) > len {
        return Ok(false);
    }
    let mut block = [0u8; BLOCK as usize];
    file.read_exact_at(&mut block, data_end)?;
    Ok(block.iter().all(|&b| b == 0))
}

fn read_at_most(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read_at(&mut buf[filled..], offset + filled as u64) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Reads one member's bytes by position, so several members can be read in any order.
pub(crate) struct MemberReader<'a> {
    file: &'a File,
    pos: u64,
    end: u64,
}

impl Read for MemberReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.end.saturating_sub(self.pos);
        let len = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        if len == 0 {
            return Ok(0);
        }
        let n = self.file.read_at(&mut buf[..len], self.pos)?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        self.pos += n as u64;
        Ok(n)
    }
}
