//! The webhook outbox (`webhook_events`, `sql/0006_webhooks.sql`): events
//! recorded with the outcomes that cause them, claimed for delivery under a
//! lease, settled, listed, requeued and purged.
//!
//! **Recorded in the outcome's transaction.** [`record`] is a statement run
//! by whoever changes a message's status (an outcome batch, a reclaim, an
//! operator's cancel), on that transaction, after the change: so an event
//! exists if and only if its outcome was committed, and a crash between the
//! two cannot happen. It is set-based (one statement per kind for a whole
//! batch), reads the status each message now has, and derives the event type
//! from it; with webhooks off it is never called.
//!
//! **Claimed with a lease.** [`claim`] takes due rows with `FOR UPDATE SKIP
//! LOCKED`, so instances sharing the database never take the same row, and
//! moves each row's `next_attempt_at` past the attempt's end: a process
//! killed mid-delivery leaves the row due again once that time passes, and
//! the event goes out again with the same `webhook-id`. [`finish`] writes an
//! attempt's result only under the claim's token.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use tokio_postgres::types::ToSql;
use tokio_postgres::{GenericClient, Statement};
use uuid::Uuid;

use super::conn::{Pool, checkout};
use super::error::StoreError;
use super::read::table;
use crate::config::Config;
use crate::domain::MessageKind;

/// What recording needs to know: where events go and which are wanted.
/// Built once from the configuration; [`Outbox::is_on`] is false when
/// webhooks are off, and then nothing is recorded.
#[derive(Debug, Clone, Default)]
pub struct Outbox {
    urls: Vec<String>,
    types: Vec<String>,
    /// The `recipient` of a contact message's events.
    contact_recipient: String,
}

impl Outbox {
    pub fn new(config: &Config) -> Self {
        let w = &config.webhooks;
        Self {
            urls: w.urls.clone(),
            types: w.events.iter().map(|t| t.as_str().to_owned()).collect(),
            contact_recipient: config.contact_recipient.clone(),
        }
    }

    pub fn is_on(&self) -> bool {
        !self.urls.is_empty() && !self.types.is_empty()
    }
}

/// An RFC 3339 UTC timestamp with microseconds, whatever the session's
/// time zone.
fn rfc3339(expr: &str) -> String {
    format!("to_char({expr} AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')")
}

/// The recording statement of a kind: `$1` message ids, `$2` their SMTP
/// codes, `$3` the wanted types, `$4` the receivers (`$5` the contact
/// recipient). Of the ids, only the messages the running transaction has
/// changed get an event, so a caller may pass a whole batch, some of whose
/// changes did not happen (a lost lease, a status that did not allow it),
/// and send this statement without waiting for theirs. One event id per
/// message (`MATERIALIZED`, so every receiver's row shares it); the body
/// holds no mail body and no contact text.
pub(super) fn record_sql(kind: MessageKind) -> &'static str {
    static SQL: std::sync::LazyLock<[String; 2]> = std::sync::LazyLock::new(|| {
        [MessageKind::Contact, MessageKind::Notify].map(build_record_sql)
    });
    match kind {
        MessageKind::Contact => &SQL[0],
        MessageKind::Notify => &SQL[1],
    }
}

