//! Building a VM from a [`VmConfig`], in named steps: check the host, create the VM and its
//! memory, load the kernel, attach devices, configure vCPUs, start them.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use event_manager::{EventManager, EventOps, Events, MutEventSubscriber, SubscriberOps};
use kvm_bindings::KVM_MAX_CPUID_ENTRIES;
use kvm_ioctls::{Cap, IoEventAddress, Kvm, VcpuFd, VmFd};
use linux_loader::cmdline::Cmdline;
use linux_loader::loader::elf::{Elf, PvhBootCapability};
use linux_loader::loader::KernelLoader;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use crate::arch::x86_64::layout::{
    self, CMDLINE_MAX_SIZE, CMDLINE_START, HIMEM_START, IRQ_MAX, VIRTIO_IRQ_START,
    VIRTIO_MMIO_SIZE, VIRTIO_MMIO_START,
};
use crate::arch::x86_64::{cpuid, mptable, pvh};
use crate::config::{VmConfig, MAX_VCPUS, MIN_MEMORY_MIB};
use crate::devices::bus::{self, Bus};
use crate::devices::control::ControlPort;
use crate::devices::legacy::{self, SerialConsole, I8042};
use crate::devices::virtio::block::{self, device::Disk, Block};
use crate::devices::virtio::mmio::{MmioTransport, QUEUE_NOTIFY_OFFSET};
use crate::devices::virtio::vsock::{self, Vsock};
use crate::devices::virtio::{VirtioDevice, VirtioInterrupt};
use crate::devices::IrqLine;
use crate::host::{self, KvmKind};
use crate::stop::{Stop, StopReason, VcpuFault, VmOutcome};
use crate::timeline::{Phase, Timeline};
use crate::vmm::{Subscriber, Vmm};
use crate::vstate::{memory, vcpu, vm};

/// Most virtio devices: one IOAPIC pin each, from [`VIRTIO_IRQ_START`] to [`IRQ_MAX`].
pub const MAX_VIRTIO_DEVICES: usize = (IRQ_MAX - VIRTIO_IRQ_START + 1) as usize;

