//! Bulk operator actions: cancel or resend every message a filter matches,
//! in batches so that a million matching rows neither lock the table nor
//! hold a transaction for long.
//!
//! A batch is one short transaction: it reads the next [`BATCH`] matching
//! ids below the previous batch (newest first, by the primary key, no
//! locks), then changes those still in a status the action may change
//! through `control::change` (row locks on those rows only, an event
//! each). The caller runs batches until one comes back short. Rows added
//! after the run started have higher ids and are left alone; a row
//! changed by someone else meanwhile is re-read under its lock, so it is
//! changed at most once. Running the same bulk action again therefore
//! changes nothing.
//!
//! The `Idempotency-Key` of a bulk action cannot be held across many
//! transactions, so it is looked up before the first batch
//! ([`bulk_lookup`]) and claimed with the answer after the last
//! ([`bulk_finish`]). Two concurrent runs with one key split the changes
//! between them (each row once) and both answer the first run's counts.

use std::time::Duration;

use super::conn::{Pool, checkout};
use super::control::change;
use super::error::StoreError;
use super::events::Origin;
use super::filter::{conditions, refs};
use super::keys::{self, KeyClaim};
use super::read::table;
use super::webhooks::Outbox;
use crate::domain::MessageKind;
use crate::domain::control::Action;
use crate::domain::filter::Filter;
use crate::domain::{Fingerprint, IdempotencyKey};

/// Messages one batch reads; its transaction locks at most this many rows.
pub const BATCH: i64 = 1000;

#[derive(Debug, Clone)]
pub struct BulkBatch {
    pub kind: MessageKind,
    pub filter: Filter,
    pub action: Action,
    /// Ids below this one: where the previous batch stopped (`None` first).
    pub below: Option<i64>,
    pub origin: Origin,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchOutcome {
    /// Messages the filter matched in this batch, whatever their status.
    pub matched: u64,
    /// Those the action changed.
    pub changed: Vec<i64>,
    /// Where the next batch starts; `None` when this was the last.
    pub next: Option<i64>,
}

pub async fn bulk_batch(
    pool: &Pool,
    b: &BulkBatch,
    outbox: &Outbox,
) -> Result<BatchOutcome, StoreError> {
    let mut conn = checkout(pool).await?;
    let tx = conn.transaction().await?;
    let (cond, params) = conditions(b.kind, &b.filter);
    let below = b.below.unwrap_or(i64::MAX);
    let sql = format!(
        "SELECT id, status FROM {} WHERE {cond} AND id < ${}
         ORDER BY id DESC LIMIT {BATCH}",
        table(b.kind),
        params.len() + 1
    );
    let rows = tx.query(&sql, &refs(&params, &[&below])).await?;
    let applies: Vec<&str> = b.action.applies_to().iter().map(|s| s.as_str()).collect();
    let mut eligible = Vec::new();
    let mut last = None;
    for r in &rows {
        let id: i64 = r.try_get(0)?;
        let status: &str = r.try_get(1)?;
        if applies.contains(&status) {
            eligible.push(id);
        }
        last = Some(id);
    }
    let changed = change(&tx, b.kind, b.action, &eligible, &b.origin, outbox).await?;
    tx.commit().await?;
    conn.release();
    Ok(BatchOutcome {
        matched: rows.len() as u64,
        changed,
        next: last.filter(|_| rows.len() as i64 == BATCH),
    })
}

/// A bulk request's `Idempotency-Key`, with what it is checked against.
#[derive(Debug, Clone)]
pub struct BulkKey {
    pub scope: String,
    pub key: IdempotencyKey,
    pub fingerprint: Fingerprint,
    pub ttl: Duration,
}

/// What an earlier bulk request with this key says about this one, if any.
pub async fn bulk_lookup(pool: &Pool, k: &BulkKey) -> Result<Option<KeyClaim>, StoreError> {
    let conn = checkout(pool).await?;
    let found = keys::lookup(&*conn, &k.scope, &k.key, &k.fingerprint).await?;
    conn.release();
    Ok(found)
}

/// Claims `key` with the finished run's answer. If another run with the
/// key finished first, its record is what this request answers.
pub async fn bulk_finish(pool: &Pool, k: &BulkKey, body: &str) -> Result<KeyClaim, StoreError> {
    let mut conn = checkout(pool).await?;
    let tx = conn.transaction().await?;
    let claim = keys::claim(&tx, &k.scope, &k.key, &k.fingerprint, k.ttl).await?;
    if claim == KeyClaim::Claimed {
        keys::save(&tx, &k.scope, &k.key, None, 200, body).await?;
        tx.commit().await?;
    } else {
        tx.rollback().await?;
    }
    conn.release();
    Ok(claim)
}
