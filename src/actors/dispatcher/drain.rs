//! Shutdown: the dispatcher stops reading and handing out jobs, gives the
//! jobs it claimed but did not start back to the queue, lets the sends in
//! flight finish and be recorded, and answers once they are, or at the
//! deadline with `false`.

use std::time::Duration;

use ractor::{ActorRef, RpcReplyPort};

use super::DispatcherState;
use super::event::Event;
use crate::actors::protocol::DispatcherMsg;

impl DispatcherState {
    pub(super) fn start_drain(
        &mut self,
        myself: &ActorRef<DispatcherMsg>,
        deadline: Duration,
        reply: RpcReplyPort<bool>,
    ) {
        self.stopped = true;
        self.draining = Some(reply);
        // Jobs claimed but not started go back to the queue now, not when
        // their leases end.
        self.release_waiting(myself);
        myself.send_after(deadline, || DispatcherMsg::Own(Event::DrainDeadline));
        self.check_drained();
    }

    pub(super) fn drain_deadline(&mut self) {
        if let Some(reply) = self.draining.take() {
            let open: Vec<String> = self
                .slots
                .iter()
                .flat_map(|s| s.job.iter().chain(&s.next))
                .map(|f| f.job.uuid.to_string())
                .collect();
            tracing::warn!(
                ?open,
                "sends still in flight at the shutdown deadline; their leases will expire and they will be retried"
            );
            let _ = reply.send(false);
        }
    }

    /// Answers the drain once nothing is in flight or waiting to be written.
    pub(super) fn check_drained(&mut self) {
        let idle = self.in_flight() == 0
            && self.recording == 0
            && self.to_record.is_empty()
            && self.claiming == 0
            && self.releasing == 0;
        if idle && let Some(reply) = self.draining.take() {
            let _ = reply.send(true);
        }
    }
}
