//! The delivery side of the schema: claiming messages for a send and
//! recording each attempt's outcome (what goes wrong around them is in
//! `recovery`).
//!
//! A claim is a conditional `UPDATE ... WHERE status = 'queued' AND
//! next_attempt_at <= now()`: of several dispatchers (two instances on one
//! database) exactly one gets the row back. The claim stamps a lease token
//! and a lease end; the outcome is written only by the holder of that token,
//! so a late finish after a reclaim cannot overwrite newer state.

use std::collections::HashMap;
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

/// Runs statements inside one transaction, with `BEGIN`, the statements
/// and `COMMIT` pipelined: one round trip and one WAL flush for the whole
/// batch (a lone statement runs on its own, autocommitted). `after` are
/// statements of the same transaction that follow them (their results
/// unused), such as the batch's webhook events.
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
    let mut steps: Vec<Step<'a, T>> = statements
        .into_iter()
        .map(|statement| Box::pin(async move { statement.await.map(Some) }) as Step<'a, T>)
        .collect();
    let count = steps.len();
    // A lone statement is its own transaction: no `BEGIN` and `COMMIT` to
    // send and parse.
    if count > 1 || !after.is_empty() {
        steps.insert(0, control("BEGIN"));
        for statement in after {
            steps.push(Box::pin(async move { statement.await.map(|_| None) }));
        }
        steps.push(control("COMMIT"));
    }
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
    // One statement for the batch's messages of a kind, the attempt rows
    // opened by the same statement. `id = ANY($1)` is served by the primary
    // key (the array sorted, so concurrent claims lock rows in one order):
    // `(status || '')` keeps the partial index of queued rows out of reach,
    // since its predicate is `status = 'queued'`, and a plan made while the
    // table looked empty could otherwise walk that index (the whole
    // backlog) instead of fetching the batch's rows.
    format!(
        "WITH m AS (
           UPDATE {t} SET status = 'sending', lease_owner = $2,
             lease_until = now() + make_interval(secs => $3), updated_at = now()
           WHERE id = ANY($1::bigint[]) AND (status || '') = 'queued'
             AND next_attempt_at <= now()
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
    // The batch's outcomes of a kind as arrays, one element per attempt,
    // joined to their messages by primary key (the bookkeeping connections
    // plan nested loops only), and their attempts closed by the same
    // statement, only where this lease still held the message. As in the
    // claim, `(status || '')` leaves the primary key as the only index to
    // use (the partial index of leases keeps dead entries until vacuum).
    // The attempts are found from the arrays, not from the updated rows:
    // joined to those (a CTE the planner believes holds one row), the plan
    // read every attempt of the kind (`kind = 'notify'`, the index's first
    // column) and filtered, once per batch.
    format!(
        "WITH o AS (
           SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::int4[],
             $5::float8[], $6::text[], $7::int4[], $8::text[], $9::int4[],
             $10::text[], $11::int8[])
             AS o(id, token, status, retry_count, delay, error, number, outcome,
                  smtp_code, smtp_reply, duration_ms)),
         m AS (
           UPDATE {t} t SET status = o.status, retry_count = o.retry_count,
             next_attempt_at = CASE WHEN o.delay IS NULL THEN NULL
                                    ELSE now() + make_interval(secs => o.delay) END,
             sent_at = CASE WHEN o.status = 'sent' THEN now() ELSE t.sent_at END,
             error_message = COALESCE(o.error, t.error_message),
             lease_owner = NULL, lease_until = NULL, reclaim_after = NULL,
             updated_at = now()
           FROM o
           WHERE t.id = o.id AND (t.status || '') = 'sending' AND t.lease_owner = o.token
           RETURNING t.id, t.status, t.next_attempt_at),
         a AS (
           UPDATE delivery_attempts d SET finished_at = now(), outcome = o.outcome,
             smtp_code = o.smtp_code, smtp_reply = o.smtp_reply, error = o.error,
             duration_ms = o.duration_ms
           FROM o
           WHERE d.kind = '{k}' AND d.message_id = o.id AND d.number = o.number
             AND o.id IN (SELECT id FROM m))
         SELECT id, status, next_attempt_at FROM m",
        t = table(kind),
        k = kind.as_str(),
    )
}

