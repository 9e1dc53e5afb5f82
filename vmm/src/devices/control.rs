//! The agent's control port: boot-time marker, workload start and exit status.
//!
//! The guest writes one 32-bit [`ControlEvent`] word per event. Anything else (wrong width,
//! unknown word) is counted and ignored: a hostile guest gains nothing by writing garbage.

use std::sync::Arc;

use moat_agent_protocol::{ControlEvent, CONTROL_PORT_WIDTH};

use super::bus::BusDevice;
use crate::stop::{Stop, StopReason, VmOutcome};
use crate::timeline::{Phase, Timeline};

/// The control port device.
#[derive(Debug)]
pub struct ControlPort {
    timeline: Arc<Timeline>,
    stop: Arc<Stop>,
    /// Writes that were not a valid event.
    pub invalid_writes: u64,
}

impl ControlPort {
    /// A control port that marks `timeline` and ends the VM through `stop`.
    pub fn new(timeline: Arc<Timeline>, stop: Arc<Stop>) -> Self {
        Self {
            timeline,
            stop,
            invalid_writes: 0,
        }
    }

    fn handle(&mut self, event: ControlEvent) {
        match event {
            ControlEvent::AgentReady => self.timeline.mark(Phase::AgentReady),
            ControlEvent::WorkloadStarted => self.timeline.mark(Phase::WorkloadStarted),
            ControlEvent::WorkloadExited(status) => {
                self.timeline.mark(Phase::WorkloadExited);
                self.stop
                    .stop(StopReason::Outcome(VmOutcome::WorkloadExited(status)));
            }
            ControlEvent::AgentFailed(failure) => {
                self.stop
                    .stop(StopReason::Outcome(VmOutcome::AgentFailed(failure)));
            }
        }
    }
}

impl BusDevice for ControlPort {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let event = <[u8; CONTROL_PORT_WIDTH]>::try_from(data)
            .ok()
            .filter(|_| offset == 0)
            .and_then(|word| ControlEvent::decode(u32::from_le_bytes(word)));
        match event {
            Some(event) => self.handle(event),
            None => self.invalid_writes += 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn port() -> (ControlPort, Arc<Stop>, Arc<Timeline>) {
        let stop = Arc::new(Stop::new().unwrap());
        let timeline = Arc::new(Timeline::new(Instant::now()));
        (
            ControlPort::new(timeline.clone(), stop.clone()),
            stop,
            timeline,
        )
    }

    #[test]
    fn the_marker_is_recorded_without_stopping() {
        let (mut port, stop, timeline) = port();
        port.write(0, &ControlEvent::AgentReady.encode().to_le_bytes());
        assert!(timeline.get(Phase::AgentReady).is_some());
        assert!(!stop.is_stopped());
    }

    #[test]
    fn the_exit_status_stops_the_vm() {
        let (mut port, stop, _) = port();
        port.write(0, &ControlEvent::WorkloadExited(7).encode().to_le_bytes());
        assert_eq!(
            stop.reason(),
            Some(StopReason::Outcome(VmOutcome::WorkloadExited(7)))
        );
    }

    #[test]
    fn garbage_is_counted_and_ignored() {
        let (mut port, stop, _) = port();
        port.write(0, &[3]);
        port.write(1, &ControlEvent::WorkloadExited(1).encode().to_le_bytes());
        port.write(0, &u32::MAX.to_le_bytes());
        assert_eq!(port.invalid_writes, 3);
        assert!(!stop.is_stopped());
    }
}
