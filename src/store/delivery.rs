//! The delivery side of the schema: claiming messages for a send and
//! recording each attempt's outcome (what goes wrong around them is in
//! `recovery`).
//!
//! A claim is a conditional `UPDATE ... WHERE status = 'queued' AND
//! next_attempt_at <= now()`: of several dispatchers (two instances on one
//! database) exactly one gets the row back. The claim stamps a lease token
//! and a lease end; the outcome is written only by the holder of that token,
//! so a late finish after a reclaim cannot overwrite newer state.

use std::future::Future;
use std::pin::Pin;
use std::sync::LazyLock;
use std::task::Poll;
use std::time::Duration;

use futures_util::future::{BoxFuture, maybe_done};

use tokio_postgres::Client;
use tokio_postgres::types::ToSql;
use uuid::Uuid;

use super::conn::{Pool, checkout};
use super::error::StoreError;
use super::read::{content_columns, content_from_row, table};
use super::webhooks::{self, Outbox};
use crate::config::RetryPolicy;
use crate::domain::MessageKind;
use crate::domain::delivery::{AttemptResult, MailJob, Outcome, Settled};

/// `Settled` from `RETURNING id, status, next_attempt_at`.
pub(super) fn settled_from_row(
    kind: MessageKind,
    row: &tokio_postgres::Row,
) -> Result<Settled, StoreError> {
    Ok(Settled {
        kind,
        id: row.try_get(0)?,
        status: row.try_get(1)?,
        next_attempt_at: row.try_get(2)?,
    })
}

/// Runs one statement per message inside one transaction, with `BEGIN`,
/// the statements and `COMMIT` pipelined: one round trip and one WAL flush
/// for the whole batch. `after` are statements of the same transaction that
/// follow them (their results unused), such as the batch's webhook events.
/// The commit is synchronous: once it returns, a
/// claim or an outcome survives a crash of PostgreSQL too, so a mail
/// recorded as sent is never sent again. A failed statement aborts the
/// transaction (PostgreSQL turns the `COMMIT` into a rollback) and the
/// first error is returned; the connection, not released, is then
/// discarded.
async fn pipelined<'a, T, F>(
    conn: &'a Client,
    statements: impl IntoIterator<Item = F>,
    after: Vec<BoxFuture<'a, Result<u64, tokio_postgres::Error>>>,
) -> Result<Vec<T>, StoreError>
where
    T: Send + 'a,
    F: Future<Output = Result<T, tokio_postgres::Error>> + Send + 'a,
{
    type Step<'a, T> = BoxFuture<'a, Result<Option<T>, tokio_postgres::Error>>;
    let control = |sql: &'static str| -> Step<'a, T> {
        Box::pin(async move { conn.batch_execute(sql).await.map(|()| None) })
    };
    let mut steps = vec![control("BEGIN")];
    for statement in statements {
        steps.push(Box::pin(async move { statement.await.map(Some) }));
    }
    let count = steps.len() - 1;
    for statement in after {
        steps.push(Box::pin(async move { statement.await.map(|_| None) }));
    }
    steps.push(control("COMMIT"));
    let mut rows = Vec::with_capacity(count);
    for step in join_in_order(steps).await {
        if let Some(row) = step? {
            rows.push(row);
        }
    }
    Ok(rows)
}

/// Drives every future to completion, polling them in their order every
/// time, and returns their outputs in that order.
///
/// tokio-postgres sends a query when its future is first polled, so the
/// order of first polls is the order of the statements on the wire: `BEGIN`
/// must go before the statements and `COMMIT` after them. General-purpose
/// joins do not promise that order (`join_all` switches to an unordered set
/// past 30 futures), so this one is written out.
pub(super) async fn join_in_order<O>(futures: Vec<BoxFuture<'_, O>>) -> Vec<O> {
    let mut all: Vec<_> = futures.into_iter().map(maybe_done).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for f in all.iter_mut() {
            pending |= Pin::new(f).poll(cx).is_pending();
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
    .await;
    all.iter_mut()
        .map(|f| Pin::new(f).take_output().expect("every future is done"))
        .collect()
}

/// A statement per kind, built once: the hot path only looks it up.
fn per_kind(cell: &'static LazyLock<[String; 2]>, kind: MessageKind) -> &'static str {
    match kind {
        MessageKind::Contact => &cell[0],
        MessageKind::Notify => &cell[1],
    }
}

/// The claim of one message: public so that a test can check its plan.
pub fn claim_sql(kind: MessageKind) -> &'static str {
    static SQL: LazyLock<[String; 2]> =
        LazyLock::new(|| [MessageKind::Contact, MessageKind::Notify].map(build_claim_sql));
    per_kind(&SQL, kind)
}

fn build_claim_sql(kind: MessageKind) -> String {
    // The attempt row is opened by the same statement: one statement per
    // message, a primary-key lookup whatever the planner believes about the
    // table's size. `(status || '')` keeps the partial index of queued rows
    // out of reach: its predicate is `status = 'queued'`, and a plan made
    // while the table looked empty could walk that index (the whole
    // backlog) instead of fetching one row.
    format!(
        "WITH m AS (
           UPDATE {t} SET status = 'sending', lease_owner = $2,
             lease_until = now() + make_interval(secs => $3), updated_at = now()
           WHERE id = $1 AND (status || '') = 'queued' AND next_attempt_at <= now()
           RETURNING id, uuid, retry_count, attempt_base + retry_count + 1 AS number, {content}),
         a AS (
           INSERT INTO delivery_attempts (kind, message_id, number, started_at)
           SELECT '{k}', id, number, now() FROM m
           ON CONFLICT (kind, message_id, number)
           DO UPDATE SET started_at = now(), finished_at = NULL, outcome = NULL)
         SELECT * FROM m",
        t = table(kind),
        k = kind.as_str(),
        content = content_columns(kind),
    )
}