fn build_record_sql(kind: MessageKind) -> String {
    let (recipient, metadata) = match kind {
        MessageKind::Contact => ("$5::text", "NULL::jsonb"),
        MessageKind::Notify => ("m.recipient", "m.metadata"),
    };
    // `json_build_object` writes the text at once, keys in this order
    // (`jsonb` would build a binary value, sort it and print it again: work
    // paid on the delivery path).
    let fields = format!(
        "'kind', '{k}', 'id', m.id, 'uuid', m.uuid, 'status', m.status,
         'recipient', {recipient}, 'retry_count', m.retry_count,
         'error_message', m.error_message, 'smtp_code', o.smtp_code,
         'metadata', {metadata}",
        k = kind.as_str(),
    );
    format!(
        "WITH e AS MATERIALIZED (
           SELECT 'msg_' || gen_random_uuid() AS event_id, t.type, m.id, m.uuid,
             json_build_object(
               'type', t.type,
               'timestamp', {now},
               'data', CASE WHEN t.type = 'message.retrying'
                 THEN json_build_object({fields}, 'next_attempt_at', {next})
                 ELSE json_build_object({fields}) END
             )::text AS payload
           FROM unnest($1::bigint[], $2::int4[]) AS o(id, smtp_code)
           JOIN {t} m ON m.id = o.id
           CROSS JOIN LATERAL (SELECT CASE m.status
               WHEN 'sent' THEN 'message.sent' WHEN 'failed' THEN 'message.failed'
               WHEN 'queued' THEN 'message.retrying'
               WHEN 'cancelled' THEN 'message.cancelled' END AS type) t
           WHERE t.type = ANY($3::text[])
             -- Only the messages this transaction changed: a row version
             -- written by it carries its transaction id.
             AND m.xmin::text::bigint = txid_current() % 4294967296)
         INSERT INTO webhook_events
           (event_id, type, url, message_kind, message_id, message_uuid, payload)
         SELECT e.event_id, e.type, u.url, '{k}', e.id, e.uuid, e.payload
         FROM e CROSS JOIN unnest($4::text[]) AS u(url)",
        now = rfc3339("now()"),
        next = rfc3339("m.next_attempt_at"),
        k = kind.as_str(),
        t = table(kind),
    )
}

/// Records the events of messages of one kind whose status was just changed
/// on `client`'s transaction (`smtp_codes` beside `ids`, `None` where there
/// was no SMTP reply; shorter, or empty, reads as `None` for the rest). Call
/// it after the change, before the commit: ids whose message this
/// transaction did not change are skipped. It records nothing when the
/// outbox is off or `ids` is empty. For example, a cancel:
/// `webhooks::record(&tx, outbox, kind, &ids, &[]).await?`.
pub async fn record(
    client: &impl GenericClient,
    outbox: &Outbox,
    kind: MessageKind,
    ids: &[i64],
    smtp_codes: &[Option<i32>],
) -> Result<u64, StoreError> {
    if !outbox.is_on() || ids.is_empty() {
        return Ok(0);
    }
    let statement = client.prepare(record_sql(kind)).await?;
    Ok(record_with(client, &statement, outbox, kind, ids, smtp_codes).await?)
}

/// [`record`] with the statement of [`record_sql`] already prepared (the
/// outcome batch keeps it prepared on its connection).
pub(super) async fn record_with(
    client: &impl GenericClient,
    statement: &Statement,
    outbox: &Outbox,
    kind: MessageKind,
    ids: &[i64],
    smtp_codes: &[Option<i32>],
) -> Result<u64, tokio_postgres::Error> {
    let mut params: Vec<&(dyn ToSql + Sync)> = vec![&ids, &smtp_codes, &outbox.types, &outbox.urls];
    if kind == MessageKind::Contact {
        params.push(&outbox.contact_recipient);
    }
    client.execute(statement, &params).await
}

/// A row claimed for one delivery attempt.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub id: i64,
    /// The `webhook-id`.
    pub event_id: String,
    pub url: String,
    pub payload: String,
    /// This attempt's number (1-based).
    pub attempt: i32,
    pub lease_owner: Uuid,
}

