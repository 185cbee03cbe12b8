//! The accept path: storing a new message, alone or in a batch, and the
//! idempotency records that let a client retry safely.
//!
//! An accept commits the message row (status `queued`,
//! `next_attempt_at` = its `send_at` if that is ahead, else `now()`;
//! `GREATEST` skips a null) and its idempotency record in one transaction,
//! so a `202` always stands for a committed, deliverable message. The answer
//! is stored as its exact JSON text, so a replay is byte-identical.
//!
//! Idempotency has two sources: the `Idempotency-Key` header, kept in
//! `idempotency_keys` per endpoint until it expires, and a client-chosen body
//! `uuid`, unique for good in the message table. Both are claimed by an
//! `INSERT ... ON CONFLICT` whose unique index makes a concurrent duplicate
//! wait for the first transaction and then see its committed row, which it
//! replays: "the others wait for it and replay its answer". Accepts with
//! neither cannot conflict with anything, and share one commit
//! ([`accept_batch`]).

use std::collections::HashMap;
use std::sync::LazyLock;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use tokio_postgres::types::ToSql;
use uuid::Uuid;

use super::conn::{Pool, checkout};
use super::error::StoreError;
use super::keys::{self, KeyClaim};
use super::purge;
use super::read::table;
use crate::domain::{
    Fingerprint, IdempotencyKey, MessageKind, NewContact, NewMessage, NewNotification, Status,
};

#[derive(Debug, Clone)]
pub struct AcceptRequest {
    pub message: NewMessage,
    pub key: Option<IdempotencyKey>,
    pub fingerprint: Fingerprint,
    pub key_ttl: Duration,
}

impl AcceptRequest {
    /// Without an idempotency key or a client-chosen uuid, an accept cannot
    /// conflict with anything, so it can share a commit with others.
    pub fn is_plain(&self) -> bool {
        self.key.is_none() && self.message.uuid().is_none()
    }
}

/// What the client is answered. `body` is the exact JSON text, so that a
/// replay is byte-identical to the first answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AcceptOutcome {
    Accepted {
        status: u16,
        body: String,
        id: i64,
    },
    Replayed {
        status: u16,
        body: String,
    },
    /// The key or uuid was used before with another body.
    Conflict(&'static str),
}

#[derive(Serialize)]
struct AcceptedBody<'a> {
    id: i64,
    uuid: Uuid,
    status: &'static str,
    message: &'a str,
}

fn accepted_body(kind: MessageKind, id: i64, uuid: Uuid) -> String {
    serde_json::to_string(&AcceptedBody {
        id,
        uuid,
        status: Status::Queued.as_str(),
        message: kind.accepted_message(),
    })
    .expect("plain struct serializes")
}

/// The multi-row INSERT of one kind, its parameters numbered from `first`
/// (`unnest` keeps the text the same whatever the batch size, so one plan
/// serves every batch).
fn batch_insert(kind: MessageKind, first: usize) -> String {
    let p = |i: usize| format!("${}", first + i);
    match kind {
        MessageKind::Contact => format!(
            "INSERT INTO contact_messages
               (uuid, name, email, message, request_hash, next_attempt_at)
             SELECT u, n, e, m, h, GREATEST(now(), a)
             FROM unnest({}::uuid[], {}::text[], {}::text[], {}::text[], {}::bytea[],
                         {}::timestamptz[]) AS t(u, n, e, m, h, a)
             RETURNING uuid, id",
            p(0),
            p(1),
            p(2),
            p(3),
            p(4),
            p(5)
        ),
        MessageKind::Notify => format!(
            "INSERT INTO notifications
               (uuid, recipient, subject, body, html, metadata, request_hash, next_attempt_at)
             SELECT u, r, s, b, h, m, x, GREATEST(now(), a)
             FROM unnest({}::uuid[], {}::text[], {}::text[], {}::text[], {}::text[],
                         {}::jsonb[], {}::bytea[], {}::timestamptz[])
               AS t(u, r, s, b, h, m, x, a)
             RETURNING uuid, id",
            p(0),
            p(1),
            p(2),
            p(3),
            p(4),
            p(5),
            p(6),
            p(7)
        ),
    }
}

