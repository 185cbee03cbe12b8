//! Claiming messages in PostgreSQL, handing the claimed jobs to mailers, and
//! giving back the claims that will not be sent.
//!
//! A claim is a conditional update with a fresh lease token: of several
//! dispatchers, exactly one gets each message. What comes back waits in
//! `waiting` until a mailer is idle; a message the claim did not return
//! (sent already, claimed elsewhere, not due, a duplicate wake-up) only has
//! its stream entry acknowledged.
//!
//! A claim that will not be sent goes back to `queued` at once, fenced by
//! its lease token, rather than waiting out its lease and being recorded as
//! a crash that never happened: a claim whose answer was lost (it may have
//! committed anyway), a job that waited too long for a mailer, and jobs
//! not yet started when the dispatcher drains.

use std::time::{Duration, Instant};

use ractor::ActorRef;
use uuid::Uuid;

use super::event::Event;
use super::slots::{self, InFlight};
use super::{DispatcherState, PERSISTENCE_CALL, ask, report};
use crate::actors::persistence::PersistenceMsg;
use crate::actors::protocol::{DispatcherMsg, MailerMsg};
use crate::actors::registry::Registry;
use crate::domain::MessageKind;
use crate::domain::delivery::{ClaimRef, MailJob};
use crate::queue::Entry;

/// A claim whose answer was lost is released again after this long: the
/// server may still commit a pipeline whose connection was dropped, after
/// the first release ran. Longer than the statement timeout.
const RELEASE_AGAIN: Duration = Duration::from_secs(5);
/// The pause before a failed release is tried again. Its lease is the
/// fallback: a release that never succeeds costs a wait, not a mail.
const RELEASE_RETRY: Duration = Duration::from_millis(500);
/// Releases tried at most this often before the lease is left to do it.
const RELEASE_TRIES: u32 = 20;

/// Why claimed jobs go back to `queued` unsent; named in the log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReleaseReason {
    /// The claim's answer did not arrive (it may have committed).
    ClaimLost,
    /// It waited for a mailer until its lease could run out mid-send.
    WaitedTooLong,
    /// The dispatcher is draining: nothing new is started.
    Draining,
    /// The dispatcher that claimed them stopped (it crashed).
    Orphaned,
}

impl ReleaseReason {
    fn as_str(self) -> &'static str {
        match self {
            Self::ClaimLost => "the claim's answer was lost",
            Self::WaitedTooLong => "it waited too long for a mailer",
            Self::Draining => "shutting down before it was started",
            Self::Orphaned => "the dispatcher that claimed it stopped",
        }
    }
}