/// Why a VM could not be built or run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No /dev/kvm.
    #[error("/dev/kvm does not exist: load kvm_intel or kvm_amd, or run moat on a host with KVM")]
    NoKvm,
    /// The host's KVM cannot boot ordinary guests.
    #[error(
        "this host's /dev/kvm is PVM-backed and cannot boot an ordinary Linux guest; \
         run moat on hardware KVM, or through the nested harness: tests/nested/run -- moat ..."
    )]
    PvmHost,
    /// vCPU count out of range.
    #[error("a VM needs 1 to {MAX_VCPUS} vCPUs, not {0}")]
    VcpuCount(u8),
    /// Too little memory.
    #[error("a VM needs at least {MIN_MEMORY_MIB} MiB of memory, not {0}")]
    MemoryTooSmall(u64),
    /// Too many virtio devices: disks plus the vsock device.
    #[error("a VM takes at most {MAX_VIRTIO_DEVICES} virtio devices (disks and vsock), not {0}")]
    TooManyDisks(usize),
    /// KVM or the VM could not be set up.
    #[error("cannot create the VM")]
    Vm(#[from] vm::Error),
    /// Guest memory could not be set up.
    #[error("cannot set up guest memory")]
    Memory(#[from] memory::Error),
    /// The kernel file could not be opened.
    #[error("cannot open kernel {path}")]
    KernelOpen {
        /// The path given.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The kernel is not a loadable ELF.
    #[error("cannot load kernel {path} (an uncompressed ELF vmlinux is needed)")]
    KernelLoad {
        /// The path given.
        path: PathBuf,
        /// Why.
        #[source]
        source: linux_loader::loader::Error,
    },
    /// The kernel has no PVH entry point.
    #[error("kernel {path} has no PVH entry point: build it with CONFIG_PVH=y")]
    NoPvhEntry {
        /// The path given.
        path: PathBuf,
    },
    /// The initramfs could not be read.
    #[error("cannot read initramfs {path}")]
    InitrdRead {
        /// The path given.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The initramfs does not fit in guest memory above the kernel.
    #[error("initramfs {path} does not fit in guest memory; give the VM more memory")]
    InitrdTooLarge {
        /// The path given.
        path: PathBuf,
    },
    /// The kernel command line is invalid or too long.
    #[error("invalid kernel command line")]
    Cmdline(#[source] linux_loader::cmdline::Error),
    /// Boot structures could not be written.
    #[error("cannot write boot structures to guest memory")]
    BootData(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// A disk could not be attached.
    #[error("cannot attach disk")]
    Disk(#[from] block::Error),
    /// The vsock device could not be attached.
    #[error("cannot attach the vsock device")]
    Vsock(#[from] vsock::Error),
    /// A device could not be placed on a bus.
    #[error("cannot attach a device")]
    Bus(#[from] bus::Error),
    /// An eventfd, irqfd or ioeventfd could not be set up.
    #[error("cannot {what}")]
    Wiring {
        /// What was being wired.
        what: &'static str,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// KVM's supported CPUID could not be read.
    #[error("cannot read KVM's supported CPUID")]
    Cpuid(#[source] kvm_ioctls::Error),
    /// A vCPU could not be set up or started.
    #[error("cannot set up vCPUs")]
    Vcpu(#[from] vcpu::Error),
    /// The event loop failed.
    #[error("event loop failed")]
    EventLoop(#[source] event_manager::Error),
    /// KVM could not run the guest.
    #[error("the VM failed: {0}")]
    Fault(VcpuFault),
}

fn wiring(what: &'static str) -> impl FnOnce(std::io::Error) -> Error {
    move |source| Error::Wiring { what, source }
}

/// Builds and boots the VM `config` describes; guest console output goes to `console`.
///
/// Phases are marked on `timeline` as they complete. The vCPUs are running when this returns:
/// call [`Vmm::run`] to wait for the outcome.
pub fn boot(
    config: &VmConfig,
    timeline: Arc<Timeline>,
    console: Box<dyn Write + Send>,
) -> Result<Vmm, Error> {
    validate(config)?;
    check_host(host::kvm_kind(), config.bare_guest)?;

    let kvm = vm::open_kvm()?;
    let vm = vm::create(&kvm)?;
    timeline.mark(Phase::VmCreated);

    let guest_memory = memory::create(config.memory_mib)?;
    // Memory before the irqchip: registering it is much cheaper that way on the PVM host (0.2 ms
    // against 6 ms for 256 MiB). (The guest triple faults once blamed on this order came from
    // the test harness's emulated nested paging; see tests/nested/run --npt.)
    memory::register(&vm, &guest_memory)?;
    vm::create_irqchip(&vm)?;
    if !config.bare_guest {
        // Linux calibrates its clocks against the PIT; a bare guest uses no timer at all.
        vm::create_pit(&vm)?;
    }
    timeline.mark(Phase::MemoryReady);

    let stop = Arc::new(Stop::new().map_err(wiring("create the stop eventfd"))?);
    let mut devices = Devices::new();
    devices.attach_legacy(&vm, console, &stop, &timeline)?;
    devices.attach_disks(&vm, &guest_memory, config)?;
    devices.attach_vsock(&vm, &guest_memory, config)?;

    let entry = load_kernel(&guest_memory, &config.kernel)?;
    let initrd = config
        .initrd
        .as_deref()
        .map(|p| load_initrd(&guest_memory, p, &config.initrd_appendix))
        .transpose()?;
    load_cmdline(&guest_memory, &config.cmdline, &devices.cmdline_devices)?;
    pvh::write_start_info(&guest_memory, initrd).map_err(|e| Error::BootData(e.into()))?;
    mptable::write(&guest_memory, config.vcpus).map_err(|e| Error::BootData(e.into()))?;
    timeline.mark(Phase::KernelLoaded);

    let vcpu_fds = create_vcpus(&kvm, &vm, &guest_memory, config.vcpus, entry)?;
    let event_manager = devices.event_loop(&stop)?;
    timeline.mark(Phase::DevicesReady);

    let console = devices
        .console
        .take()
        .expect("attach_legacy always attaches the console");
    let ctx = vcpu::VcpuContext {
        pio: Arc::new(devices.pio),
        mmio: Arc::new(devices.mmio),
        stop: stop.clone(),
        timeline: timeline.clone(),
    };
    let mut vmm = Vmm {
        vcpu_threads: Vec::with_capacity(vcpu_fds.len()),
        event_manager,
        stop,
        console,
        timeline,
        vm: Some((vm, guest_memory)),
        _kvm: kvm,
    };
    for (index, fd) in (0u8..).zip(vcpu_fds) {
        vmm.vcpu_threads.push(vcpu::spawn(index, fd, ctx.clone())?);
    }
    Ok(vmm)
}

fn validate(config: &VmConfig) -> Result<(), Error> {
    if config.vcpus == 0 || config.vcpus > MAX_VCPUS {
        return Err(Error::VcpuCount(config.vcpus));
    }
    if config.memory_mib < MIN_MEMORY_MIB {
        return Err(Error::MemoryTooSmall(config.memory_mib));
    }
    let virtio_devices = config.disks.len() + usize::from(config.vsock.is_some());
    if virtio_devices > MAX_VIRTIO_DEVICES {
        return Err(Error::TooManyDisks(virtio_devices));
    }
    if let Some(vsock) = &config.vsock {
        vsock::device::check_cid(vsock.guest_cid)?;
    }
    // Missing files are the user's most likely mistake: say so before judging the host.
    std::fs::metadata(&config.kernel).map_err(|source| Error::KernelOpen {
        path: config.kernel.clone(),
        source,
    })?;
    if let Some(initrd) = &config.initrd {
        std::fs::metadata(initrd).map_err(|source| Error::InitrdRead {
            path: initrd.clone(),
            source,
        })?;
    }
    Ok(())
}

/// Refuses a host that cannot boot the guest, before anything is created.
fn check_host(kind: KvmKind, bare_guest: bool) -> Result<(), Error> {
    match kind {
        KvmKind::Hardware => Ok(()),
        KvmKind::Missing => Err(Error::NoKvm),
        // PVM runs a guest that needs no exception or interrupt delivered; Linux needs both.
        KvmKind::Pvm if bare_guest => Ok(()),
        KvmKind::Pvm => Err(Error::PvmHost),
    }
}

/// Loads the ELF kernel; returns its PVH entry point.
fn load_kernel(mem: &GuestMemoryMmap, path: &Path) -> Result<GuestAddress, Error> {
    let mut file = File::open(path).map_err(|source| Error::KernelOpen {
        path: path.to_owned(),
        source,
    })?;
    let loaded =
        Elf::load(mem, None, &mut file, Some(HIMEM_START)).map_err(|source| Error::KernelLoad {
            path: path.to_owned(),
            source,
        })?;
    match loaded.pvh_boot_cap {
        PvhBootCapability::PvhEntryPresent(entry) => Ok(entry),
        _ => Err(Error::NoPvhEntry {
            path: path.to_owned(),
        }),
    }
}

/// Loads the initramfs, then `appendix`, at the top of low RAM, page aligned, where they are out
/// of the kernel's way.
fn load_initrd(
    mem: &GuestMemoryMmap,
    path: &Path,
    appendix: &[u8],
) -> Result<pvh::InitrdRegion, Error> {
    let read_err = |source| Error::InitrdRead {
        path: path.to_owned(),
        source,
    };
    let mut file = File::open(path).map_err(read_err)?;
    let file_size = file.metadata().map_err(read_err)?.len();
    let gap = if appendix.is_empty() {
        0
    } else {
        moat_agent_protocol::cpio::gap_after(file_size)
    };
    let size = file_size + gap + appendix.len() as u64;
    let low_ram_end = layout::ram_ranges(mem_size(mem))[0].1 as u64;
    /// Space left above the kernel for its early allocations (page tables, bss).
    const KERNEL_HEADROOM: u64 = 64 << 20;
    let addr = low_ram_end
        .checked_sub(size)
        .map(|a| a & !0xfff)
        .filter(|&a| a >= HIMEM_START.0 + KERNEL_HEADROOM.min(low_ram_end / 2))
        .ok_or_else(|| Error::InitrdTooLarge {
            path: path.to_owned(),
        })?;
    mem.read_exact_volatile_from(GuestAddress(addr), &mut file, file_size as usize)
        .map_err(|e| read_err(std::io::Error::other(e)))?;
    if !appendix.is_empty() {
        // Guest memory is fresh (zeroed), so the gap is already zero padding.
        mem.write_slice(appendix, GuestAddress(addr + file_size + gap))
            .map_err(|e| read_err(std::io::Error::other(e)))?;
    }
    Ok(pvh::InitrdRegion {
        addr: GuestAddress(addr),
        size,
    })
}

fn mem_size(mem: &GuestMemoryMmap) -> u64 {
    use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};
    mem.iter().map(|r| r.len()).sum()
}

/// Writes the command line with the virtio-mmio device declarations appended.
fn load_cmdline(mem: &GuestMemoryMmap, base: &str, devices: &[(u64, u32)]) -> Result<(), Error> {
    let mut cmdline = Cmdline::new(CMDLINE_MAX_SIZE).map_err(Error::Cmdline)?;
    if !base.trim().is_empty() {
        cmdline.insert_str(base).map_err(Error::Cmdline)?;
    }
    for &(base_addr, irq) in devices {
        cmdline
            .add_virtio_mmio_device(VIRTIO_MMIO_SIZE, GuestAddress(base_addr), irq, None)
            .map_err(Error::Cmdline)?;
    }
    let cstring = cmdline.as_cstring().map_err(Error::Cmdline)?;
    mem.write_slice(cstring.as_bytes_with_nul(), CMDLINE_START)
        .map_err(|e| Error::BootData(e.into()))
}

fn create_vcpus(
    kvm: &Kvm,
    vm: &VmFd,
    mem: &GuestMemoryMmap,
    vcpus: u8,
    entry: GuestAddress,
) -> Result<Vec<VcpuFd>, Error> {
    let mut supported = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(Error::Cpuid)?;
    cpuid::announce(&mut supported, kvm.check_extension(Cap::TscDeadlineTimer));
    (0..vcpus)
        .map(|index| vcpu::create(vm, &supported, index, vcpus, mem, entry).map_err(Error::from))
        .collect()
}

/// The devices of a VM as they are attached: the two buses, event loop subscribers, and the
/// virtio-mmio declarations for the command line.
struct Devices {
    pio: Bus,
    mmio: Bus,
    subscribers: Vec<Subscriber>,
    cmdline_devices: Vec<(u64, u32)>,
    console: Option<Arc<Mutex<SerialConsole>>>,
}

impl Devices {
    fn new() -> Self {
        Self {
            pio: Bus::new(),
            mmio: Bus::new(),
            subscribers: Vec::new(),
            cmdline_devices: Vec::new(),
            console: None,
        }
    }

    /// COM1 console, i8042 reset and the agent's control port.
    fn attach_legacy(
        &mut self,
        vm: &VmFd,
        console: Box<dyn Write + Send>,
        stop: &Arc<Stop>,
        timeline: &Arc<Timeline>,
    ) -> Result<(), Error> {
        let irq = IrqLine::new().map_err(wiring("create the serial IRQ"))?;
        vm.register_irqfd(irq.evt(), legacy::COM1_IRQ)
            .map_err(|e| wiring("register the serial irqfd")(e.into()))?;
        let serial = Arc::new(Mutex::new(SerialConsole::new(irq, console)));
        self.pio
            .insert(serial.clone(), legacy::COM1_PORT, legacy::COM1_LEN)?;
        self.console = Some(serial);

        let reset_evt =
            EventFd::new(libc::EFD_NONBLOCK).map_err(wiring("create the reset eventfd"))?;
        let i8042 = I8042::new(
            reset_evt
                .try_clone()
                .map_err(wiring("clone the reset eventfd"))?,
        );
        self.pio.insert(
            Arc::new(Mutex::new(i8042)),
            legacy::I8042_PORT,
            legacy::I8042_LEN,
        )?;
        self.subscribers.push(Arc::new(Mutex::new(ResetWatcher {
            reset_evt,
            stop: stop.clone(),
        })));

        let control = ControlPort::new(timeline.clone(), stop.clone());
        let port = u64::from(moat_agent_protocol::CONTROL_PORT);
        let width = moat_agent_protocol::CONTROL_PORT_WIDTH as u64;
        self.pio
            .insert(Arc::new(Mutex::new(control)), port, width)?;
        Ok(())
    }

    /// One virtio-blk device per disk, in order, each on its own MMIO window and IRQ.
    fn attach_disks(
        &mut self,
        vm: &VmFd,
        mem: &GuestMemoryMmap,
        config: &VmConfig,
    ) -> Result<(), Error> {
        for disk in &config.disks {
            let block = Block::new(Disk::open(&disk.path, disk.read_only)?)?;
            self.attach_virtio(vm, mem, Arc::new(Mutex::new(block)))?;
        }
        Ok(())
    }

    /// The virtio-vsock device, after the disks, if the config asks for one. Its host socket
    /// file lives as long as the device.
    fn attach_vsock(
        &mut self,
        vm: &VmFd,
        mem: &GuestMemoryMmap,
        config: &VmConfig,
    ) -> Result<(), Error> {
        let Some(vsock) = &config.vsock else {
            return Ok(());
        };
        let device = Vsock::new(vsock)?;
        self.attach_virtio(vm, mem, Arc::new(Mutex::new(device)))
    }

    /// Puts a virtio device on the next MMIO window and IRQ.
    fn attach_virtio<D>(
        &mut self,
        vm: &VmFd,
        mem: &GuestMemoryMmap,
        device: Arc<Mutex<D>>,
    ) -> Result<(), Error>
    where
        D: VirtioDevice + MutEventSubscriber + 'static,
    {
        let index = self.cmdline_devices.len();
        let base = VIRTIO_MMIO_START + index as u64 * VIRTIO_MMIO_SIZE;
        let irq = VIRTIO_IRQ_START + index as u32;
        let line = IrqLine::new().map_err(wiring("create a virtio IRQ"))?;
        vm.register_irqfd(line.evt(), irq)
            .map_err(|e| wiring("register a virtio irqfd")(e.into()))?;
        let notify = IoEventAddress::Mmio(base + QUEUE_NOTIFY_OFFSET);
        for (queue, evt) in (0u32..).zip(bus::lock(&device).queue_evts()) {
            vm.register_ioevent(evt, &notify, queue)
                .map_err(|e| wiring("register a queue ioeventfd")(e.into()))?;
        }
        let transport = MmioTransport::new(device.clone(), mem.clone(), VirtioInterrupt::new(line));
        self.mmio
            .insert(Arc::new(Mutex::new(transport)), base, VIRTIO_MMIO_SIZE)?;
        self.subscribers.push(device);
        self.cmdline_devices.push((base, irq));
        Ok(())
    }

    /// The event loop with every device's subscriber, and one that wakes it on stop.
    fn event_loop(&mut self, stop: &Arc<Stop>) -> Result<EventManager<Subscriber>, Error> {
        let mut manager = EventManager::<Subscriber>::new().map_err(Error::EventLoop)?;
        manager.add_subscriber(Arc::new(Mutex::new(StopWatcher { stop: stop.clone() })));
        for subscriber in self.subscribers.drain(..) {
            manager.add_subscriber(subscriber);
        }
        Ok(manager)
    }
}

/// Turns the i8042 reset line into the end of the VM.
struct ResetWatcher {
    reset_evt: EventFd,
    stop: Arc<Stop>,
}

impl MutEventSubscriber for ResetWatcher {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.reset_evt, EventSet::IN)) {
            log::error!("cannot watch the guest's reset line: {e:?}");
        }
    }

    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        let _ = self.reset_evt.read();
        self.stop.stop(StopReason::Outcome(VmOutcome::GuestReset));
    }
}

/// Wakes the event loop when anyone stops the VM.
struct StopWatcher {
    stop: Arc<Stop>,
}

impl MutEventSubscriber for StopWatcher {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(self.stop.evt(), EventSet::IN)) {
            log::error!("cannot watch the VM's stop switch: {e:?}");
        }
    }

    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        let _ = self.stop.evt().read();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pvm_host_is_refused_for_a_linux_guest() {
        assert!(matches!(
            check_host(KvmKind::Pvm, false),
            Err(Error::PvmHost)
        ));
    }

    #[test]
    fn a_pvm_host_is_accepted_for_a_bare_guest() {
        assert!(check_host(KvmKind::Pvm, true).is_ok());
    }

    #[test]
    fn a_bare_guest_still_needs_dev_kvm() {
        assert!(matches!(
            check_host(KvmKind::Missing, true),
            Err(Error::NoKvm)
        ));
    }
}
