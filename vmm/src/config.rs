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
    /// The virtio-vsock device, if any.
    pub vsock: Option<VsockConfig>,
    /// The guest is a bare program rather than a Linux kernel, one that takes no exception or
    /// interrupt (the tiny benchmark guest). Such a guest runs on a PVM host too, so the host
    /// check lets a PVM host pass for it.
    pub bare_guest: bool,
}

/// A virtio-vsock device whose host side is a Unix socket (the hybrid vsock scheme).
///
/// A host client connects to `uds_path` and writes `CONNECT <port>\n` to reach a guest listener
/// on that port; the VMM answers `OK <host port>\n`. A guest connection to the host (CID 2) on
/// port P goes to the Unix socket `<uds_path>_P`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VsockConfig {
    /// The guest's context id, 3 or more (0 to 2 are reserved, virtio 1.2 §5.10.4).
    pub guest_cid: u32,
    /// Where the VMM listens for host clients.
    pub uds_path: PathBuf,
}
