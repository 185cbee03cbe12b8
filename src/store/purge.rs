//! Housekeeping deletes (expired idempotency keys, finished webhook events):
//! in batches, each its own short statement on its own checkout, so that a
//! purge never holds locks or a connection for long, and never competes
//! with the traffic for a connection.

use std::time::Duration;

use tokio_postgres::types::ToSql;

use super::conn::{Pool, checkout};
use super::error::StoreError;

/// Rows that one purge statement deletes at most.
pub const PURGE_BATCH: u64 = 5_000;
/// Between two batches of one purge, so that a long purge leaves room to
/// the requests that share its pool.
const PURGE_PAUSE: Duration = Duration::from_millis(50);

/// Runs `delete` (whose `$1` is the batch size, and whose other parameters
/// are `params`) until a batch comes back short, with a short pause between
/// batches; `per_batch` bounds each. `delete` should skip rows another purge
/// (another instance) has locked. Returns the number deleted.
///
/// Housekeeping neither opens a connection nor queues for one: a batch
/// starts only while the pool has an idle connection, so during an outage
/// (when every checkout may start a connection attempt that hangs) the
/// purge adds nothing to the pool's load; it resumes with the traffic.
pub(super) async fn in_batches(
    pool: &Pool,
    per_batch: Duration,
    delete: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<u64, StoreError> {
    let mut total = 0;
    loop {
        if pool.state().idle_connections == 0 {
            return Ok(total);
        }
        let deleted = tokio::time::timeout(per_batch, batch(pool, delete, params))
            .await
            .map_err(|_| {
                StoreError::InDoubt(format!(
                    "a purge batch took over {per_batch:?} after {total} deleted"
                ))
            })??;
        total += deleted;
        if deleted < PURGE_BATCH {
            return Ok(total);
        }
        tokio::time::sleep(PURGE_PAUSE).await;
    }
}

async fn batch(
    pool: &Pool,
    delete: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<u64, StoreError> {
    let conn = checkout(pool).await?;
    let limit = PURGE_BATCH as i64;
    let mut all: Vec<&(dyn ToSql + Sync)> = vec![&limit];
    all.extend_from_slice(params);
    let deleted = conn.execute(delete, &all).await?;
    conn.release();
    Ok(deleted)
}
