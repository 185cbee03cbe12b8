//! The read side: listing and fetching stored messages as the API shows
//! them, and the table and column names shared with delivery.
//!
//! Reads take no locks and change nothing. A view is read in one statement,
//! so its fields belong to one committed state of the row; a message's
//! attempts are read after it, and may include one that started since.
//! Every query names its columns, so the order [`content_from_row`] expects
//! is written down in one place, [`content_columns`].

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use tokio_postgres::GenericClient;
use tokio_postgres::types::ToSql;
use uuid::Uuid;

use super::conn::{Pool, checkout};
use super::error::StoreError;
use super::events::{self, EventView};
use super::filter::{conditions, refs};
use crate::domain::MessageKind;
use crate::domain::delivery::Content;
use crate::domain::filter::{Cursor, Filter};

pub(crate) fn table(kind: MessageKind) -> &'static str {
    match kind {
        MessageKind::Contact => "contact_messages",
        MessageKind::Notify => "notifications",
    }
}

/// The columns of a [`MessageView`], in the order `from_row` reads them.
fn columns(kind: MessageKind) -> String {
    format!(
        "id, uuid, status, retry_count, error_message, next_attempt_at, sent_at,
         created_at, updated_at, {}",
        content_columns(kind)
    )
}

/// A kind's content columns, in the order [`content_from_row`] reads
/// them.
pub(crate) fn content_columns(kind: MessageKind) -> &'static str {
    match kind {
        MessageKind::Contact => "name, email, message",
        MessageKind::Notify => "recipient, subject, body, html, metadata",
    }
}

/// A kind's content, read from [`content_columns`] starting at column
/// `first`.
pub(crate) fn content_from_row(
    kind: MessageKind,
    row: &tokio_postgres::Row,
    first: usize,
) -> Result<Content, StoreError> {
    Ok(match kind {
        MessageKind::Contact => Content::Contact {
            name: row.try_get(first)?,
            email: row.try_get(first + 1)?,
            message: row.try_get(first + 2)?,
        },
        MessageKind::Notify => Content::Notify {
            to: row.try_get(first)?,
            subject: row.try_get(first + 1)?,
            body: row.try_get(first + 2)?,
            html: row.try_get(first + 3)?,
            metadata: match row.try_get::<_, Option<Value>>(first + 4)? {
                Some(Value::Object(m)) => Some(m),
                _ => None,
            },
        },
    })
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct AttemptView {
    pub number: i32,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub outcome: Option<String>,
    pub smtp_code: Option<i32>,
    pub smtp_reply: Option<String>,
    pub error: Option<String>,
    pub duration_ms: Option<i64>,
}

/// A stored message as the API shows it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct MessageView {
    pub id: i64,
    pub uuid: Uuid,
    #[serde(flatten)]
    pub content: Content,
    pub status: String,
    pub retry_count: i32,
    pub error_message: Option<String>,
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub sent_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attempts: Option<Vec<AttemptView>>,
    /// What operators did to it, oldest first (the detail view only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub events: Option<Vec<EventView>>,
}

impl MessageView {
    fn from_row(kind: MessageKind, row: &tokio_postgres::Row) -> Result<Self, StoreError> {
        let content = content_from_row(kind, row, 9)?;
        Ok(Self {
            id: row.try_get(0)?,
            uuid: row.try_get(1)?,
            status: row.try_get(2)?,
            retry_count: row.try_get(3)?,
            error_message: row.try_get(4)?,
            next_attempt_at: row.try_get(5)?,
            sent_at: row.try_get(6)?,
            created_at: row.try_get(7)?,
            updated_at: row.try_get(8)?,
            content,
            attempts: None,
            events: None,
        })
    }
}

/// How a list is paged: by page number (`?page=`, an `OFFSET`) or from a
/// keyset cursor (`?cursor=`, an index range: as fast on the last page as
/// on the first, and not shifted by rows added meanwhile).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Paging {
    /// 1-based.
    Page(u64),
    Cursor(Cursor),
}

#[derive(Debug, Clone)]
pub struct ListQuery {
    pub kind: MessageKind,
    pub filter: Filter,
    pub paging: Paging,
    pub page_size: u64,
}

/// Lists count matching rows exactly up to this many; beyond it `count`
/// says this many and `count_capped` is set. An exact count of a million
/// rows reads a million index entries on every page; this reads at most
/// ten thousand (docs/operations.md).
pub const COUNT_CAP: i64 = 10_000;

#[derive(Debug, Clone)]
pub struct Page {
    pub count: i64,
    /// `count` is [`COUNT_CAP`] and more rows match.
    pub count_capped: bool,
    /// Newest first.
    pub results: Vec<MessageView>,
    /// More rows lie beyond the page in its paging direction: older ones,
    /// or for [`Cursor::Above`] newer ones.
    pub more: bool,
}

