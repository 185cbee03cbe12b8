//! The `Dispatcher` actor: hands due jobs to idle mailers, one job per mailer
//! at a time, and owns the retry schedule.
//!
//! A job's path: a wake-up in the Redis stream (written after the accept
//! commit, by the retry promoter, or by the reconciler) → a conditional
//! claim in PostgreSQL (status `sending`, a lease) → an idle mailer → the
//! outcome written back through `Persistence` → the stream entry acknowledged
//! and, for a retry, a member in the Redis schedule.
//!
//! The dispatcher never waits on I/O inside `handle`: every Redis and
//! PostgreSQL step runs in a task that reports back as an [`Event`], so
//! state queries (`/healthz`) are answered at once. The dispatcher, not the
//! mailer, holds the claimed job, so a mailer crash is turned into a
//! recorded `crash` attempt and a scheduled retry.
//!
//! The parts, each in its own file: [`slots`] (which mailer may take a job,
//! how much to read, lease arithmetic), [`reader`] (the stream), [`claims`]
//! (claiming and handing out jobs), [`recorder`] (the outcomes' group
//! commit), [`wakeups`] (fresh messages to the stream), [`reconciler`] (the
//! timer's duties: due retries, expired leases, what Redis forgot) and
//! [`drain`] (shutdown). What it owes the database is kept in the
//! supervisor's [`ClaimLedger`], where a crash of the dispatcher cannot
//! lose it.

mod claims;
mod drain;
pub mod event;
mod reader;
mod reconciler;
mod recorder;
pub mod slots;
mod wakeups;

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use ractor::rpc::CallResult;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use self::event::{Event, PendingOutcome};
use self::slots::{InFlight, MailerSlot};
use super::ledger::ClaimLedger;
use super::persistence::PersistenceMsg;
use super::protocol::{DispatcherMsg, DispatcherReport};
use super::registry::Registry;
use crate::config::Config;
use crate::domain::MessageKind;
use crate::metrics::Metrics;
use crate::queue::Queue;
use crate::store::StoreError;
use crate::util::AbortOnDrop;

pub use reconciler::{OVERDUE_GRACE, RECONCILE_EVERY, TICK};

/// Budget for one persistence call made by the dispatcher.
const PERSISTENCE_CALL: Duration = Duration::from_millis(5000);

pub struct Dispatcher;

pub struct DispatcherArgs {
    pub metrics: Arc<Metrics>,
    pub config: Arc<Config>,
    pub registry: Arc<Registry>,
    pub queue: Queue,
    pub mailers: usize,
    /// Owned by the supervisor: what this dispatcher's predecessor left.
    pub ledger: Arc<ClaimLedger>,
    /// Set by persistence once the schema is in place; shared through the
    /// supervisor.
    pub schema_ready: Arc<AtomicBool>,
}

pub struct DispatcherState {
    metrics: Arc<Metrics>,
    config: Arc<Config>,
    registry: Arc<Registry>,
    queue: Queue,
    ledger: Arc<ClaimLedger>,
    /// No read before it is set: a claim before then fails at once, and
    /// with a backlog in the stream every read would take a mailer-sized
    /// batch of wake-ups into a failed claim (their messages wait for the
    /// re-feed: the backlog's age plus the grace).
    schema_ready: Arc<AtomicBool>,
    consumer: String,
    slots: Vec<MailerSlot>,
    /// Claimed, waiting for a mailer.
    waiting: VecDeque<InFlight>,
    reading: bool,
    /// `Some(id)` while replaying this consumer's own pending entries after
    /// id (after a failed read); `None` when reading new entries.
    pending_cursor: Option<String>,
    claiming: usize,
    /// Releases of claims under way.
    releasing: usize,
    /// Outcomes waiting to be written; up to [`recorder::RECORDERS`]
    /// batches are written at a time, and what arrives meanwhile goes into
    /// the next (group commit).
    to_record: Vec<PendingOutcome>,
    /// Batches being written.
    recording: usize,
    /// A write failed: nothing is written until the pause is over.
    record_paused: bool,
    to_enqueue: Vec<(MessageKind, i64)>,
    /// Messages accepted with a `send_at` ahead: `(kind, id, due ms)`.
    to_schedule: Vec<(MessageKind, i64, i64)>,
    flushing: bool,
    ticking: bool,
    last_reconcile: std::time::Instant,
    last_reap: std::time::Instant,
    depth: Option<(u64, u64)>,
    redis_error: Option<String>,
    /// Since when reads fail (Redis unreachable); `None` while they work.
    redis_down_since: Option<std::time::Instant>,
    /// A read has worked once: a missing stream is then news, not the first
    /// start.
    read_once: bool,
    draining: Option<RpcReplyPort<bool>>,
    stopped: bool,
    _timer: AbortOnDrop,
}

