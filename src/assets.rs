//! Where moat finds its guest kernel and agent initramfs when no flag names them.
//!
//! Search order, first match wins:
//! 1. `$MOAT_HOME`;
//! 2. the install prefix's `share/moat` (`<prefix>/bin/moat` → `<prefix>/share/moat`);
//! 3. the directory holding the `moat` binary;
//! 4. the source tree's `build/` directory (development builds).

use std::path::{Path, PathBuf};

/// File name of the guest kernel.
pub const KERNEL: &str = "vmlinux";
/// File name of the agent initramfs.
pub const INITRAMFS: &str = "moat-agent.cpio";

/// The directories searched, in order.
pub fn search_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(home) = std::env::var_os("MOAT_HOME") {
        dirs.push(PathBuf::from(home));
    }
    if let Some(bin_dir) = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(Path::to_owned))
    {
        if let Some(prefix) = bin_dir.parent() {
            dirs.push(prefix.join("share/moat"));
        }
        dirs.push(bin_dir);
    }
    dirs.push(Path::new(env!("CARGO_MANIFEST_DIR")).join("build"));
    dirs
}

/// Finds `name` in the search directories.
pub fn find(name: &str) -> anyhow::Result<PathBuf> {
    let dirs = search_dirs();
    dirs.iter()
        .map(|dir| dir.join(name))
        .find(|path| path.is_file())
        .ok_or_else(|| {
            let looked: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
            anyhow::anyhow!(
                "no {name} found (looked in {}); run `make` or `make install`, set MOAT_HOME, \
             or name it with a flag",
                looked.join(", ")
            )
        })
}
