//! Scheduled send (`send_at`) against real delivery: not sent before its
//! time and sent after it, on the group-commit and the keyed accept paths;
//! cancellable until then; at once when the time is past; and still sent,
//! once, when Redis forgets everything before its time.

use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use serde_json::{Value, json};

use crate::common::{Mode, SmtpSink, TestApp, redis_url};

fn delivered_at(sink: &SmtpSink, uuid: &str) -> Vec<DateTime<Utc>> {
    sink.received()
        .into_iter()
        .filter(|r| r.message_id.as_deref().is_some_and(|id| id.contains(uuid)))
        .map(|r| r.at)
        .collect()
}

fn notify_at(subject: &str, at: DateTime<Utc>) -> Value {
    json!({"to": "a@example.org", "subject": subject, "body": "b", "send_at": at.to_rfc3339()})
}

async fn post(app: &TestApp, path: &str, headers: &[(&str, &str)], body: &Value) -> String {
    let r = app.post_json_with(path, headers, body).await;
    assert_eq!(r.status, 202, "{}", r.text());
    r.json()["uuid"].as_str().unwrap().to_owned()
}

/// Sleeps until `at` (no-op if it is past).
async fn sleep_until(at: DateTime<Utc>) {
    if let Ok(d) = (at - Utc::now()).to_std() {
        tokio::time::sleep(d).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduled_message_is_not_sent_before_send_at_and_is_sent_after_it() {
    let sink = SmtpSink::start(Mode::Accept).await;
    let app = TestApp::builder().sink(&sink).start().await;
    let at = Utc::now() + TimeDelta::seconds(3);
    // Group commit, the keyed transaction, and a contact with its own uuid.
    let plain = post(&app, "/api/notify/", &[], &notify_at("plain", at)).await;
    let keyed = post(
        &app,
        "/api/notify/",
        &[("idempotency-key", "scheduled-1")],
        &notify_at("keyed", at),
    )
    .await;
    let contact_uuid = uuid::Uuid::new_v4().to_string();
    let contact = post(
        &app,
        "/api/contact/",
        &[],
        &json!({"name": "n", "email": "c@example.org", "message": "m",
                "uuid": contact_uuid, "send_at": at.to_rfc3339()}),
    )
    .await;
    assert_eq!(contact, contact_uuid);

    sleep_until(at - TimeDelta::milliseconds(300)).await;
    assert_eq!(sink.attempts(), 0, "sent before send_at");
    for (kind, uuid) in [
        ("notify", &plain),
        ("notify", &keyed),
        ("contact", &contact),
    ] {
        let v = app.detail(kind, uuid).await;
        assert_eq!(v["status"], "queued", "{v}");
    }

    for (kind, uuid) in [
        ("notify", &plain),
        ("notify", &keyed),
        ("contact", &contact),
    ] {
        let v = app.wait_final(kind, uuid, Duration::from_secs(15)).await;
        assert_eq!(v["status"], "sent", "{v}");
        let times = delivered_at(&sink, uuid);
        assert_eq!(times.len(), 1, "{kind} {uuid}: {times:?}");
        assert!(times[0] >= at, "{kind} sent at {} before {at}", times[0]);
        // Within the wake-up tick and a claim, not a reconciler re-feed.
        assert!(
            times[0] - at < TimeDelta::seconds(3),
            "{kind} late: {}",
            times[0]
        );
    }
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduled_message_cancelled_before_its_time_is_never_sent() {
    let sink = SmtpSink::start(Mode::Accept).await;
    let app = TestApp::builder().sink(&sink).start().await;
    let at = Utc::now() + TimeDelta::seconds(3);
    let uuid = post(&app, "/api/notify/", &[], &notify_at("s", at)).await;
    let r = app
        .post_raw(&format!("/api/notify/{uuid}/cancel/"), &[], "")
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["status"], "cancelled");
    // Past its time, its Redis wake-up, and a reconciler pass.
    sleep_until(at + TimeDelta::seconds(8)).await;
    let v = app.detail("notify", &uuid).await;
    assert_eq!(v["status"], "cancelled", "{v}");
    assert_eq!(sink.attempts(), 0);
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_past_send_at_is_sent_at_once() {
    let sink = SmtpSink::start(Mode::Accept).await;
    let app = TestApp::builder().sink(&sink).start().await;
    let posted = Utc::now();
    let past = Utc::now() - TimeDelta::days(3);
    let uuid = post(&app, "/api/notify/", &[], &notify_at("past", past)).await;
    let v = app
        .wait_final("notify", &uuid, Duration::from_secs(10))
        .await;
    assert_eq!(v["status"], "sent", "{v}");
    let times = delivered_at(&sink, &uuid);
    assert_eq!(times.len(), 1, "{times:?}");
    // A wake-up now, not a reconciler re-feed seconds later.
    assert!(
        times[0] - posted < TimeDelta::seconds(2),
        "late: {}",
        times[0]
    );
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduled_message_survives_losing_every_redis_key_and_is_sent_once() {
    let sink = SmtpSink::start(Mode::Accept).await;
    let app = TestApp::builder().sink(&sink).start().await;
    let at = Utc::now() + TimeDelta::seconds(4);
    let uuid = post(&app, "/api/notify/", &[], &notify_at("wiped", at)).await;
    // The schedule is in Redis, then Redis forgets it (and everything else
    // of this deployment), as FLUSHALL or an empty restart would.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let client = redis::Client::open(redis_url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let retries_key = format!("{}:retries", app.target.prefix);
    let scheduled: i64 = redis::cmd("ZCARD")
        .arg(&retries_key)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(scheduled, 1, "the send_at should be in {retries_key}");
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{}:*", app.target.prefix))
        .query_async(&mut conn)
        .await
        .unwrap();
    let _: () = redis::cmd("DEL")
        .arg(&keys)
        .query_async(&mut conn)
        .await
        .unwrap();

    sleep_until(at - TimeDelta::milliseconds(300)).await;
    assert_eq!(sink.attempts(), 0, "sent before send_at");
    let v = app
        .wait_final("notify", &uuid, Duration::from_secs(30))
        .await;
    assert_eq!(v["status"], "sent", "{v}");
    let times = delivered_at(&sink, &uuid);
    assert_eq!(times.len(), 1, "{times:?}");
    assert!(times[0] >= at, "sent at {} before {at}", times[0]);
    // Nothing more comes later (a stale wake-up, a second re-feed).
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(delivered_at(&sink, &uuid).len(), 1);
    assert_eq!(sink.attempts(), 1);
    app.shutdown().await;
}