impl Actor for Dispatcher {
    type Msg = DispatcherMsg;
    type State = DispatcherState;
    type Arguments = DispatcherArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        let slots = (0..args.mailers).map(|_| MailerSlot::default()).collect();
        Ok(DispatcherState {
            metrics: args.metrics,
            config: args.config,
            registry: args.registry,
            queue: args.queue,
            ledger: args.ledger,
            schema_ready: args.schema_ready,
            consumer: format!("dispatcher-{}", uuid::Uuid::new_v4().simple()),
            slots,
            waiting: VecDeque::new(),
            reading: false,
            pending_cursor: None,
            claiming: 0,
            releasing: 0,
            to_record: Vec::new(),
            recording: 0,
            record_paused: false,
            to_enqueue: Vec::new(),
            to_schedule: Vec::new(),
            flushing: false,
            ticking: false,
            // Reconcile at the first tick: this is what resumes work left by
            // a previous process.
            last_reconcile: std::time::Instant::now() - RECONCILE_EVERY,
            last_reap: std::time::Instant::now(),
            depth: None,
            redis_error: None,
            redis_down_since: None,
            read_once: false,
            draining: None,
            stopped: false,
            _timer: reconciler::start_timer(&myself),
        })
    }

    async fn post_start(
        &self,
        myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        // Mailers spawned before us are up; those that are not will be
        // announced by the supervisor.
        for (i, slot) in state.slots.iter_mut().enumerate() {
            slot.up = state.registry.mailer(i).is_some();
        }
        state.settle_predecessor(&myself);
        state.pump(&myself);
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            DispatcherMsg::Enqueue(kind, id) => state.enqueue(&myself, kind, &[id]),
            DispatcherMsg::EnqueueMany(kind, ids) => state.enqueue(&myself, kind, &ids),
            DispatcherMsg::Schedule(kind, id, due_ms) => state.schedule(&myself, kind, id, due_ms),
            DispatcherMsg::MailerUp(i) => {
                if let Some(slot) = state.slots.get_mut(i) {
                    slot.up = true;
                }
                state.pump(&myself);
            }
            DispatcherMsg::MailerDown(i, reason) => state.mailer_down(&myself, i, reason),
            DispatcherMsg::JobFinished {
                mailer,
                job,
                result,
            } => {
                #[cfg(feature = "fault-injection")]
                crate::faults::on_outcome(&job);
                state.job_finished(&myself, mailer, *job, *result);
                state.pump(&myself);
            }
            DispatcherMsg::Ping(reply) => state.ping(reply),
            DispatcherMsg::Report(reply) => {
                let _ = reply.send(state.report());
            }
            DispatcherMsg::Drain(deadline, reply) => state.start_drain(&myself, deadline, reply),
            DispatcherMsg::Own(event) => state.on_event(&myself, event),
        }
        Ok(())
    }
}