/// The accept batch's statements: contacts only, notifications only, and
/// both in one statement (so that a mixed batch is still one autocommitted
/// round trip). Built once.
static BATCH_INSERTS: LazyLock<[String; 3]> = LazyLock::new(|| {
    [
        batch_insert(MessageKind::Contact, 1),
        batch_insert(MessageKind::Notify, 1),
        format!(
            "WITH c AS ({}), n AS ({}) SELECT uuid, id FROM c UNION ALL SELECT uuid, id FROM n",
            batch_insert(MessageKind::Contact, 1),
            batch_insert(MessageKind::Notify, 7)
        ),
    ]
});

/// Group commit: stores many plain accepts (no idempotency key, no client
/// uuid, so no conflict is possible) with one multi-row INSERT, a single
/// autocommitted statement: one round trip and one commit for the whole
/// batch, no `BEGIN`/`COMMIT` exchanges. Returns each message's outcome, in
/// input order. The batch commits or fails as a whole; only its own
/// requests see a failure.
pub async fn accept_batch(
    pool: &Pool,
    items: &[(NewMessage, Fingerprint)],
) -> Result<Vec<AcceptOutcome>, StoreError> {
    let uuids: Vec<Uuid> = items.iter().map(|_| Uuid::new_v4()).collect();
    // Each kind's rows, with the uuid chosen for them and their fingerprint.
    let mut contacts: Vec<(&NewContact, Uuid, &[u8])> = Vec::new();
    let mut notes: Vec<(&NewNotification, Uuid, &[u8])> = Vec::new();
    for ((message, fingerprint), &uuid) in items.iter().zip(&uuids) {
        match message {
            NewMessage::Contact(c) => contacts.push((c, uuid, fingerprint.as_bytes())),
            NewMessage::Notify(n) => notes.push((n, uuid, fingerprint.as_bytes())),
        }
    }
    let c_uuids: Vec<Uuid> = contacts.iter().map(|r| r.1).collect();
    let c_names: Vec<&str> = contacts.iter().map(|r| r.0.name.as_str()).collect();
    let c_emails: Vec<&str> = contacts.iter().map(|r| r.0.email.as_ref()).collect();
    let c_messages: Vec<&str> = contacts.iter().map(|r| r.0.message.as_str()).collect();
    let c_hashes: Vec<&[u8]> = contacts.iter().map(|r| r.2).collect();
    let c_send_at: Vec<Option<DateTime<Utc>>> = contacts.iter().map(|r| r.0.send_at).collect();
    let n_uuids: Vec<Uuid> = notes.iter().map(|r| r.1).collect();
    let n_to: Vec<&str> = notes.iter().map(|r| r.0.to.as_ref()).collect();
    let n_subjects: Vec<&str> = notes.iter().map(|r| r.0.subject.as_str()).collect();
    let n_bodies: Vec<&str> = notes.iter().map(|r| r.0.body.as_str()).collect();
    let n_html: Vec<Option<&str>> = notes.iter().map(|r| r.0.html.as_deref()).collect();
    let n_metadata: Vec<Option<Value>> = notes
        .iter()
        .map(|r| r.0.metadata.clone().map(Value::Object))
        .collect();
    let n_hashes: Vec<&[u8]> = notes.iter().map(|r| r.2).collect();
    let n_send_at: Vec<Option<DateTime<Utc>>> = notes.iter().map(|r| r.0.send_at).collect();
    let contact_params: [&(dyn ToSql + Sync); 6] = [
        &c_uuids,
        &c_names,
        &c_emails,
        &c_messages,
        &c_hashes,
        &c_send_at,
    ];
    let notify_params: [&(dyn ToSql + Sync); 8] = [
        &n_uuids,
        &n_to,
        &n_subjects,
        &n_bodies,
        &n_html,
        &n_metadata,
        &n_hashes,
        &n_send_at,
    ];

    let mut conn = checkout(pool).await?;
    // Prepared once per connection. Only the tables the batch needs are
    // named: preparing touches a table, and a lock on one must not stall
    // accepts for the other.
    let (sql, params): (&str, Vec<&(dyn ToSql + Sync)>) =
        match (contacts.is_empty(), notes.is_empty()) {
            (false, true) => (&BATCH_INSERTS[0], contact_params.to_vec()),
            (true, false) => (&BATCH_INSERTS[1], notify_params.to_vec()),
            _ => (
                &BATCH_INSERTS[2],
                contact_params
                    .iter()
                    .chain(&notify_params)
                    .copied()
                    .collect(),
            ),
        };
    let statement = conn.prepared(sql).await?;
    let rows = conn.query(&statement, &params).await?;
    conn.release();
    let mut ids: HashMap<Uuid, i64> = HashMap::with_capacity(items.len());
    for r in &rows {
        ids.insert(r.try_get(0)?, r.try_get(1)?);
    }
    items
        .iter()
        .zip(&uuids)
        .map(|((m, _), uuid)| {
            let id = *ids
                .get(uuid)
                .ok_or_else(|| StoreError::Unavailable("a batched row was not returned".into()))?;
            Ok(AcceptOutcome::Accepted {
                status: 202,
                body: accepted_body(m.kind(), id, *uuid),
                id,
            })
        })
        .collect()
}

