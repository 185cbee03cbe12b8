//! Operator actions against real delivery: a cancelled message is never
//! sent, a cancel racing a claim has exactly one winner, and a resend starts
//! a new series of attempts.

use std::time::Duration;

use serde_json::{Value, json};

use crate::common::{Mode, SmtpSink, TestApp, TestResponse, poll_until, spawn_app_with_sink};

async fn action(app: &TestApp, kind: &str, id: &str, what: &str) -> TestResponse {
    app.post_raw(&format!("/api/{kind}/{id}/{what}/"), &[], "")
        .await
}

/// Waits until `check` holds for the message's view; returns the view.
async fn wait_view(app: &TestApp, id: &str, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    poll_until(Duration::from_secs(20), what, || async {
        let v = app.detail("notify", id).await;
        if check(&v) { Ok(v) } else { Err(v) }
    })
    .await
}

/// Mails the sink accepted for the message `uuid`.
pub(crate) fn delivered(sink: &SmtpSink, uuid: &str) -> usize {
    sink.by_message_id()
        .iter()
        .filter(|(id, _)| id.contains(uuid))
        .map(|(_, n)| *n)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_cancelled_while_waiting_for_its_retry_is_never_sent() {
    let sink = SmtpSink::start(Mode::TempFail(1)).await;
    // The retry comes 2 s after the first failure: time to cancel it.
    let app = spawn_app_with_sink(&sink, &[("EMAIL_RETRY_BASE_DELAY_MS", "2000")]).await;
    let uuid = app
        .notify(&json!({"to": "a@example.org", "subject": "s", "body": "b"}))
        .await;
    wait_view(&app, &uuid, "the first attempt to fail", |v| {
        v["status"] == "queued" && v["retry_count"] == 1
    })
    .await;

    let r = action(&app, "notify", &uuid, "cancel").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["status"], "cancelled", "{v}");
    assert_eq!(v["next_attempt_at"], Value::Null, "{v}");
    assert_eq!(v["attempts"].as_array().unwrap().len(), 1, "{v}");

    // Past the retry's due time and a reconciler pass: still cancelled, and
    // the sink saw only the first, refused, attempt.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let v = app.detail("notify", &uuid).await;
    assert_eq!(v["status"], "cancelled", "{v}");
    assert_eq!(sink.attempts(), 1);
    assert_eq!(delivered(&sink, &uuid), 0);

    let again = action(&app, "notify", &uuid, "cancel").await;
    assert_eq!(again.status, 409, "{}", again.text());
    assert_eq!(again.json()["status"], "cancelled");
    assert!(again.json()["detail"].as_str().unwrap().contains("queued"));

    // A resend starts a new series: retry_count from 0, the attempt numbers
    // going on after the first one.
    let r = action(&app, "notify", &uuid, "retry").await;
    assert_eq!(r.status, 202, "{}", r.text());
    assert_eq!(r.json()["status"], "queued");
    assert_eq!(r.json()["retry_count"], 0);
    let v = app
        .wait_final("notify", &uuid, Duration::from_secs(20))
        .await;
    assert_eq!(v["status"], "sent", "{v}");
    assert_eq!(attempt_numbers(&v), [1, 2], "{v}");
    assert_eq!(delivered(&sink, &uuid), 1);
    app.shutdown().await;
}

/// Posts a notification while `sink` rejects everything, and waits until
/// it has failed; returns its uuid.
async fn failed_notification(app: &TestApp, sink: &SmtpSink, subject: &str) -> String {
    sink.set_mode(Mode::Reject);
    let uuid = app
        .notify(&json!({"to": "a@example.org", "subject": subject, "body": "b"}))
        .await;
    let v = app
        .wait_final("notify", &uuid, Duration::from_secs(20))
        .await;
    assert_eq!(v["status"], "failed", "{v}");
    uuid
}

