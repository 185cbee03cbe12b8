//! Recovering delivery work that went astray: leases whose holder stopped
//! mid-send are reclaimed (after a grace a live holder can use to record its
//! outcome), claims that will not be sent are released unsent, and due
//! messages that Redis no longer knows about are found again.
//!
//! Every step is fenced: a reclaim takes only a lease that stayed expired
//! and unchanged through the grace, a release only a claim still held under
//! its own token, so none of them can undo newer state.

use std::time::Duration;

use super::conn::{Pool, checkout};
use super::delivery::settled_from_row;
use super::error::StoreError;
use super::read::table;
use super::webhooks::{self, Outbox};
use crate::config::RetryPolicy;
use crate::domain::MessageKind;
use crate::domain::delivery::{ClaimRef, Reclaimed};

/// How long a lease found expired is left to its holder before it is taken
/// back. A holder that is alive keeps writing its outcome every half second
/// until the database answers; after an outage longer than the lease, this
/// is its window to write first, so that the mail it sent is not sent again.
pub const RECLAIM_GRACE: Duration = Duration::from_secs(10);

/// Turns expired leases (their sender died mid-send) into scheduled retries,
/// or into `failed` when retries are used up, and closes their open attempt
/// as a `crash`.
///
/// In two steps: a lease seen expired for the first time only gets
/// `reclaim_after = now() + RECLAIM_GRACE`; it is reclaimed by a later call,
/// after that time, if its holder has not recorded the outcome meanwhile.
/// Both steps are measured on the database's clock while it answers, so an
/// outage, however long, never lets a reclaim overtake a live holder.
pub async fn reclaim_expired(
    pool: &Pool,
    policy: &RetryPolicy,
    outbox: &Outbox,
) -> Result<Vec<Reclaimed>, StoreError> {
    const ERROR: &str = "lease expired: the process sending this message stopped mid-send";
    let mut conn = checkout(pool).await?;
    let tx = conn.transaction().await?;
    let mut reclaimed = Vec::new();
    for kind in [MessageKind::Contact, MessageKind::Notify] {
        tx.execute(
            &format!(
                "UPDATE {t} SET reclaim_after = now() + make_interval(secs => $1)
                 WHERE status = 'sending' AND lease_until < now() AND reclaim_after IS NULL",
                t = table(kind)
            ),
            &[&RECLAIM_GRACE.as_secs_f64()],
        )
        .await?;
        let rows = tx
            .query(
                &format!(
                    "WITH expired AS (
                        SELECT id, retry_count, attempt_base FROM {t}
                        WHERE status = 'sending' AND lease_until < now()
                          AND reclaim_after < now()
                        ORDER BY lease_until LIMIT 500
                        FOR UPDATE SKIP LOCKED)
                     UPDATE {t} m SET
                        status = CASE WHEN m.retry_count < $1 THEN 'queued' ELSE 'failed' END,
                        next_attempt_at = CASE WHEN m.retry_count < $1
                            THEN now() + make_interval(secs => LEAST(86400.0, $2 * power($3, m.retry_count)))
                            ELSE NULL END,
                        retry_count = CASE WHEN m.retry_count < $1 THEN m.retry_count + 1 ELSE m.retry_count END,
                        error_message = $4,
                        lease_owner = NULL, lease_until = NULL, reclaim_after = NULL,
                        updated_at = now()
                     FROM expired WHERE m.id = expired.id
                     RETURNING m.id, m.status, m.next_attempt_at, m.uuid,
                        expired.attempt_base + expired.retry_count + 1,
                        (SELECT (extract(epoch FROM now() - a.started_at) * 1000)::bigint
                           FROM delivery_attempts a
                          WHERE a.kind = '{k}' AND a.message_id = m.id
                            AND a.number = expired.attempt_base + expired.retry_count + 1)",
                    t = table(kind),
                    k = kind.as_str(),
                ),
                &[
                    &(policy.max_retries as i32),
                    &policy.base_delay.as_secs_f64(),
                    &policy.backoff_factor,
                    &ERROR,
                ],
            )
            .await?;
        let mut ids = Vec::with_capacity(rows.len());
        for row in &rows {
            let settled = settled_from_row(kind, row)?;
            ids.push(settled.id);
            reclaimed.push(Reclaimed {
                settled,
                uuid: row.try_get(3)?,
                attempt: row.try_get(4)?,
                duration_ms: row.try_get::<_, Option<i64>>(5)?.unwrap_or(0),
                error: ERROR,
            });
        }
        if !ids.is_empty() {
            tx.execute(
                "UPDATE delivery_attempts SET finished_at = now(), outcome = 'crash', error = $3,
                    duration_ms = (extract(epoch FROM now() - started_at) * 1000)::bigint
                 WHERE kind = $1 AND message_id = ANY($2) AND finished_at IS NULL",
                &[&kind.as_str(), &ids, &ERROR],
            )
            .await?;
            webhooks::record(&tx, outbox, kind, &ids, &[]).await?;
        }
    }
    tx.commit().await?;
    conn.release();
    Ok(reclaimed)
}