/// The outcome of one attempt: public so that a test can check its plan.
pub fn finish_sql(kind: MessageKind) -> &'static str {
    static SQL: LazyLock<[String; 2]> =
        LazyLock::new(|| [MessageKind::Contact, MessageKind::Notify].map(build_finish_sql));
    per_kind(&SQL, kind)
}

fn build_finish_sql(kind: MessageKind) -> String {
    // The message and its attempt in one statement; the attempt is closed
    // only when this lease still held the message. As in the claim,
    // `(status || '')` leaves the primary key as the only index to use (the
    // partial index of leases keeps dead entries until vacuum).
    format!(
        "WITH m AS (
           UPDATE {t} SET status = $3, retry_count = $4,
             next_attempt_at = CASE WHEN $5::float8 IS NULL THEN NULL
                                    ELSE now() + make_interval(secs => $5::float8) END,
             sent_at = CASE WHEN $3 = 'sent' THEN now() ELSE sent_at END,
             error_message = COALESCE($6, error_message),
             lease_owner = NULL, lease_until = NULL, reclaim_after = NULL,
             updated_at = now()
           WHERE id = $1 AND (status || '') = 'sending' AND lease_owner = $2
           RETURNING id, status, next_attempt_at),
         a AS (
           UPDATE delivery_attempts SET finished_at = now(), outcome = $8,
             smtp_code = $9, smtp_reply = $10, error = $6, duration_ms = $11
           WHERE kind = '{k}' AND message_id = $1 AND number = $7
             AND EXISTS (SELECT 1 FROM m))
         SELECT * FROM m",
        t = table(kind),
        k = kind.as_str(),
    )
}

/// Claims the given messages that are still queued and due, stamping a lease,
/// and opens an attempt row for each. Returns only what this call won.
pub async fn claim(
    pool: &Pool,
    jobs: &[(MessageKind, i64)],
    lease_token: Uuid,
    lease: Duration,
) -> Result<Vec<MailJob>, StoreError> {
    let mut conn = checkout(pool).await?;
    let mut statements = Vec::with_capacity(2);
    for kind in [MessageKind::Contact, MessageKind::Notify] {
        // Only the kinds present: preparing touches the table.
        if jobs.iter().any(|(k, _)| *k == kind) {
            statements.push((kind, conn.prepared(claim_sql(kind)).await?));
        }
    }
    let token = lease_token.to_string();
    let lease_secs = lease.as_secs_f64();
    let params: Vec<[&(dyn ToSql + Sync); 3]> = jobs
        .iter()
        .map(|(_, id)| [id as &(dyn ToSql + Sync), &token, &lease_secs])
        .collect();
    // One primary-key lookup per message, not `id = ANY($1)`: while a burst
    // fills the table faster than statistics follow, the planner may serve
    // `ANY` by walking the partial index of every queued row, which turns
    // each claim into a scan of the whole backlog.
    let rows = pipelined(
        &conn,
        jobs.iter().zip(&params).map(|((kind, _), p)| {
            let statement = &statements
                .iter()
                .find(|(k, _)| k == kind)
                .expect("prepared for every kind in the batch")
                .1;
            conn.query_opt(statement, p)
        }),
        Vec::new(),
    )
    .await?;
    conn.release();
    let mut claimed = Vec::with_capacity(jobs.len());
    for ((kind, _), row) in jobs.iter().zip(&rows) {
        let Some(row) = row else { continue };
        let retry_count: i32 = row.try_get(2)?;
        let content = content_from_row(*kind, row, 4)?;
        claimed.push(MailJob {
            kind: *kind,
            id: row.try_get(0)?,
            uuid: row.try_get(1)?,
            retry_count,
            attempt: row.try_get(3)?,
            lease_token,
            content,
        });
    }
    Ok(claimed)
}

/// What a message becomes after an attempt: `(status, retry_count, delay
/// before the next attempt)`.
fn next_state(
    job: &MailJob,
    result: &AttemptResult,
    policy: &RetryPolicy,
) -> (&'static str, i32, Option<Duration>) {
    let retryable = matches!(result.outcome, Outcome::Transient | Outcome::Crash);
    match result.outcome {
        Outcome::Sent => ("sent", job.retry_count, None),
        _ if retryable && (job.retry_count as u32) < policy.max_retries => {
            let n = job.retry_count + 1;
            ("queued", n, Some(policy.delay(n as u32)))
        }
        _ => ("failed", job.retry_count, None),
    }
}