impl DispatcherState {
    pub(super) fn claim(&mut self, myself: &ActorRef<DispatcherMsg>, entries: Vec<Entry>) {
        self.claiming += entries.len();
        let jobs: Vec<(MessageKind, i64)> = entries.iter().filter_map(|e| e.job).collect();
        let persistence = self.registry.persistence();
        let lease = slots::lease_duration(&self.config);
        let token = Uuid::new_v4();
        // Owed from now on: if this dispatcher dies before the answer, its
        // successor gives back whatever the claim took.
        self.ledger.hold(jobs.iter().map(|&(kind, id)| ClaimRef {
            kind,
            id,
            lease_token: token,
        }));
        let metrics = self.metrics.clone();
        let me = myself.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let result = ask(persistence, |reply| {
                PersistenceMsg::Claim(jobs, token, lease, reply)
            })
            .await;
            metrics
                .claim_duration
                .observe(started.elapsed().as_secs_f64());
            report(&me, Event::Claimed(entries, token, result));
        });
    }

    pub(super) fn claimed(
        &mut self,
        myself: &ActorRef<DispatcherMsg>,
        entries: Vec<Entry>,
        token: Uuid,
        result: Result<Vec<MailJob>, String>,
    ) {
        let mut jobs = match result {
            Ok(jobs) => jobs,
            Err(e) => {
                // Timed out or cut off, the claim may still have committed:
                // give back whatever it took under this token. The messages
                // are due, and the reconciler re-feeds them.
                tracing::warn!(error = %e, "claiming jobs failed; releasing what the claim may have taken");
                let refs: Vec<ClaimRef> = entries
                    .iter()
                    .filter_map(|e| e.job)
                    .map(|(kind, id)| ClaimRef {
                        kind,
                        id,
                        lease_token: token,
                    })
                    .collect();
                self.release(myself, refs.clone(), ReleaseReason::ClaimLost);
                self.release_later(refs);
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
                None => {
                    if let Some((kind, id)) = entry.job {
                        self.ledger.settle(&ClaimRef {
                            kind,
                            id,
                            lease_token: token,
                        });
                    }
                    done.push(entry.stream_id);
                }
            }
        }
        self.ack_later(done);
        if self.stopped {
            self.release_waiting(myself);
        }
    }

    /// Waiting jobs to idle mailers, oldest first.
    pub(super) fn hand_out(&mut self, myself: &ActorRef<DispatcherMsg>) {
        if self.stopped {
            self.release_waiting(myself);
            return;
        }
        let window = slots::send_window(&self.config, PERSISTENCE_CALL);
        let lease = slots::lease_duration(&self.config);
        let mut too_late = Vec::new();
        while !self.waiting.is_empty() {
            // Idle mailers first; then one job queued behind each send.
            let slot = match self.slots.iter().position(slots::MailerSlot::idle) {
                Some(i) => Some((i, false)),
                None => (self.slots.iter())
                    .position(slots::MailerSlot::can_queue)
                    .map(|i| (i, true)),
            };
            let Some((i, queued)) = slot else {
                break;
            };
            let flight = self.waiting.pop_front().expect("not empty");
            // A job that waited so long that its lease could run out before
            // its send is recorded must not be sent: the reconciler may hand
            // it to someone else meanwhile.
            let window = match queued {
                true => window + self.config.smtp.timeout,
                false => window,
            };
            if !slots::still_sendable(flight.claimed, window, lease) {
                too_late.push(flight);
                continue;
            }
            self.assign(myself, i, flight, queued);
        }
        if !too_late.is_empty() {
            let refs = too_late.iter().map(|f| f.job.claim_ref()).collect();
            self.ack_later(too_late.into_iter().filter_map(|f| f.entry).collect());
            self.release(myself, refs, ReleaseReason::WaitedTooLong);
        }
    }

    /// Every job claimed and not yet handed out goes back to `queued`.
    pub(super) fn release_waiting(&mut self, myself: &ActorRef<DispatcherMsg>) {
        if self.waiting.is_empty() {
            return;
        }
        let waiting: Vec<InFlight> = self.waiting.drain(..).collect();
        let refs = waiting.iter().map(|f| f.job.claim_ref()).collect();
        self.ack_later(waiting.into_iter().filter_map(|f| f.entry).collect());
        self.release(myself, refs, ReleaseReason::Draining);
    }

    /// Hands `flight` to mailer `i`: to send now, or (`queued`) to start
    /// once its current send is done.
    fn assign(
        &mut self,
        myself: &ActorRef<DispatcherMsg>,
        i: usize,
        flight: InFlight,
        queued: bool,
    ) {
        match self.registry.mailer(i) {
            Some(mailer)
                if mailer
                    .cast(MailerMsg::Deliver(
                        Box::new(flight.job.clone()),
                        self.slots[i].unrecorded.clone(),
                    ))
                    .is_ok() =>
            {
                self.ledger.settle(&flight.job.claim_ref());
                let flight = InFlight {
                    started: tokio::time::Instant::now(),
                    ..flight
                };
                match queued {
                    true => self.slots[i].next = Some(flight),
                    false => self.slots[i].job = Some(flight),
                }
            }
            _ => {
                // The mailer died between its last report and now.
                self.slots[i].up = false;
                self.waiting.push_front(flight);
                report(myself, Event::Tick);
            }
        }
    }

    /// Gives claims back in a task, tried again a while if the database
    /// does not answer; while draining, the drain waits for it. A released
    /// message is woken again at once unless the dispatcher is stopping (the
    /// next process, or another instance, re-feeds it).
    fn release(
        &mut self,
        myself: &ActorRef<DispatcherMsg>,
        refs: Vec<ClaimRef>,
        reason: ReleaseReason,
    ) {
        if refs.is_empty() {
            return;
        }
        for r in &refs {
            self.ledger.settle(r);
        }
        self.releasing += 1;
        let registry = self.registry.clone();
        let wake = !self.stopped;
        let me = myself.clone();
        tokio::spawn(async move {
            let released = release_with_retries(&registry, &refs).await;
            match &released {
                Ok(back) => tracing::info!(
                    released = back.len(),
                    claimed = refs.len(),
                    reason = reason.as_str(),
                    "claimed messages returned to the queue unsent"
                ),
                Err(e) => tracing::warn!(
                    error = %e,
                    count = refs.len(),
                    reason = reason.as_str(),
                    "returning claimed messages to the queue failed; their leases will expire"
                ),
            }
            // Woken with the other fresh wake-ups, in the next batch.
            let wake_up = match released {
                Ok(back) if wake => back.iter().map(|r| (r.kind, r.id)).collect(),
                _ => Vec::new(),
            };
            report(&me, Event::Released(wake_up));
        });
    }

    /// Claims a stopped dispatcher held without handing them out: given
    /// back now, and again once a claim it had under way must have landed.
    pub(super) fn release_orphans(
        &mut self,
        myself: &ActorRef<DispatcherMsg>,
        refs: Vec<ClaimRef>,
    ) {
        if refs.is_empty() {
            return;
        }
        self.release(myself, refs.clone(), ReleaseReason::Orphaned);
        self.release_later(refs);
    }

    /// The safety net after a lost claim answer: released once more when a
    /// commit still in flight must have landed.
    fn release_later(&self, refs: Vec<ClaimRef>) {
        let registry = self.registry.clone();
        tokio::spawn(async move {
            tokio::time::sleep(RELEASE_AGAIN).await;
            if let Ok(back) = release_with_retries(&registry, &refs).await
                && !back.is_empty()
            {
                tracing::info!(
                    released = back.len(),
                    "a lost claim committed late; its messages are back in the queue"
                );
            }
        });
    }
}

/// The claims that were still held and are back in the queue.
async fn release_with_retries(
    registry: &Registry,
    refs: &[ClaimRef],
) -> Result<Vec<ClaimRef>, String> {
    let mut last = String::new();
    for _ in 0..RELEASE_TRIES {
        let answer = ask(registry.persistence(), |reply| {
            PersistenceMsg::Release(refs.to_vec(), reply)
        })
        .await;
        match answer {
            Ok(done) => {
                return Ok(refs
                    .iter()
                    .zip(done)
                    .filter_map(|(r, back)| back.then_some(*r))
                    .collect());
            }
            Err(e) => last = e,
        }
        tokio::time::sleep(RELEASE_RETRY).await;
    }
    Err(last)
}