/// Claims the given messages that are still queued and due, stamping a lease,
/// and opens an attempt row for each: one statement per kind present, in
/// one transaction. Returns only what this call won.
pub async fn claim(
    pool: &Pool,
    jobs: &[(MessageKind, i64)],
    lease_token: Uuid,
    lease: Duration,
) -> Result<Vec<MailJob>, StoreError> {
    let mut conn = checkout(pool).await?;
    let token = lease_token.to_string();
    let lease_secs = lease.as_secs_f64();
    let mut batches = Vec::with_capacity(2);
    for kind in [MessageKind::Contact, MessageKind::Notify] {
        let ids: Vec<i64> = jobs
            .iter()
            .filter(|(k, _)| *k == kind)
            .map(|(_, id)| *id)
            .collect();
        // Only the kinds present: preparing touches the table.
        if !ids.is_empty() {
            batches.push((kind, conn.prepared(claim_sql(kind)).await?, ids));
        }
    }
    let params: Vec<[&(dyn ToSql + Sync); 3]> = batches
        .iter()
        .map(|(_, _, ids)| [ids as &(dyn ToSql + Sync), &token, &lease_secs])
        .collect();
    let rows = pipelined(
        &conn,
        batches
            .iter()
            .zip(&params)
            .map(|((_, statement, _), p)| conn.query(statement, p)),
        Vec::new(),
    )
    .await?;
    conn.release();
    let mut claimed = Vec::with_capacity(jobs.len());
    for ((kind, _, _), rows) in batches.iter().zip(&rows) {
        for row in rows {
            claimed.push(MailJob {
                kind: *kind,
                id: row.try_get(0)?,
                uuid: row.try_get(1)?,
                retry_count: row.try_get(2)?,
                attempt: row.try_get(3)?,
                lease_token,
                content: content_from_row(*kind, row, 4)?,
            });
        }
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

/// The outcomes of one kind as the columns of [`finish_sql`]'s arrays, in
/// id order (so that concurrent writers lock rows in one order).
#[derive(Default)]
struct FinishColumns<'a> {
    id: Vec<i64>,
    token: Vec<String>,
    status: Vec<&'static str>,
    retry_count: Vec<i32>,
    delay: Vec<Option<f64>>,
    error: Vec<&'a Option<String>>,
    number: Vec<i32>,
    outcome: Vec<&'static str>,
    smtp_code: Vec<Option<i32>>,
    smtp_reply: Vec<&'a Option<String>>,
    duration_ms: Vec<i64>,
}

impl<'a> FinishColumns<'a> {
    fn of_kind(
        kind: MessageKind,
        done: &'a [(MailJob, AttemptResult)],
        policy: &RetryPolicy,
    ) -> Self {
        let mut of_kind: Vec<_> = done.iter().filter(|(j, _)| j.kind == kind).collect();
        of_kind.sort_by_key(|(j, _)| j.id);
        let mut c = Self::default();
        for (job, result) in of_kind {
            let (status, retry_count, delay) = next_state(job, result, policy);
            c.id.push(job.id);
            c.token.push(job.lease_token.to_string());
            c.status.push(status);
            c.retry_count.push(retry_count);
            c.delay.push(delay.map(|d| d.as_secs_f64()));
            c.error.push(&result.error);
            c.number.push(job.attempt);
            c.outcome.push(result.outcome.as_str());
            c.smtp_code.push(result.smtp_code);
            c.smtp_reply.push(&result.smtp_reply);
            c.duration_ms.push(result.duration_ms);
        }
        c
    }

    fn as_params(&self) -> [&(dyn ToSql + Sync); 11] {
        [
            &self.id,
            &self.token,
            &self.status,
            &self.retry_count,
            &self.delay,
            &self.error,
            &self.number,
            &self.outcome,
            &self.smtp_code,
            &self.smtp_reply,
            &self.duration_ms,
        ]
    }
}

/// Records attempts' outcomes and moves each message on: `sent`, `queued`
/// for a retry after the policy's delay, or `failed`; one statement per
/// kind for the whole batch, with the batch's webhook events in the same
/// transaction. An entry is `None` when its lease was lost meanwhile
/// (reclaimed after expiry): then nothing is written for it, so a late
/// outcome cannot overwrite newer state.
pub async fn finish_batch(
    pool: &Pool,
    done: &[(MailJob, AttemptResult)],
    policy: &RetryPolicy,
    outbox: &Outbox,
) -> Result<Vec<Option<Settled>>, StoreError> {
    let mut conn = checkout(pool).await?;
    let mut batches = Vec::with_capacity(2);
    for kind in [MessageKind::Contact, MessageKind::Notify] {
        // Only the kinds present: preparing touches the table.
        if done.iter().any(|(j, _)| j.kind == kind) {
            let columns = FinishColumns::of_kind(kind, done, policy);
            let finish = conn.prepared(finish_sql(kind)).await?;
            let record = match outbox.is_on() {
                true => Some(conn.prepared(webhooks::record_sql(kind)).await?),
                false => None,
            };
            batches.push((kind, columns, finish, record));
        }
    }
    // The events of the batch, one statement per kind after the outcomes;
    // it records only the messages this transaction changed, so an outcome
    // whose lease was lost has none.
    let client: &Client = &conn;
    let after = batches
        .iter()
        .filter_map(|(kind, c, _, record)| {
            let record = record.as_ref()?;
            let events = webhooks::record_with(client, record, outbox, *kind, &c.id, &c.smtp_code);
            Some(Box::pin(events) as BoxFuture<'_, _>)
        })
        .collect();
    let params: Vec<_> = batches.iter().map(|(_, c, _, _)| c.as_params()).collect();
    let rows = pipelined(
        &conn,
        batches
            .iter()
            .zip(&params)
            .map(|((_, _, finish, _), p)| conn.query(finish, p)),
        after,
    )
    .await?;
    conn.release();
    let mut settled = HashMap::with_capacity(done.len());
    for ((kind, _, _, _), rows) in batches.iter().zip(&rows) {
        for row in rows {
            let s = settled_from_row(*kind, row)?;
            settled.insert((*kind, s.id), s);
        }
    }
    // A message missing from what the statement changed lost its lease
    // meanwhile: newer state stands.
    Ok(done
        .iter()
        .map(|(job, _)| settled.remove(&(job.kind, job.id)))
        .collect())
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