/// The parameters of one outcome's statement, owned so that the pipelined
/// statements can borrow them.
struct FinishParams<'a> {
    id: i64,
    token: String,
    status: &'static str,
    retry_count: i32,
    delay: Option<f64>,
    error: &'a Option<String>,
    number: i32,
    outcome: &'static str,
    smtp_code: Option<i32>,
    smtp_reply: &'a Option<String>,
    duration_ms: i64,
}

impl FinishParams<'_> {
    fn as_params(&self) -> [&(dyn ToSql + Sync); 11] {
        [
            &self.id,
            &self.token,
            &self.status,
            &self.retry_count,
            &self.delay,
            self.error,
            &self.number,
            &self.outcome,
            &self.smtp_code,
            self.smtp_reply,
            &self.duration_ms,
        ]
    }
}

/// Records attempts' outcomes and moves each message on: `sent`, `queued`
/// for a retry after the policy's delay, or `failed`; one statement per
/// outcome, pipelined. An entry is `None` when its lease
/// was lost meanwhile (reclaimed after expiry): then nothing is written for
/// it, so a late outcome cannot overwrite newer state.
pub async fn finish_batch(
    pool: &Pool,
    done: &[(MailJob, AttemptResult)],
    policy: &RetryPolicy,
    outbox: &Outbox,
) -> Result<Vec<Option<Settled>>, StoreError> {
    let mut conn = checkout(pool).await?;
    let mut statements = Vec::with_capacity(2);
    let mut record_statements = Vec::new();
    for kind in [MessageKind::Contact, MessageKind::Notify] {
        // Only the kinds present: preparing touches the table.
        if done.iter().any(|(j, _)| j.kind == kind) {
            statements.push((kind, conn.prepared(finish_sql(kind)).await?));
            if outbox.is_on() {
                let sql = webhooks::record_sql(kind);
                record_statements.push((kind, conn.prepared(sql).await?));
            }
        }
    }
    let params: Vec<FinishParams> = done
        .iter()
        .map(|(job, result)| {
            let (status, retry_count, delay) = next_state(job, result, policy);
            FinishParams {
                id: job.id,
                token: job.lease_token.to_string(),
                status,
                retry_count,
                delay: delay.map(|d| d.as_secs_f64()),
                error: &result.error,
                number: job.attempt,
                outcome: result.outcome.as_str(),
                smtp_code: result.smtp_code,
                smtp_reply: &result.smtp_reply,
                duration_ms: result.duration_ms,
            }
        })
        .collect();
    let arrays: Vec<_> = params.iter().map(FinishParams::as_params).collect();
    // The events of the batch, one statement per kind after the outcomes;
    // it records only the messages this transaction changed, so an outcome
    // whose lease was lost has none.
    let events: Vec<(MessageKind, Vec<i64>, Vec<Option<i32>>)> = record_statements
        .iter()
        .map(|(kind, _)| {
            let (ids, codes) = done
                .iter()
                .filter(|(job, _)| job.kind == *kind)
                .map(|(job, result)| (job.id, result.smtp_code))
                .unzip();
            (*kind, ids, codes)
        })
        .collect();
    let client: &Client = &conn;
    let after = events
        .iter()
        .zip(&record_statements)
        .map(|((kind, ids, codes), (_, statement))| {
            Box::pin(webhooks::record_with(
                client, statement, outbox, *kind, ids, codes,
            )) as BoxFuture<'_, _>
        })
        .collect();
    let rows = pipelined(
        &conn,
        done.iter().zip(&arrays).map(|((job, _), p)| {
            let statement = &statements
                .iter()
                .find(|(k, _)| *k == job.kind)
                .expect("prepared for every kind in the batch")
                .1;
            conn.query_opt(statement, p)
        }),
        after,
    )
    .await?;
    conn.release();
    done.iter()
        .zip(&rows)
        .map(|((job, _), row)| match row {
            // The lease was lost meanwhile: newer state stands.
            None => Ok(None),
            Some(row) => settled_from_row(job.kind, row).map(Some),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// Past `join_all`'s switch point (30), first polls still follow the
    /// order of the futures, and outputs come back in that order even when
    /// later futures finish first.
    #[tokio::test]
    async fn futures_are_first_polled_in_their_order() {
        let first_polls = Arc::new(Mutex::new(Vec::new()));
        let futures: Vec<BoxFuture<'_, usize>> = (0..100usize)
            .map(|i| {
                let first_polls = first_polls.clone();
                Box::pin(async move {
                    first_polls.lock().unwrap().push(i);
                    // Later ones finish sooner: output order must not follow.
                    for _ in 0..(100 - i) % 7 {
                        tokio::task::yield_now().await;
                    }
                    i
                }) as BoxFuture<'_, usize>
            })
            .collect();
        let outputs = join_in_order(futures).await;
        assert_eq!(*first_polls.lock().unwrap(), (0..100).collect::<Vec<_>>());
        assert_eq!(outputs, (0..100).collect::<Vec<_>>());
    }
}
