//! The group commit of plain accepts: concurrent requests without an
//! idempotency key or a client uuid share one multi-row `INSERT`.
//!
//! One commit runs at a time; while it runs, new accepts gather in the
//! queue and go together into the next, so the batch grows with the load
//! and a lone request commits at once, with no timer. Every request is
//! answered by its deadline: a request whose deadline is too close is
//! refused before anything is written, and a commit that outlives the
//! earliest deadline of its batch is cut off and answered "may have been
//! stored" (`InDoubt`), never "not stored".

use std::sync::Arc;
use std::time::Duration;

use ractor::RpcReplyPort;
use tokio::sync::{Semaphore, mpsc};
use tokio::time::Instant;

use crate::domain::{Fingerprint, NewMessage};
use crate::store::{self, AcceptOutcome, Pool, StoreError};

/// An accept waiting for its group commit.
pub(super) struct Pending {
    pub(super) item: (NewMessage, Fingerprint),
    /// Its answer is due by then: a commit that could end later is not
    /// started for it.
    pub(super) deadline: Instant,
    pub(super) reply: RpcReplyPort<Result<AcceptOutcome, StoreError>>,
}

/// Shortest time left for a commit to be worth starting for a request;
/// with less, it is refused before anything is written.
const MIN_COMMIT_WINDOW: Duration = Duration::from_millis(100);

/// Accepts waiting at most; past this, new ones are refused with a 503
/// rather than queued without bound.
pub(super) const BATCH_QUEUE: usize = 8192;
/// Rows in one commit at most.
const MAX_BATCH: usize = 512;
/// One commit runs at a time: while it runs, new accepts gather in the
/// queue and go together into the next one, so the batch grows with the
/// load and a lone request commits at once, with no timer. Measured with
/// 32 clients: 11,900 accepts/s with one commit at a time, 10,500 with two,
/// 9,500 with four (smaller batches cost more statements and WAL flushes).
///
/// A commit that takes longer than [`STRAGGLER`] (a lock wait, a slow
/// disk) must not hold every accept behind it, so the next batch may then
/// start beside it, up to [`SPARE_COMMITS`] more.
const STRAGGLER: Duration = Duration::from_millis(10);
const SPARE_COMMITS: usize = 3;

pub(super) async fn group_commit(pool: Pool, mut pending: mpsc::Receiver<Pending>) {
    let primary = Arc::new(Semaphore::new(1));
    let spare = Arc::new(Semaphore::new(SPARE_COMMITS));
    while let Some(first) = pending.recv().await {
        let slot = tokio::select! {
            biased;
            slot = primary.clone().acquire_owned() => slot,
            slot = async {
                tokio::time::sleep(STRAGGLER).await;
                spare.clone().acquire_owned().await
            } => slot,
        };
        let Ok(slot) = slot else {
            return;
        };
        let mut batch = Vec::with_capacity(16);
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match pending.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        // A caller that gave up got a 503: storing its message now would
        // deliver mail the client believes was refused. One whose deadline
        // is too close is refused now, while nothing is written, rather
        // than answered "maybe stored" later.
        let now = Instant::now();
        let (batch, late): (Vec<_>, Vec<_>) = batch
            .into_iter()
            .filter(|p| !p.reply.is_closed())
            .partition(|p| p.deadline.saturating_duration_since(now) >= MIN_COMMIT_WINDOW);
        for p in late {
            let _ = p.reply.send(Err(StoreError::Unavailable(
                "waited too long for a database commit".into(),
            )));
        }
        let Some(deadline) = batch.iter().map(|p| p.deadline).min() else {
            continue;
        };
        let pool = pool.clone();
        tokio::spawn(async move {
            // The slot is released when this commit is answered.
            let _slot = slot;
            let (items, replies): (Vec<_>, Vec<_>) =
                batch.into_iter().map(|p| (p.item, p.reply)).unzip();
            // Every request in the batch gets its answer by its deadline:
            // a commit that outlives the earliest one is cut off, and its
            // requests are told it may have been stored.
            let budget = deadline.saturating_duration_since(Instant::now());
            let result = tokio::time::timeout(budget, store::accept_batch(&pool, &items)).await;
            let failure = match result {
                Ok(Ok(outcomes)) => {
                    for (reply, outcome) in replies.into_iter().zip(outcomes) {
                        let _ = reply.send(Ok(outcome));
                    }
                    return;
                }
                Ok(Err(e)) => (e.may_have_committed(), e.to_string()),
                Err(_) => (true, "the database did not answer in time".to_owned()),
            };
            for reply in replies {
                let (in_doubt, why) = &failure;
                let _ = reply.send(Err(if *in_doubt {
                    StoreError::InDoubt(why.clone())
                } else {
                    StoreError::Unavailable(why.clone())
                }));
            }
        });
    }
}
