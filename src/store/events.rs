//! The record of what operators did to each message (`message_events`):
//! one row per change, written by [`record`] inside the transaction of the
//! change itself, so the detail view's `events` never shows a change that
//! was rolled back nor misses one that was committed. Rows are only added.
//!
//! Anything else that must happen atomically with an operator's change (an
//! outbox row, say) belongs beside the call to [`record`] in
//! `control::change`, on the same transaction.

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio_postgres::GenericClient;

use super::error::StoreError;
use crate::domain::MessageKind;
use crate::domain::control::Action;

/// Who asked for a change: the request it came with, and whether it was a
/// bulk action.
#[derive(Debug, Clone)]
pub struct Origin {
    pub request_id: String,
    pub bulk: bool,
}

/// One event as the detail view shows it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct EventView {
    /// `cancelled` or `resent`.
    pub what: String,
    pub at: DateTime<Utc>,
    pub request_id: Option<String>,
    /// The status the message left.
    pub from_status: String,
    /// A resend's `force`; absent for a cancel.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub force: Option<bool>,
    pub bulk: bool,
}

/// Records that `action` changed each of `ids`, which left the statuses
/// `from` (in the same order): one statement, on the caller's transaction.
pub async fn record(
    tx: &impl GenericClient,
    kind: MessageKind,
    action: Action,
    ids: &[i64],
    from: &[String],
    origin: &Origin,
) -> Result<(), StoreError> {
    let force = match action {
        Action::Retry { force } => Some(force),
        Action::Cancel => None,
    };
    tx.execute(
        "INSERT INTO message_events (kind, message_id, what, request_id, from_status, force, bulk)
         SELECT $1, m, $2, $3, f, $4, $5 FROM unnest($6::bigint[], $7::text[]) AS t(m, f)",
        &[
            &kind.as_str(),
            &action.event(),
            &origin.request_id,
            &force,
            &origin.bulk,
            &ids,
            &from,
        ],
    )
    .await?;
    Ok(())
}

/// A message's events, oldest first.
pub async fn of_message(
    conn: &impl GenericClient,
    kind: MessageKind,
    id: i64,
) -> Result<Vec<EventView>, StoreError> {
    let rows = conn
        .query(
            "SELECT what, at, request_id, from_status, force, bulk FROM message_events
             WHERE kind = $1 AND message_id = $2 ORDER BY id",
            &[&kind.as_str(), &id],
        )
        .await?;
    rows.iter()
        .map(|r| {
            Ok(EventView {
                what: r.try_get(0)?,
                at: r.try_get(1)?,
                request_id: r.try_get(2)?,
                from_status: r.try_get(3)?,
                force: r.try_get(4)?,
                bulk: r.try_get(5)?,
            })
        })
        .collect()
}