pub async fn list(pool: &Pool, q: &ListQuery) -> Result<Page, StoreError> {
    let conn = checkout(pool).await?;
    let (cond, params) = conditions(q.kind, &q.filter);
    let t = table(q.kind);
    let next = params.len() + 1;
    let count_sql = format!(
        "SELECT count(*) FROM (SELECT 1 FROM {t} WHERE {cond} LIMIT {}) s",
        COUNT_CAP + 1
    );
    // One row past the page tells whether there is more.
    let limit = (q.page_size + 1) as i64;
    let (range, order, offset) = match q.paging {
        Paging::Page(page) => ("TRUE".to_owned(), "DESC", (page - 1) * q.page_size),
        Paging::Cursor(Cursor::Newest) => ("TRUE".to_owned(), "DESC", 0),
        Paging::Cursor(Cursor::Below(id)) => (format!("id < {id}"), "DESC", 0),
        Paging::Cursor(Cursor::Above(id)) => (format!("id > {id}"), "ASC", 0),
    };
    let rows_sql = format!(
        "SELECT {} FROM {t} WHERE {cond} AND {range}
         ORDER BY id {order} LIMIT ${next} OFFSET ${}",
        columns(q.kind),
        next + 1
    );
    let skipped = offset;
    let offset = offset as i64;
    let rows = conn
        .query(&rows_sql, &refs(&params, &[&limit, &offset]))
        .await?;
    let mut results = rows
        .iter()
        .map(|r| MessageView::from_row(q.kind, r))
        .collect::<Result<Vec<_>, _>>()?;
    let more = results.len() as u64 > q.page_size;
    results.truncate(q.page_size as usize);
    // A page that starts at the newest match and has nothing beyond it
    // holds every match: its rows are the count. This spares the second
    // read of the rows a rare filter (a search) costs.
    let from_newest = match q.paging {
        Paging::Page(_) => Some(skipped),
        Paging::Cursor(Cursor::Newest) => Some(0),
        Paging::Cursor(_) => None,
    };
    let count = match from_newest {
        Some(skipped) if !more && (skipped == 0 || !results.is_empty()) => {
            (skipped + results.len() as u64) as i64
        }
        _ => conn
            .query_one(&count_sql, &refs(&params, &[]))
            .await?
            .try_get(0)?,
    };
    conn.release();
    if order == "ASC" {
        results.reverse();
    }
    Ok(Page {
        count: count.min(COUNT_CAP),
        count_capped: count > COUNT_CAP,
        results,
        more,
    })
}

/// How a client names one message: its number or its uuid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageRef {
    Id(i64),
    Uuid(Uuid),
}

impl MessageRef {
    pub fn parse(raw: &str) -> Option<Self> {
        if let Ok(id) = raw.parse::<i64>() {
            return (id > 0).then_some(Self::Id(id));
        }
        Uuid::parse_str(raw).ok().map(Self::Uuid)
    }

    /// The column this reference names and its value, for `WHERE column = $n`.
    pub(super) fn lookup(&self) -> (&'static str, &(dyn ToSql + Sync)) {
        match self {
            Self::Id(id) => ("id", id),
            Self::Uuid(uuid) => ("uuid", uuid),
        }
    }
}

pub async fn get(
    pool: &Pool,
    kind: MessageKind,
    at: MessageRef,
) -> Result<Option<MessageView>, StoreError> {
    let conn = checkout(pool).await?;
    let view = get_on(&*conn, kind, at).await?;
    conn.release();
    Ok(view)
}

/// [`get`] on a given client: an operator action reads the view it answers
/// inside its own transaction, so the answer shows the change it made.
pub(crate) async fn get_on(
    conn: &impl GenericClient,
    kind: MessageKind,
    at: MessageRef,
) -> Result<Option<MessageView>, StoreError> {
    let (column, value) = at.lookup();
    let sql = format!(
        "SELECT {} FROM {} WHERE {column} = $1",
        columns(kind),
        table(kind)
    );
    let Some(row) = conn.query_opt(&sql, &[value]).await? else {
        return Ok(None);
    };
    let mut view = MessageView::from_row(kind, &row)?;
    let attempts = conn
        .query(
            "SELECT number, started_at, finished_at, outcome, smtp_code, smtp_reply, error, duration_ms
             FROM delivery_attempts WHERE kind = $1 AND message_id = $2 ORDER BY number",
            &[&kind.as_str(), &view.id],
        )
        .await?;
    view.attempts = Some(
        attempts
            .iter()
            .map(|r| {
                Ok(AttemptView {
                    number: r.try_get(0)?,
                    started_at: r.try_get(1)?,
                    finished_at: r.try_get(2)?,
                    outcome: r.try_get(3)?,
                    smtp_code: r.try_get(4)?,
                    smtp_reply: r.try_get(5)?,
                    error: r.try_get(6)?,
                    duration_ms: r.try_get(7)?,
                })
            })
            .collect::<Result<_, StoreError>>()?,
    );
    view.events = Some(events::of_message(conn, kind, view.id).await?);
    Ok(Some(view))
}
