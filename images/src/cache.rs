//! The root-disk cache: one read-only filesystem image per image config digest.
//!
//! ```text
//! <root>/images/<hex>/   complete entries only: rootfs.img, config.json, meta.json
//! <root>/tmp/<hex>-…/    builds in progress (or abandoned by a killed build)
//! <root>/locks/<hex>     one lock file per image id, held while building or removing it
//! ```
//!
//! An entry is built in `tmp/`, flushed to disk, and renamed into `images/` in one step, under
//! the image's lock: two launches of one uncached image build it once (the second waits, then
//! finds the entry), and a build interrupted at any point leaves nothing in `images/`. What it
//! leaves in `tmp/` is removed by the next build of the same image, or by [`Cache::prune`].

use std::fs::{self, File};
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::rootfs::{self, RootfsError};

/// Version of the entry layout; entries of another version are rebuilt.
const LAYOUT_VERSION: u32 = 1;

const DISK_FILE: &str = "rootfs.img";
const CONFIG_FILE: &str = "config.json";
const META_FILE: &str = "meta.json";

/// Where the cache lives unless told otherwise: `$MOAT_CACHE_DIR`, else `$XDG_CACHE_HOME/moat`,
/// else `/var/lib/moat` for root and `~/.cache/moat` for everyone else.
pub fn default_location() -> PathBuf {
    let var = |name| std::env::var_os(name).filter(|v| !v.is_empty());
    if let Some(dir) = var("MOAT_CACHE_DIR") {
        return PathBuf::from(dir);
    }
    if let Some(dir) = var("XDG_CACHE_HOME") {
        return PathBuf::from(dir).join("moat");
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return PathBuf::from("/var/lib/moat");
    }
    let home = var("HOME").map_or_else(|| PathBuf::from("/tmp"), PathBuf::from);
    home.join(".cache/moat")
}

/// Why the cache could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// A file of the cache could not be read or written.
    #[error("image cache {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// The image id is not a sha256 digest.
    #[error("{0:?} is not an image id (sha256:<64 hex digits>)")]
    BadId(String),
    /// Unpacking the image failed; nothing was cached.
    #[error("{0}")]
    Unpack(Box<dyn std::error::Error + Send + Sync>),
    /// Making the filesystem image failed; nothing was cached.
    #[error("cannot make the root disk: {0}")]
    Disk(#[from] RootfsError),
}

type Result<T> = std::result::Result<T, CacheError>;

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> CacheError + '_ {
    move |source| CacheError::Io {
        path: path.to_owned(),
        source,
    }
}

/// What an entry records about its image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    /// [`LAYOUT_VERSION`] of the writer.
    pub version: u32,
    /// The image id: its config digest, `sha256:<hex>`.
    pub id: String,
    /// `repo:tag` names the tarball gave the image.
    pub repo_tags: Vec<String>,
    /// The tarball it was built from.
    pub source: String,
    /// When it was built, in seconds since the epoch.
    pub created: u64,
    /// Size of the root disk in bytes.
    pub disk_bytes: u64,
    /// The root disk's filesystem.
    pub filesystem: String,
}

/// A complete cache entry.
#[derive(Debug, Clone)]
pub struct CachedImage {
    dir: PathBuf,
    /// What the entry records.
    pub meta: Meta,
}

impl CachedImage {
    /// The read-only root disk.
    pub fn disk(&self) -> PathBuf {
        self.dir.join(DISK_FILE)
    }

    /// The image's config, as the tarball held it.
    pub fn config_path(&self) -> PathBuf {
        self.dir.join(CONFIG_FILE)
    }

    /// The id's 64 hex digits.
    pub fn hex(&self) -> &str {
        self.meta.id.trim_start_matches("sha256:")
    }
}

/// Whether [`Cache::get_or_build`] found the entry or built it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    /// The entry was there: nothing was unpacked.
    Hit,
    /// The entry was built now.
    Built,
}

/// What an image's entry is built from.
pub struct BuildSource<'a> {
    /// The image id, `sha256:<hex>`.
    pub id: &'a str,
    /// Its `repo:tag` names.
    pub repo_tags: &'a [String],
    /// The tarball, for `moat images`.
    pub source: &'a Path,
    /// The raw image config.
    pub config: &'a [u8],
}

/// An unpacker: fills the directory it is given with the image's root tree.
pub type Unpacker<'a> =
    dyn FnOnce(&Path) -> std::result::Result<(), Box<dyn std::error::Error + Send + Sync>> + 'a;

/// What [`Cache::prune`] removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pruned {
    /// Complete images removed.
    pub images: usize,
    /// Abandoned builds removed.
    pub builds: usize,
    /// Bytes freed, as `du` would count them.
    pub bytes: u64,
}