fn attempt_numbers(v: &Value) -> Vec<i64> {
    v["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["number"].as_i64().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_message_is_resent_and_a_sent_one_only_with_force() {
    let sink = SmtpSink::start(Mode::Reject).await;
    let app = spawn_app_with_sink(&sink, &[]).await;
    let uuid = failed_notification(&app, &sink, "s").await;

    sink.set_mode(Mode::Accept);
    let r = action(&app, "notify", &uuid, "retry").await;
    assert_eq!(r.status, 202, "{}", r.text());
    let v = app
        .wait_final("notify", &uuid, Duration::from_secs(20))
        .await;
    assert_eq!(v["status"], "sent", "{v}");
    assert_eq!(attempt_numbers(&v), [1, 2], "{v}");
    assert_eq!(
        v["attempts"][0]["outcome"], "permanent",
        "history kept: {v}"
    );

    let r = action(&app, "notify", &uuid, "retry").await;
    assert_eq!(r.status, 409, "{}", r.text());
    assert_eq!(r.json()["status"], "sent");
    assert!(r.json()["detail"].as_str().unwrap().contains("force=true"));
    assert_eq!(delivered(&sink, &uuid), 1);

    let r = app
        .post_raw(&format!("/api/notify/{uuid}/retry/?force=true"), &[], "")
        .await;
    assert_eq!(r.status, 202, "{}", r.text());
    poll_until(Duration::from_secs(20), "the forced resend", || async {
        delivered(&sink, &uuid) == 2
    })
    .await;
    let v = app
        .wait_final("notify", &uuid, Duration::from_secs(20))
        .await;
    assert_eq!(attempt_numbers(&v), [1, 2, 3], "{v}");
    // Sent again under the same Message-ID, so receivers can de-duplicate.
    assert_eq!(sink.by_message_id().len(), 1, "{:?}", sink.by_message_id());
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_resends_start_one_new_series() {
    let sink = SmtpSink::start(Mode::Reject).await;
    let app = spawn_app_with_sink(&sink, &[]).await;
    for round in 0..5 {
        let uuid = failed_notification(&app, &sink, &format!("r{round}")).await;
        sink.set_mode(Mode::Accept);
        let answers =
            futures_util::future::join_all((0..6).map(|_| action(&app, "notify", &uuid, "retry")))
                .await;
        let statuses: Vec<u16> = answers.iter().map(|r| r.status).collect();
        assert_eq!(
            statuses.iter().filter(|&&s| s == 202).count(),
            1,
            "{statuses:?}"
        );
        assert!(
            statuses.iter().all(|&s| s == 202 || s == 409),
            "{statuses:?}"
        );
        let v = app
            .wait_final("notify", &uuid, Duration::from_secs(20))
            .await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let v2 = app.detail("notify", &uuid).await;
        assert_eq!(v["status"], "sent", "{v}");
        assert_eq!(attempt_numbers(&v2), [1, 2], "{v2}");
        assert_eq!(delivered(&sink, &uuid), 1);
    }
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_racing_the_claim_has_exactly_one_winner() {
    let sink = SmtpSink::start(Mode::Accept).await;
    let app = spawn_app_with_sink(&sink, &[("MAILER_WORKERS", "4")]).await;
    let mut outcomes = Vec::new();
    for i in 0..50u64 {
        // The client picks the uuid, so the cancel can be sent while the
        // accept is still in flight and land right where the claim does.
        let uuid = uuid::Uuid::new_v4().to_string();
        let body = json!({"uuid": uuid, "to": format!("u{i}@example.org"),
                          "subject": format!("race {i}"), "body": "b"});
        let cancel = async {
            tokio::time::sleep(Duration::from_micros(i % 10 * 300)).await;
            loop {
                let r = action(&app, "notify", &uuid, "cancel").await;
                if r.status != 404 {
                    return r;
                }
            }
        };
        let (accepted, r) = tokio::join!(app.post_json("/api/notify/", &body), cancel);
        assert_eq!(accepted.status, 202, "{}", accepted.text());
        assert!(
            r.status == 200 || r.status == 409,
            "{uuid}: {} {}",
            r.status,
            r.text()
        );
        outcomes.push((uuid, r));
    }
    for (uuid, r) in &outcomes {
        if r.status == 409 {
            let status = r.json()["status"].as_str().unwrap().to_owned();
            assert!(
                status == "sending" || status == "sent",
                "{uuid}: refused while {status}"
            );
            let v = app
                .wait_final("notify", uuid, Duration::from_secs(20))
                .await;
            assert_eq!(v["status"], "sent", "{v}");
        }
    }
    // Every message the cancel lost is sent by now; give a cancelled one
    // that was wrongly claimed as long again to reach the sink.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (mut cancelled, mut sent) = (0, 0);
    for (uuid, r) in &outcomes {
        let v = app.detail("notify", uuid).await;
        if r.status == 200 {
            cancelled += 1;
            assert_eq!(v["status"], "cancelled", "{v}");
            assert_eq!(
                delivered(&sink, uuid),
                0,
                "{uuid} was cancelled and sent: {v}"
            );
        } else {
            sent += 1;
            assert_eq!(delivered(&sink, uuid), 1, "{uuid}: {v}");
        }
    }
    eprintln!("cancel against claim: {cancelled} cancelled, {sent} sent");
    app.shutdown().await;
}
