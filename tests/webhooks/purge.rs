//! Delivered and given-up events are purged once they are older than
//! `WEBHOOK_RETENTION_HOURS`, in batches; pending and recent ones stay.

use std::time::Duration;

use crate::common::{HookMode, WebhookSink, poll_until};
use crate::hooked;

/// More than one purge batch (5,000).
const OLD: i64 = 12_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_events_past_retention_are_purged_and_the_rest_kept() {
    let sink = WebhookSink::start(HookMode::Ok).await;
    let first = hooked(&sink).start().await;
    let db = first.db().await;
    let insert = |status: &'static str, finished: &'static str| {
        format!(
            "INSERT INTO webhook_events (event_id, type, url, message_kind, message_id,
               message_uuid, payload, status, next_attempt_at, created_at, finished_at)
             SELECT 'msg_' || gen_random_uuid(), 'message.sent', 'http://x.invalid/', 'notify',
               g, gen_random_uuid(), '{{}}', '{status}', now() + interval '1 day',
               now() - interval '30 days', {finished}
             FROM generate_series(1, $1::bigint) g"
        )
    };
    for (status, finished, n) in [
        ("delivered", "now() - interval '8 days'", OLD),
        ("failed", "now() - interval '8 days'", 10),
        ("gone", "now() - interval '8 days'", 10),
        ("delivered", "now() - interval '6 days'", 10),
        ("pending", "NULL", 10),
    ] {
        db.execute(&insert(status, finished), &[&n]).await.unwrap();
    }
    let target = first.target.clone();
    first.shutdown().await;

    // A start purges at once, then every minute; the retention is 7 days.
    let app = hooked(&sink)
        .target(&target)
        .env("WEBHOOK_RETENTION_HOURS", "168")
        .start()
        .await;
    poll_until(Duration::from_secs(30), "the old events purged", || async {
        let left: i64 = app
            .scalar(
                "SELECT count(*) FROM webhook_events WHERE finished_at < now() - interval '7 days'",
            )
            .await;
        if left == 0 { Ok(()) } else { Err(left) }
    })
    .await;
    let kept: i64 = app.scalar("SELECT count(*) FROM webhook_events").await;
    assert_eq!(
        kept, 20,
        "the recent delivered ones and the pending ones stay"
    );
    app.shutdown().await;
}
