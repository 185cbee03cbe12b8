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
//! PostgreSQL step runs in a task that reports back as a message, so state
//! queries (`/healthz`) are answered at once. The dispatcher, not the mailer,
//! holds the claimed job, so a mailer crash is turned into a recorded `crash`
//! attempt and a scheduled retry.
//!
//! A timer drives the background duties: promote due retries every
//! [`TICK`], and every [`RECONCILE_EVERY`] reclaim expired leases (a process
//! died mid-send) and re-feed from PostgreSQL what has been due for longer
//! than [`OVERDUE_GRACE`] (Redis lost it). That bounds how late a message can
//! be after any failure of Redis, a timer or the process.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use serde::Serialize;

use super::mailer::MailerMsg;
use super::persistence::PersistenceMsg;
use crate::config::Config;
use crate::domain::MessageKind;
use crate::domain::delivery::{AttemptResult, MailJob, Outcome, Settled};
use crate::http::Peers;
use crate::metrics::Metrics;
use crate::queue::{self, Entry, Queue};
use crate::util::AbortOnDrop;

/// How often due retries are promoted.
pub const TICK: Duration = Duration::from_millis(250);
/// How often leases and PostgreSQL are reconciled with Redis.
pub const RECONCILE_EVERY: Duration = Duration::from_secs(2);
/// A message due for this long without being claimed is re-fed from
/// PostgreSQL.
pub const OVERDUE_GRACE: Duration = Duration::from_secs(5);
/// Stream entries left pending by a dead consumer are dropped after this.
const STALE_PENDING: Duration = Duration::from_secs(120);
/// Jobs claimed ahead for each mailer, beyond the one it is sending.
const PREFETCH_PER_MAILER: usize = 2;
/// Outcome batches written at once. A mailer waits for its last outcome's
/// commit before its next send, so that wait is on every mail's path: a
/// batch arriving while others are being written starts at once instead of
/// queueing behind them.
const RECORDERS: usize = 4;
/// Budget for one persistence call made by the dispatcher.
const PERSISTENCE_CALL_MS: u64 = 5000;

pub struct Dispatcher;

pub enum DispatcherMsg {
    /// A message was just committed as due: wake a mailer for it.
    Enqueue(MessageKind, i64),
    MailerUp(usize),
    /// The supervisor saw mailer `index` fail; its job, if any, crashed.
    MailerDown(usize, String),
    /// A mailer finished its attempt.
    /// Carries the job itself, so that an outcome reaching a dispatcher
    /// that did not hand the job out (it was restarted meanwhile) is still
    /// recorded.
    JobFinished {
        mailer: usize,
        job: Box<MailJob>,
        result: Box<AttemptResult>,
    },
    Ping(RpcReplyPort<Result<(), String>>),
    Report(RpcReplyPort<DispatcherReport>),
    /// Stop taking work; answer once in-flight jobs are recorded or at the
    /// deadline (with whether everything finished).
    Drain(Duration, RpcReplyPort<bool>),

    // ----- reports from the dispatcher's own tasks -----
    Read(Result<Vec<Entry>, redis::RedisError>),
    /// The pause after a failed read is over.
    ReadResumed,
    Claimed(Vec<Entry>, Result<Vec<MailJob>, String>),
    /// A batch of outcomes was written: the entries to acknowledge and, for
    /// each recorded job, where its message stands now.
    Recorded(Vec<String>, Vec<Settled>, Vec<usize>),
    /// Writing a batch failed; it is written again after a pause.
    RecordFailed(Vec<PendingOutcome>),
    RetryRecord,
    Flushed,
    Tick,
    TickDone(Option<(u64, u64)>),
    DrainDeadline,
}

pub struct DispatcherArgs {
    pub metrics: Arc<Metrics>,
    pub config: Arc<Config>,
    pub peers: Arc<Peers>,
    pub queue: Queue,
    pub mailers: usize,
}

/// An outcome waiting to be written.
pub struct PendingOutcome {
    /// The stream entry to acknowledge once it is written.
    entry: Option<String>,
    job: MailJob,
    result: AttemptResult,
    /// The mailer waiting for the write before its next send.
    mailer: Option<usize>,
    since: Instant,
}

/// A claimed job and the stream entry that woke it (none when the job
/// reached us without one, e.g. after a restart of the dispatcher).
struct InFlight {
    entry: Option<String>,
    job: MailJob,
    started: Instant,
    /// When its claim (and so its lease) was answered.
    claimed: Instant,
}

