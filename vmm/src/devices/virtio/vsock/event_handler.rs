//! The vsock device on the event loop: queue notifications, the host listener and every host
//! socket. After each event the device moves what it can, then brings the set of watched
//! sockets in line with what the muxer wants.

use std::collections::HashSet;
use std::os::unix::io::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

use event_manager::{EventOps, Events, MutEventSubscriber};
use vmm_sys_util::epoll::EventSet;

use super::{Vsock, EVENT_QUEUE, RX_QUEUE, TX_QUEUE};
use crate::devices::virtio::VirtioDevice;

/// Event data of the listener; queue events carry their queue index.
const LISTENER: u32 = 3;
/// Event data of host sockets, told apart by fd.
const HOST_SOCKET: u32 = 4;
/// Event data of the handshake timer.
const TIMER: u32 = 5;
/// The soonest a timer is armed for: a zero duration would disarm it.
const MIN_TIMER: Duration = Duration::from_millis(1);

impl MutEventSubscriber for Vsock {
    fn init(&mut self, ops: &mut EventOps) {
        for queue in [RX_QUEUE, TX_QUEUE, EVENT_QUEUE] {
            let evt = &self.queue_evts()[queue];
            if let Err(e) = ops.add(Events::with_data(evt, queue as u32, EventSet::IN)) {
                log::error!("virtio-vsock cannot watch queue {queue}: {e:?}");
            }
        }
        let listener = Events::with_data_raw(self.muxer.listener_fd(), LISTENER, EventSet::IN);
        if let Err(e) = ops.add(listener) {
            log::error!("virtio-vsock cannot watch its host socket: {e:?}");
        }
        let timer = Events::with_data_raw(self.handshake_timer.as_raw_fd(), TIMER, EventSet::IN);
        if let Err(e) = ops.add(timer) {
            log::error!("virtio-vsock cannot watch its timer: {e:?}");
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        match events.data() {
            LISTENER => self.muxer.accept(),
            HOST_SOCKET => self.muxer.on_host_event(events.fd(), events.event_set()),
            TIMER => {
                let _ = self.handshake_timer.wait();
                self.timer_deadline = None;
                self.muxer.expire_handshakes(Instant::now());
            }
            queue => {
                // Drain the counter first: a notification that lands while we work re-arms it.
                if let Some(evt) = self.queue_evts().get(queue as usize) {
                    let _ = evt.read();
                }
            }
        }
        self.process_queues();
        self.sync_watched(ops);
        self.sync_timer();
    }
}

impl Vsock {
    /// Adds, changes and removes host sockets in the event loop to match the muxer's interest,
    /// then closes the sockets it dropped.
    fn sync_watched(&mut self, ops: &mut EventOps) {
        let wanted = self.muxer.interest();
        let wanted_fds: HashSet<RawFd> = wanted.iter().map(|&(fd, _)| fd).collect();
        let stale: Vec<RawFd> = self
            .watched
            .keys()
            .filter(|fd| !wanted_fds.contains(fd))
            .copied()
            .collect();
        for fd in stale {
            self.watched.remove(&fd);
            if let Err(e) = ops.remove(Events::empty_raw(fd)) {
                log::warn!("virtio-vsock cannot stop watching a host socket: {e:?}");
            }
        }
        for (fd, set) in wanted {
            let events = Events::with_data_raw(fd, HOST_SOCKET, set);
            let result = match self.watched.insert(fd, set) {
                None => ops.add(events),
                Some(old) if old != set => ops.modify(events),
                Some(_) => Ok(()),
            };
            if let Err(e) = result {
                log::warn!("virtio-vsock cannot watch a host socket: {e:?}");
            }
        }
        self.muxer.close_retired();
    }

    /// Arms the timer for the oldest pending handshake, or disarms it; a syscall only when the
    /// deadline changed.
    fn sync_timer(&mut self) {
        let deadline = self.muxer.handshake_deadline();
        if deadline == self.timer_deadline {
            return;
        }
        let result = match deadline {
            Some(at) => {
                let wait = at.saturating_duration_since(Instant::now()).max(MIN_TIMER);
                self.handshake_timer.reset(wait, None)
            }
            None => self.handshake_timer.clear(),
        };
        match result {
            Ok(()) => self.timer_deadline = deadline,
            Err(e) => log::warn!("virtio-vsock cannot set its handshake timer: {e}"),
        }
    }
}