/// Gives claimed messages that were never handed to a sender back to
/// `queued`, due at once, and removes the attempt rows their claims opened:
/// no attempt happened. Each is fenced by its lease token, so a message
/// claimed or finished by anyone else since is left alone. Returns, per
/// job, whether it was released.
pub async fn release(pool: &Pool, jobs: &[ClaimRef]) -> Result<Vec<bool>, StoreError> {
    let mut conn = checkout(pool).await?;
    let tx = conn.transaction().await?;
    let mut released = Vec::with_capacity(jobs.len());
    for job in jobs {
        let row = tx
            .query_opt(
                &format!(
                    "WITH m AS (
                       UPDATE {t} SET status = 'queued', lease_owner = NULL,
                         lease_until = NULL, reclaim_after = NULL, updated_at = now()
                       WHERE id = $1 AND status = 'sending' AND lease_owner = $2
                       RETURNING id, attempt_base + retry_count + 1 AS number),
                     a AS (
                       DELETE FROM delivery_attempts d USING m
                       WHERE d.kind = '{k}' AND d.message_id = m.id
                         AND d.number = m.number AND d.finished_at IS NULL)
                     SELECT id FROM m",
                    t = table(job.kind),
                    k = job.kind.as_str(),
                ),
                &[&job.id, &job.lease_token.to_string()],
            )
            .await?;
        released.push(row.is_some());
    }
    tx.commit().await?;
    conn.release();
    Ok(released)
}

/// Queued messages that have been due for at least `grace`: in normal
/// operation Redis has handed them out long before, so these are the ones a
/// Redis restart, a lost timer or a killed process left behind.
pub async fn overdue(
    pool: &Pool,
    grace: Duration,
    limit: i64,
) -> Result<Vec<(MessageKind, i64)>, StoreError> {
    let conn = checkout(pool).await?;
    let rows = conn
        .query(
            "(SELECT 'contact', id, next_attempt_at FROM contact_messages
               WHERE status = 'queued' AND next_attempt_at <= now() - make_interval(secs => $1)
               ORDER BY next_attempt_at LIMIT $2)
             UNION ALL
             (SELECT 'notify', id, next_attempt_at FROM notifications
               WHERE status = 'queued' AND next_attempt_at <= now() - make_interval(secs => $1)
               ORDER BY next_attempt_at LIMIT $2)
             ORDER BY 3 LIMIT $2",
            &[&grace.as_secs_f64(), &limit],
        )
        .await?;
    conn.release();
    rows.iter()
        .map(|r| {
            let kind: String = r.try_get(0)?;
            let kind = MessageKind::parse(&kind).unwrap_or(MessageKind::Notify);
            Ok((kind, r.try_get(1)?))
        })
        .collect()
}
