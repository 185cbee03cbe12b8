//! Recording outcomes: every finished attempt (sent, failed, crashed) is
//! written back through `Persistence`, in group commits.
//!
//! Up to [`RECORDERS`] batches are written at once and what arrives
//! meanwhile goes into the next one. A mailer completes no new mail until
//! its last outcome is committed (it may open the next one's envelope
//! meanwhile), so a crash of the process repeats at most one send per
//! mailer. A failed write is kept and written again after a pause,
//! never dropped: dropping it would let the lease expire and the mail go
//! out twice. Once a batch is committed, its stream entries are
//! acknowledged and its retries scheduled in Redis.

use std::time::{Duration, Instant};

use ractor::ActorRef;

use super::event::{Event, PendingOutcome, Recorded};
use super::slots::InFlight;
use super::{DispatcherState, ask, report};
use crate::actors::persistence::PersistenceMsg;
use crate::actors::protocol::{DispatcherMsg, log_attempt};
use crate::domain::delivery::{AttemptResult, MailJob, Outcome, Settled};

/// Outcome batches written at once. A mailer waits for its last outcome's
/// commit before its next send, so that wait is on every mail's path: a
/// batch arriving while others are being written starts at once instead of
/// queueing behind them.
pub const RECORDERS: usize = 4;

/// The pause before a failed batch is written again.
const RECORD_RETRY: Duration = Duration::from_millis(500);

impl DispatcherState {
    /// A mailer's report: the job it was given (or, after a restart of the
    /// dispatcher, one it still had) is recorded.
    pub(super) fn job_finished(
        &mut self,
        myself: &ActorRef<DispatcherMsg>,
        mailer: usize,
        job: MailJob,
        result: AttemptResult,
    ) {
        let held = self.slots.get_mut(mailer).and_then(|s| {
            let this =
                |f: &mut InFlight| f.job.lease_token == job.lease_token && f.job.id == job.id;
            match s.job.take_if(this) {
                Some(done) => {
                    // The mailer starts its queued job as soon as it reports.
                    s.job = s.next.take().map(|next| InFlight {
                        started: tokio::time::Instant::now(),
                        ..next
                    });
                    Some(done)
                }
                None => s.next.take_if(this),
            }
        });
        let flight = held.unwrap_or_else(|| InFlight::new(None, job));
        self.record(myself, flight, result, Some(mailer));
    }

    /// The supervisor saw a mailer fail: the job it held crashed.
    pub(super) fn mailer_down(
        &mut self,
        myself: &ActorRef<DispatcherMsg>,
        i: usize,
        reason: String,
    ) {
        let Some(slot) = self.slots.get_mut(i) else {
            return;
        };
        slot.up = false;
        // Its queued job died with it unstarted: handed out again, under
        // the same claim.
        if let Some(next) = slot.next.take() {
            self.ledger.hold([next.job.claim_ref()]);
            self.waiting.push_front(next);
        }
        let Some(flight) = slot.job.take() else {
            return;
        };
        tracing::warn!(
            uuid = %flight.job.uuid,
            kind = flight.job.kind.as_str(),
            attempt = flight.job.attempt,
            mailer = i,
            %reason,
            "mailer crashed during a send; scheduling a retry"
        );
        let result = AttemptResult {
            outcome: Outcome::Crash,
            smtp_code: None,
            smtp_reply: None,
            error: Some(format!("mailer crashed: {reason}")),
            duration_ms: flight.started.elapsed().as_millis() as i64,
        };
        log_attempt(&flight.job, &result);
        // A mailer enters its own outcomes in the ledger before reporting
        // them; a crash is an outcome only the dispatcher knows of.
        self.ledger.owe(&flight.job, &result);
        self.record(myself, flight, result, None);
    }

    /// Queues an attempt's outcome for the next group commit.
    fn record(
        &mut self,
        myself: &ActorRef<DispatcherMsg>,
        flight: InFlight,
        result: AttemptResult,
        mailer: Option<usize>,
    ) {
        self.metrics
            .attempt(flight.job.kind.as_str(), result.outcome.as_str());
        self.metrics
            .send_duration
            .observe(result.duration_ms as f64 / 1000.0);
        if let Some(slot) = mailer.and_then(|m| self.slots.get_mut(m)) {
            slot.unrecorded.push(flight.job.claim_ref());
        }
        self.to_record.push(PendingOutcome {
            entry: flight.entry,
            job: flight.job,
            result,
            mailer,
            since: Instant::now(),
        });
        self.flush_records(myself);
    }

