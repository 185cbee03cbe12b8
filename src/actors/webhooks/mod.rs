//! The `Webhooks` actor: delivers the status events of the outbox
//! (`store::webhooks`) to their receivers, signed, with retries.
//!
//! Every [`TICK`] it claims due events, as many as it has room for under
//! `WEBHOOK_CONCURRENCY`, each under a lease that outlasts one attempt
//! (`WEBHOOK_TIMEOUT` + [`LEASE_MARGIN`]); each claimed event is posted by
//! a task of its own, which records the result and reports back. So a slow
//! or hanging receiver holds at most that many tasks and connections of its
//! own pool, never a mailer or a connection of the delivery path. After a
//! failed attempt n the event is due again after the n-th wait of
//! `WEBHOOK_RETRY_SCHEDULE`, and past the last one it is given up
//! (`failed`); a `410 Gone` gives it up at once (`gone`).
//!
//! Like persistence it talks to no other actor and keeps its message type
//! beside it; the HTTP layer asks it for the event list and requeues. It
//! waits on nothing in its handler, so it always answers `Report`. A
//! restart loses nothing: an event whose attempt was cut off is due again
//! when its lease ends, and goes out with the same `webhook-id`.

mod sender;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use serde::Serialize;
use tokio::task::JoinSet;

use self::sender::{Attempt, Sender};
use super::work::run_within;
use crate::config::Config;
use crate::metrics::{Metrics, WebhookLabels};
use crate::store::webhooks::{self, Claimed, EventPage, EventQuery, RequeueOutcome, Settle};
use crate::store::{self, Pool, StoreError};
use crate::util::AbortOnDrop;

/// Upper bound of a request's database work (list, requeue), so that the
/// HTTP layer answers `503` before its own timeout.
const REQUEST_WITHIN: Duration = Duration::from_millis(2500);
/// How often due events are looked for (an idle tick is one index probe).
const TICK: Duration = Duration::from_millis(250);
/// A lease outlasts its attempt by this much, so that the attempt's result
/// is written before anyone else may take the event.
const LEASE_MARGIN: Duration = Duration::from_secs(2);
/// How often the pending events are counted (for `/healthz` and `/metrics`).
const COUNT_EVERY: u32 = 20;
/// How often delivered and given-up events past retention are purged
/// (every minute, the first 2 s after the start: a purge runs only while
/// the pool has an idle connection, which the first claims leave).
const PURGE_EVERY: u32 = 240;
const PURGE_FIRST: u32 = 8;

pub struct Webhooks;

pub enum WebhooksMsg {
    Report(RpcReplyPort<WebhooksReport>),
    /// A page of events, for `GET /api/webhooks/events/`.
    List(EventQuery, RpcReplyPort<Result<EventPage, StoreError>>),
    /// A given-up event back to pending, for `POST .../{id}/retry/`.
    Requeue(i64, RpcReplyPort<Result<RequeueOutcome, StoreError>>),
    Tick,
    /// From the claim task.
    Claimed(Result<Vec<Claimed>, StoreError>),
    /// From a delivery task, its event settled (or its result lost), and
    /// whether it was delivered.
    Done(bool),
    /// From the count task.
    Counted(Result<i64, StoreError>),
}

pub struct WebhooksArgs {
    pub config: Arc<Config>,
    pub metrics: Arc<Metrics>,
    /// Its own small pool: a backlog of events cannot take connections from
    /// requests or delivery.
    pub pool: Pool,
    pub schema_ready: Arc<AtomicBool>,
}

pub struct WebhooksState {
    config: Arc<Config>,
    metrics: Arc<Metrics>,
    pool: Pool,
    schema_ready: Arc<AtomicBool>,
    sender: Option<Sender>,
    /// The attempts under way, each in its own task. Owned here so that a
    /// stopped or crashed actor leaves none running: an attempt cut off is
    /// due again when its lease ends.
    deliveries: JoinSet<()>,
    in_flight: usize,
    claiming: bool,
    /// How many events the claim under way (or the last one) asked for.
    asked: usize,
    ticks: u32,
    pending: Option<i64>,
    last_error: Option<String>,
    _timer: AbortOnDrop,
    purge_run: Option<AbortOnDrop>,
}

/// What the actor says of itself in `/healthz`.
#[derive(Debug, Clone, Serialize)]
pub struct WebhooksReport {
    pub enabled: bool,
    pub endpoints: usize,
    pub in_flight: usize,
    pub max_in_flight: usize,
    /// Events waiting for an attempt, at the last count.
    pub pending: Option<i64>,
    /// The last error of the outbox itself (the database), not a receiver's.
    pub last_error: Option<String>,
}

