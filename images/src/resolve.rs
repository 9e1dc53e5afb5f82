//! Paths from an untrusted image, normalised and resolved inside the unpack root, never outside.
//!
//! An entry path is cleaned lexically (`./a//b/` is `a/b`, a leading `/` is dropped, `..` that
//! would climb above the root is refused). Its parent directories are then resolved one
//! component at a time from a descriptor of the root, with `O_NOFOLLOW`: a symlink met on the way
//! is followed as if the root were `/` (an absolute target starts again at the root), and a `..`
//! that would climb above the root is refused. The last component is never followed; callers
//! act on it with `*at` calls relative to the resolved parent.

use std::collections::VecDeque;
use std::ffi::{CString, OsStr};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::sys;

/// Linux's `PATH_MAX`; no real image has a longer path.
const MAX_PATH_LEN: usize = 4096;
/// Linux's `MAXSYMLINKS`: how many symlinks one resolution may follow.
const MAX_SYMLINKS: usize = 40;

/// A path inside the image: clean components, no `.`, no `..`, none empty.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct ImagePath {
    components: Vec<Vec<u8>>,
}

/// Why a path is refused before it touches the filesystem.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PathError {
    /// A `..` climbs above the root.
    LeavesRoot,
    /// Longer than `PATH_MAX`.
    TooLong,
}

impl ImagePath {
    /// Cleans `raw` lexically; the root itself is the empty path.
    pub(crate) fn parse(raw: &[u8]) -> Result<ImagePath, PathError> {
        if raw.len() > MAX_PATH_LEN {
            return Err(PathError::TooLong);
        }
        let mut components: Vec<Vec<u8>> = Vec::new();
        for component in raw.split(|&b| b == b'/') {
            match component {
                b"" | b"." => {}
                b".." => {
                    components.pop().ok_or(PathError::LeavesRoot)?;
                }
                _ => components.push(component.to_vec()),
            }
        }
        Ok(ImagePath { components })
    }

    /// Whether this is the root directory itself.
    pub(crate) fn is_root(&self) -> bool {
        self.components.is_empty()
    }

    /// The directories above the last component.
    pub(crate) fn parent(&self) -> &[Vec<u8>] {
        match self.components.split_last() {
            Some((_, parent)) => parent,
            None => &[],
        }
    }

    /// The last component, `None` for the root.
    pub(crate) fn file_name(&self) -> Option<&[u8]> {
        self.components.last().map(Vec::as_slice)
    }

    /// All components.
    pub(crate) fn components(&self) -> &[Vec<u8>] {
        &self.components
    }

    /// How many components deep the path is.
    pub(crate) fn depth(&self) -> usize {
        self.components.len()
    }

    /// `self/name`.
    pub(crate) fn join(&self, name: &[u8]) -> ImagePath {
        let mut components = self.components.clone();
        components.push(name.to_vec());
        ImagePath { components }
    }

    /// The path with a different last component.
    pub(crate) fn with_file_name(&self, name: &[u8]) -> ImagePath {
        let mut components = self.parent().to_vec();
        components.push(name.to_vec());
        ImagePath { components }
    }

    /// The directory holding this path, `None` for the root.
    pub(crate) fn dir(&self) -> Option<ImagePath> {
        let (_, parent) = self.components.split_last()?;
        Some(ImagePath {
            components: parent.to_vec(),
        })
    }

    /// Whether `self` is `other` or inside it.
    pub(crate) fn starts_with(&self, other: &ImagePath) -> bool {
        self.components.starts_with(&other.components)
    }

    /// The path as `a/b/c`, lossy for display.
    pub(crate) fn display(&self) -> String {
        String::from_utf8_lossy(&self.components.join(&b'/')).into_owned()
    }
}

/// Why a resolution inside the root failed.
#[derive(Debug)]
pub(crate) enum ResolveError {
    /// A `..` (from a symlink target) climbs above the root.
    LeavesRoot,
    /// More than [`MAX_SYMLINKS`] symlinks.
    TooManySymlinks,
    /// A component exists and is not a directory or a symlink to one.
    NotDirectory,
    /// A component does not exist and the caller asked not to create it.
    NotFound,
    /// A system call failed.
    Io(io::Error),
}

