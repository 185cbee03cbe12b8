//! The `Persistence` actor: the only door to PostgreSQL.
//!
//! Its mailbox is never the bottleneck: each request is handed to a spawned
//! task holding a pooled connection and a deadline, and the task answers the
//! caller's reply port directly. Concurrency is therefore bounded by the pool,
//! not serialized behind one `handle`, and a hung database costs a request at
//! most [`OP_TIMEOUT`] before it turns into `Unavailable` (a `503`).
//!
//! At start it prepares the schema in the background (create the database if
//! missing, apply migrations), retrying with a log line while PostgreSQL is
//! unreachable; until that is done every request answers `Unavailable`. The
//! "schema is ready" flag belongs to the supervisor, so a restarted
//! persistence actor does not redo it.

mod group_commit;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use serde::Serialize;
use tokio::sync::mpsc;

use uuid::Uuid;

use self::group_commit::{BATCH_QUEUE, Pending, group_commit};
use crate::config::RetryPolicy;
use crate::domain::MessageKind;
use crate::domain::delivery::{AttemptResult, ClaimRef, MailJob, Reclaimed, Settled};
use crate::store::webhooks::Outbox;
use crate::store::{
    self, AcceptOutcome, AcceptRequest, ActionOutcome, ActionRequest, BatchOutcome, BulkBatch,
    BulkKey, KeyClaim, ListQuery, MessageRef, MessageView, Page, Pool, StoreError,
};
use crate::store::{delivery, recovery};
use crate::util::AbortOnDrop;

use super::work::run_within;

/// Upper bound for one unit of database work, checkout included. Keeps the
/// `503` of a hung database within the contract's ~3 s.
pub const OP_TIMEOUT: Duration = Duration::from_millis(2500);

/// How often expired idempotency keys are purged. Keys expire continuously
/// (`IDEMPOTENCY_TTL_HOURS` after each keyed request), and each purge deletes
/// all that have expired, in batches; a purge that finds none is one index
/// probe. So purging often costs next to nothing and keeps the expired rows
/// down to about this long's worth of keyed traffic. A purge still running
/// at the next tick is not doubled.
const PURGE_EVERY: Duration = Duration::from_secs(10);
/// After a failed purge (the database is in trouble), the next one waits
/// this long instead.
const PURGE_BACKOFF: Duration = Duration::from_secs(60);

pub struct Persistence;

pub enum PersistenceMsg {
    /// Store a new message; answered by the deadline (the caller's own,
    /// a little before it gives up), never after.
    Accept(
        Box<AcceptRequest>,
        Instant,
        RpcReplyPort<Result<AcceptOutcome, StoreError>>,
    ),
    List(ListQuery, RpcReplyPort<Result<Page, StoreError>>),
    /// An operator's cancel or resend of one message.
    Act(
        Box<ActionRequest>,
        RpcReplyPort<Result<ActionOutcome, StoreError>>,
    ),
    /// One batch of a bulk action (see `store::bulk_batch`).
    BulkBatch(
        Box<BulkBatch>,
        RpcReplyPort<Result<BatchOutcome, StoreError>>,
    ),
    /// A bulk request's `Idempotency-Key`: before the first batch, what an
    /// earlier request with it answered; after the last, the answer kept.
    BulkLookup(
        Box<BulkKey>,
        RpcReplyPort<Result<Option<KeyClaim>, StoreError>>,
    ),
    BulkFinish(
        Box<BulkKey>,
        String,
        RpcReplyPort<Result<KeyClaim, StoreError>>,
    ),
    Get(
        MessageKind,
        MessageRef,
        RpcReplyPort<Result<Option<MessageView>, StoreError>>,
    ),
    Claim(
        Vec<(MessageKind, i64)>,
        Uuid,
        Duration,
        RpcReplyPort<Result<Vec<MailJob>, StoreError>>,
    ),
    /// Outcomes of finished attempts, recorded in one commit.
    FinishBatch(
        Vec<(MailJob, AttemptResult)>,
        RpcReplyPort<Result<Vec<Option<Settled>>, StoreError>>,
    ),
    ReclaimExpired(RpcReplyPort<Result<Vec<Reclaimed>, StoreError>>),
    /// Claims that were never handed to a sender, back to `queued`.
    Release(Vec<ClaimRef>, RpcReplyPort<Result<Vec<bool>, StoreError>>),
    Overdue(
        Duration,
        i64,
        RpcReplyPort<Result<Vec<(MessageKind, i64)>, StoreError>>,
    ),
    /// A real round trip to the database, for `/healthz`.
    Ping(RpcReplyPort<Result<(), StoreError>>),
    Report(RpcReplyPort<PersistenceReport>),
    /// Sent by the preparation task once the schema is in place.
    SchemaReady,
    PurgeExpiredKeys,
}

