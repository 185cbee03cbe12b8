//! Each event type arrives once, with the body of the contract and a
//! signature the independent implementation accepts; the configured types
//! only, and nothing at all with webhooks off.

use std::time::Duration;

use serde_json::{Value, json};

use crate::common::{HookMode, Mode, SmtpSink, TestApp, WebhookSink, poll_until};
use crate::{SECRET, app_with_hooks, delivered_about, hooked, notification, verify};

const WITHIN: Duration = Duration::from_secs(20);

/// Waits until every outbox row is delivered, then checks that the sink
/// got exactly `n` requests in all: no duplicate came with the last one.
async fn settled(app: &TestApp, sink: &WebhookSink, n: usize) {
    poll_until(WITHIN, "every event delivered", || async {
        let open: i64 = app
            .scalar("SELECT count(*) FROM webhook_events WHERE status <> 'delivered'")
            .await;
        let all: i64 = app.scalar("SELECT count(*) FROM webhook_events").await;
        open == 0 && all == n as i64
    })
    .await;
    assert_eq!(sink.hooks().len(), n, "{:?}", sink.hooks());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sent_notification_gives_one_signed_message_sent_event() {
    let sink = WebhookSink::start(HookMode::Ok).await;
    let app = app_with_hooks(&sink, &[]).await;
    let uuid = app.notify(&notification("hello")).await;
    let hook = delivered_about(&sink, &uuid, 1, WITHIN).await.remove(0);
    settled(&app, &sink, 1).await;

    verify(&hook, SECRET).expect("standardwebhooks accepts the signature");
    // The verifier is not a rubber stamp: a changed body or another secret
    // is refused.
    let mut tampered = hook.clone();
    tampered.body.extend_from_slice(b" ");
    assert!(verify(&tampered, SECRET).is_err());
    assert!(verify(&hook, "whsec_b3RoZXItc2VjcmV0LW90aGVyLXNlY3JldC0xMjM0NTY=").is_err());

    assert!(hook.id().starts_with("msg_"), "{}", hook.id());
    assert_eq!(hook.headers["content-type"], "application/json");
    let sent_at: i64 = hook.headers["webhook-timestamp"].parse().unwrap();
    assert!((chrono::Utc::now().timestamp() - sent_at).abs() < 30);

    let body = hook.json();
    let view = app.detail("notify", &uuid).await;
    assert_eq!(body["type"], "message.sent", "{body}");
    assert!(body["timestamp"].as_str().unwrap().ends_with('Z'), "{body}");
    let data = &body["data"];
    assert_eq!(data["kind"], "notify");
    assert_eq!(data["id"], view["id"]);
    assert_eq!(data["uuid"], uuid.as_str());
    assert_eq!(data["status"], "sent");
    assert_eq!(data["recipient"], "reader@example.org");
    assert_eq!(data["retry_count"], 0);
    assert_eq!(data["error_message"], Value::Null);
    assert_eq!(data["metadata"], json!({"order": 42}));
    assert!(data.get("next_attempt_at").is_none(), "{body}");
    let text = String::from_utf8_lossy(&hook.body);
    assert!(
        !text.contains("secret body text") && !text.contains("hello"),
        "{text}"
    );
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_contact_message_event_names_the_recipient_and_carries_no_contact_text() {
    let sink = WebhookSink::start(HookMode::Ok).await;
    let app = app_with_hooks(&sink, &[("CONTACT_RECIPIENT", "desk@example.org")]).await;
    let r = app
        .post_json(
            "/api/contact/",
            &json!({"name": "Ada", "email": "ada@example.org", "message": "private words"}),
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.text());
    let uuid = r.json()["uuid"].as_str().unwrap().to_owned();
    let hook = delivered_about(&sink, &uuid, 1, WITHIN).await.remove(0);
    verify(&hook, SECRET).unwrap();
    let data = &hook.json()["data"];
    assert_eq!(data["kind"], "contact");
    assert_eq!(data["recipient"], "desk@example.org");
    assert_eq!(data["metadata"], Value::Null);
    let text = String::from_utf8_lossy(&hook.body);
    assert!(
        !text.contains("private words") && !text.contains("Ada"),
        "{text}"
    );
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permanent_failure_gives_one_message_failed_event_with_the_smtp_code() {
    let smtp = SmtpSink::start(Mode::Reject).await;
    let sink = WebhookSink::start(HookMode::Ok).await;
    let app = hooked(&sink).sink(&smtp).start().await;
    let uuid = app.notify(&notification("refused")).await;
    let hook = delivered_about(&sink, &uuid, 1, WITHIN).await.remove(0);
    settled(&app, &sink, 1).await;
    verify(&hook, SECRET).unwrap();
    let body = hook.json();
    assert_eq!(body["type"], "message.failed", "{body}");
    assert_eq!(body["data"]["status"], "failed");
    assert_eq!(body["data"]["smtp_code"], 550);
    assert!(body["data"]["error_message"].as_str().is_some(), "{body}");
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transient_failure_gives_message_retrying_with_the_next_attempt_then_message_sent() {
    let smtp = SmtpSink::start(Mode::TempFail(1)).await;
    let sink = WebhookSink::start(HookMode::Ok).await;
    let app = hooked(&sink)
        .sink(&smtp)
        .env("EMAIL_RETRY_BASE_DELAY_MS", "500")
        .start()
        .await;
    let uuid = app.notify(&notification("later")).await;
    let hooks = delivered_about(&sink, &uuid, 2, WITHIN).await;
    settled(&app, &sink, 2).await;
    let retrying = hooks
        .iter()
        .find(|h| h.event_type() == "message.retrying")
        .expect("a retrying event");
    let sent = hooks
        .iter()
        .find(|h| h.event_type() == "message.sent")
        .expect("a sent event");
    verify(retrying, SECRET).unwrap();
    verify(sent, SECRET).unwrap();
    assert_ne!(retrying.id(), sent.id(), "two events, two ids");
    let data = &retrying.json()["data"];
    assert_eq!(data["status"], "queued", "{data}");
    assert_eq!(data["retry_count"], 1);
    assert_eq!(data["smtp_code"], 451);
    let next = data["next_attempt_at"].as_str().expect("next_attempt_at");
    let next = chrono::DateTime::parse_from_rfc3339(next).expect("RFC 3339");
    let event_at =
        chrono::DateTime::parse_from_rfc3339(retrying.json()["timestamp"].as_str().unwrap())
            .unwrap();
    let wait = next - event_at;
    assert!(
        wait >= chrono::Duration::milliseconds(400) && wait <= chrono::Duration::seconds(5),
        "{wait}"
    );
    assert_eq!(sent.json()["data"]["retry_count"], 1);
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_gives_one_message_cancelled_event() {
    let sink = WebhookSink::start(HookMode::Ok).await;
    let app = app_with_hooks(&sink, &[]).await;
    let at = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    let mut body = notification("scheduled");
    body["send_at"] = json!(at);
    let uuid = app.notify(&body).await;
    let r = app
        .post_raw(&format!("/api/notify/{uuid}/cancel/"), &[], "")
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let hook = delivered_about(&sink, &uuid, 1, WITHIN).await.remove(0);
    settled(&app, &sink, 1).await;
    verify(&hook, SECRET).unwrap();
    assert_eq!(hook.event_type(), "message.cancelled");
    assert_eq!(hook.json()["data"]["status"], "cancelled");
    // A refused cancel records nothing.
    let r = app
        .post_raw(&format!("/api/notify/{uuid}/cancel/"), &[], "")
        .await;
    assert_eq!(r.status, 409, "{}", r.text());
    let rows: i64 = app.scalar("SELECT count(*) FROM webhook_events").await;
    assert_eq!(rows, 1);
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_configured_types_are_recorded_and_nothing_when_webhooks_are_off() {
    let sink = WebhookSink::start(HookMode::Ok).await;
    let app = app_with_hooks(&sink, &[("WEBHOOK_EVENTS", "message.cancelled")]).await;
    let sent = app.notify(&notification("goes")).await;
    app.wait_final("notify", &sent, WITHIN).await;
    let at = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    let mut body = notification("stays");
    body["send_at"] = json!(at);
    let cancelled = app.notify(&body).await;
    let r = app
        .post_raw(&format!("/api/notify/{cancelled}/cancel/"), &[], "")
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    delivered_about(&sink, &cancelled, 1, WITHIN).await;
    let types: Vec<String> = app
        .db()
        .await
        .query("SELECT type FROM webhook_events", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(types, vec!["message.cancelled"]);
    app.shutdown().await;

    let off = TestApp::builder().start().await;
    let uuid = off.notify(&notification("quiet")).await;
    off.wait_final("notify", &uuid, WITHIN).await;
    let rows: i64 = off.scalar("SELECT count(*) FROM webhook_events").await;
    assert_eq!(rows, 0);
    off.shutdown().await;
}