impl From<io::Error> for ResolveError {
    fn from(err: io::Error) -> Self {
        ResolveError::Io(err)
    }
}

/// Whether resolving a directory path creates directories that are missing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Missing {
    /// Create them, mode 0755, as `docker load` does for parents a layer leaves out.
    Create,
    /// Fail with [`ResolveError::NotFound`].
    Fail,
}

/// The unpack destination, held open so every lookup starts from it.
pub(crate) struct Root {
    fd: OwnedFd,
}

impl Root {
    /// Opens `path`, which the caller trusts (it is the destination, not image content).
    pub(crate) fn open(path: &Path) -> io::Result<Root> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_PATH | libc::O_DIRECTORY)
            .open(path)?;
        Ok(Root { fd: file.into() })
    }

    /// The root directory's descriptor (`O_PATH`).
    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Resolves the directory `dirs` inside the root to an `O_PATH` descriptor, following
    /// symlinks with the root as `/`.
    pub(crate) fn dir(&self, dirs: &[Vec<u8>], missing: Missing) -> Result<OwnedFd, ResolveError> {
        let mut pending: VecDeque<Vec<u8>> = dirs.iter().cloned().collect();
        let mut resolved: Vec<Vec<u8>> = Vec::new();
        let mut current = self.fd.try_clone()?;
        let mut symlinks = 0;
        while let Some(component) = pending.pop_front() {
            match component.as_slice() {
                b"" | b"." => continue,
                b".." => {
                    resolved.pop().ok_or(ResolveError::LeavesRoot)?;
                    current = self.reopen(&resolved)?;
                    continue;
                }
                _ => {}
            }
            let name = sys::c_name(&component)?;
            let fd = match open_component(current.as_fd(), &name, missing)? {
                Some(fd) => fd,
                None => return Err(ResolveError::NotFound),
            };
            let stat = sys::fstat(fd.as_fd())?;
            if sys::is_dir(&stat) {
                resolved.push(component);
                current = fd;
            } else if sys::is_symlink(&stat) {
                symlinks += 1;
                if symlinks > MAX_SYMLINKS {
                    return Err(ResolveError::TooManySymlinks);
                }
                let target = sys::readlinkat(current.as_fd(), &name)?;
                if target.starts_with(b"/") {
                    resolved.clear();
                    current = self.fd.try_clone()?;
                }
                for part in target.split(|&b| b == b'/').rev() {
                    pending.push_front(part.to_vec());
                }
            } else {
                return Err(ResolveError::NotDirectory);
            }
        }
        Ok(current)
    }

    /// Walks `resolved`, which were directories a moment ago, from the root again.
    fn reopen(&self, resolved: &[Vec<u8>]) -> Result<OwnedFd, ResolveError> {
        let mut current = self.fd.try_clone()?;
        for component in resolved {
            let name = sys::c_name(component)?;
            current = sys::openat(current.as_fd(), &name, DIR_PATH_FLAGS, 0)?;
        }
        Ok(current)
    }
}

const DIR_PATH_FLAGS: libc::c_int = libc::O_PATH | libc::O_NOFOLLOW | libc::O_DIRECTORY;

/// Opens one component without following it, creating it as a directory if asked.
fn open_component(
    dir: BorrowedFd<'_>,
    name: &CString,
    missing: Missing,
) -> Result<Option<OwnedFd>, ResolveError> {
    match sys::openat(dir, name, libc::O_PATH | libc::O_NOFOLLOW, 0) {
        Ok(fd) => return Ok(Some(fd)),
        Err(err) if err.kind() == io::ErrorKind::NotFound && missing == Missing::Create => {}
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(err.into()),
    }
    match sys::mkdirat(dir, name, 0o755) {
        Ok(()) => sys::fchmodat(dir, name, 0o755)?,
        Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {}
        Err(err) => return Err(err.into()),
    }
    Ok(Some(sys::openat(dir, name, DIR_PATH_FLAGS, 0)?))
}

