//! Applying layers (OCI image spec "Image Layer Filesystem Changeset") to a root directory.
//!
//! Entries are created with `*at` calls relative to their resolved parent directory, never by
//! path, so nothing a layer says can place a file outside the root (see [`crate::resolve`]).
//! Whiteouts delete what lower layers made; opaque markers empty a directory of lower content.
//! Directory modes and times are set in a last pass, deepest first, so that adding entries does
//! not disturb them and a read-only directory does not stop its own unpacking.

use std::cell::Cell;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use crate::budget::{with_header_budget, Budgeted};
use crate::error::{EntryProblem, Error, Result};
use crate::resolve::{proc_c_path, proc_path, ImagePath, Missing, PathError, ResolveError, Root};
use crate::sys::{self, Timestamp};

/// OCI image spec "Whiteouts": `.wh.<name>` deletes `<name>` from lower layers.
const WHITEOUT_PREFIX: &[u8] = b".wh.";
/// AUFS metadata (`.wh..wh.plnk`, `.wh..wh.aufs`): never part of the root filesystem.
const WHITEOUT_META_PREFIX: &[u8] = b".wh..wh.";
/// OCI image spec "Opaque Whiteout": the directory holding it hides all lower content.
const OPAQUE_WHITEOUT: &[u8] = b".wh..wh..opq";
/// PAX extended attribute records (the GNU tar and Docker spelling).
const PAX_XATTR_PREFIX: &[u8] = b"SCHILY.xattr.";
/// PAX modification time record, `seconds[.fraction]`.
const PAX_MTIME: &[u8] = b"mtime";
/// Copy buffer for file data.
const COPY_CHUNK: usize = 128 * 1024;

/// What an unpack did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct UnpackStats {
    /// Layers applied.
    pub layers: usize,
    /// Tar entries read, whiteouts included.
    pub entries: u64,
    /// Regular files written.
    pub files: u64,
    /// Bytes of file content written.
    pub file_bytes: u64,
    /// Whiteouts and opaque markers applied.
    pub whiteouts: u64,
    /// Device nodes not created because the process is not root.
    pub skipped_devices: u64,
    /// Extended attributes the destination filesystem or our privileges did not allow.
    pub skipped_xattrs: u64,
}

/// Applies layers, in order, to one destination directory.
pub(crate) struct Unpacker {
    dest: PathBuf,
    root: Root,
    privileged: bool,
    /// Mode and time of every directory the layers named, applied by [`Unpacker::finish`].
    dirs: BTreeMap<ImagePath, DirMeta>,
    stats: UnpackStats,
    buf: Vec<u8>,
}

#[derive(Debug, Clone, Copy)]
struct DirMeta {
    mode: u32,
    mtime: Timestamp,
}

/// What a tar header says about an entry's metadata.
struct Meta {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: Timestamp,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

/// The layer being applied and what it has created so far.
struct LayerState<'a> {
    name: &'a str,
    /// Paths this layer created. A whiteout or opaque marker hides lower layers only, never
    /// entries of its own layer (OCI image spec "Whiteouts").
    created: BTreeSet<ImagePath>,
}

impl LayerState<'_> {
    /// Whether this layer created `path` or anything under it.
    fn created_at_or_under(&self, path: &ImagePath) -> bool {
        // Paths under `path` sort right after it, so the first one not before it tells.
        self.created
            .range(path..)
            .next()
            .is_some_and(|p| p.starts_with(path))
    }
}

/// The entry being applied, for error messages.
struct Ctx<'a> {
    layer: &'a str,
    entry: String,
}