pub async fn accept(pool: &Pool, req: &AcceptRequest) -> Result<AcceptOutcome, StoreError> {
    let kind = req.message.kind();
    let scope = kind.as_str();
    let hash = req.fingerprint.as_bytes();
    let mut conn = checkout(pool).await?;
    let tx = conn.transaction().await?;

    if let Some(key) = &req.key {
        match keys::claim(&tx, scope, key, &req.fingerprint, req.key_ttl).await? {
            KeyClaim::Claimed => {}
            KeyClaim::Replay { status, body } => {
                tx.rollback().await?;
                conn.release();
                return Ok(AcceptOutcome::Replayed { status, body });
            }
            KeyClaim::Conflict => {
                tx.rollback().await?;
                conn.release();
                return Ok(AcceptOutcome::Conflict(
                    "Idempotency-Key was already used with a different request body.",
                ));
            }
        }
    }

    let uuid = req.message.uuid().unwrap_or_else(Uuid::new_v4);
    let inserted = match &req.message {
        NewMessage::Contact(c) => {
            tx.query_opt(
                "INSERT INTO contact_messages (uuid, name, email, message, request_hash, next_attempt_at)
                 VALUES ($1, $2, $3, $4, $5, GREATEST(now(), $6))
                 ON CONFLICT (uuid) DO NOTHING
                 RETURNING id",
                &[&uuid, &c.name, &c.email.as_ref(), &c.message, &hash, &c.send_at],
            )
            .await?
        }
        NewMessage::Notify(n) => {
            let metadata = n.metadata.clone().map(Value::Object);
            tx.query_opt(
                "INSERT INTO notifications
                   (uuid, recipient, subject, body, html, metadata, request_hash, next_attempt_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, GREATEST(now(), $8))
                 ON CONFLICT (uuid) DO NOTHING
                 RETURNING id",
                &[
                    &uuid,
                    &n.to.as_ref(),
                    &n.subject,
                    &n.body,
                    &n.html,
                    &metadata,
                    &hash,
                    &n.send_at,
                ],
            )
            .await?
        }
    };

    let id: i64 = match inserted {
        Some(row) => row.try_get(0)?,
        None => {
            // The body uuid exists already: the same request is a replay,
            // another one a conflict.
            let row = tx
                .query_one(
                    &format!(
                        "SELECT id, request_hash FROM {} WHERE uuid = $1",
                        table(kind)
                    ),
                    &[&uuid],
                )
                .await?;
            tx.rollback().await?;
            conn.release();
            let id: i64 = row.try_get(0)?;
            let stored_hash: Vec<u8> = row.try_get(1)?;
            if stored_hash != hash {
                return Ok(AcceptOutcome::Conflict(
                    "A message with this uuid already exists with a different request body.",
                ));
            }
            return Ok(AcceptOutcome::Replayed {
                status: 202,
                body: accepted_body(kind, id, uuid),
            });
        }
    };

    let body = accepted_body(kind, id, uuid);
    if let Some(key) = &req.key {
        keys::save(&tx, scope, key, Some(id), 202, &body).await?;
    }
    tx.commit().await?;
    conn.release();
    Ok(AcceptOutcome::Accepted {
        status: 202,
        body,
        id,
    })
}

/// Deletes every expired idempotency record, in batches (see
/// [`purge::in_batches`]): a purge keeps up with keys however fast they
/// expire, and no statement holds locks or a connection for long. Returns
/// the number deleted.
pub async fn purge_expired_keys(pool: &Pool, per_batch: Duration) -> Result<u64, StoreError> {
    purge::in_batches(
        pool,
        per_batch,
        "DELETE FROM idempotency_keys WHERE ctid IN (
           SELECT ctid FROM idempotency_keys WHERE expires_at <= now()
           LIMIT $1 FOR UPDATE SKIP LOCKED)
         AND expires_at <= now()",
        &[],
    )
    .await
}