/// The cache at one root directory.
#[derive(Debug, Clone)]
pub struct Cache {
    root: PathBuf,
}

impl Cache {
    /// Opens (creating when missing) the cache at `root`.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self> {
        let cache = Self { root: root.into() };
        for dir in [cache.images_dir(), cache.tmp_dir(), cache.locks_dir()] {
            fs::create_dir_all(&dir).map_err(io_error(&dir))?;
        }
        Ok(cache)
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn images_dir(&self) -> PathBuf {
        self.root.join("images")
    }

    fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    fn locks_dir(&self) -> PathBuf {
        self.root.join("locks")
    }

    /// The complete entry of `id`, if there is one.
    pub fn get(&self, id: &str) -> Result<Option<CachedImage>> {
        let hex = hex_of(id)?;
        Ok(self.read_entry(&self.images_dir().join(hex)))
    }

    fn read_entry(&self, dir: &Path) -> Option<CachedImage> {
        let meta: Meta = serde_json::from_slice(&fs::read(dir.join(META_FILE)).ok()?).ok()?;
        let complete = meta.version == LAYOUT_VERSION
            && dir.file_name().and_then(|n| n.to_str()) == meta.id.strip_prefix("sha256:")
            && dir.join(DISK_FILE).is_file();
        complete.then(|| CachedImage {
            dir: dir.to_owned(),
            meta,
        })
    }

    /// The entry of `source.id`, built with `unpack` when missing.
    ///
    /// Only one process builds a given image at a time; the others wait on its lock and then
    /// find the entry. On any error nothing is left that looks like an entry.
    pub fn get_or_build(
        &self,
        source: &BuildSource<'_>,
        unpack: Box<Unpacker<'_>>,
    ) -> Result<(CachedImage, Lookup)> {
        if let Some(entry) = self.get(source.id)? {
            return Ok((entry, Lookup::Hit));
        }
        let hex = hex_of(source.id)?;
        let _lock = self.lock(hex)?;
        let final_dir = self.images_dir().join(hex);
        // Built by another process while this one waited for the lock?
        if let Some(entry) = self.read_entry(&final_dir) {
            return Ok((entry, Lookup::Hit));
        }
        // Holding the lock, every other build of this image is dead: clear what they left,
        // and any incomplete entry (from an older layout version, say).
        self.remove_builds_of(hex);
        remove_tree(&final_dir);

        let build_dir = self.tmp_dir().join(format!("{hex}-{}", std::process::id()));
        let result = self.build(source, unpack, &build_dir).and_then(|()| {
            fs::rename(&build_dir, &final_dir).map_err(io_error(&final_dir))?;
            sync_dir(&self.images_dir())
        });
        if let Err(e) = result {
            remove_tree(&build_dir);
            return Err(e);
        }
        let entry = self.read_entry(&final_dir).ok_or_else(|| CacheError::Io {
            path: final_dir.clone(),
            source: io::Error::other("the entry just built cannot be read back"),
        })?;
        Ok((entry, Lookup::Built))
    }

    fn build(&self, source: &BuildSource<'_>, unpack: Box<Unpacker<'_>>, dir: &Path) -> Result<()> {
        let tree = dir.join("rootfs");
        fs::create_dir_all(&tree).map_err(io_error(&tree))?;
        unpack(&tree).map_err(CacheError::Unpack)?;

        let disk = dir.join(DISK_FILE);
        rootfs::make_disk(&tree, &disk)?;
        remove_tree(&tree);
        sync_file(&disk)?;

        write_synced(&dir.join(CONFIG_FILE), source.config)?;
        let meta = Meta {
            version: LAYOUT_VERSION,
            id: source.id.to_string(),
            repo_tags: source.repo_tags.to_vec(),
            source: source.source.display().to_string(),
            created: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            disk_bytes: fs::metadata(&disk).map_err(io_error(&disk))?.len(),
            filesystem: rootfs::FILESYSTEM.to_string(),
        };
        let json = serde_json::to_vec_pretty(&meta).expect("Meta always serialises");
        write_synced(&dir.join(META_FILE), &json)?;
        sync_dir(dir)
    }

    /// Every complete entry, newest first.
    pub fn list(&self) -> Result<Vec<CachedImage>> {
        let dir = self.images_dir();
        let mut entries: Vec<CachedImage> = fs::read_dir(&dir)
            .map_err(io_error(&dir))?
            .filter_map(|e| e.ok())
            .filter_map(|e| self.read_entry(&e.path()))
            .collect();
        entries.sort_by_key(|e| std::cmp::Reverse(e.meta.created));
        Ok(entries)
    }