pub struct PersistenceArgs {
    pub pool: Pool,
    /// Claims, outcomes and the reconciler's work (see
    /// [`store::bookkeeping_config`]).
    pub bookkeeping: Pool,
    pub pg_config: tokio_postgres::Config,
    pub schema_ready: Arc<AtomicBool>,
    pub retry: RetryPolicy,
    /// Where status events are recorded, with the outcomes that cause them.
    pub outbox: Arc<Outbox>,
}

pub struct PersistenceState {
    pool: Pool,
    bookkeeping: Pool,
    /// Plain accepts go to the group-commit loop.
    batcher: mpsc::Sender<Pending>,
    _batch_loop: AbortOnDrop,
    retry: RetryPolicy,
    outbox: Arc<Outbox>,
    schema_ready: Arc<AtomicBool>,
    _prepare: Option<AbortOnDrop>,
    _purge: AbortOnDrop,
    /// The purge under way, if any.
    purge_run: Option<AbortOnDrop>,
}

/// What the actor says of itself in `/healthz`.
#[derive(Debug, Clone, Serialize)]
pub struct PersistenceReport {
    pub schema_ready: bool,
    pub pool_connections: u32,
    pub pool_idle: u32,
    /// The delivery bookkeeping pool.
    pub bookkeeping_connections: u32,
    pub bookkeeping_idle: u32,
}

