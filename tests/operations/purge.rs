//! Expired idempotency keys go at the rate they expire: a backlog of many
//! purge batches is gone within one purge period, while unexpired keys stay.

use std::time::{Duration, Instant};

use crate::common::{poll_until, spawn_app};

/// Several of the service's purge batches (5,000 each).
const EXPIRED: i64 = 25_000;
/// The purge period is 10 s and one purge deletes every expired key;
/// a purge that took one batch per period would need 50 s for these.
const WITHIN: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_of_expired_idempotency_keys_is_purged_within_one_period() {
    let app = spawn_app().await;
    let db = app.db().await;
    db.execute(
        "INSERT INTO idempotency_keys (scope, key, request_hash, expires_at)
         SELECT CASE WHEN g % 2 = 0 THEN 'notify' ELSE 'contact' END, 'expired-' || g,
                '\\x00'::bytea, now() - interval '1 hour'
         FROM generate_series(1, $1::bigint) g",
        &[&EXPIRED],
    )
    .await
    .unwrap();
    db.execute(
        "INSERT INTO idempotency_keys (scope, key, request_hash, expires_at)
         SELECT 'notify', 'live-' || g, '\\x00'::bytea, now() + interval '1 hour'
         FROM generate_series(1, 100) g",
        &[],
    )
    .await
    .unwrap();
    let started = Instant::now();
    poll_until(WITHIN, "every expired key to be purged", || async {
        let left: i64 = app
            .scalar("SELECT count(*) FROM idempotency_keys WHERE expires_at <= now()")
            .await;
        if left == 0 { Ok(()) } else { Err(left) }
    })
    .await;
    eprintln!("{EXPIRED} expired keys purged in {:?}", started.elapsed());
    let live: i64 = app
        .scalar("SELECT count(*) FROM idempotency_keys WHERE key LIKE 'live-%'")
        .await;
    assert_eq!(live, 100, "unexpired keys are kept");
    app.shutdown().await;
}
