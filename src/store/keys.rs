//! `Idempotency-Key` records, for every endpoint that honours the header:
//! the two accepts and the operator actions. One record per (scope, key),
//! where the scope names the endpoint (`notify`, `notify.cancel`,
//! `contact.bulk_retry`, ...); it keeps the fingerprint of the request and
//! the exact answer given, replayed byte for byte.
//!
//! A key is claimed by an `INSERT ... ON CONFLICT` on the primary key, in
//! the transaction that does the work: a concurrent claimer of the same key
//! waits for that transaction, then sees its committed record and replays
//! it. An expired record is taken over as if it were not there.

use std::time::Duration;

use tokio_postgres::GenericClient;

use super::error::StoreError;
use crate::domain::{Fingerprint, IdempotencyKey};

/// What a key says about a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyClaim {
    /// The key is ours: do the work, then [`save`] its answer.
    Claimed,
    /// The same request was answered before: this answer, again.
    Replay { status: u16, body: String },
    /// The key was used with another request.
    Conflict,
}

/// Claims `key` in `scope` for a request, inside the caller's transaction.
pub async fn claim(
    tx: &impl GenericClient,
    scope: &str,
    key: &IdempotencyKey,
    fingerprint: &Fingerprint,
    ttl: Duration,
) -> Result<KeyClaim, StoreError> {
    // Takes over an expired record. A concurrent claimer of the same key
    // blocks here until the first transaction ends.
    let claimed = tx
        .query_opt(
            "INSERT INTO idempotency_keys (scope, key, request_hash, expires_at)
             VALUES ($1, $2, $3, now() + make_interval(secs => $4))
             ON CONFLICT (scope, key) DO UPDATE
               SET request_hash = EXCLUDED.request_hash,
                   expires_at = EXCLUDED.expires_at,
                   created_at = now(),
                   message_id = NULL, response_status = NULL, response_body = NULL
               WHERE idempotency_keys.expires_at <= now()
             RETURNING 1",
            &[
                &scope,
                &key.as_ref(),
                &fingerprint.as_bytes(),
                &ttl.as_secs_f64(),
            ],
        )
        .await?;
    if claimed.is_some() {
        return Ok(KeyClaim::Claimed);
    }
    lookup(tx, scope, key, fingerprint)
        .await?
        .ok_or_else(|| StoreError::Unavailable("an idempotency record vanished".into()))
}

/// What an unexpired record of `key` says about a request, without
/// claiming anything: `None` when there is none.
pub async fn lookup(
    conn: &impl GenericClient,
    scope: &str,
    key: &IdempotencyKey,
    fingerprint: &Fingerprint,
) -> Result<Option<KeyClaim>, StoreError> {
    let Some(row) = conn
        .query_opt(
            "SELECT request_hash, response_status, response_body
             FROM idempotency_keys WHERE scope = $1 AND key = $2 AND expires_at > now()",
            &[&scope, &key.as_ref()],
        )
        .await?
    else {
        return Ok(None);
    };
    let stored_hash: Vec<u8> = row.try_get(0)?;
    if stored_hash != fingerprint.as_bytes() {
        return Ok(Some(KeyClaim::Conflict));
    }
    let status: Option<i16> = row.try_get(1)?;
    let body: Option<String> = row.try_get(2)?;
    match (status, body) {
        (Some(status), Some(body)) => Ok(Some(KeyClaim::Replay {
            status: status as u16,
            body,
        })),
        _ => Err(StoreError::Unavailable(
            "idempotency record without a response".into(),
        )),
    }
}

/// Stores the answer to a claimed key, in the transaction that claimed it.
pub async fn save(
    tx: &impl GenericClient,
    scope: &str,
    key: &IdempotencyKey,
    message_id: Option<i64>,
    status: u16,
    body: &str,
) -> Result<(), StoreError> {
    tx.execute(
        "UPDATE idempotency_keys
         SET message_id = $3, response_status = $4, response_body = $5
         WHERE scope = $1 AND key = $2",
        &[&scope, &key.as_ref(), &message_id, &(status as i16), &body],
    )
    .await?;
    Ok(())
}
