//! The vsock device on the event loop: queue notifications, the host listener and every host
//! socket. After each event the device moves what it can, then brings the set of watched
//! sockets in line with what the muxer wants.

use std::collections::HashSet;
use std::os::unix::io::RawFd;

use event_manager::{EventOps, Events, MutEventSubscriber};
use vmm_sys_util::epoll::EventSet;

use super::{Vsock, EVENT_QUEUE, RX_QUEUE, TX_QUEUE};
use crate::devices::virtio::VirtioDevice;

/// Event data of the listener; queue events carry their queue index.
const LISTENER: u32 = 3;
/// Event data of host sockets, told apart by fd.
const HOST_SOCKET: u32 = 4;

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
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        match events.data() {
            LISTENER => self.muxer.accept(),
            HOST_SOCKET => self.muxer.on_host_event(events.fd(), events.event_set()),
            queue => {
                // Drain the counter first: a notification that lands while we work re-arms it.
                if let Some(evt) = self.queue_evts().get(queue as usize) {
                    let _ = evt.read();
                }
            }
        }
        self.process_queues();
        self.sync_watched(ops);
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
}