impl Ctx<'_> {
    fn bad(&self, problem: EntryProblem) -> Error {
        Error::BadEntry {
            layer: self.layer.to_owned(),
            entry: self.entry.clone(),
            problem,
        }
    }

    fn io(&self, action: &'static str) -> impl FnOnce(io::Error) -> Error + '_ {
        move |source| Error::EntryIo {
            layer: self.layer.to_owned(),
            entry: self.entry.clone(),
            action,
            source,
        }
    }

    fn resolve(&self, err: ResolveError, action: &'static str) -> Error {
        match err {
            ResolveError::LeavesRoot => self.bad(EntryProblem::SymlinkLeavesRoot),
            ResolveError::TooManySymlinks => self.bad(EntryProblem::TooManySymlinks),
            ResolveError::NotDirectory => self.bad(EntryProblem::ParentNotDirectory),
            ResolveError::NotFound => self.io(action)(io::ErrorKind::NotFound.into()),
            ResolveError::Io(source) => self.io(action)(source),
        }
    }
}

impl Unpacker {
    /// Prepares to unpack into `dest`, an existing directory.
    pub(crate) fn new(dest: &Path) -> Result<Unpacker> {
        let root = Root::open(dest).map_err(|source| Error::Io {
            action: "open",
            path: dest.to_owned(),
            source,
        })?;
        Ok(Unpacker {
            dest: dest.to_owned(),
            root,
            privileged: sys::geteuid() == 0,
            dirs: BTreeMap::new(),
            stats: UnpackStats::default(),
            buf: vec![0; COPY_CHUNK],
        })
    }

    /// Applies one layer's uncompressed tar stream; `layer` names it in errors. Reads only up
    /// to the tar end-of-archive marker.
    pub(crate) fn apply_layer(&mut self, layer: &str, stream: &mut dyn Read) -> Result<()> {
        let read_error = |source| Error::LayerRead {
            layer: layer.to_owned(),
            source,
        };
        let budget = Cell::new(u64::MAX);
        let mut archive = tar::Archive::new(Budgeted::new(stream, &budget));
        let mut entries = archive.entries().map_err(read_error)?;
        let mut state = LayerState {
            name: layer,
            created: BTreeSet::new(),
        };
        while let Some(entry) = with_header_budget(&budget, || entries.next()) {
            let mut entry = entry.map_err(read_error)?;
            self.apply_entry(&mut state, &mut entry)?;
            // Whatever data the entry type did not use (a hard link may carry some).
            io::copy(&mut entry, &mut io::sink()).map_err(read_error)?;
        }
        self.stats.layers += 1;
        Ok(())
    }

    /// Sets directory modes and times, deepest first, and returns what was done.
    pub(crate) fn finish(mut self) -> Result<UnpackStats> {
        let mut dirs: Vec<(ImagePath, DirMeta)> =
            std::mem::take(&mut self.dirs).into_iter().collect();
        dirs.sort_by_key(|(path, _)| Reverse(path.depth()));
        for (path, meta) in &dirs {
            self.restore_dir(path, meta).map_err(|source| Error::Io {
                action: "set the mode and time of",
                path: self.dest.join(path.display()),
                source,
            })?;
        }
        Ok(self.stats)
    }

    fn restore_dir(&self, path: &ImagePath, meta: &DirMeta) -> io::Result<()> {
        let Some(fd) = self.open_dir(path)? else {
            // Removed or replaced by a later layer.
            return Ok(());
        };
        sys::fchmod(fd.as_fd(), meta.mode)?;
        sys::futimens(fd.as_fd(), meta.mtime)
    }

    /// Opens directory `path` for reading, `None` if it is not (or no longer) a directory.
    fn open_dir(&self, path: &ImagePath) -> io::Result<Option<OwnedFd>> {
        let flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW;
        let parent = match self.root.dir(path.parent(), Missing::Fail) {
            Ok(parent) => parent,
            Err(ResolveError::Io(err)) => return Err(err),
            Err(_) => return Ok(None),
        };
        let name = path.file_name().unwrap_or(b".");
        match sys::openat(parent.as_fd(), &sys::c_name(name)?, flags, 0) {
            Ok(fd) => Ok(Some(fd)),
            Err(err)
                if matches!(
                    err.raw_os_error(),
                    Some(libc::ENOENT | libc::ENOTDIR | libc::ELOOP)
                ) =>
            {
                Ok(None)
            }
            Err(err) => Err(err),
        }
    }