impl Actor for Persistence {
    type Msg = PersistenceMsg;
    type State = PersistenceState;
    type Arguments = PersistenceArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        let prepare = (!args.schema_ready.load(Ordering::Acquire)).then(|| {
            let me = myself.clone();
            let config = args.pg_config.clone();
            AbortOnDrop(tokio::spawn(async move {
                prepare_schema(&config).await;
                let _ = me.cast(PersistenceMsg::SchemaReady);
            }))
        });
        let me = myself.clone();
        let purge = AbortOnDrop(tokio::spawn(async move {
            let mut tick = tokio::time::interval(PURGE_EVERY);
            loop {
                tick.tick().await;
                if me.cast(PersistenceMsg::PurgeExpiredKeys).is_err() {
                    break;
                }
            }
        }));
        let (batcher, pending) = mpsc::channel(BATCH_QUEUE);
        let batch_loop = AbortOnDrop(tokio::spawn(group_commit(args.pool.clone(), pending)));
        Ok(PersistenceState {
            batcher,
            _batch_loop: batch_loop,
            pool: args.pool,
            bookkeeping: args.bookkeeping,
            retry: args.retry,
            outbox: args.outbox,
            schema_ready: args.schema_ready,
            _prepare: prepare,
            _purge: purge,
            purge_run: None,
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let ready = state.schema_ready.load(Ordering::Acquire);
        let pool = state.pool.clone();
        let bookkeeping = state.bookkeeping.clone();
        #[cfg(feature = "fault-injection")]
        if let PersistenceMsg::Accept(req, _, _) = &msg {
            crate::faults::on_accept(&req.message);
        }
        match msg {
            PersistenceMsg::Accept(req, deadline, reply) if ready && req.is_plain() => {
                let pending = Pending {
                    item: (req.message, req.fingerprint),
                    deadline,
                    reply,
                };
                if let Err(e) = state.batcher.try_send(pending) {
                    let pending = match e {
                        mpsc::error::TrySendError::Full(p)
                        | mpsc::error::TrySendError::Closed(p) => p,
                    };
                    let _ = pending.reply.send(Err(StoreError::Unavailable(
                        "too many accepts waiting for the database".into(),
                    )));
                }
            }
            PersistenceMsg::Accept(req, deadline, reply) => {
                // A keyed accept is its own transaction, bounded by the
                // caller's deadline rather than the general one.
                let budget = deadline
                    .saturating_duration_since(Instant::now())
                    .min(OP_TIMEOUT);
                run_within(ready, budget, reply, async move {
                    store::accept(&pool, &req).await
                });
            }
            PersistenceMsg::List(q, reply) => {
                run(ready, reply, async move { store::list(&pool, &q).await });
            }
            PersistenceMsg::Act(req, reply) => {
                let outbox = state.outbox.clone();
                run(ready, reply, async move {
                    store::act(&pool, &req, &outbox).await
                });
            }
            PersistenceMsg::BulkBatch(b, reply) => {
                let outbox = state.outbox.clone();
                run(ready, reply, async move {
                    store::bulk_batch(&pool, &b, &outbox).await
                });
            }
            PersistenceMsg::BulkLookup(k, reply) => {
                run(
                    ready,
                    reply,
                    async move { store::bulk_lookup(&pool, &k).await },
                );
            }
            PersistenceMsg::BulkFinish(k, body, reply) => {
                run(ready, reply, async move {
                    store::bulk_finish(&pool, &k, &body).await
                });
            }
            PersistenceMsg::Get(kind, at, reply) => {
                run(
                    ready,
                    reply,
                    async move { store::get(&pool, kind, at).await },
                );
            }
            PersistenceMsg::Claim(jobs, token, lease, reply) => {
                run(ready, reply, async move {
                    delivery::claim(&bookkeeping, &jobs, token, lease).await
                });
            }
            PersistenceMsg::FinishBatch(done, reply) => {
                let retry = state.retry.clone();
                let outbox = state.outbox.clone();
                run(ready, reply, async move {
                    delivery::finish_batch(&bookkeeping, &done, &retry, &outbox).await
                });
            }
            PersistenceMsg::ReclaimExpired(reply) => {
                let retry = state.retry.clone();
                let outbox = state.outbox.clone();
                run(ready, reply, async move {
                    recovery::reclaim_expired(&bookkeeping, &retry, &outbox).await
                });
            }
            PersistenceMsg::Release(jobs, reply) => {
                run(ready, reply, async move {
                    recovery::release(&bookkeeping, &jobs).await
                });
            }
            PersistenceMsg::Overdue(grace, limit, reply) => {
                run(ready, reply, async move {
                    recovery::overdue(&bookkeeping, grace, limit).await
                });
            }
            PersistenceMsg::Ping(reply) => {
                // The ping works before the schema exists: it reports the
                // database, not our tables. Both pools: delivery stalls when
                // bookkeeping cannot get a connection, even if requests can.
                run(true, reply, async move {
                    tokio::try_join!(store::ping(&pool), store::ping(&bookkeeping)).map(|_| ())
                });
            }
            PersistenceMsg::Report(reply) => {
                let pool = state.pool.state();
                let bookkeeping = state.bookkeeping.state();
                let _ = reply.send(PersistenceReport {
                    schema_ready: ready,
                    pool_connections: pool.connections,
                    pool_idle: pool.idle_connections,
                    bookkeeping_connections: bookkeeping.connections,
                    bookkeeping_idle: bookkeeping.idle_connections,
                });
            }
            PersistenceMsg::SchemaReady => {
                state.schema_ready.store(true, Ordering::Release);
                state._prepare = None;
            }
            PersistenceMsg::PurgeExpiredKeys if ready => {
                if state
                    .purge_run
                    .as_ref()
                    .is_some_and(|run| !run.0.is_finished())
                {
                    return Ok(());
                }
                state.purge_run = Some(AbortOnDrop(tokio::spawn(async move {
                    // A batch: a checkout, then one statement under the
                    // server's statement timeout.
                    let per_batch = store::CHECKOUT_TIMEOUT + store::STATEMENT_TIMEOUT;
                    match store::purge_expired_keys(&pool, per_batch).await {
                        Ok(0) => {}
                        Ok(n) => tracing::info!(deleted = n, "purged expired idempotency keys"),
                        Err(e) => {
                            tracing::warn!(error = %e, "purging idempotency keys failed");
                            // This run stays unfinished meanwhile, so no tick
                            // starts another.
                            tokio::time::sleep(PURGE_BACKOFF).await;
                        }
                    }
                })));
            }
            PersistenceMsg::PurgeExpiredKeys => {}
        }
        Ok(())
    }
}

/// Runs one unit of work in its own task, under [`OP_TIMEOUT`], and answers
/// the reply port. A caller that gave up is not worked for.
fn run<T: Send + 'static>(
    ready: bool,
    reply: RpcReplyPort<Result<T, StoreError>>,
    work: impl Future<Output = Result<T, StoreError>> + Send + 'static,
) {
    run_within(ready, OP_TIMEOUT, reply, work);
}

/// Creates the database and applies migrations, retrying until it works.
async fn prepare_schema(config: &tokio_postgres::Config) {
    let mut delay = Duration::from_millis(250);
    loop {
        // Reaching the database is bounded; applying migrations is not: one
        // may legitimately run long, or wait for another instance's lock
        // (a dead network path still ends it, through the TCP user timeout).
        let reached = tokio::time::timeout(
            Duration::from_secs(30),
            store::migrate::ensure_database(config),
        )
        .await
        .unwrap_or_else(|_| {
            Err(StoreError::Unavailable(
                "timed out reaching the database".into(),
            ))
        });
        match reached {
            Ok(()) => match store::migrate::run(config).await {
                Ok(()) => {
                    tracing::info!("database schema is ready");
                    return;
                }
                Err(e) => {
                    tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "applying migrations failed; retrying")
                }
            },
            Err(e) => {
                tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "database not ready; retrying")
            }
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}
