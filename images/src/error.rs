//! What can go wrong reading an image tarball or unpacking it, in words a user can act on.
//!
//! Each message fits on one line and names the file, blob or entry at fault; the underlying
//! cause (an `io::Error`, a JSON error) is the error's source, printed by the caller's chain.

use std::fmt;
use std::io;
use std::path::PathBuf;

use crate::digest::Digest;
use crate::platform::Platform;

/// The result of the operations in this crate.
pub type Result<T> = std::result::Result<T, Error>;

/// An error reading an image tarball or unpacking an image.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The tarball does not exist.
    #[error("{path}: no such file")]
    NotFound { path: PathBuf },

    /// Reading the tarball, or writing the destination, failed.
    #[error("cannot {action} {path}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// The file is not a tar archive at all.
    #[error("{path} is not a tar archive")]
    NotTarball {
        path: PathBuf,
        #[source]
        source: Option<io::Error>,
    },

    /// The tarball is itself compressed; blobs cannot be found in it without a full pass.
    #[error("{path} is {compression}-compressed; decompress it first (for example `{tool} -dk`)")]
    CompressedTarball {
        path: PathBuf,
        compression: &'static str,
        tool: &'static str,
    },

    /// The tarball ends before its last entry does, or before its end-of-archive marker.
    #[error("{path} is truncated (an interrupted download or copy?)")]
    Truncated { path: PathBuf },

    /// The tarball has more entries than any image would.
    #[error("{path} has more than {limit} entries")]
    TooManyEntries { path: PathBuf, limit: usize },

    /// The tarball has neither a `manifest.json` nor an OCI `index.json`.
    #[error("{path} holds no image: it has neither manifest.json nor index.json")]
    NoManifest { path: PathBuf },

    /// A JSON file is larger than any real manifest, index or config.
    #[error("{file} is {size} bytes, more than the {limit} byte limit for metadata")]
    TooLarge { file: String, size: u64, limit: u64 },

    /// A JSON file does not parse, or does not have the expected shape.
    #[error("invalid JSON in {file}")]
    Json {
        file: String,
        #[source]
        source: serde_json::Error,
    },

    /// Metadata parses but contradicts itself or the format.
    #[error("{file}: {problem}")]
    InvalidMetadata { file: String, problem: String },

    /// A manifest, index or config names a blob or file the tarball does not have.
    #[error("{referrer} names {what} {name} which is not in the tarball")]
    Missing {
        referrer: String,
        what: &'static str,
        name: String,
    },

    /// A blob's content does not hash to the digest that names it.
    #[error("{blob}: content has digest {actual}, expected {expected}")]
    DigestMismatch {
        blob: String,
        expected: Digest,
        actual: Digest,
    },

    /// A blob's size is not the size its descriptor gives.
    #[error("{blob} is {actual} bytes, its descriptor says {expected}")]
    SizeMismatch {
        blob: String,
        expected: u64,
        actual: u64,
    },

    /// A manifest or layer of a kind this crate does not read.
    #[error("{what} has unsupported media type {media_type}")]
    UnsupportedMediaType { what: String, media_type: String },

    /// A layer compressed with something other than gzip or zstd.
    #[error("{what} is {compression}-compressed, which is not supported (only gzip and zstd are)")]
    UnsupportedCompression {
        what: String,
        compression: &'static str,
    },

    /// A string that should be a digest is not one.
    #[error("invalid digest {value:?}: expected sha256:<64 lowercase hex digits>")]
    InvalidDigest { value: String },

    /// A platform string that is not `os/arch[/variant]`.
    #[error("invalid platform {value:?}: expected os/arch[/variant], for example linux/amd64")]
    InvalidPlatform { value: String },

    /// No image in the tarball has the requested name.
    #[error("no image {reference} in the tarball; it has {available}")]
    ImageNotFound {
        reference: String,
        available: String,
    },

    /// Several images fit and none was chosen.
    #[error("the tarball holds several images{}; choose one of {available}", matching(.reference))]
    AmbiguousImage {
        reference: Option<String>,
        available: String,
    },

    /// The tarball holds no image at all.
    #[error("the tarball lists no image")]
    NoImages,

    /// The chosen image has no variant for the requested platform.
    #[error("image {image} has no {wanted} variant; it has {available}")]
    PlatformNotFound {
        image: String,
        wanted: Platform,
        available: String,
    },

    /// A layer entry that would be unsafe or impossible to create.
    #[error("{layer}: entry {entry:?}: {problem}")]
    BadEntry {
        layer: String,
        entry: String,
        problem: EntryProblem,
    },

    /// Creating a layer entry in the destination failed.
    #[error("{layer}: entry {entry:?}: cannot {action}")]
    EntryIo {
        layer: String,
        entry: String,
        action: &'static str,
        #[source]
        source: io::Error,
    },

    /// A layer's stream cannot be read: corrupt compression, a damaged tar stream.
    #[error("{layer} is damaged")]
    LayerRead {
        layer: String,
        #[source]
        source: io::Error,
    },
}

fn matching(reference: &Option<String>) -> String {
    match reference {
        Some(reference) => format!(" matching {reference:?}"),
        None => String::new(),
    }
}

/// Why a layer entry was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum EntryProblem {
    /// The entry's own path climbs above the root with `..`.
    PathLeavesRoot,
    /// A symlink on the way to the entry climbs above the root.
    SymlinkLeavesRoot,
    /// A hard link's target climbs above the root.
    LinkTargetLeavesRoot,
    /// A hard link's target is not in the tree unpacked so far.
    LinkTargetMissing(String),
    /// A hard link's target is a directory.
    LinkTargetIsDirectory(String),
    /// A path resolution met more symlinks than the kernel would follow.
    TooManySymlinks,
    /// A parent of the entry exists and is neither a directory nor a symlink to one.
    ParentNotDirectory,
    /// The entry's path is empty, or names the root as something other than a directory.
    NoName,
    /// The path is longer than the kernel's `PATH_MAX`.
    PathTooLong,
    /// A symlink or hard link without a target.
    NoLinkTarget,
    /// A whiteout whose name cannot be a file name (`.wh.`, `.wh..`).
    InvalidWhiteout,
    /// A header field that does not parse.
    InvalidHeader(&'static str),
    /// A tar entry type that has no meaning in a root filesystem.
    UnsupportedType(u8),
}

impl fmt::Display for EntryProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::PathLeavesRoot => f.write_str("path leaves the image root"),
            Self::SymlinkLeavesRoot => f.write_str("a symlink in its path leaves the image root"),
            Self::LinkTargetLeavesRoot => f.write_str("hard link target leaves the image root"),
            Self::LinkTargetMissing(target) => {
                write!(f, "hard link target {target:?} does not exist")
            }
            Self::LinkTargetIsDirectory(target) => {
                write!(f, "hard link target {target:?} is a directory")
            }
            Self::TooManySymlinks => f.write_str("too many levels of symbolic links"),
            Self::ParentNotDirectory => f.write_str("a parent path component is not a directory"),
            Self::NoName => f.write_str("entry has no name"),
            Self::PathTooLong => f.write_str("path is too long"),
            Self::NoLinkTarget => f.write_str("link has no target"),
            Self::InvalidWhiteout => f.write_str("invalid whiteout name"),
            Self::InvalidHeader(field) => write!(f, "invalid {field} in tar header"),
            Self::UnsupportedType(kind) => {
                write!(f, "unsupported tar entry type {:?}", char::from(*kind))
            }
        }
    }
}
