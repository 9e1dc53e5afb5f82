//! vCPUs: creation, boot configuration, and the thread that runs each one.
//!
//! A vCPU thread enters the guest with `KVM_RUN` and dispatches each exit: port and MMIO
//! accesses to the buses, resets and shutdowns to the VM's [`Stop`] switch. To stop a vCPU that
//! is inside the guest, [`kick`] sends it a real-time signal whose handler does nothing: the
//! signal alone makes `KVM_RUN` return `EINTR`, and the loop then sees the stop flag.

use std::sync::{Arc, Once};
use std::thread::JoinHandle;

use kvm_bindings::{CpuId, KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN};
use kvm_ioctls::{VcpuExit, VcpuFd, VmFd};
use vm_memory::{GuestAddress, GuestMemoryMmap};
use vmm_sys_util::signal::{register_signal_handler, Killable, SIGRTMIN};

use crate::arch::x86_64::{cpuid, regs};
use crate::devices::bus::Bus;
use crate::stop::{Stop, StopReason, VcpuFault, VmOutcome};
use crate::timeline::{Phase, Timeline};

/// Why a vCPU could not be created or started.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// KVM refused the vCPU.
    #[error("cannot create vCPU {index}")]
    Create {
        /// The vCPU.
        index: u8,
        /// Why.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// KVM refused the vCPU's CPUID.
    #[error("cannot set the CPUID of vCPU {index}")]
    Cpuid {
        /// The vCPU.
        index: u8,
        /// Why.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// The boot registers could not be set.
    #[error("cannot set up the registers of vCPU {index}")]
    Registers {
        /// The vCPU.
        index: u8,
        /// Why.
        #[source]
        source: regs::Error,
    },
    /// The kick signal handler could not be installed.
    #[error("cannot install the vCPU kick signal handler")]
    SignalHandler(#[source] vmm_sys_util::errno::Error),
    /// The thread could not be spawned.
    #[error("cannot start the thread of vCPU {index}")]
    Spawn {
        /// The vCPU.
        index: u8,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Creates vCPU `index` of `vcpus` and sets its CPUID, MSRs, FPU and LAPIC. The boot vCPU (0)
/// also gets its entry registers.
pub fn create(
    vm: &VmFd,
    supported_cpuid: &CpuId,
    index: u8,
    vcpus: u8,
    mem: &GuestMemoryMmap,
    entry: GuestAddress,
) -> Result<VcpuFd, Error> {
    let fd = vm
        .create_vcpu(u64::from(index))
        .map_err(|source| Error::Create { index, source })?;
    let mut vcpu_cpuid = supported_cpuid.clone();
    cpuid::patch(&mut vcpu_cpuid, index, vcpus);
    fd.set_cpuid2(&vcpu_cpuid)
        .map_err(|source| Error::Cpuid { index, source })?;

    let registers = |source| Error::Registers { index, source };
    regs::setup_msrs(&fd).map_err(registers)?;
    regs::setup_fpu(&fd).map_err(registers)?;
    regs::setup_lint(&fd).map_err(registers)?;
    if index == 0 {
        regs::setup_pvh_boot_vcpu(&fd, mem, entry).map_err(registers)?;
    }
    Ok(fd)
}

/// What a vCPU thread shares with the rest of the VMM.
#[derive(Debug, Clone)]
pub struct VcpuContext {
    /// Port I/O bus.
    pub pio: Arc<Bus>,
    /// MMIO bus.
    pub mmio: Arc<Bus>,
    /// The VM's stop switch.
    pub stop: Arc<Stop>,
    /// Boot phases.
    pub timeline: Arc<Timeline>,
}

/// Starts the thread of vCPU `index`.
pub fn spawn(index: u8, fd: VcpuFd, ctx: VcpuContext) -> Result<JoinHandle<()>, Error> {
    install_kick_handler()?;
    std::thread::Builder::new()
        .name(format!("vcpu{index}"))
        .stack_size(crate::THREAD_STACK_SIZE)
        .spawn(move || run(index, fd, &ctx))
        .map_err(|source| Error::Spawn { index, source })
}

/// Interrupts a vCPU thread's `KVM_RUN` so that it notices the stop flag.
pub fn kick(thread: &JoinHandle<()>) {
    // A thread that already ended cannot be signalled; that is fine.
    let _ = thread.kill(SIGRTMIN());
}

fn install_kick_handler() -> Result<(), Error> {
    static INSTALL: Once = Once::new();
    let mut result = Ok(());
    INSTALL.call_once(|| {
        extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}
        result = register_signal_handler(SIGRTMIN(), on_kick).map_err(Error::SignalHandler);
    });
    result
}

fn run(index: u8, mut fd: VcpuFd, ctx: &VcpuContext) {
    let mut entered = false;
    while !ctx.stop.is_stopped() {
        if index == 0 && !entered {
            ctx.timeline.mark(Phase::KernelEntry);
            entered = true;
        }
        let exit = fd.run();
        if let Some(reason) = handle_exit(index, exit, ctx) {
            ctx.stop.stop(reason);
            break;
        }
    }
}

/// Handles one exit; returns why the VM must stop, if it must.
fn handle_exit(
    index: u8,
    exit: Result<VcpuExit<'_>, kvm_ioctls::Error>,
    ctx: &VcpuContext,
) -> Option<StopReason> {
    let fault = |fault| Some(StopReason::Fault(fault));
    match exit {
        Ok(VcpuExit::IoIn(port, data)) => {
            if !ctx.pio.read(u64::from(port), data) {
                // Nothing decodes this port: the bus floats high, as on a PC.
                data.fill(0xff);
            }
            None
        }
        Ok(VcpuExit::IoOut(port, data)) => {
            ctx.pio.write(u64::from(port), data);
            None
        }
        Ok(VcpuExit::MmioRead(addr, data)) => {
            if !ctx.mmio.read(addr, data) {
                data.fill(0);
            }
            None
        }
        Ok(VcpuExit::MmioWrite(addr, data)) => {
            ctx.mmio.write(addr, data);
            None
        }
        // With the in-kernel LAPIC, HLT stays in KVM; these mean nothing to do.
        Ok(VcpuExit::Hlt | VcpuExit::IrqWindowOpen | VcpuExit::Intr) => None,
        Ok(VcpuExit::Shutdown) => Some(StopReason::Outcome(VmOutcome::GuestShutdown)),
        Ok(VcpuExit::SystemEvent(kind, _)) => match kind {
            KVM_SYSTEM_EVENT_RESET => Some(StopReason::Outcome(VmOutcome::GuestReset)),
            KVM_SYSTEM_EVENT_SHUTDOWN => Some(StopReason::Outcome(VmOutcome::GuestShutdown)),
            other => fault(VcpuFault::UnexpectedExit {
                vcpu: index,
                exit: format!("system event {other}"),
            }),
        },
        Ok(VcpuExit::InternalError) => fault(VcpuFault::InternalError { vcpu: index }),
        Ok(VcpuExit::FailEntry(reason, _)) => fault(VcpuFault::FailEntry {
            vcpu: index,
            reason,
        }),
        Ok(other) => fault(VcpuFault::UnexpectedExit {
            vcpu: index,
            exit: format!("{other:?}"),
        }),
        Err(e) if matches!(e.errno(), libc::EINTR | libc::EAGAIN) => None,
        Err(e) => fault(VcpuFault::Run {
            vcpu: index,
            errno: e.errno(),
        }),
    }
}
