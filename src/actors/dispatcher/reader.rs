//! Reading the ready stream: one read at a time, for as many jobs as the
//! mailers can take (see [`super::slots::read_capacity`]).
//!
//! A failed read pauses reading, and the next reads replay this consumer's
//! own pending entries first: a read cut by a client-side timeout may still
//! have been answered by Redis, and those entries are pending for us. A
//! missing stream or group (Redis restarted empty) is recreated in place.
//!
//! An operator reads one warning when Redis cannot be reached, naming it and
//! its address, and one line when it answers again, not a line per retry;
//! the stream and group missing at the very first read are the normal first
//! start on an empty Redis, not a warning.

use std::time::Duration;

use ractor::ActorRef;

use super::event::Event;
use super::{DispatcherState, report};
use crate::actors::protocol::DispatcherMsg;
use crate::queue::{self, Entry};

/// The pause after a failed read.
const READ_RETRY: Duration = Duration::from_millis(500);

impl DispatcherState {
    pub(super) fn read(&mut self, myself: &ActorRef<DispatcherMsg>, count: usize) {
        self.reading = true;
        let queue = self.queue.clone();
        let consumer = self.consumer.clone();
        let after = self.pending_cursor.clone();
        let me = myself.clone();
        tokio::spawn(async move {
            let r = queue.read(&consumer, count, after.as_deref()).await;
            report(&me, Event::Read(r));
        });
    }

    pub(super) fn on_read(
        &mut self,
        myself: &ActorRef<DispatcherMsg>,
        result: Result<Vec<Entry>, redis::RedisError>,
    ) {
        self.reading = false;
        match result {
            Ok(entries) => {
                if let Some(since) = self.redis_down_since.take() {
                    tracing::info!(
                        redis = self.queue.address(),
                        down_s = since.elapsed().as_secs_f64().round(),
                        "Redis answers again; reading the ready stream"
                    );
                }
                self.read_once = true;
                self.redis_error = None;
                // While replaying our own pending entries, move the cursor
                // past what we got; an empty answer means none is left, and
                // new entries are read again.
                self.pending_cursor = match (&self.pending_cursor, entries.last()) {
                    (Some(_), Some(last)) => Some(last.stream_id.clone()),
                    _ => None,
                };
                if !entries.is_empty() {
                    self.claim(myself, entries);
                }
                self.pump(myself);
            }
            Err(e) => self.read_failed(myself, e),
        }
    }

    fn read_failed(&mut self, myself: &ActorRef<DispatcherMsg>, e: redis::RedisError) {
        // One read at a time, also while we pause: a read started meanwhile
        // would pile up behind the broken one on the reader connection.
        self.reading = true;
        self.pending_cursor = Some("0".to_owned());
        let missing = queue::is_missing_group(&e);
        self.redis_error = Some(e.to_string());
        if missing && !self.read_once {
            tracing::info!(
                redis = self.queue.address(),
                "creating the ready stream and its consumer group"
            );
        } else if missing {
            tracing::warn!(
                redis = self.queue.address(),
                "ready stream or group missing (Redis restarted?); recreating"
            );
        } else if self.redis_down_since.is_none() {
            self.redis_down_since = Some(std::time::Instant::now());
            tracing::warn!(
                redis = self.queue.address(),
                error = %e,
                retry_every_ms = READ_RETRY.as_millis() as u64,
                "Redis cannot be reached: reading the ready stream failed; retrying until it answers"
            );
        } else {
            tracing::debug!(redis = self.queue.address(), error = %e, "reading the ready stream failed again");
        }
        let queue = self.queue.clone();
        let me = myself.clone();
        tokio::spawn(async move {
            if missing {
                if let Err(e) = queue.ensure_group().await {
                    tracing::warn!(error = %e, "creating the consumer group failed");
                }
            } else {
                tokio::time::sleep(READ_RETRY).await;
            }
            report(&me, Event::ReadResumed);
        });
    }
}