    /// Entries matching `query`: a `repo:tag` (a bare repo means `:latest`), or an id or a
    /// prefix of one (`sha256:` optional, at least 4 hex digits).
    pub fn find(&self, query: &str) -> Result<Vec<CachedImage>> {
        let hex_query = query.strip_prefix("sha256:").unwrap_or(query);
        let is_id_prefix = hex_query.len() >= 4 && hex_query.bytes().all(|b| b.is_ascii_hexdigit());
        let reference = if query.rsplit('/').next().unwrap_or(query).contains(':') {
            query.to_string()
        } else {
            format!("{query}:latest")
        };
        Ok(self
            .list()?
            .into_iter()
            .filter(|e| {
                (is_id_prefix && e.hex().starts_with(&hex_query.to_ascii_lowercase()))
                    || e.meta.repo_tags.contains(&reference)
            })
            .collect())
    }

    /// Removes an entry. A VM using its disk keeps running: the file is unlinked, not truncated.
    pub fn remove(&self, entry: &CachedImage) -> Result<()> {
        let _lock = self.lock(entry.hex())?;
        // Rename first, so the entry disappears in one step even if the removal is cut short.
        let doomed = self
            .tmp_dir()
            .join(format!("{}-removed-{}", entry.hex(), std::process::id()));
        fs::rename(&entry.dir, &doomed).map_err(io_error(&entry.dir))?;
        remove_tree(&doomed);
        Ok(())
    }

    /// Removes abandoned builds (whose builder died), and with `all` every image too.
    pub fn prune(&self, all: bool) -> Result<Pruned> {
        let mut pruned = Pruned::default();
        let tmp = self.tmp_dir();
        for entry in fs::read_dir(&tmp).map_err(io_error(&tmp))?.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let hex = name.split('-').next().unwrap_or_default();
            // A build in progress holds its image's lock: leave it alone.
            let Some(_lock) = self.try_lock(hex)? else {
                continue;
            };
            pruned.bytes += disk_usage(&entry.path());
            remove_tree(&entry.path());
            pruned.builds += 1;
        }
        if all {
            for image in self.list()? {
                pruned.bytes += disk_usage(&image.dir);
                self.remove(&image)?;
                pruned.images += 1;
            }
        }
        Ok(pruned)
    }

    fn remove_builds_of(&self, hex: &str) {
        let Ok(entries) = fs::read_dir(self.tmp_dir()) else {
            return;
        };
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().starts_with(hex) {
                remove_tree(&entry.path());
            }
        }
    }

    fn lock(&self, hex: &str) -> Result<Lock> {
        Lock::acquire(&self.locks_dir().join(hex), true).map(|l| l.expect("blocking lock"))
    }

    fn try_lock(&self, hex: &str) -> Result<Option<Lock>> {
        Lock::acquire(&self.locks_dir().join(hex), false)
    }
}

/// An exclusive `flock` on a lock file, released when dropped (or when the process dies).
struct Lock {
    _file: File,
}

impl Lock {
    /// Takes the lock, waiting for it when `wait`; `None` when it is held and `!wait`.
    fn acquire(path: &Path, wait: bool) -> Result<Option<Self>> {
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(io_error(path))?;
        let operation = if wait {
            libc::LOCK_EX
        } else {
            libc::LOCK_EX | libc::LOCK_NB
        };
        loop {
            // SAFETY: flock on a file descriptor this function owns.
            if unsafe { libc::flock(file.as_raw_fd(), operation) } == 0 {
                return Ok(Some(Self { _file: file }));
            }
            let error = io::Error::last_os_error();
            match error.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::EWOULDBLOCK) if !wait => return Ok(None),
                _ => return Err(io_error(path)(error)),
            }
        }
    }
}

fn hex_of(id: &str) -> Result<&str> {
    id.strip_prefix("sha256:")
        .filter(|hex| {
            hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        })
        .ok_or_else(|| CacheError::BadId(id.to_string()))
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    fs::write(path, bytes).map_err(io_error(path))?;
    sync_file(path)
}

fn sync_file(path: &Path) -> Result<()> {
    File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(io_error(path))
}

fn sync_dir(path: &Path) -> Result<()> {
    File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(io_error(path))
}

/// Removes a tree, ignoring what is already gone: used on paths this cache owns.
fn remove_tree(path: &Path) {
    if let Err(e) = fs::remove_dir_all(path) {
        if e.kind() != io::ErrorKind::NotFound {
            log::warn!("cannot remove {}: {e}", path.display());
        }
    }
}

/// Bytes allocated under `path`.
fn disk_usage(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = fs::symlink_metadata(path) else {
        return 0;
    };
    let own = meta.blocks() * 512;
    if !meta.is_dir() {
        return own;
    }
    own + fs::read_dir(path)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| disk_usage(&e.path()))
        .sum::<u64>()
}

#[cfg(test)]
mod tests;
