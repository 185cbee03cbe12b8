//! Operator actions (cancel, resend) on stored messages: one message per
//! transaction ([`act`]), or many in short batches (`bulk`). Both go
//! through [`change`], which locks the rows still in a status the action
//! may change, changes them and records an event for each, all on the
//! caller's transaction.
//!
//! The lock is what makes an action safe beside delivery: a claim is itself
//! `UPDATE ... WHERE status = 'queued'`, so a cancel and a claim of the same
//! row serialize on its lock, and the second one re-reads the row and finds
//! it no longer in the status it asked for. Exactly one of them wins.
//! Releases, reclaims and outcomes only touch `sending` rows under their own
//! lease token, so none of them can bring a cancelled message back.

use std::time::Duration;

use tokio_postgres::GenericClient;

use super::conn::{Pool, checkout};
use super::error::StoreError;
use super::events::{self, Origin};
use super::keys::{self, KeyClaim};
use super::read::{MessageRef, get_on, table};
use super::webhooks::{self, Outbox};
use crate::domain::control::Action;
use crate::domain::{IdempotencyKey, MessageKind, Status};

#[derive(Debug, Clone)]
pub struct ActionRequest {
    pub kind: MessageKind,
    pub at: MessageRef,
    pub action: Action,
    pub key: Option<IdempotencyKey>,
    pub key_ttl: Duration,
    pub origin: Origin,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ActionOutcome {
    /// The message was changed; `body` is its view afterwards, as JSON text.
    Changed {
        id: i64,
        body: String,
    },
    /// The message is in a status the action may not change; `body` is the
    /// `409` answer.
    Refused {
        status: Status,
        body: String,
    },
    /// The same `Idempotency-Key` and request were answered before.
    Replayed {
        status: u16,
        body: String,
    },
    /// The `Idempotency-Key` was used with another request.
    KeyConflict,
    NotFound,
}

/// The `UPDATE` of an action, for the rows `$1` (already locked).
fn update_sql(kind: MessageKind, action: Action) -> String {
    let t = table(kind);
    let set = match action {
        Action::Cancel => "status = 'cancelled', next_attempt_at = NULL".to_owned(),
        // The new series numbers its attempts after every earlier one.
        Action::Retry { .. } => format!(
            "status = 'queued', retry_count = 0, next_attempt_at = now(),
             attempt_base = (SELECT COALESCE(max(number), 0) FROM delivery_attempts
                             WHERE kind = '{k}' AND message_id = {t}.id)",
            k = kind.as_str()
        ),
    };
    format!("UPDATE {t} SET {set}, updated_at = now() WHERE id = ANY($1)")
}

/// Applies `action` to those of `ids` still in a status it may change,
/// and records an event for each, on `tx`. Returns the ids changed.
pub(super) async fn change(
    tx: &impl GenericClient,
    kind: MessageKind,
    action: Action,
    ids: &[i64],
    origin: &Origin,
    outbox: &Outbox,
) -> Result<Vec<i64>, StoreError> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let from: Vec<&str> = action.applies_to().iter().map(|s| s.as_str()).collect();
    // In id order, so that two bulk actions over the same rows cannot
    // deadlock. A row a claim holds is waited for, then re-read.
    let locked = tx
        .query(
            &format!(
                "SELECT id, status FROM {} WHERE id = ANY($1) AND status = ANY($2)
                 ORDER BY id FOR UPDATE",
                table(kind)
            ),
            &[&ids, &from],
        )
        .await?;
    if locked.is_empty() {
        return Ok(Vec::new());
    }
    let changed: Vec<i64> = locked
        .iter()
        .map(|r| r.try_get(0))
        .collect::<Result<_, _>>()?;
    let prior: Vec<String> = locked
        .iter()
        .map(|r| r.try_get(1))
        .collect::<Result<_, _>>()?;
    tx.execute(&update_sql(kind, action), &[&changed]).await?;
    events::record(tx, kind, action, &changed, &prior, origin).await?;
    if matches!(action, Action::Cancel) {
        webhooks::record(tx, outbox, kind, &changed, &[]).await?;
    }
    Ok(changed)
}

/// One operator action on one message, in one transaction with its event
/// and its `Idempotency-Key` record. A refusal is remembered under the key
/// as well: it is the answer that request got.
pub async fn act(
    pool: &Pool,
    req: &ActionRequest,
    outbox: &Outbox,
) -> Result<ActionOutcome, StoreError> {
    let mut conn = checkout(pool).await?;
    let tx = conn.transaction().await?;
    let Some(id) = resolve(&tx, req.kind, req.at).await? else {
        tx.rollback().await?;
        conn.release();
        return Ok(ActionOutcome::NotFound);
    };
    let scope = req.action.key_scope(req.kind, false);
    if let Some(key) = &req.key {
        let fingerprint = req.action.fingerprint(id);
        let early = match keys::claim(&tx, &scope, key, &fingerprint, req.key_ttl).await? {
            KeyClaim::Claimed => None,
            KeyClaim::Replay { status, body } => Some(ActionOutcome::Replayed { status, body }),
            KeyClaim::Conflict => Some(ActionOutcome::KeyConflict),
        };
        if let Some(outcome) = early {
            tx.rollback().await?;
            conn.release();
            return Ok(outcome);
        }
    }
    let changed = change(&tx, req.kind, req.action, &[id], &req.origin, outbox).await?;
    // `refused`: the status that kept the message from changing.
    let (code, body, refused) = if changed.is_empty() {
        // Read after the lock: if a claim won the race, this is the
        // status it left, which is what the client must be told.
        let row = tx
            .query_one(
                &format!("SELECT status FROM {} WHERE id = $1", table(req.kind)),
                &[&id],
            )
            .await?;
        let status: String = row.try_get(0)?;
        let status = Status::parse(&status)
            .ok_or_else(|| StoreError::Unavailable(format!("unknown status {status:?}")))?;
        (409, req.action.refusal_body(status), Some(status))
    } else {
        let view = get_on(&tx, req.kind, MessageRef::Id(id))
            .await?
            .ok_or_else(|| StoreError::Unavailable("a changed message vanished".into()))?;
        let body = serde_json::to_string(&view)
            .map_err(|e| StoreError::Unavailable(format!("serializing a message: {e}")))?;
        (req.action.success_code(), body, None)
    };
    if let Some(key) = &req.key {
        keys::save(&tx, &scope, key, Some(id), code, &body).await?;
    }
    tx.commit().await?;
    conn.release();
    Ok(match refused {
        Some(status) => ActionOutcome::Refused { status, body },
        None => ActionOutcome::Changed { id, body },
    })
}

/// The id of the message a client named, if it exists.
async fn resolve(
    conn: &impl GenericClient,
    kind: MessageKind,
    at: MessageRef,
) -> Result<Option<i64>, StoreError> {
    let (column, value) = at.lookup();
    let sql = format!("SELECT id FROM {} WHERE {column} = $1", table(kind));
    let row = conn.query_opt(&sql, &[value]).await?;
    Ok(row.map(|r| r.try_get(0)).transpose()?)
}