impl Actor for Webhooks {
    type Msg = WebhooksMsg;
    type State = WebhooksState;
    type Arguments = WebhooksArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        let w = &args.config.webhooks;
        let sender = if w.enabled() {
            Some(Sender::new(w.key(), w.timeout, w.concurrency)?)
        } else {
            None
        };
        let me = myself.clone();
        let timer = AbortOnDrop(tokio::spawn(async move {
            let mut tick = tokio::time::interval(TICK);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                if me.cast(WebhooksMsg::Tick).is_err() {
                    break;
                }
            }
        }));
        Ok(WebhooksState {
            config: args.config,
            metrics: args.metrics,
            pool: args.pool,
            schema_ready: args.schema_ready,
            sender,
            deliveries: JoinSet::new(),
            in_flight: 0,
            claiming: false,
            asked: 0,
            ticks: 0,
            pending: None,
            last_error: None,
            _timer: timer,
            purge_run: None,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let ready = state.schema_ready.load(Ordering::Acquire);
        match msg {
            WebhooksMsg::Report(reply) => {
                let w = &state.config.webhooks;
                let _ = reply.send(WebhooksReport {
                    enabled: w.enabled(),
                    endpoints: w.urls.len(),
                    in_flight: state.in_flight,
                    max_in_flight: w.concurrency,
                    pending: state.pending,
                    last_error: state.last_error.clone(),
                });
            }
            WebhooksMsg::List(query, reply) => {
                let pool = state.pool.clone();
                run_within(ready, REQUEST_WITHIN, reply, async move {
                    webhooks::list(&pool, &query).await
                });
            }
            WebhooksMsg::Requeue(id, reply) => {
                let pool = state.pool.clone();
                run_within(ready, REQUEST_WITHIN, reply, async move {
                    webhooks::requeue(&pool, id).await
                });
            }
            WebhooksMsg::Tick if ready => {
                state.ticks = state.ticks.wrapping_add(1);
                state.claim(&myself);
                if state.sender.is_some() && state.ticks % COUNT_EVERY == 1 {
                    state.count(&myself);
                }
                if state.ticks % PURGE_EVERY == PURGE_FIRST {
                    state.purge();
                }
            }
            WebhooksMsg::Tick => {}
            WebhooksMsg::Claimed(Ok(events)) => {
                state.claiming = false;
                state.last_error = None;
                // As many as asked for: more may be due, and attempts that
                // ended while this claim ran left room for them.
                let more = events.len() >= state.asked;
                for event in events {
                    state.deliver(&myself, event);
                }
                if more {
                    state.claim(&myself);
                }
            }
            WebhooksMsg::Claimed(Err(e)) => {
                state.claiming = false;
                state.note_error("claiming events", &e);
            }
            WebhooksMsg::Done(delivered) => {
                state.in_flight = state.in_flight.saturating_sub(1);
                while state.deliveries.try_join_next().is_some() {}
                // A receiver that answers gets the next event at once; after
                // a failure the next claim waits for the tick. A receiver
                // that refuses at once (down) would otherwise turn the
                // backlog into a loop of claims and results as fast as the
                // database goes, taking it from mail: this way failing
                // attempts are at most WEBHOOK_CONCURRENCY per tick.
                if delivered {
                    state.claim(&myself);
                }
            }
            WebhooksMsg::Counted(Ok(n)) => {
                state.pending = Some(n);
                state.metrics.webhook_queue_depth.set(n);
            }
            WebhooksMsg::Counted(Err(e)) => state.note_error("counting events", &e),
        }
        Ok(())
    }
}

impl WebhooksState {
    fn room(&self) -> usize {
        self.config
            .webhooks
            .concurrency
            .saturating_sub(self.in_flight)
    }

    fn note_error(&mut self, what: &str, e: &StoreError) {
        if self.last_error.is_none() {
            tracing::warn!(target: "email_service::webhooks", error = %e, "{what} failed");
        }
        self.last_error = Some(format!("{what}: {e}"));
    }

    /// Claims as many due events as there is room for, unless a claim is
    /// already under way.
    fn claim(&mut self, myself: &ActorRef<WebhooksMsg>) {
        let room = self.room();
        if self.sender.is_none() || self.claiming || room == 0 {
            return;
        }
        self.claiming = true;
        self.asked = room;
        let pool = self.pool.clone();
        let lease = self.config.webhooks.timeout + LEASE_MARGIN;
        let me = myself.clone();
        tokio::spawn(async move {
            let claimed = webhooks::claim(&pool, room as i64, lease).await;
            let _ = me.cast(WebhooksMsg::Claimed(claimed));
        });
    }

