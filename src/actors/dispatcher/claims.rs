//! Claiming messages in PostgreSQL and handing the claimed jobs to mailers.
//!
//! A claim is a conditional update with a fresh lease token: of several
//! dispatchers, exactly one gets each message. What comes back waits in
//! `waiting` until a mailer is idle; a message the claim did not return
//! (sent already, claimed elsewhere, not due, a duplicate wake-up) only has
//! its stream entry acknowledged.

use std::time::Instant;

use ractor::ActorRef;

use super::event::Event;
use super::slots::{self, InFlight};
use super::{DispatcherState, PERSISTENCE_CALL, report};
use crate::actors::persistence::PersistenceMsg;
use crate::actors::protocol::{DispatcherMsg, MailerMsg};
use crate::domain::MessageKind;
use crate::domain::delivery::MailJob;
use crate::queue::Entry;

impl DispatcherState {
    pub(super) fn claim(&mut self, myself: &ActorRef<DispatcherMsg>, entries: Vec<Entry>) {
        self.claiming += entries.len();
        let jobs: Vec<(MessageKind, i64)> = entries.iter().filter_map(|e| e.job).collect();
        let persistence = self.registry.persistence();
        let lease = slots::lease_duration(&self.config);
        let metrics = self.metrics.clone();
        let me = myself.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let result = match persistence {
                None => Err("persistence is restarting".to_owned()),
                Some(p) => match ractor::call_t!(
                    p,
                    PersistenceMsg::Claim,
                    PERSISTENCE_CALL.as_millis() as u64,
                    jobs,
                    uuid::Uuid::new_v4(),
                    lease
                ) {
                    Ok(Ok(jobs)) => Ok(jobs),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(e) => Err(e.to_string()),
                },
            };
            metrics
                .claim_duration
                .observe(started.elapsed().as_secs_f64());
            report(&me, Event::Claimed(entries, result));
        });
    }

    pub(super) fn claimed(&mut self, entries: Vec<Entry>, result: Result<Vec<MailJob>, String>) {
        let mut jobs = match result {
            Ok(jobs) => jobs,
            Err(e) => {
                // The messages stay queued in PostgreSQL; the reconciler
                // re-feeds them once the database answers again.
                tracing::warn!(error = %e, "claiming jobs failed");
                Vec::new()
            }
        };
        let mut done = Vec::new();
        for entry in entries {
            let pos = entry
                .job
                .and_then(|(kind, id)| jobs.iter().position(|j| j.kind == kind && j.id == id));
            match pos {
                Some(p) => {
                    let job = jobs.swap_remove(p);
                    self.waiting
                        .push_back(InFlight::new(Some(entry.stream_id), job));
                }
                None => done.push(entry.stream_id),
            }
        }
        self.ack_later(done);
    }

    /// Waiting jobs to idle mailers, oldest first.
    pub(super) fn hand_out(&mut self, myself: &ActorRef<DispatcherMsg>) {
        let window = slots::send_window(&self.config, PERSISTENCE_CALL);
        let lease = slots::lease_duration(&self.config);
        while !self.waiting.is_empty() {
            let Some(i) = self.slots.iter().position(slots::MailerSlot::idle) else {
                break;
            };
            let flight = self.waiting.pop_front().expect("not empty");
            // A job that waited so long that its lease could run out before
            // its send is recorded must not be sent: the reconciler may hand
            // it to someone else meanwhile. It is dropped here; its lease
            // expires and the message is retried like any crash.
            if !slots::still_sendable(flight.claimed, window, lease) {
                tracing::warn!(uuid = %flight.job.uuid, "a claimed job waited too long for a mailer; leaving it to its lease");
                self.ack_later(flight.entry.into_iter().collect());
                continue;
            }
            self.assign(myself, i, flight);
        }
    }

    fn assign(&mut self, myself: &ActorRef<DispatcherMsg>, i: usize, flight: InFlight) {
        match self.registry.mailer(i) {
            Some(mailer)
                if mailer
                    .cast(MailerMsg::Deliver(Box::new(flight.job.clone())))
                    .is_ok() =>
            {
                self.slots[i].job = Some(InFlight {
                    started: tokio::time::Instant::now(),
                    ..flight
                });
            }
            _ => {
                // The mailer died between its last report and now.
                self.slots[i].up = false;
                self.waiting.push_front(flight);
                report(myself, Event::Tick);
            }
        }
    }
}