#[derive(Default)]
struct MailerSlot {
    up: bool,
    job: Option<InFlight>,
    /// The mailer's last send is done but its outcome is not yet committed.
    /// It gets no new job meanwhile: were the process to die now, only that
    /// one send could be repeated, never a run of them.
    unrecorded: bool,
}

impl MailerSlot {
    fn idle(&self) -> bool {
        self.up && self.job.is_none() && !self.unrecorded
    }
}

pub struct DispatcherState {
    metrics: Arc<Metrics>,
    config: Arc<Config>,
    peers: Arc<Peers>,
    queue: Queue,
    consumer: String,
    slots: Vec<MailerSlot>,
    /// Claimed, waiting for a mailer (a mailer went down after the claim).
    waiting: VecDeque<InFlight>,
    reading: bool,
    /// `Some(id)` while replaying this consumer's own pending entries after
    /// id (after a failed read); `None` when reading new entries.
    pending_cursor: Option<String>,
    claiming: usize,
    /// Outcomes waiting to be written; up to [`RECORDERS`] batches are
    /// written at a time, and what arrives meanwhile goes into the next
    /// (group commit).
    to_record: Vec<PendingOutcome>,
    /// Batches being written.
    recording: usize,
    /// A write failed: nothing is written until the pause is over.
    record_paused: bool,
    to_enqueue: Vec<(MessageKind, i64)>,
    flushing: bool,
    ticking: bool,
    last_reconcile: Instant,
    last_reap: Instant,
    depth: Option<(u64, u64)>,
    redis_error: Option<String>,
    draining: Option<RpcReplyPort<bool>>,
    stopped: bool,
    _timer: AbortOnDrop,
}

