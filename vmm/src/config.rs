//! What a VM is made of, as the user asked for it.

use std::path::PathBuf;

/// Most vCPUs a moat VM may have: the MP table must fit in the 1 KiB the layout gives it.
pub const MAX_VCPUS: u8 = 32;

/// Least guest memory in MiB: the kernel, its initramfs and a workload must fit.
pub const MIN_MEMORY_MIB: u64 = 32;

/// A virtio-blk disk backed by a host file or block device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskConfig {
    /// Host path of the backing file or block device.
    pub path: PathBuf,
    /// The guest sees a read-only disk, and the VMM refuses its writes.
    pub read_only: bool,
}

/// Everything needed to build and boot one VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmConfig {
    /// Uncompressed ELF kernel (`vmlinux`) with a PVH entry point.
    pub kernel: PathBuf,
    /// Initramfs image, if any.
    pub initrd: Option<PathBuf>,
    /// Bytes loaded right after the initramfs: a second cpio archive, which the kernel unpacks
    /// over the first (moat passes each launch's spec this way). Ignored without `initrd`.
    pub initrd_appendix: Vec<u8>,
    /// Kernel command line; device declarations are appended by the builder.
    pub cmdline: String,
    /// Number of vCPUs, 1..=[`MAX_VCPUS`].
    pub vcpus: u8,
    /// Guest memory in MiB, at least [`MIN_MEMORY_MIB`].
    pub memory_mib: u64,
    /// Disks in guest order: the first is `/dev/vda`.
    pub disks: Vec<DiskConfig>,
}
