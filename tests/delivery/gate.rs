//! A mailer opens its next mail transaction while its last outcome is being
//! committed, and completes it (the content and its final dot) only once
//! that outcome is committed: a crash meanwhile can repeat the one send
//! whose outcome was not recorded, never the next one too.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::common::{Mode, SmtpSink, poll_until, spawn_app_with_sink};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_next_mail_is_completed_only_after_the_last_outcome_is_committed() {
    // A slow answer to the first mail leaves time to block its outcome.
    let sink = SmtpSink::start(Mode::Slow(Duration::from_millis(800))).await;
    let app = spawn_app_with_sink(&sink, &[("MAILER_WORKERS", "1")]).await;
    let a = app
        .notify(&json!({"to": "a@example.org", "subject": "first", "body": "a"}))
        .await;
    let status = "SELECT status FROM notifications WHERE uuid = $1::text::uuid";
    let db = app.db().await;
    poll_until(Duration::from_secs(10), "the first mail being sent", || {
        let db = &db;
        let a = a.clone();
        async move {
            let row = db.query_one(status, &[&a]).await.unwrap();
            row.get::<_, String>(0) == "sending"
        }
    })
    .await;
    // Holding the first message's row keeps its outcome from being written.
    let mut blocker = app.db().await;
    let tx = blocker.transaction().await.unwrap();
    let held: String = tx
        .query_one(&format!("{status} FOR UPDATE"), &[&a])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        held, "sending",
        "the first outcome was committed too soon for this test"
    );
    sink.set_mode(Mode::Accept);
    let b = app
        .notify(&json!({"to": "b@example.org", "subject": "second", "body": "b"}))
        .await;

    poll_until(
        Duration::from_secs(10),
        "the first mail taken and the second one's envelope opened",
        || async { !sink.received().is_empty() && sink.envelopes() >= 2 },
    )
    .await;
    // The second mail is held back as long as the first outcome is not
    // committed.
    let until = Instant::now() + Duration::from_millis(1500);
    while Instant::now() < until {
        assert_eq!(
            sink.received().len(),
            1,
            "the second mail was completed while the first outcome was not committed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tx.commit().await.unwrap();
    for uuid in [&a, &b] {
        let v = app
            .wait_final("notify", uuid, Duration::from_secs(20))
            .await;
        assert_eq!(v["status"], "sent", "{v}");
    }
    assert_eq!(sink.received().len(), 2);
    assert_eq!(sink.by_message_id().len(), 2, "each mail once");
    app.shutdown().await;
}