    fn apply_entry<R: Read>(
        &mut self,
        state: &mut LayerState<'_>,
        entry: &mut tar::Entry<'_, R>,
    ) -> Result<()> {
        let raw_path = entry.path_bytes().into_owned();
        let ctx = Ctx {
            layer: state.name,
            entry: String::from_utf8_lossy(&raw_path).into_owned(),
        };
        self.stats.entries += 1;
        let path = ImagePath::parse(&raw_path).map_err(|err| {
            ctx.bad(match err {
                PathError::LeavesRoot => EntryProblem::PathLeavesRoot,
                PathError::TooLong => EntryProblem::PathTooLong,
            })
        })?;
        if path
            .components()
            .iter()
            .any(|c| c.starts_with(WHITEOUT_META_PREFIX) && c != OPAQUE_WHITEOUT)
        {
            log::debug!("{}: skipping AUFS metadata {:?}", ctx.layer, ctx.entry);
            return Ok(());
        }
        if path
            .file_name()
            .is_some_and(|name| name.starts_with(WHITEOUT_PREFIX))
        {
            return self.whiteout(state, &ctx, &path);
        }
        let kind = entry.header().entry_type();
        // Old (pre-POSIX) tar marks directories only by a trailing slash.
        let is_old_dir = kind == tar::EntryType::Regular && raw_path.ends_with(b"/");
        if path.is_root() && kind != tar::EntryType::Directory && !is_old_dir {
            return match kind {
                tar::EntryType::XGlobalHeader => Ok(()),
                _ => Err(ctx.bad(EntryProblem::NoName)),
            };
        }
        let meta = read_meta(entry).map_err(|problem| ctx.bad(problem))?;
        match kind {
            tar::EntryType::Directory => self.directory(&ctx, &path, &meta)?,
            _ if is_old_dir => self.directory(&ctx, &path, &meta)?,
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
                self.file(&ctx, &path, &meta, entry)?
            }
            tar::EntryType::Symlink => self.symlink(&ctx, &path, &meta, entry)?,
            tar::EntryType::Link => self.hard_link(&ctx, &path, entry)?,
            tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => {
                if !self.node(&ctx, &path, &meta, entry)? {
                    return Ok(());
                }
            }
            tar::EntryType::XGlobalHeader => return Ok(()),
            other => return Err(ctx.bad(EntryProblem::UnsupportedType(other.as_byte()))),
        }
        state.created.insert(path);
        Ok(())
    }

    /// The parent directory of `path`, resolved inside the root, missing parents created.
    fn parent(&self, ctx: &Ctx<'_>, path: &ImagePath) -> Result<OwnedFd> {
        self.root
            .dir(path.parent(), Missing::Create)
            .map_err(|err| ctx.resolve(err, "resolve its parent directory"))
    }

    fn directory(&mut self, ctx: &Ctx<'_>, path: &ImagePath, meta: &Meta) -> Result<()> {
        let fd = match path.file_name() {
            None => {
                let flags = libc::O_RDONLY | libc::O_DIRECTORY;
                sys::openat(self.root.fd(), c".", flags, 0)
                    .map_err(ctx.io("open the root directory"))?
            }
            Some(name) => {
                let parent = self.parent(ctx, path)?;
                let cname = sys::c_name(name).map_err(ctx.io("create directory"))?;
                if !self.clear(ctx, parent.as_fd(), name, path, KeepDir::Yes)? {
                    // Owner-only until the last pass gives it its real mode.
                    sys::mkdirat(parent.as_fd(), &cname, 0o700)
                        .map_err(ctx.io("create directory"))?;
                }
                let flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW;
                sys::openat(parent.as_fd(), &cname, flags, 0).map_err(ctx.io("open directory"))?
            }
        };
        if self.privileged {
            sys::fchown(fd.as_fd(), meta.uid, meta.gid).map_err(ctx.io("set owner"))?;
        }
        self.set_xattrs(ctx, XattrTarget::Fd(fd.as_fd()), &meta.xattrs)?;
        self.dirs.insert(
            path.clone(),
            DirMeta {
                mode: meta.mode,
                mtime: meta.mtime,
            },
        );
        Ok(())
    }

    fn file<R: Read>(
        &mut self,
        ctx: &Ctx<'_>,
        path: &ImagePath,
        meta: &Meta,
        data: &mut R,
    ) -> Result<()> {
        let name = path.file_name().expect("the root is a directory");
        let parent = self.parent(ctx, path)?;
        self.clear(ctx, parent.as_fd(), name, path, KeepDir::No)?;
        let cname = sys::c_name(name).map_err(ctx.io("create file"))?;
        let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW;
        let fd =
            sys::openat(parent.as_fd(), &cname, flags, 0o600).map_err(ctx.io("create file"))?;
        let mut file = File::from(fd);
        let written = self.copy_data(ctx, data, &mut file)?;
        self.stats.files += 1;
        self.stats.file_bytes += written;
        if self.privileged {
            sys::fchown(file.as_fd(), meta.uid, meta.gid).map_err(ctx.io("set owner"))?;
        }
        // After chown, which clears setuid and setgid bits.
        sys::fchmod(file.as_fd(), meta.mode).map_err(ctx.io("set mode"))?;
        // After chown and the data, both of which clear security.capability.
        self.set_xattrs(ctx, XattrTarget::Fd(file.as_fd()), &meta.xattrs)?;
        sys::futimens(file.as_fd(), meta.mtime).map_err(ctx.io("set modification time"))
    }

    /// Copies file data, leaving holes where whole chunks are zero (sparse files stay sparse).
    fn copy_data<R: Read>(&mut self, ctx: &Ctx<'_>, data: &mut R, file: &mut File) -> Result<u64> {
        let mut written = 0u64;
        let mut hole_at_end = false;
        loop {
            let n = match data.read(&mut self.buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(source) => {
                    return Err(Error::LayerRead {
                        layer: ctx.layer.to_owned(),
                        source,
                    })
                }
            };
            let chunk = &self.buf[..n];
            hole_at_end = chunk.iter().all(|&b| b == 0);
            if hole_at_end {
                file.seek(SeekFrom::Current(n as i64))
                    .map_err(ctx.io("write file"))?;
            } else {
                file.write_all(chunk).map_err(ctx.io("write file"))?;
            }
            written += n as u64;
        }
        if hole_at_end {
            file.set_len(written).map_err(ctx.io("write file"))?;
        }
        Ok(written)
    }

    fn symlink<R: Read>(
        &mut self,
        ctx: &Ctx<'_>,
        path: &ImagePath,
        meta: &Meta,
        entry: &tar::Entry<'_, R>,
    ) -> Result<()> {
        let target = entry.link_name_bytes().filter(|t| !t.is_empty());
        let target = target.ok_or_else(|| ctx.bad(EntryProblem::NoLinkTarget))?;
        let name = path.file_name().expect("the root is a directory");
        let parent = self.parent(ctx, path)?;
        self.clear(ctx, parent.as_fd(), name, path, KeepDir::No)?;
        let cname = sys::c_name(name).map_err(ctx.io("create symlink"))?;
        let ctarget = sys::c_name(&target).map_err(ctx.io("create symlink"))?;
        // The target is stored as it is: it is never followed here except by `Root::dir`.
        sys::symlinkat(&ctarget, parent.as_fd(), &cname).map_err(ctx.io("create symlink"))?;
        self.finish_at(ctx, parent.as_fd(), name, meta, false)
    }

    fn hard_link<R: Read>(
        &mut self,
        ctx: &Ctx<'_>,
        path: &ImagePath,
        entry: &tar::Entry<'_, R>,
    ) -> Result<()> {
        let raw_target = entry.link_name_bytes().filter(|t| !t.is_empty());
        let raw_target = raw_target.ok_or_else(|| ctx.bad(EntryProblem::NoLinkTarget))?;
        let shown = String::from_utf8_lossy(&raw_target).into_owned();
        let target = match ImagePath::parse(&raw_target) {
            Ok(target) if target.is_root() => {
                return Err(ctx.bad(EntryProblem::LinkTargetIsDirectory(shown)))
            }
            Ok(target) => target,
            Err(PathError::LeavesRoot) => return Err(ctx.bad(EntryProblem::LinkTargetLeavesRoot)),
            Err(PathError::TooLong) => return Err(ctx.bad(EntryProblem::PathTooLong)),
        };
        if &target == path {
            return Ok(());
        }
        let target_parent = match self.root.dir(target.parent(), Missing::Fail) {
            Ok(fd) => fd,
            Err(ResolveError::NotFound | ResolveError::NotDirectory) => {
                return Err(ctx.bad(EntryProblem::LinkTargetMissing(shown)))
            }
            Err(ResolveError::LeavesRoot) => {
                return Err(ctx.bad(EntryProblem::LinkTargetLeavesRoot))
            }
            Err(err) => return Err(ctx.resolve(err, "resolve the link target")),
        };
        let target_name = target.file_name().expect("not the root");
        let target_cname = sys::c_name(target_name).map_err(ctx.io("create hard link"))?;
        match sys::lstatat(target_parent.as_fd(), &target_cname) {
            Ok(stat) if sys::is_dir(&stat) => {
                return Err(ctx.bad(EntryProblem::LinkTargetIsDirectory(shown)))
            }
            Ok(_) => {}
            Err(err) if err.kind() == io::ErrorKind::NotFound => {
                return Err(ctx.bad(EntryProblem::LinkTargetMissing(shown)))
            }
            Err(err) => return Err(ctx.io("inspect the link target")(err)),
        }
        let name = path.file_name().expect("the root is a directory");
        let parent = self.parent(ctx, path)?;
        self.clear(ctx, parent.as_fd(), name, path, KeepDir::No)?;
        let cname = sys::c_name(name).map_err(ctx.io("create hard link"))?;
        sys::linkat(target_parent.as_fd(), &target_cname, parent.as_fd(), &cname)
            .map_err(ctx.io("create hard link"))
    }

    /// Creates a device node or fifo; `false` if skipped (devices need root).
    fn node<R: Read>(
        &mut self,
        ctx: &Ctx<'_>,
        path: &ImagePath,
        meta: &Meta,
        entry: &tar::Entry<'_, R>,
    ) -> Result<bool> {
        let header = entry.header();
        let (kind, is_device) = match header.entry_type() {
            tar::EntryType::Char => (libc::S_IFCHR, true),
            tar::EntryType::Block => (libc::S_IFBLK, true),
            _ => (libc::S_IFIFO, false),
        };
        if is_device && !self.privileged {
            self.skip_device(ctx);
            return Ok(false);
        }
        let (major, minor) = if is_device {
            device_numbers(header).map_err(|problem| ctx.bad(problem))?
        } else {
            (0, 0)
        };
        let name = path.file_name().expect("the root is a directory");
        let parent = self.parent(ctx, path)?;
        self.clear(ctx, parent.as_fd(), name, path, KeepDir::No)?;
        let cname = sys::c_name(name).map_err(ctx.io("create node"))?;
        match sys::mknodat(
            parent.as_fd(),
            &cname,
            kind | 0o600,
            libc::makedev(major, minor),
        ) {
            Ok(()) => {}
            // Root in a user namespace may not create devices either.
            Err(err) if is_device && err.raw_os_error() == Some(libc::EPERM) => {
                self.skip_device(ctx);
                return Ok(false);
            }
            Err(err) => return Err(ctx.io("create node")(err)),
        }
        self.finish_at(ctx, parent.as_fd(), name, meta, true)?;
        Ok(true)
    }

    fn skip_device(&mut self, ctx: &Ctx<'_>) {
        if self.stats.skipped_devices == 0 {
            log::warn!(
                "{}: not allowed to create device nodes, skipping them (first: {:?})",
                ctx.layer,
                ctx.entry
            );
        }
        self.stats.skipped_devices += 1;
    }

    /// Owner, mode (unless a symlink), xattrs and time of a just-created non-regular entry.
    fn finish_at(
        &mut self,
        ctx: &Ctx<'_>,
        parent: BorrowedFd<'_>,
        name: &[u8],
        meta: &Meta,
        chmod: bool,
    ) -> Result<()> {
        let cname = sys::c_name(name).map_err(ctx.io("set owner"))?;
        if self.privileged {
            sys::lchownat(parent, &cname, meta.uid, meta.gid).map_err(ctx.io("set owner"))?;
        }
        if chmod {
            sys::fchmodat(parent, &cname, meta.mode).map_err(ctx.io("set mode"))?;
        }
        self.set_xattrs(ctx, XattrTarget::At(parent, name), &meta.xattrs)?;
        sys::lutimensat(parent, &cname, meta.mtime).map_err(ctx.io("set modification time"))
    }

    fn set_xattrs(
        &mut self,
        ctx: &Ctx<'_>,
        target: XattrTarget<'_>,
        xattrs: &[(Vec<u8>, Vec<u8>)],
    ) -> Result<()> {
        for (name, value) in xattrs {
            let cname = sys::c_name(name).map_err(ctx.io("set extended attribute"))?;
            let result = match target {
                XattrTarget::Fd(fd) => sys::fsetxattr(fd, &cname, value),
                XattrTarget::At(parent, entry) => {
                    proc_c_path(parent, entry).and_then(|p| sys::lsetxattr(&p, &cname, value))
                }
            };
            match result {
                Ok(()) => {}
                // The filesystem has no xattrs (or not this namespace), or we may not set this
                // one (trusted.*, security.capability without CAP_SETFCAP, user.* on a symlink).
                Err(err)
                    if matches!(
                        err.raw_os_error(),
                        Some(libc::EOPNOTSUPP | libc::EPERM | libc::EACCES)
                    ) =>
                {
                    if self.stats.skipped_xattrs == 0 {
                        log::warn!(
                            "{}: cannot set extended attribute {} on {:?} ({err}); skipping such attributes",
                            ctx.layer,
                            String::from_utf8_lossy(name),
                            ctx.entry
                        );
                    }
                    self.stats.skipped_xattrs += 1;
                }
                Err(err) => return Err(ctx.io("set extended attribute")(err)),
            }
        }
        Ok(())
    }

    fn whiteout(
        &mut self,
        state: &mut LayerState<'_>,
        ctx: &Ctx<'_>,
        path: &ImagePath,
    ) -> Result<()> {
        let name = path.file_name().expect("a whiteout has a name");
        self.stats.whiteouts += 1;
        if name == OPAQUE_WHITEOUT {
            let dir = path.dir().expect("a whiteout has a parent");
            return self.opaque(state, ctx, &dir);
        }
        let hidden = &name[WHITEOUT_PREFIX.len()..];
        if matches!(hidden, b"" | b"." | b"..") {
            return Err(ctx.bad(EntryProblem::InvalidWhiteout));
        }
        let target = path.with_file_name(hidden);
        if state.created_at_or_under(&target) {
            return Ok(());
        }
        let parent = match self.root.dir(target.parent(), Missing::Fail) {
            Ok(parent) => parent,
            // Nothing there to hide.
            Err(ResolveError::NotFound | ResolveError::NotDirectory) => return Ok(()),
            Err(err) => return Err(ctx.resolve(err, "resolve its parent directory")),
        };
        self.remove(ctx, parent.as_fd(), hidden, &target)
    }

    /// Removes everything under `dir` that lower layers put there.
    fn opaque(&mut self, state: &LayerState<'_>, ctx: &Ctx<'_>, dir: &ImagePath) -> Result<()> {
        let fd = match self.root.dir(dir.components(), Missing::Fail) {
            Ok(fd) => fd,
            Err(ResolveError::NotFound | ResolveError::NotDirectory) => return Ok(()),
            Err(err) => return Err(ctx.resolve(err, "resolve the opaque directory")),
        };
        self.remove_lower(state, ctx, fd.as_fd(), dir)
    }

    fn remove_lower(
        &mut self,
        state: &LayerState<'_>,
        ctx: &Ctx<'_>,
        fd: BorrowedFd<'_>,
        dir: &ImagePath,
    ) -> Result<()> {
        let listing =
            std::fs::read_dir(proc_path(fd, None)).map_err(ctx.io("list the opaque directory"))?;
        let mut names = Vec::new();
        for child in listing {
            let child = child.map_err(ctx.io("list the opaque directory"))?;
            names.push(
                std::os::unix::ffi::OsStrExt::as_bytes(child.file_name().as_os_str()).to_vec(),
            );
        }
        for name in names {
            let child = dir.join(&name);
            if !state.created_at_or_under(&child) {
                self.remove(ctx, fd, &name, &child)?;
                continue;
            }
            let cname = sys::c_name(&name).map_err(ctx.io("list the opaque directory"))?;
            let flags = libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW;
            if let Ok(child_fd) = sys::openat(fd, &cname, flags, 0) {
                self.remove_lower(state, ctx, child_fd.as_fd(), &child)?;
            }
        }
        Ok(())
    }

    /// Makes room for a new entry at `name` in `parent`. With [`KeepDir::Yes`], an existing
    /// directory stays (a directory entry over a directory merges) and `true` is returned.
    fn clear(
        &mut self,
        ctx: &Ctx<'_>,
        parent: BorrowedFd<'_>,
        name: &[u8],
        path: &ImagePath,
        keep: KeepDir,
    ) -> Result<bool> {
        let cname = sys::c_name(name).map_err(ctx.io("replace the existing entry"))?;
        match sys::lstatat(parent, &cname) {
            Ok(stat) if sys::is_dir(&stat) && keep == KeepDir::Yes => Ok(true),
            Ok(_) => self.remove(ctx, parent, name, path).map(|()| false),
            Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(err) => Err(ctx.io("inspect the existing entry")(err)),
        }
    }

    /// Removes `name` from `parent`, a whole tree if it is a directory.
    fn remove(
        &mut self,
        ctx: &Ctx<'_>,
        parent: BorrowedFd<'_>,
        name: &[u8],
        path: &ImagePath,
    ) -> Result<()> {
        let cname = sys::c_name(name).map_err(ctx.io("remove"))?;
        let stat = match sys::lstatat(parent, &cname) {
            Ok(stat) => stat,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(err) => return Err(ctx.io("remove")(err)),
        };
        if sys::is_dir(&stat) {
            // std's remove_dir_all never follows symlinks inside the tree; the path reaches the
            // directory through the parent's descriptor.
            std::fs::remove_dir_all(proc_path(parent, Some(name))).map_err(ctx.io("remove"))?;
            let under: Vec<ImagePath> = self
                .dirs
                .range(path..)
                .take_while(|(p, _)| p.starts_with(path))
                .map(|(p, _)| p.clone())
                .collect();
            for dir in under {
                self.dirs.remove(&dir);
            }
        } else {
            sys::unlinkat(parent, &cname, 0).map_err(ctx.io("remove"))?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeepDir {
    Yes,
    No,
}

#[derive(Clone, Copy)]
enum XattrTarget<'a> {
    Fd(BorrowedFd<'a>),
    At(BorrowedFd<'a>, &'a [u8]),
}

fn read_meta<R: Read>(entry: &mut tar::Entry<'_, R>) -> std::result::Result<Meta, EntryProblem> {
    let header = entry.header();
    let raw = header.as_old();
    let mode = numeric(header.mode().map(u64::from), &raw.mode, "mode")? as u32 & 0o7777;
    let id = |value, field| u32::try_from(value).map_err(|_| EntryProblem::InvalidHeader(field));
    let uid = id(numeric(header.uid(), &raw.uid, "uid")?, "uid")?;
    let gid = id(numeric(header.gid(), &raw.gid, "gid")?, "gid")?;
    let mtime = numeric(header.mtime(), &raw.mtime, "mtime")?;
    let mut meta = Meta {
        mode,
        uid,
        gid,
        mtime: Timestamp {
            secs: i64::try_from(mtime).unwrap_or(i64::MAX),
            nanos: 0,
        },
        xattrs: Vec::new(),
    };
    let extensions = entry
        .pax_extensions()
        .map_err(|_| EntryProblem::InvalidHeader("PAX extensions"))?;
    // TODO(#3): bsdtar's LIBARCHIVE.xattr.* records (base64-encoded names) are not read.
    for extension in extensions.into_iter().flatten() {
        let extension = extension.map_err(|_| EntryProblem::InvalidHeader("PAX extensions"))?;
        let key = extension.key_bytes();
        if key == PAX_MTIME {
            meta.mtime = parse_pax_time(extension.value_bytes())
                .ok_or(EntryProblem::InvalidHeader("PAX mtime"))?;
        } else if let Some(name) = key.strip_prefix(PAX_XATTR_PREFIX) {
            meta.xattrs
                .push((name.to_vec(), extension.value_bytes().to_vec()));
        }
    }
    Ok(meta)
}

/// A numeric header field; one left empty (all NUL or spaces) means 0, as GNU tar and Go's
/// archive/tar read it.
fn numeric(
    value: io::Result<u64>,
    raw: &[u8],
    field: &'static str,
) -> std::result::Result<u64, EntryProblem> {
    match value {
        Ok(value) => Ok(value),
        Err(_) if raw.iter().all(|&b| b == 0 || b == b' ') => Ok(0),
        Err(_) => Err(EntryProblem::InvalidHeader(field)),
    }
}

/// A device node's major and minor numbers.
fn device_numbers(header: &tar::Header) -> std::result::Result<(u32, u32), EntryProblem> {
    let Some(ustar) = header
        .as_ustar()
        .map(|h| (&h.dev_major, &h.dev_minor))
        .or_else(|| header.as_gnu().map(|h| (&h.dev_major, &h.dev_minor)))
    else {
        return Err(EntryProblem::InvalidHeader("device number"));
    };
    let major = header
        .device_major()
        .map(Option::unwrap_or_default)
        .map(u64::from);
    let minor = header
        .device_minor()
        .map(Option::unwrap_or_default)
        .map(u64::from);
    let major = numeric(major, ustar.0, "device major")?;
    let minor = numeric(minor, ustar.1, "device minor")?;
    let number =
        |n: u64| u32::try_from(n).map_err(|_| EntryProblem::InvalidHeader("device number"));
    Ok((number(major)?, number(minor)?))
}

/// Parses a PAX time, `[-]seconds[.fraction]` (POSIX pax "mtime").
fn parse_pax_time(value: &[u8]) -> Option<Timestamp> {
    let text = std::str::from_utf8(value).ok()?;
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    let secs: i64 = whole.parse().ok()?;
    if !fraction.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let digits: String = fraction
        .chars()
        .chain(std::iter::repeat('0'))
        .take(9)
        .collect();
    let nanos: u32 = digits.parse().ok()?;
    if text.starts_with('-') && nanos > 0 {
        // -1.25 is 1.25 s before the epoch: -2 s plus 0.75 s.
        return Some(Timestamp {
            secs: secs.checked_sub(1)?,
            nanos: 1_000_000_000 - nanos,
        });
    }
    Some(Timestamp { secs, nanos })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_times_parse_with_fractions_and_signs() {
        let t = |s: &str| parse_pax_time(s.as_bytes());

        assert_eq!(
            t("1700000000"),
            Some(Timestamp {
                secs: 1_700_000_000,
                nanos: 0
            })
        );
        assert_eq!(
            t("1.5"),
            Some(Timestamp {
                secs: 1,
                nanos: 500_000_000
            })
        );
        assert_eq!(
            t("-1.25"),
            Some(Timestamp {
                secs: -2,
                nanos: 750_000_000
            })
        );
        assert_eq!(
            t("1.1234567891"),
            Some(Timestamp {
                secs: 1,
                nanos: 123_456_789
            })
        );
        assert_eq!(t("x"), None);
        assert_eq!(t("1.x"), None);
    }
}