#[derive(Debug, Clone, Serialize)]
pub struct DispatcherReport {
    /// Entries in the ready stream (unread or in progress), at the last tick.
    pub queue_depth: Option<u64>,
    pub scheduled_retries: Option<u64>,
    pub in_flight: usize,
    pub idle_mailers: usize,
    pub redis_error: Option<String>,
    pub draining: bool,
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
        let me = myself.clone();
        let timer = tokio::spawn(async move {
            let mut tick = tokio::time::interval(TICK);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                if me.cast(DispatcherMsg::Tick).is_err() {
                    break;
                }
            }
        });
        let slots = (0..args.mailers).map(|_| MailerSlot::default()).collect();
        Ok(DispatcherState {
            metrics: args.metrics,
            config: args.config,
            peers: args.peers,
            queue: args.queue,
            consumer: format!("dispatcher-{}", uuid::Uuid::new_v4().simple()),
            slots,
            waiting: VecDeque::new(),
            reading: false,
            pending_cursor: None,
            claiming: 0,
            to_record: Vec::new(),
            recording: 0,
            record_paused: false,
            to_enqueue: Vec::new(),
            flushing: false,
            ticking: false,
            // Reconcile at the first tick: this is what resumes work left by
            // a previous process.
            last_reconcile: Instant::now() - RECONCILE_EVERY,
            last_reap: Instant::now(),
            depth: None,
            redis_error: None,
            draining: None,
            stopped: false,
            _timer: AbortOnDrop(timer),
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
            slot.up = state.peers.mailer(i).is_some();
        }
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
            DispatcherMsg::Enqueue(kind, id) => {
                state.to_enqueue.push((kind, id));
                state.flush(&myself);
            }
            DispatcherMsg::Flushed => {
                state.flushing = false;
                state.flush(&myself);
            }
            DispatcherMsg::MailerUp(i) => {
                if let Some(slot) = state.slots.get_mut(i) {
                    slot.up = true;
                }
                state.pump(&myself);
            }
            DispatcherMsg::MailerDown(i, reason) => {
                let Some(slot) = state.slots.get_mut(i) else {
                    return Ok(());
                };
                slot.up = false;
                if let Some(flight) = slot.job.take() {
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
                    state.record(&myself, flight, result, None);
                }
            }
            DispatcherMsg::JobFinished {
                mailer,
                job,
                result,
            } => {
                let held = state.slots.get_mut(mailer).and_then(|s| {
                    s.job
                        .take_if(|f| f.job.lease_token == job.lease_token && f.job.id == job.id)
                });
                let flight = held.unwrap_or(InFlight {
                    entry: None,
                    job: *job,
                    started: Instant::now(),
                    claimed: Instant::now(),
                });
                state.record(&myself, flight, *result, Some(mailer));
                state.pump(&myself);
            }
            DispatcherMsg::ReadResumed => {
                state.reading = false;
                state.pump(&myself);
            }
            DispatcherMsg::Read(result) => {
                state.reading = false;
                match result {
                    Ok(entries) => {
                        state.redis_error = None;
                        // While replaying our own pending entries, move the
                        // cursor past what we got; an empty answer means
                        // none is left, and new entries are read again.
                        state.pending_cursor = match (&state.pending_cursor, entries.last()) {
                            (Some(_), Some(last)) => Some(last.stream_id.clone()),
                            _ => None,
                        };
                        if !entries.is_empty() {
                            state.claim(&myself, entries);
                        }
                    }
                    Err(e) => {
                        // One read at a time, also while we pause: a read
                        // started meanwhile would pile up behind the broken
                        // one on the reader connection.
                        state.reading = true;
                        // A read cut by a client-side timeout may still have
                        // been answered by Redis: those entries are pending
                        // for us. Replay them from the start once reading
                        // works again.
                        state.pending_cursor = Some("0".to_owned());
                        let missing = queue::is_missing_group(&e);
                        state.redis_error = Some(e.to_string());
                        if missing {
                            tracing::warn!(
                                "ready stream or group missing (Redis restarted?); recreating"
                            );
                        } else {
                            tracing::warn!(error = %e, "reading the ready stream failed");
                        }
                        let queue = state.queue.clone();
                        let me = myself.clone();
                        tokio::spawn(async move {
                            if missing {
                                if let Err(e) = queue.ensure_group().await {
                                    tracing::warn!(error = %e, "creating the consumer group failed");
                                }
                            } else {
                                tokio::time::sleep(Duration::from_millis(500)).await;
                            }
                            let _ = me.cast(DispatcherMsg::ReadResumed);
                        });
                        return Ok(());
                    }
                }
                state.pump(&myself);
            }
            DispatcherMsg::Claimed(entries, result) => {
                state.claiming -= entries.len();
                state.claimed(entries, result);
                state.pump(&myself);
            }
            DispatcherMsg::Recorded(entries, settled, mailers) => {
                state.recording -= 1;
                for m in mailers {
                    if let Some(slot) = state.slots.get_mut(m) {
                        slot.unrecorded = false;
                    }
                }
                state.pump(&myself);
                let queue = state.queue.clone();
                tokio::spawn(async move {
                    let retries: Vec<_> = settled.iter().filter_map(Settled::retry_due).collect();
                    if let Err(e) = queue.schedule(&retries).await {
                        tracing::warn!(error = %e, "scheduling retries in Redis failed; the reconciler will pick them up");
                    }
                    if let Err(e) = queue.ack(&entries).await {
                        tracing::warn!(error = %e, "acknowledging stream entries failed");
                    }
                });
                state.flush_records(&myself);
                state.check_drained();
            }
            DispatcherMsg::RecordFailed(mut batch) => {
                // Nothing else is written until the pause is over; the
                // failed batch goes first.
                state.recording -= 1;
                state.record_paused = true;
                batch.append(&mut state.to_record);
                state.to_record = batch;
                myself.send_after(Duration::from_millis(500), || DispatcherMsg::RetryRecord);
            }
            DispatcherMsg::RetryRecord => {
                state.record_paused = false;
                state.flush_records(&myself);
                state.check_drained();
            }
            DispatcherMsg::Tick => {
                if !state.ticking && !state.stopped {
                    state.ticking = true;
                    state.tick(&myself);
                }
                state.pump(&myself);
            }
            DispatcherMsg::TickDone(depth) => {
                state.ticking = false;
                if depth.is_some() {
                    state.depth = depth;
                }
            }
            DispatcherMsg::Ping(reply) => {
                let queue = state.queue.clone();
                tokio::spawn(async move {
                    let r = match tokio::time::timeout(Duration::from_millis(1200), queue.ping())
                        .await
                    {
                        Ok(Ok(())) => Ok(()),
                        Ok(Err(e)) => Err(e.to_string()),
                        Err(_) => Err("timeout".to_owned()),
                    };
                    let _ = reply.send(r);
                });
            }
            DispatcherMsg::Report(reply) => {
                let _ = reply.send(DispatcherReport {
                    queue_depth: state.depth.map(|d| d.0),
                    scheduled_retries: state.depth.map(|d| d.1),
                    in_flight: state.in_flight(),
                    idle_mailers: state.idle_mailers(),
                    redis_error: state.redis_error.clone(),
                    draining: state.stopped,
                });
            }
            DispatcherMsg::Drain(deadline, reply) => {
                state.stopped = true;
                state.draining = Some(reply);
                myself.send_after(deadline, || DispatcherMsg::DrainDeadline);
                state.check_drained();
            }
            DispatcherMsg::DrainDeadline => {
                if let Some(reply) = state.draining.take() {
                    let open: Vec<String> = state
                        .slots
                        .iter()
                        .filter_map(|s| s.job.as_ref())
                        .map(|f| f.job.uuid.to_string())
                        .collect();
                    tracing::warn!(
                        ?open,
                        "sends still in flight at the shutdown deadline; their leases will expire and they will be retried"
                    );
                    let _ = reply.send(false);
                }
            }
        }
        Ok(())
    }
}