/// Claims up to `limit` due rows for `lease`; rows another instance holds
/// are skipped, not waited for.
pub async fn claim(pool: &Pool, limit: i64, lease: Duration) -> Result<Vec<Claimed>, StoreError> {
    let owner = Uuid::new_v4();
    let conn = checkout(pool).await?;
    let rows = conn
        .query(
            "UPDATE webhook_events w SET
               next_attempt_at = now() + make_interval(secs => $2),
               lease_owner = $3, attempts = w.attempts + 1, updated_at = now()
             WHERE w.id IN (
               SELECT id FROM webhook_events
               WHERE status = 'pending' AND next_attempt_at <= now()
               ORDER BY next_attempt_at LIMIT $1
               FOR UPDATE SKIP LOCKED)
             AND w.status = 'pending'
             RETURNING w.id, w.event_id, w.url, w.payload, w.attempts",
            &[&limit, &lease.as_secs_f64(), &owner],
        )
        .await?;
    conn.release();
    rows.iter()
        .map(|r| {
            Ok(Claimed {
                id: r.try_get(0)?,
                event_id: r.try_get(1)?,
                url: r.try_get(2)?,
                payload: r.try_get(3)?,
                attempt: r.try_get(4)?,
                lease_owner: owner,
            })
        })
        .collect()
}

/// What an attempt leaves a row as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settle {
    Delivered,
    /// Due again after this wait.
    Retry(Duration),
    /// Retries used up.
    Failed,
    /// The receiver answered `410 Gone`: no more attempts.
    Gone,
}

/// Records an attempt's result, if the claim still holds the row. Returns
/// whether it did.
pub async fn finish(
    pool: &Pool,
    claimed: &Claimed,
    settle: Settle,
    status_code: Option<i32>,
    error: Option<&str>,
) -> Result<bool, StoreError> {
    let (status, delay) = match settle {
        Settle::Delivered => ("delivered", None),
        Settle::Retry(d) => ("pending", Some(d.as_secs_f64())),
        Settle::Failed => ("failed", None),
        Settle::Gone => ("gone", None),
    };
    let conn = checkout(pool).await?;
    let n = conn
        .execute(
            "UPDATE webhook_events SET status = $3,
               next_attempt_at = CASE WHEN $4::float8 IS NULL THEN next_attempt_at
                                      ELSE now() + make_interval(secs => $4::float8) END,
               last_status_code = $5, last_error = $6, lease_owner = NULL,
               finished_at = CASE WHEN $3 = 'pending' THEN NULL ELSE now() END,
               updated_at = now()
             WHERE id = $1 AND lease_owner = $2",
            &[
                &claimed.id,
                &claimed.lease_owner,
                &status,
                &delay,
                &status_code,
                &error,
            ],
        )
        .await?;
    conn.release();
    Ok(n == 1)
}

/// Events waiting for delivery (or a retry), counted up to a cap so that
/// a huge backlog costs a bounded scan.
pub async fn pending(pool: &Pool) -> Result<i64, StoreError> {
    let conn = checkout(pool).await?;
    let row = conn
        .query_one(
            "SELECT count(*) FROM (SELECT 1 FROM webhook_events
               WHERE status = 'pending' LIMIT 1000000) p",
            &[],
        )
        .await?;
    conn.release();
    Ok(row.try_get(0)?)
}

/// One event as the API shows it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct EventView {
    pub id: i64,
    pub event_id: String,
    #[serde(rename = "type")]
    pub event_type: String,
    pub url: String,
    pub status: String,
    pub attempts: i32,
    /// When it is due, while it is pending.
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub last_status_code: Option<i32>,
    pub last_error: Option<String>,
    pub message_kind: String,
    pub message_id: i64,
    pub message_uuid: Uuid,
    pub payload: Value,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
}

const VIEW_COLUMNS: &str = "id, event_id, type, url, status, attempts,
    CASE WHEN status = 'pending' THEN next_attempt_at END, last_status_code, last_error,
    message_kind, message_id, message_uuid, payload::jsonb, created_at, updated_at, finished_at";

fn view_from_row(r: &tokio_postgres::Row) -> Result<EventView, StoreError> {
    Ok(EventView {
        id: r.try_get(0)?,
        event_id: r.try_get(1)?,
        event_type: r.try_get(2)?,
        url: r.try_get(3)?,
        status: r.try_get(4)?,
        attempts: r.try_get(5)?,
        next_attempt_at: r.try_get(6)?,
        last_status_code: r.try_get(7)?,
        last_error: r.try_get(8)?,
        message_kind: r.try_get(9)?,
        message_id: r.try_get(10)?,
        message_uuid: r.try_get(11)?,
        payload: r.try_get(12)?,
        created_at: r.try_get(13)?,
        updated_at: r.try_get(14)?,
        finished_at: r.try_get(15)?,
    })
}