impl DispatcherState {
    fn on_event(&mut self, myself: &ActorRef<DispatcherMsg>, event: Event) {
        match event {
            Event::Read(result) => self.on_read(myself, result),
            Event::ReadResumed => {
                self.reading = false;
                self.pump(myself);
            }
            Event::Claimed(entries, token, result) => {
                self.claiming -= entries.len();
                self.claimed(myself, entries, token, result);
                self.pump(myself);
                self.check_drained();
            }
            Event::Released(wake_up) => {
                self.releasing -= 1;
                self.to_enqueue.extend(wake_up);
                self.flush(myself);
                self.check_drained();
            }
            Event::Recorded(batch) => self.recorded(myself, batch),
            Event::RecordFailed(batch) => self.record_failed(myself, batch),
            Event::RetryRecord => {
                self.record_paused = false;
                self.flush_records(myself);
                self.check_drained();
            }
            Event::Flushed => {
                self.flushing = false;
                self.flush(myself);
            }
            Event::Tick => {
                if !self.ticking && !self.stopped {
                    self.ticking = true;
                    self.tick(myself);
                }
                self.pump(myself);
            }
            Event::TickDone(depth) => {
                self.ticking = false;
                if depth.is_some() {
                    self.depth = depth;
                }
            }
            Event::DrainDeadline => self.drain_deadline(),
        }
    }

    fn in_flight(&self) -> usize {
        self.slots.iter().map(MailerSlot::held).sum::<usize>() + self.waiting.len()
    }

    fn idle_mailers(&self) -> usize {
        self.slots.iter().filter(|s| s.idle()).count()
    }

    fn report(&self) -> DispatcherReport {
        DispatcherReport {
            queue_depth: self.depth.map(|d| d.0),
            scheduled_retries: self.depth.map(|d| d.1),
            in_flight: self.in_flight(),
            idle_mailers: self.idle_mailers(),
            redis_error: self.redis_error.clone(),
            draining: self.stopped,
        }
    }

    /// A real round trip to Redis, for `/healthz`, answered from a task.
    fn ping(&self, reply: RpcReplyPort<Result<(), String>>) {
        let queue = self.queue.clone();
        tokio::spawn(async move {
            let r = match tokio::time::timeout(Duration::from_millis(1200), queue.ping()).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err("timeout".to_owned()),
            };
            let _ = reply.send(r);
        });
    }

    /// Moves work forward: waiting jobs to idle mailers, then a new read if
    /// capacity is left.
    fn pump(&mut self, myself: &ActorRef<DispatcherMsg>) {
        self.hand_out(myself);
        // Until the schema is ready the tick (every 250 ms) comes back here.
        if self.stopped || self.reading || !self.schema_ready.load(Ordering::Acquire) {
            return;
        }
        if let Some(free) = slots::read_capacity(&self.slots, self.claiming, self.waiting.len()) {
            self.read(myself, free);
        }
    }
}

/// Asks persistence for one unit of work within [`PERSISTENCE_CALL`], from
/// one of the dispatcher's tasks; every way it can fail (persistence
/// restarting, timed out, the database refusing) comes back as the text the
/// log line gives.
async fn ask<T: Send + 'static>(
    persistence: Option<ActorRef<PersistenceMsg>>,
    msg: impl FnOnce(RpcReplyPort<Result<T, StoreError>>) -> PersistenceMsg,
) -> Result<T, String> {
    let Some(p) = persistence else {
        return Err("persistence is restarting".to_owned());
    };
    match p.call(msg, Some(PERSISTENCE_CALL)).await {
        Ok(CallResult::Success(answer)) => answer.map_err(|e| e.to_string()),
        Ok(other) => Err(ractor::RactorErr::<PersistenceMsg>::from(other).to_string()),
        Err(e) => Err(e.to_string()),
    }
}

/// Sends an event to the dispatcher from one of its tasks. A dispatcher
/// that stopped meanwhile has nobody to tell.
fn report(me: &ActorRef<DispatcherMsg>, event: Event) {
    let _ = me.cast(DispatcherMsg::Own(event));
}
