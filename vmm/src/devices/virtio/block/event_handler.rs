//! The block device on the event loop: a queue notification means "process the queue".

use event_manager::{EventOps, Events, MutEventSubscriber};
use vmm_sys_util::epoll::EventSet;

use super::Block;
use crate::devices::virtio::VirtioDevice;

impl MutEventSubscriber for Block {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.queue_evts()[0], EventSet::IN)) {
            log::error!("virtio-blk cannot watch its queue: {e:?}");
        }
    }

    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        // Drain the counter first: a notification that lands while we work re-arms the fd.
        let _ = self.queue_evts()[0].read();
        self.process_queue();
    }
}
