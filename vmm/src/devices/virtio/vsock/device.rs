//! The virtio-vsock device: its configuration space, queues and activation. Packet work is the
//! muxer's.

use std::collections::HashMap;
use std::io;
use std::os::unix::io::RawFd;
use std::path::PathBuf;

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::timerfd::TimerFd;

use super::metrics::VsockMetrics;
use super::muxer::{HostListener, Muxer};
use super::{MIN_GUEST_CID, QUEUE_SIZE, TYPE_VSOCK};
use crate::config::VsockConfig;
use crate::devices::virtio::{
    read_config_bytes, ActivateError, VirtioDevice, VirtioInterrupt, INTERRUPT_USED_RING,
    VIRTIO_F_VERSION_1,
};

/// Why a vsock device could not be created.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The guest CID is reserved.
    #[error("guest CID {0} is reserved: use {MIN_GUEST_CID} or more")]
    ReservedCid(u32),
    /// The host socket could not be created.
    #[error("cannot listen on vsock socket {path} (if no VM uses it, remove it)")]
    Bind {
        /// The socket's path.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A queue eventfd could not be created.
    #[error("cannot create the vsock device's queue eventfds")]
    EventFd(#[source] io::Error),
    /// The handshake timer could not be created.
    #[error("cannot create the vsock device's timer")]
    Timer(#[source] io::Error),
}

/// Refuses the reserved context ids 0 to 2.
pub fn check_cid(guest_cid: u32) -> Result<(), Error> {
    if guest_cid < MIN_GUEST_CID {
        return Err(Error::ReservedCid(guest_cid));
    }
    Ok(())
}

/// State that exists once the driver started the device.
#[derive(Debug)]
struct Active {
    mem: GuestMemoryMmap,
    queues: [Queue; 3],
    interrupt: VirtioInterrupt,
}

/// A virtio-vsock device.
#[derive(Debug)]
pub struct Vsock {
    config: [u8; 8],
    acked_features: u64,
    queue_evts: [EventFd; 3],
    active: Option<Active>,
    pub(super) muxer: Muxer,
    /// Host sockets the event loop watches, and for what.
    pub(super) watched: HashMap<RawFd, EventSet>,
    /// Fires when the oldest host client owing its `CONNECT` line runs out of time.
    pub(super) handshake_timer: TimerFd,
    /// What `handshake_timer` is armed for, if anything.
    pub(super) timer_deadline: Option<std::time::Instant>,
}

impl Vsock {
    /// A device for the guest `config.guest_cid`, listening for host clients at
    /// `config.uds_path`. The socket file is removed when the device is dropped.
    pub fn new(config: &VsockConfig) -> Result<Self, Error> {
        check_cid(config.guest_cid)?;
        let listener = HostListener::bind(&config.uds_path).map_err(|source| Error::Bind {
            path: config.uds_path.clone(),
            source,
        })?;
        let evt = || EventFd::new(libc::EFD_NONBLOCK).map_err(Error::EventFd);
        let guest_cid = u64::from(config.guest_cid);
        Ok(Self {
            // Configuration space (§5.10.4): the 64-bit guest_cid.
            config: guest_cid.to_le_bytes(),
            acked_features: 0,
            queue_evts: [evt()?, evt()?, evt()?],
            active: None,
            muxer: Muxer::new(guest_cid, listener),
            watched: HashMap::new(),
            handshake_timer: TimerFd::new()
                .map_err(|e| Error::Timer(io::Error::from_raw_os_error(e.errno())))?,
            timer_deadline: None,
        })
    }

    /// What the device did.
    pub fn metrics(&self) -> VsockMetrics {
        self.muxer.metrics
    }

    /// Moves packets both ways, then interrupts the guest if it wants to know.
    pub fn process_queues(&mut self) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        let [rx, tx, _] = &mut active.queues;
        let mut tx_used = self.muxer.process_tx(&active.mem, tx);
        let mut rx_used = self.muxer.process_rx(&active.mem, rx);
        // RX buffers made room for the control packets a stalled TX queue was waiting on.
        if self.muxer.tx_stalled() || tx_used {
            tx_used |= self.muxer.process_tx(&active.mem, tx);
            rx_used |= self.muxer.process_rx(&active.mem, rx);
        }
        for (used, queue) in [(rx_used, rx), (tx_used, tx)] {
            if used && queue.needs_notification(&active.mem).unwrap_or(true) {
                if let Err(e) = active.interrupt.trigger(INTERRUPT_USED_RING) {
                    log::warn!("virtio-vsock cannot interrupt the guest: {e}");
                }
            }
        }
    }
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        TYPE_VSOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE; 3]
    }

    fn avail_features(&self) -> u64 {
        VIRTIO_F_VERSION_1
    }

    fn set_acked_features(&mut self, features: u64) {
        self.acked_features = features & VIRTIO_F_VERSION_1;
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {
        // The configuration space is read-only (§5.10.4).
    }

    fn queue_evts(&self) -> &[EventFd] {
        &self.queue_evts
    }

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        queues: Vec<Queue>,
        interrupt: VirtioInterrupt,
    ) -> Result<(), ActivateError> {
        let queues: [Queue; 3] =
            queues
                .try_into()
                .map_err(|q: Vec<Queue>| ActivateError::QueueCount {
                    expected: 3,
                    given: q.len(),
                })?;
        self.active = Some(Active {
            mem,
            queues,
            interrupt,
        });
        // Host clients that connected before the driver came up get their REQUEST now, or as
        // soon as the driver fills the RX queue and notifies it.
        Ok(())
    }

    fn reset(&mut self) {
        self.active = None;
        self.acked_features = 0;
        self.muxer.reset();
    }
}