    /// Writes the waiting outcomes in one commit, unless [`RECORDERS`]
    /// writes are running (then they go with the next one).
    pub(super) fn flush_records(&mut self, myself: &ActorRef<DispatcherMsg>) {
        if self.record_paused || self.recording >= RECORDERS || self.to_record.is_empty() {
            return;
        }
        self.recording += 1;
        let batch = std::mem::take(&mut self.to_record);
        let persistence = self.registry.persistence();
        let metrics = self.metrics.clone();
        let me = myself.clone();
        tokio::spawn(async move {
            let done: Vec<_> = batch
                .iter()
                .map(|o| (o.job.clone(), o.result.clone()))
                .collect();
            let result = ask(persistence, |reply| {
                PersistenceMsg::FinishBatch(done, reply)
            })
            .await
            .map(|settled| settled.into_iter().flatten().collect::<Vec<_>>());
            match result {
                Ok(settled) => {
                    for o in &batch {
                        metrics.record_wait.observe(o.since.elapsed().as_secs_f64());
                    }
                    let recorded = Recorded {
                        mailers: batch.iter().filter_map(|o| o.mailer).collect(),
                        claims: batch.iter().map(|o| o.job.claim_ref()).collect(),
                        entries: batch.into_iter().filter_map(|o| o.entry).collect(),
                        settled,
                    };
                    report(&me, Event::Recorded(recorded));
                }
                Err(e) => {
                    // A reclaimed lease makes a late write a no-op, so
                    // writing again is always safe.
                    tracing::warn!(error = %e, count = batch.len(), "recording attempts failed; retrying");
                    report(&me, Event::RecordFailed(batch));
                }
            }
        });
    }

    pub(super) fn recorded(&mut self, myself: &ActorRef<DispatcherMsg>, batch: Recorded) {
        let Recorded {
            entries,
            settled,
            mailers,
            claims,
        } = batch;
        self.recording -= 1;
        for claim in &claims {
            self.ledger.recorded(claim);
        }
        for m in mailers {
            if let Some(slot) = self.slots.get_mut(m) {
                slot.unrecorded.retain(|c| !claims.contains(c));
            }
        }
        self.pump(myself);
        let queue = self.queue.clone();
        tokio::spawn(async move {
            let retries: Vec<_> = settled.iter().filter_map(Settled::retry_due).collect();
            if let Err(e) = queue.schedule(&retries).await {
                tracing::warn!(error = %e, "scheduling retries in Redis failed; the reconciler will pick them up");
            }
            if let Err(e) = queue.ack(&entries).await {
                tracing::warn!(error = %e, "acknowledging stream entries failed");
            }
        });
        self.flush_records(myself);
        self.check_drained();
    }

    pub(super) fn record_failed(
        &mut self,
        myself: &ActorRef<DispatcherMsg>,
        mut batch: Vec<PendingOutcome>,
    ) {
        // Nothing else is written until the pause is over; the failed batch
        // goes first.
        self.recording -= 1;
        self.record_paused = true;
        batch.append(&mut self.to_record);
        self.to_record = batch;
        myself.send_after(RECORD_RETRY, || DispatcherMsg::Own(Event::RetryRecord));
    }

    /// Settles what a dispatcher that stopped before this one left owing:
    /// its outcomes are written now, its unstarted claims given back.
    pub(super) fn settle_predecessor(&mut self, myself: &ActorRef<DispatcherMsg>) {
        let left = self.ledger.take();
        if !left.unrecorded.is_empty() {
            tracing::warn!(
                count = left.unrecorded.len(),
                "recording outcomes a stopped dispatcher left unwritten"
            );
        }
        // Still owed in the ledger (`take` leaves outcomes there until they
        // are recorded): only the writing is ours now.
        for (job, result) in left.unrecorded {
            self.record(myself, InFlight::new(None, job), result, None);
        }
        self.release_orphans(myself, left.unstarted);
    }

    /// Acknowledges stream entries in the background.
    pub(super) fn ack_later(&self, entries: Vec<String>) {
        if entries.is_empty() {
            return;
        }
        let queue = self.queue.clone();
        tokio::spawn(async move {
            if let Err(e) = queue.ack(&entries).await {
                tracing::warn!(error = %e, "acknowledging stream entries failed");
            }
        });
    }
}
