//! Operator actions on one stored message (cancel, resend), each one
//! transaction: find the message, change it with a conditional `UPDATE`
//! whose `WHERE status = ANY(...)` lists the statuses the action may change,
//! and read back the view the client is answered with.
//!
//! The conditional `UPDATE` is what makes an action safe beside delivery: a
//! claim is itself `UPDATE ... WHERE status = 'queued'`, so a cancel and a
//! claim of the same row serialize on its lock and the second one finds
//! the row no longer in the status it asked for. Exactly one of them wins.
//! Releases, reclaims and outcomes only touch `sending` rows under their own
//! lease token, so none of them can bring a cancelled message back.

use tokio_postgres::GenericClient;

use super::conn::{Pool, checkout};
use super::error::StoreError;
use super::read::{MessageRef, get_on, table};
use super::webhooks::{self, Outbox};
use crate::domain::control::Action;
use crate::domain::{MessageKind, Status};

#[derive(Debug, Clone)]
pub struct ActionRequest {
    pub kind: MessageKind,
    pub at: MessageRef,
    pub action: Action,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ActionOutcome {
    /// The message was changed; `body` is its view afterwards, as JSON text.
    Changed {
        id: i64,
        body: String,
    },
    /// The message is in a status the action may not change.
    Refused {
        status: Status,
    },
    NotFound,
}

/// The `UPDATE` of an action: `$1` the id, `$2` the statuses it may change.
fn update_sql(kind: MessageKind, action: Action) -> String {
    let set = match action {
        Action::Cancel => "status = 'cancelled', next_attempt_at = NULL".to_owned(),
        // The new series numbers its attempts after every earlier one.
        Action::Retry { .. } => format!(
            "status = 'queued', retry_count = 0, next_attempt_at = now(),
             attempt_base = (SELECT COALESCE(max(number), 0) FROM delivery_attempts
                             WHERE kind = '{k}' AND message_id = $1)",
            k = kind.as_str()
        ),
    };
    format!(
        "UPDATE {t} SET {set}, updated_at = now()
         WHERE id = $1 AND status = ANY($2) RETURNING id",
        t = table(kind)
    )
}

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
    let from: Vec<&str> = req.action.applies_to().iter().map(|s| s.as_str()).collect();
    let changed = tx
        .query_opt(&update_sql(req.kind, req.action), &[&id, &from])
        .await?;
    if changed.is_none() {
        // Read after the UPDATE: if a claim won the race, this is the
        // status it left, which is what the client must be told.
        let row = tx
            .query_one(
                &format!("SELECT status FROM {} WHERE id = $1", table(req.kind)),
                &[&id],
            )
            .await?;
        tx.rollback().await?;
        conn.release();
        let status: String = row.try_get(0)?;
        let status = Status::parse(&status)
            .ok_or_else(|| StoreError::Unavailable(format!("unknown status {status:?}")))?;
        return Ok(ActionOutcome::Refused { status });
    }
    if matches!(req.action, Action::Cancel) {
        webhooks::record(&tx, outbox, req.kind, &[id], &[]).await?;
    }
    let view = get_on(&tx, req.kind, MessageRef::Id(id))
        .await?
        .ok_or_else(|| StoreError::Unavailable("a changed message vanished".into()))?;
    let body = serde_json::to_string(&view)
        .map_err(|e| StoreError::Unavailable(format!("serializing a message: {e}")))?;
    tx.commit().await?;
    conn.release();
    Ok(ActionOutcome::Changed { id, body })
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