/// `/proc/self/fd/<dir>/<name>`: a path to `name` in `dir` that the kernel resolves through the
/// open descriptor, for the calls that have no `*at` form (lsetxattr, read_dir, remove_dir_all).
/// The final component is still not followed by calls that do not follow.
pub(crate) fn proc_path(dir: BorrowedFd<'_>, name: Option<&[u8]>) -> PathBuf {
    let mut path = PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd()));
    if let Some(name) = name {
        path.push(OsStr::from_bytes(name));
    }
    path
}

/// [`proc_path`] as a C string.
pub(crate) fn proc_c_path(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<CString> {
    sys::c_name(proc_path(dir, Some(name)).as_os_str().as_bytes())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    fn path(s: &str) -> ImagePath {
        ImagePath::parse(s.as_bytes()).unwrap()
    }

    fn names(dirs: &[&str]) -> Vec<Vec<u8>> {
        dirs.iter().map(|d| d.as_bytes().to_vec()).collect()
    }

    #[test]
    fn cleans_dots_slashes_and_leading_root() {
        assert_eq!(path("./a//b/./c/"), path("a/b/c"));
        assert_eq!(path("/etc/x"), path("etc/x"));
        assert_eq!(path("a/../b"), path("b"));
        assert!(path("./").is_root());
    }

    #[test]
    fn refuses_climbing_above_the_root() {
        assert_eq!(
            ImagePath::parse(b"../etc/passwd"),
            Err(PathError::LeavesRoot)
        );
        assert_eq!(ImagePath::parse(b"a/../../b"), Err(PathError::LeavesRoot));
        assert_eq!(
            ImagePath::parse(&[b'a'; MAX_PATH_LEN + 1]),
            Err(PathError::TooLong)
        );
    }

    #[test]
    fn absolute_symlink_in_parent_resolves_inside_root() {
        let dest = tempfile::tempdir().unwrap();
        std::fs::create_dir(dest.path().join("etc")).unwrap();
        symlink("/", dest.path().join("link")).unwrap();
        let root = Root::open(dest.path()).unwrap();

        let fd = root.dir(&names(&["link", "etc"]), Missing::Fail).unwrap();

        let expected = std::fs::metadata(dest.path().join("etc")).unwrap();
        let got = sys::fstat(fd.as_fd()).unwrap();
        assert_eq!(got.st_ino, std::os::unix::fs::MetadataExt::ino(&expected));
    }

    #[test]
    fn relative_symlink_climbing_out_is_refused() {
        let dest = tempfile::tempdir().unwrap();
        symlink("../../..", dest.path().join("link")).unwrap();
        let root = Root::open(dest.path()).unwrap();

        let err = root
            .dir(&names(&["link", "x"]), Missing::Create)
            .unwrap_err();

        assert!(matches!(err, ResolveError::LeavesRoot), "{err:?}");
    }

    #[test]
    fn symlink_loop_is_refused() {
        let dest = tempfile::tempdir().unwrap();
        symlink("b", dest.path().join("a")).unwrap();
        symlink("a", dest.path().join("b")).unwrap();
        let root = Root::open(dest.path()).unwrap();

        let err = root.dir(&names(&["a"]), Missing::Create).unwrap_err();

        assert!(matches!(err, ResolveError::TooManySymlinks), "{err:?}");
    }

    #[test]
    fn missing_parents_are_created_as_directories() {
        let dest = tempfile::tempdir().unwrap();
        let root = Root::open(dest.path()).unwrap();

        root.dir(&names(&["a", "b"]), Missing::Create).unwrap();

        assert!(dest.path().join("a/b").is_dir());
        assert!(matches!(
            root.dir(&names(&["c"]), Missing::Fail),
            Err(ResolveError::NotFound)
        ));
    }

    #[test]
    fn file_in_parent_path_is_not_a_directory() {
        let dest = tempfile::tempdir().unwrap();
        std::fs::write(dest.path().join("f"), b"").unwrap();
        let root = Root::open(dest.path()).unwrap();

        let err = root.dir(&names(&["f", "x"]), Missing::Create).unwrap_err();

        assert!(matches!(err, ResolveError::NotDirectory), "{err:?}");
    }
}
