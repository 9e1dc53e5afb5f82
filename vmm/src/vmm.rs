//! A running VM and how it ends.

use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use event_manager::{EventManager, MutEventSubscriber};
use kvm_ioctls::{Kvm, VmFd};
use vm_memory::GuestMemoryMmap;

use crate::devices::legacy::SerialConsole;
use crate::reaper;
use crate::stop::{Stop, StopReason, VmOutcome};
use crate::timeline::Timeline;
use crate::vstate::{memory, vcpu};

pub use crate::builder::Error;

/// Subscribers of the VMM's event loop.
pub(crate) type Subscriber = Arc<Mutex<dyn MutEventSubscriber + Send>>;

/// A booted VM: its KVM objects, devices, event loop and vCPU threads.
pub struct Vmm {
    // Field order is drop order: vCPU threads are joined (in Drop) before the VM and its
    // memory go away.
    pub(crate) vcpu_threads: Vec<JoinHandle<()>>,
    pub(crate) event_manager: EventManager<Subscriber>,
    pub(crate) stop: Arc<Stop>,
    pub(crate) console: Arc<Mutex<SerialConsole>>,
    pub(crate) timeline: Arc<Timeline>,
    /// The VM and its memory: `None` once [`Vmm::leave_to_exit`] has left them to the exit.
    pub(crate) vm: Option<(VmFd, GuestMemoryMmap)>,
    pub(crate) _kvm: Kvm,
}

impl std::fmt::Debug for Vmm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vmm")
            .field("vcpus", &self.vcpu_threads.len())
            .finish_non_exhaustive()
    }
}

impl Vmm {
    /// Runs the event loop until the VM stops; returns how the guest ended.
    ///
    /// A vCPU fault (KVM could not run the guest) is an error; every way the guest itself can
    /// end, including a panic that resets it, is a [`VmOutcome`].
    pub fn run(&mut self) -> Result<VmOutcome, Error> {
        while !self.stop.is_stopped() {
            self.event_manager.run().map_err(Error::EventLoop)?;
        }
        match self.stop.reason() {
            Some(StopReason::Outcome(outcome)) => Ok(outcome),
            Some(StopReason::Fault(fault)) => Err(Error::Fault(fault)),
            None => unreachable!("is_stopped() is only set together with a reason"),
        }
    }

    /// A handle other threads use to talk to the running VM.
    pub fn handle(&self) -> VmHandle {
        VmHandle {
            stop: self.stop.clone(),
            console: self.console.clone(),
        }
    }

    /// The VM's boot phases.
    pub fn timeline(&self) -> &Timeline {
        &self.timeline
    }

    /// Ends the VM, leaving the kernel's part of its teardown to the exit of this process,
    /// which must come soon after.
    ///
    /// The vCPU threads and devices end here as on drop, but the KVM VM stays open and its
    /// memory mapped: destroying a VM takes the kernel about 20 ms on the PVM host. A reaper
    /// process (`reaper.rs`) holds both until this process has exited, so that work is done
    /// after the exit status is delivered rather than before it. Without a reaper the kernel
    /// does it in this process's exit.
    pub fn leave_to_exit(mut self) {
        let Some((vm, guest_memory)) = self.vm.take() else {
            return;
        };
        if let Err(e) = reaper::spawn(&[vm.as_raw_fd()]) {
            log::debug!("no reaper, the VM is torn down in this process's exit: {e}");
        }
        std::mem::forget(vm);
        std::mem::forget(guest_memory);
    }
}

/// How often a vCPU thread that has not ended yet is kicked again: long enough for it to leave
/// KVM_RUN and end, short enough not to delay the end of a VM.
const KICK_INTERVAL: Duration = Duration::from_micros(20);

impl Drop for Vmm {
    fn drop(&mut self) {
        // Stopping an already-stopped VM keeps its first reason.
        self.stop
            .stop(StopReason::Outcome(VmOutcome::GuestShutdown));
        for thread in self.vcpu_threads.drain(..) {
            // A vCPU may be inside KVM_RUN: kick it until it notices the stop flag.
            while !thread.is_finished() {
                vcpu::kick(&thread);
                std::thread::sleep(KICK_INTERVAL);
            }
            let _ = thread.join();
        }
        // The mappings outlive the VM (memory::create); their pages need not.
        if let Some((_, guest_memory)) = &self.vm {
            memory::release(guest_memory);
        }
    }
}

/// What another thread of the host may do to a running VM: type on its console, or end it.
#[derive(Clone)]
pub struct VmHandle {
    stop: Arc<Stop>,
    console: Arc<Mutex<SerialConsole>>,
}

impl std::fmt::Debug for VmHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VmHandle").finish_non_exhaustive()
    }
}

impl VmHandle {
    /// Sends bytes to the guest's serial console input; returns how many the UART took.
    pub fn console_input(&self, bytes: &[u8]) -> usize {
        self.console
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .enqueue_input(bytes)
    }

    /// Ends the VM now, whatever the guest is doing; [`Vmm::run`] returns
    /// [`VmOutcome::Killed`] unless the guest ended first.
    pub fn kill(&self) {
        self.stop.stop(StopReason::Outcome(VmOutcome::Killed));
    }
}