impl DispatcherState {
    fn in_flight(&self) -> usize {
        self.slots.iter().filter(|s| s.job.is_some()).count() + self.waiting.len()
    }

    /// What a send still needs after it starts, with margin: the attempt
    /// itself, the claim's own latency (the lease started in the database
    /// before we heard of it), and time to record the outcome.
    fn send_window(&self) -> Duration {
        self.config.smtp.timeout + Duration::from_millis(PERSISTENCE_CALL_MS) * 2
    }

    /// Acknowledges stream entries in the background.
    fn ack_later(&self, entries: Vec<String>) {
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

    fn idle_mailers(&self) -> usize {
        self.slots.iter().filter(|s| s.idle()).count()
    }

    /// Moves work forward: waiting jobs to idle mailers, then a new read if
    /// capacity is left.
    fn pump(&mut self, myself: &ActorRef<DispatcherMsg>) {
        while !self.waiting.is_empty() {
            let Some(i) = self.slots.iter().position(MailerSlot::idle) else {
                break;
            };
            let flight = self.waiting.pop_front().expect("not empty");
            // A job that waited so long that its lease could run out before
            // its send is recorded must not be sent: the reconciler may hand
            // it to someone else meanwhile. It is dropped here; its lease
            // expires and the message is retried like any crash.
            if flight.claimed.elapsed() + self.send_window() > lease_duration(&self.config) {
                tracing::warn!(uuid = %flight.job.uuid, "a claimed job waited too long for a mailer; leaving it to its lease");
                self.ack_later(flight.entry.into_iter().collect());
                continue;
            }
            self.assign(myself, i, flight);
        }
        // Each live mailer may have one job in hand and one claimed behind
        // it, so a mailer finishing a send finds its next job without a
        // round trip to Redis and PostgreSQL.
        let up = self.slots.iter().filter(|s| s.up).count();
        let busy = self.slots.iter().filter(|s| s.job.is_some()).count();
        let free = (up * (1 + PREFETCH_PER_MAILER))
            .saturating_sub(busy + self.claiming + self.waiting.len());
        // While jobs are on their way (claimed or being claimed), wait until
        // a read can fetch one job per live mailer: a claim costs a
        // transaction whatever its size, so many claims of one job each
        // would take the database time the accepts and outcomes need. With
        // nothing on its way, read whatever is free at once.
        let on_the_way = self.claiming + self.waiting.len();
        if self.stopped || self.reading || free == 0 || (on_the_way > 0 && free < up) {
            return;
        }
        self.reading = true;
        let queue = self.queue.clone();
        let consumer = self.consumer.clone();
        let after = self.pending_cursor.clone();
        let me = myself.clone();
        tokio::spawn(async move {
            let r = queue.read(&consumer, free, after.as_deref()).await;
            let _ = me.cast(DispatcherMsg::Read(r));
        });
    }

    fn assign(&mut self, myself: &ActorRef<DispatcherMsg>, i: usize, flight: InFlight) {
        match self.peers.mailer(i) {
            Some(mailer)
                if mailer
                    .cast(MailerMsg::Deliver(Box::new(flight.job.clone())))
                    .is_ok() =>
            {
                self.slots[i].job = Some(InFlight {
                    started: Instant::now(),
                    ..flight
                });
            }
            _ => {
                // The mailer died between its last report and now.
                self.slots[i].up = false;
                self.waiting.push_front(flight);
                let _ = myself.cast(DispatcherMsg::Tick);
            }
        }
    }

    fn claim(&mut self, myself: &ActorRef<DispatcherMsg>, entries: Vec<Entry>) {
        self.claiming += entries.len();
        let jobs: Vec<(MessageKind, i64)> = entries.iter().filter_map(|e| e.job).collect();
        let persistence = self.peers.persistence().ok();
        let lease = lease_duration(&self.config);
        let metrics = self.metrics.clone();
        let me = myself.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let result = match persistence {
                None => Err("persistence is restarting".to_owned()),
                Some(p) => match ractor::call_t!(
                    p,
                    PersistenceMsg::Claim,
                    PERSISTENCE_CALL_MS,
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
            let _ = me.cast(DispatcherMsg::Claimed(entries, result));
        });
    }

    fn claimed(&mut self, entries: Vec<Entry>, result: Result<Vec<MailJob>, String>) {
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
                    self.waiting.push_back(InFlight {
                        entry: Some(entry.stream_id),
                        job,
                        started: Instant::now(),
                        claimed: Instant::now(),
                    });
                }
                // Already sent, claimed elsewhere, not due yet, or a
                // duplicate wake-up: nothing to do but acknowledge.
                None => done.push(entry.stream_id),
            }
        }
        self.ack_later(done);
    }

    /// Writes an attempt's outcome, then acknowledges its entry.
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
            slot.unrecorded = true;
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
    fn flush_records(&mut self, myself: &ActorRef<DispatcherMsg>) {
        if self.record_paused || self.recording >= RECORDERS || self.to_record.is_empty() {
            return;
        }
        self.recording += 1;
        let batch = std::mem::take(&mut self.to_record);
        let persistence = self.peers.persistence().ok();
        let metrics = self.metrics.clone();
        let me = myself.clone();
        tokio::spawn(async move {
            let done: Vec<_> = batch
                .iter()
                .map(|o| (o.job.clone(), o.result.clone()))
                .collect();
            let result = match persistence {
                None => Err("persistence is restarting".to_owned()),
                Some(p) => {
                    match ractor::call_t!(p, PersistenceMsg::FinishBatch, PERSISTENCE_CALL_MS, done)
                    {
                        Ok(Ok(settled)) => Ok(settled.into_iter().flatten().collect()),
                        Ok(Err(e)) => Err(e.to_string()),
                        Err(e) => Err(e.to_string()),
                    }
                }
            };
            match result {
                Ok(settled) => {
                    for o in &batch {
                        metrics.record_wait.observe(o.since.elapsed().as_secs_f64());
                    }
                    let mailers = batch.iter().filter_map(|o| o.mailer).collect();
                    let entries = batch.into_iter().filter_map(|o| o.entry).collect();
                    let _ = me.cast(DispatcherMsg::Recorded(entries, settled, mailers));
                }
                Err(e) => {
                    // Giving up would let the leases expire and the mail go
                    // out twice: keep the outcomes and write them when the
                    // database answers (a reclaimed lease makes a late write
                    // a no-op).
                    tracing::warn!(error = %e, count = batch.len(), "recording attempts failed; retrying");
                    let _ = me.cast(DispatcherMsg::RecordFailed(batch));
                }
            }
        });
    }

    /// Sends the batch of fresh wake-ups, one pipelined round trip.
    fn flush(&mut self, myself: &ActorRef<DispatcherMsg>) {
        if self.flushing || self.to_enqueue.is_empty() {
            return;
        }
        self.flushing = true;
        let batch = std::mem::take(&mut self.to_enqueue);
        let queue = self.queue.clone();
        let me = myself.clone();
        tokio::spawn(async move {
            if let Err(e) = queue.push(&batch).await {
                tracing::warn!(error = %e, count = batch.len(), "pushing wake-ups to Redis failed; the reconciler will re-feed them");
            }
            let _ = me.cast(DispatcherMsg::Flushed);
        });
    }

    fn tick(&mut self, myself: &ActorRef<DispatcherMsg>) {
        let reconcile = self.last_reconcile.elapsed() >= RECONCILE_EVERY;
        if reconcile {
            self.last_reconcile = Instant::now();
        }
        let reap = self.last_reap.elapsed() >= STALE_PENDING / 4;
        if reap {
            self.last_reap = Instant::now();
        }
        let queue = self.queue.clone();
        let persistence = self.peers.persistence().ok();
        let consumer = self.consumer.clone();
        let metrics = self.metrics.clone();
        let refeed_below = (self.slots.len() * 2 + 8) as u64;
        let me = myself.clone();
        tokio::spawn(async move {
            let now_ms = chrono::Utc::now().timestamp_millis();
            if let Err(e) = queue.promote_due(now_ms, 1000).await {
                tracing::debug!(error = %e, "promoting due retries failed");
            }
            let mut depth = None;
            if reconcile {
                depth = queue.depth().await.ok();
                if let Some(p) = persistence {
                    // While the stream still holds more than the work in
                    // progress, overdue rows are most likely still in it:
                    // re-feeding them would only add duplicate wake-ups.
                    let refeed = depth.is_none_or(|(len, _)| len <= refeed_below);
                    let reclaimed = reconcile_with_postgres(&queue, &p, refeed).await;
                    metrics.leases_reclaimed.inc_by(reclaimed);
                }
            }
            if reap {
                match queue.reap_stale(&consumer, STALE_PENDING).await {
                    Ok(n) if n > 0 => tracing::info!(
                        count = n,
                        "dropped stream entries left by a stopped consumer"
                    ),
                    _ => {}
                }
            }
            let _ = me.cast(DispatcherMsg::TickDone(depth));
        });
    }

    fn check_drained(&mut self) {
        let idle = self.in_flight() == 0
            && self.recording == 0
            && self.to_record.is_empty()
            && self.claiming == 0;
        if idle && let Some(reply) = self.draining.take() {
            let _ = reply.send(true);
        }
    }
}

