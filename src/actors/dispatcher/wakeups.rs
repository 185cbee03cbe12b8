//! Wake-ups for freshly committed messages, batched: while one batch is on
//! its way to Redis, new ones gather for the next, so a burst of accepts
//! costs a few pipelined round trips rather than one per message. A push
//! that fails loses nothing: the message is in PostgreSQL, and the
//! reconciler re-feeds it.
//!
//! A message accepted with a `send_at` ahead goes to the retry schedule
//! instead, due at that time; if that write is lost, the reconciler re-feeds
//! it from PostgreSQL once it is due.

use ractor::ActorRef;

use super::event::Event;
use super::{DispatcherState, report};
use crate::actors::protocol::DispatcherMsg;
use crate::domain::MessageKind;

impl DispatcherState {
    pub(super) fn enqueue(
        &mut self,
        myself: &ActorRef<DispatcherMsg>,
        kind: MessageKind,
        ids: &[i64],
    ) {
        self.to_enqueue.extend(ids.iter().map(|&id| (kind, id)));
        self.flush(myself);
    }

    /// Schedules a message accepted with a `send_at` ahead, in the same
    /// batches as the wake-ups.
    pub(super) fn schedule(
        &mut self,
        myself: &ActorRef<DispatcherMsg>,
        kind: MessageKind,
        id: i64,
        due_ms: i64,
    ) {
        self.to_schedule.push((kind, id, due_ms));
        self.flush(myself);
    }

    /// Sends the batch of fresh wake-ups (one pipelined round trip) and of
    /// scheduled sends (one command).
    pub(super) fn flush(&mut self, myself: &ActorRef<DispatcherMsg>) {
        if self.flushing || (self.to_enqueue.is_empty() && self.to_schedule.is_empty()) {
            return;
        }
        self.flushing = true;
        let batch = std::mem::take(&mut self.to_enqueue);
        let scheduled = std::mem::take(&mut self.to_schedule);
        let queue = self.queue.clone();
        // While Redis is known to be down, the reader has said so once.
        let known_down = self.redis_down_since.is_some();
        let me = myself.clone();
        tokio::spawn(async move {
            if let Err(e) = queue.push(&batch).await {
                if known_down {
                    tracing::debug!(error = %e, count = batch.len(), "pushing wake-ups to Redis failed");
                } else {
                    tracing::warn!(redis = queue.address(), error = %e, count = batch.len(), "pushing wake-ups to Redis failed; the reconciler will re-feed them");
                }
            }
            if let Err(e) = queue.schedule(&scheduled).await {
                tracing::warn!(redis = queue.address(), error = %e, count = scheduled.len(), "scheduling send_at times in Redis failed; the reconciler will re-feed them when due");
            }
            report(&me, Event::Flushed);
        });
    }
}