    fn deliver(&mut self, myself: &ActorRef<WebhooksMsg>, event: Claimed) {
        let Some(sender) = self.sender.clone() else {
            return;
        };
        self.in_flight += 1;
        let pool = self.pool.clone();
        let metrics = self.metrics.clone();
        let schedule = self.config.webhooks.retry_schedule.clone();
        let me = myself.clone();
        self.deliveries.spawn(async move {
            let attempt = sender.attempt(&event).await;
            let settle = settle(&attempt, event.attempt, &schedule);
            log_attempt(&event, &attempt, settle);
            observe(&metrics, &attempt, settle);
            let code = attempt.status.map(i32::from);
            if let Err(e) =
                webhooks::finish(&pool, &event, settle, code, attempt.error.as_deref()).await
            {
                // The lease ends by itself: the event is attempted again.
                tracing::warn!(
                    target: "email_service::webhooks",
                    event_id = %event.event_id,
                    error = %e,
                    "recording a webhook attempt failed; it will be attempted again"
                );
            }
            let _ = me.cast(WebhooksMsg::Done(attempt.delivered()));
        });
    }

    fn count(&self, myself: &ActorRef<WebhooksMsg>) {
        let pool = self.pool.clone();
        let me = myself.clone();
        tokio::spawn(async move {
            let _ = me.cast(WebhooksMsg::Counted(webhooks::pending(&pool).await));
        });
    }

    fn purge(&mut self) {
        if self.purge_run.as_ref().is_some_and(|r| !r.0.is_finished()) {
            return;
        }
        let pool = self.pool.clone();
        let retention = self.config.webhooks.retention;
        self.purge_run = Some(AbortOnDrop(tokio::spawn(async move {
            let per_batch = store::CHECKOUT_TIMEOUT + store::STATEMENT_TIMEOUT;
            match webhooks::purge_finished(&pool, retention, per_batch).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(deleted = n, "purged finished webhook events"),
                Err(e) => tracing::warn!(error = %e, "purging webhook events failed"),
            }
        })));
    }
}

/// What attempt number `attempt` leaves its event as.
fn settle(attempt: &Attempt, number: i32, schedule: &[Duration]) -> Settle {
    if attempt.delivered() {
        Settle::Delivered
    } else if attempt.gone() {
        Settle::Gone
    } else {
        match schedule.get(number.max(1) as usize - 1) {
            Some(wait) => Settle::Retry(*wait),
            None => Settle::Failed,
        }
    }
}

fn outcome_name(settle: Settle) -> &'static str {
    match settle {
        Settle::Delivered => "delivered",
        Settle::Retry(_) => "retry",
        Settle::Failed => "failed",
        Settle::Gone => "gone",
    }
}

/// The per-attempt log line: the event, the receiver's host (never the
/// whole URL, which may carry a token), the answer and how long it took.
fn log_attempt(event: &Claimed, attempt: &Attempt, settle: Settle) {
    let host = event
        .url
        .parse::<hyper::Uri>()
        .ok()
        .and_then(|u| u.host().map(str::to_owned))
        .unwrap_or_default();
    tracing::info!(
        target: "email_service::webhooks",
        event_id = %event.event_id,
        url_host = %host,
        attempt = event.attempt,
        status_code = attempt.status,
        duration_ms = attempt.duration.as_secs_f64() * 1000.0,
        outcome = outcome_name(settle),
        error = attempt.error.as_deref(),
        "webhook attempt"
    );
}

fn observe(metrics: &Metrics, attempt: &Attempt, settle: Settle) {
    metrics
        .webhook_attempts
        .get_or_create(&WebhookLabels {
            outcome: outcome_name(settle).to_owned(),
        })
        .inc();
    metrics
        .webhook_duration
        .observe(attempt.duration.as_secs_f64());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failed(status: Option<u16>) -> Attempt {
        Attempt {
            status,
            error: Some("no".into()),
            duration: Duration::ZERO,
        }
    }

    #[test]
    fn the_schedule_decides_retries_and_410_stops_them() {
        let schedule = [Duration::from_secs(5), Duration::from_secs(60)];
        let ok = Attempt {
            status: Some(204),
            error: None,
            duration: Duration::ZERO,
        };
        assert_eq!(settle(&ok, 1, &schedule), Settle::Delivered);
        assert_eq!(
            settle(&failed(Some(500)), 1, &schedule),
            Settle::Retry(schedule[0])
        );
        assert_eq!(
            settle(&failed(None), 2, &schedule),
            Settle::Retry(schedule[1])
        );
        assert_eq!(settle(&failed(None), 3, &schedule), Settle::Failed);
        assert_eq!(settle(&failed(Some(410)), 1, &schedule), Settle::Gone);
    }
}