/// Reclaims expired leases and re-feeds what Redis forgot.
async fn reconcile_with_postgres(
    queue: &Queue,
    persistence: &ActorRef<PersistenceMsg>,
    refeed: bool,
) -> u64 {
    let mut reclaimed = 0;
    match ractor::call_t!(
        persistence,
        PersistenceMsg::ReclaimExpired,
        PERSISTENCE_CALL_MS
    ) {
        Ok(Ok(settled)) if !settled.is_empty() => {
            reclaimed = settled.len() as u64;
            tracing::warn!(
                count = settled.len(),
                "reclaimed expired leases (a sender died mid-send)"
            );
            let retries: Vec<_> = settled.iter().filter_map(Settled::retry_due).collect();
            if let Err(e) = queue.schedule(&retries).await {
                tracing::debug!(error = %e, "scheduling reclaimed retries failed");
            }
        }
        Ok(Err(e)) => tracing::debug!(error = %e, "reclaiming leases failed"),
        _ => {}
    }
    if !refeed {
        return reclaimed;
    }
    match ractor::call_t!(
        persistence,
        PersistenceMsg::Overdue,
        PERSISTENCE_CALL_MS,
        OVERDUE_GRACE,
        1000
    ) {
        Ok(Ok(overdue)) if !overdue.is_empty() => {
            tracing::info!(
                count = overdue.len(),
                "re-feeding overdue messages from PostgreSQL"
            );
            if let Err(e) = queue.ensure_group().await {
                tracing::debug!(error = %e, "ensuring the consumer group failed");
            }
            if let Err(e) = queue.push(&overdue).await {
                tracing::debug!(error = %e, "re-feeding overdue messages failed");
            }
        }
        Ok(Err(e)) => tracing::debug!(error = %e, "reading overdue messages failed"),
        _ => {}
    }
    reclaimed
}

/// How long a claim is held before another dispatcher may take it back: the
/// whole SMTP attempt plus recording its outcome must fit well inside.
/// A job claimed ahead waits behind at most `PREFETCH_PER_MAILER` sends of
/// its mailer, then takes one send itself.
/// The last minute is for recording the outcome, even through a database
/// hiccup: a lease that runs out after a send but before its record would
/// let the message be sent again.
pub fn lease_duration(config: &Config) -> Duration {
    config.smtp.timeout * (PREFETCH_PER_MAILER as u32 + 1) + Duration::from_secs(60)
}

/// The contract's per-attempt log line.
pub fn log_attempt(job: &MailJob, result: &AttemptResult) {
    tracing::info!(
        target: "email_service::delivery",
        uuid = %job.uuid,
        kind = job.kind.as_str(),
        attempt = job.attempt,
        outcome = result.outcome.as_str(),
        duration_ms = result.duration_ms,
        smtp_code = result.smtp_code,
        error = result.error.as_deref(),
        "delivery attempt"
    );
}