/// The statuses of an event, for `?status=`.
pub const EVENT_STATUSES: [&str; 4] = ["pending", "delivered", "failed", "gone"];

#[derive(Debug, Clone)]
pub struct EventQuery {
    pub status: Option<&'static str>,
    pub message: Option<Uuid>,
    pub page: u64,
    pub page_size: u64,
}

#[derive(Debug, Clone)]
pub struct EventPage {
    pub count: i64,
    pub results: Vec<EventView>,
}

/// A page of events, newest first.
pub async fn list(pool: &Pool, q: &EventQuery) -> Result<EventPage, StoreError> {
    const FILTER: &str =
        "($1::text IS NULL OR status = $1) AND ($2::uuid IS NULL OR message_uuid = $2)";
    let conn = checkout(pool).await?;
    let count: i64 = conn
        .query_one(
            &format!("SELECT count(*) FROM webhook_events WHERE {FILTER}"),
            &[&q.status, &q.message],
        )
        .await?
        .try_get(0)?;
    let limit = q.page_size as i64;
    let offset = (q.page.saturating_sub(1) * q.page_size) as i64;
    let rows = conn
        .query(
            &format!(
                "SELECT {VIEW_COLUMNS} FROM webhook_events WHERE {FILTER}
                 ORDER BY id DESC LIMIT $3 OFFSET $4"
            ),
            &[&q.status, &q.message, &limit, &offset],
        )
        .await?;
    conn.release();
    Ok(EventPage {
        count,
        results: rows.iter().map(view_from_row).collect::<Result<_, _>>()?,
    })
}

#[derive(Debug, Clone, PartialEq)]
pub enum RequeueOutcome {
    /// Pending again, due now, with a fresh attempt count.
    Requeued(Box<EventView>),
    /// Only a `failed` or `gone` event may be requeued.
    Refused {
        status: String,
    },
    NotFound,
}

/// Puts a given-up event back to `pending`, due now.
pub async fn requeue(pool: &Pool, id: i64) -> Result<RequeueOutcome, StoreError> {
    let conn = checkout(pool).await?;
    let row = conn
        .query_opt(
            &format!(
                "UPDATE webhook_events SET status = 'pending', attempts = 0,
                   next_attempt_at = now(), finished_at = NULL, lease_owner = NULL,
                   updated_at = now()
                 WHERE id = $1 AND status IN ('failed', 'gone')
                 RETURNING {VIEW_COLUMNS}"
            ),
            &[&id],
        )
        .await?;
    let outcome = match row {
        Some(row) => RequeueOutcome::Requeued(Box::new(view_from_row(&row)?)),
        None => match conn
            .query_opt("SELECT status FROM webhook_events WHERE id = $1", &[&id])
            .await?
        {
            Some(row) => RequeueOutcome::Refused {
                status: row.try_get(0)?,
            },
            None => RequeueOutcome::NotFound,
        },
    };
    conn.release();
    Ok(outcome)
}

/// Deletes delivered and given-up events that finished over `retention`
/// ago, in batches. Returns the number deleted.
pub async fn purge_finished(
    pool: &Pool,
    retention: Duration,
    per_batch: Duration,
) -> Result<u64, StoreError> {
    let secs = retention.as_secs_f64();
    super::purge::in_batches(
        pool,
        per_batch,
        "DELETE FROM webhook_events WHERE id IN (
           SELECT id FROM webhook_events
           WHERE status <> 'pending' AND finished_at < now() - make_interval(secs => $2)
           LIMIT $1 FOR UPDATE SKIP LOCKED)",
        &[&secs],
    )
    .await
}
