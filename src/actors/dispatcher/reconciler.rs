//! The timer's duties, which bound how late a message can be after any
//! failure of Redis, a timer or the process.
//!
//! Every [`TICK`], due retries are promoted from the Redis schedule to the
//! stream. Every [`RECONCILE_EVERY`], leases that expired (their holder
//! died mid-send) are reclaimed as `crash` attempts, and what has been due
//! in PostgreSQL for longer than [`OVERDUE_GRACE`] is re-fed to the stream
//! (Redis lost it). Now and then, stream entries left pending by a consumer
//! that is gone are dropped.

use std::time::{Duration, Instant};

use ractor::ActorRef;

use super::event::Event;
use super::{DispatcherState, ask, report};
use crate::actors::persistence::PersistenceMsg;
use crate::actors::protocol::{DispatcherMsg, log_attempt_of};
use crate::queue::Queue;
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
/// Most retries promoted, or overdue messages re-fed, per round.
const ROUND_LIMIT: usize = 1000;

/// The tick, as a task owned by the dispatcher's state: it stops with the
/// dispatcher.
pub(super) fn start_timer(myself: &ActorRef<DispatcherMsg>) -> AbortOnDrop {
    let me = myself.clone();
    AbortOnDrop(tokio::spawn(async move {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if me.cast(DispatcherMsg::Own(Event::Tick)).is_err() {
                break;
            }
        }
    }))
}

impl DispatcherState {
    pub(super) fn tick(&mut self, myself: &ActorRef<DispatcherMsg>) {
        let reconcile = self.last_reconcile.elapsed() >= RECONCILE_EVERY;
        if reconcile {
            self.last_reconcile = Instant::now();
        }
        let reap = self.last_reap.elapsed() >= STALE_PENDING / 4;
        if reap {
            self.last_reap = Instant::now();
        }
        let queue = self.queue.clone();
        let persistence = self.registry.persistence();
        let consumer = self.consumer.clone();
        let metrics = self.metrics.clone();
        let me = myself.clone();
        tokio::spawn(async move {
            let now_ms = chrono::Utc::now().timestamp_millis();
            if let Err(e) = queue.promote_due(now_ms, ROUND_LIMIT).await {
                tracing::debug!(error = %e, "promoting due retries failed");
            }
            let mut depth = None;
            if reconcile {
                depth = queue.depth().await.ok();
                if let Some(p) = persistence {
                    let reclaimed = reconcile_with_postgres(&queue, &p).await;
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
            report(&me, Event::TickDone(depth));
        });
    }
}

/// Reclaims expired leases and re-feeds what Redis forgot.
///
/// A message is re-fed once it has been due for [`OVERDUE_GRACE`] plus the
/// age of the stream's backlog: a wake-up still waiting its turn in the
/// stream is not duplicated, while one that was lost (a failed push, a
/// claim that failed) is found however long the backlog lasts, and then
/// waits no longer than the messages around it.
async fn reconcile_with_postgres(queue: &Queue, persistence: &ActorRef<PersistenceMsg>) -> u64 {
    let mut reclaimed = 0;
    match ask(Some(persistence.clone()), PersistenceMsg::ReclaimExpired).await {
        Ok(taken) if !taken.is_empty() => {
            reclaimed = taken.len() as u64;
            tracing::warn!(
                count = taken.len(),
                "reclaimed expired leases (a sender died mid-send)"
            );
            for r in &taken {
                log_attempt_of(r.uuid, r.settled.kind, r.attempt, &r.result());
            }
            let retries: Vec<_> = taken.iter().filter_map(|r| r.settled.retry_due()).collect();
            if let Err(e) = queue.schedule(&retries).await {
                tracing::debug!(error = %e, "scheduling reclaimed retries failed");
            }
        }
        Err(e) => tracing::debug!(error = %e, "reclaiming leases failed"),
        Ok(_) => {}
    }
    let backlog = match queue.backlog_age().await {
        Ok(age) => age,
        Err(e) => {
            tracing::debug!(error = %e, "reading the backlog's age failed");
            Duration::ZERO
        }
    };
    let overdue = ask(Some(persistence.clone()), |reply| {
        PersistenceMsg::Overdue(OVERDUE_GRACE + backlog, ROUND_LIMIT as i64, reply)
    });
    match overdue.await {
        Ok(overdue) if !overdue.is_empty() => {
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
        Err(e) => tracing::debug!(error = %e, "reading overdue messages failed"),
        Ok(_) => {}
    }
    reclaimed
}
