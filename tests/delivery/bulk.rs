//! Bulk actions and operator races against real delivery: a bulk cancel's
//! messages are never sent, a bulk resend's are sent once each (twice with
//! `force`), running either again changes nothing, and with two instances
//! on one database and prefix every cancel and resend has one winner.

use std::time::Duration;

use chrono::Utc;
use serde_json::{Value, json};

use crate::common::{Mode, SmtpSink, Target, TestApp, TestResponse, poll_until};
use crate::control::delivered;

async fn bulk(app: &TestApp, path: &str, body: &Value) -> Value {
    let r = app
        .post_json_with(path, &[("x-request-id", "bulk-op")], body)
        .await;
    assert_eq!(r.status, 200, "{path} {body}: {}", r.text());
    r.json()
}

/// Posts `n` notifications to `to` while `sink` rejects everything and
/// waits until each has failed; returns their uuids.
async fn failed(app: &TestApp, sink: &SmtpSink, to: &str, n: usize) -> Vec<String> {
    sink.set_mode(Mode::Reject);
    let mut uuids = Vec::new();
    for i in 0..n {
        uuids.push(
            app.notify(&json!({"to": to, "subject": format!("f{i}"), "body": "b"}))
                .await,
        );
    }
    for uuid in &uuids {
        let v = app
            .wait_final("notify", uuid, Duration::from_secs(20))
            .await;
        assert_eq!(v["status"], "failed", "{v}");
    }
    uuids
}

/// Posts `n` notifications due `ahead` from now; returns their uuids.
async fn scheduled(app: &TestApp, to: &str, n: usize, ahead: Duration) -> Vec<String> {
    let at = (Utc::now() + ahead).to_rfc3339();
    let mut uuids = Vec::new();
    for i in 0..n {
        uuids.push(
            app.notify(&json!({"to": to, "subject": format!("s{i}"), "body": "b", "send_at": at}))
                .await,
        );
    }
    uuids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_cancelled_messages_are_never_sent_and_bulk_resent_ones_are_sent_once() {
    let sink = SmtpSink::start(Mode::Reject).await;
    let app = TestApp::builder().sink(&sink).start().await;
    let failures = failed(&app, &sink, "fail@example.org", 4).await;
    sink.set_mode(Mode::Accept);
    let later = scheduled(&app, "later@example.org", 3, Duration::from_secs(3)).await;

    let cancel = json!({"to": "later@example.org"});
    assert_eq!(
        bulk(&app, "/api/notify/cancel/", &cancel).await,
        json!({"matched": 3, "changed": 3})
    );
    assert_eq!(
        bulk(&app, "/api/notify/cancel/", &cancel).await,
        json!({"matched": 3, "changed": 0})
    );

    let resend = json!({"to": "fail@example.org"});
    assert_eq!(
        bulk(&app, "/api/notify/retry/", &resend).await,
        json!({"matched": 4, "changed": 4})
    );
    // Woken at once: well before the reconciler would find them (5 s).
    poll_until(Duration::from_secs(4), "the bulk resends", || async {
        failures.iter().all(|u| delivered(&sink, u) == 1)
    })
    .await;
    for uuid in &failures {
        let v = app
            .wait_final("notify", uuid, Duration::from_secs(20))
            .await;
        assert_eq!(v["status"], "sent", "{v}");
        assert_eq!(delivered(&sink, uuid), 1);
        let events = v["events"].as_array().unwrap();
        assert_eq!(events.len(), 1, "{v}");
        assert_eq!(events[0]["what"], "resent");
        assert_eq!(events[0]["bulk"], true);
        assert_eq!(events[0]["request_id"], "bulk-op");
        assert_eq!(events[0]["from_status"], "failed");
    }
    // Sent now: again without force changes nothing, with force sends again.
    assert_eq!(
        bulk(&app, "/api/notify/retry/", &resend).await,
        json!({"matched": 4, "changed": 0})
    );
    let forced = json!({"to": "fail@example.org", "force": true});
    assert_eq!(
        bulk(&app, "/api/notify/retry/", &forced).await,
        json!({"matched": 4, "changed": 4})
    );
    poll_until(Duration::from_secs(20), "the forced resends", || async {
        failures.iter().all(|u| delivered(&sink, u) == 2)
    })
    .await;

    // Well past their send_at and a reconciler pass: still cancelled, unsent.
    poll_until(Duration::from_secs(20), "the send_at to pass", || async {
        let due: bool = app
            .scalar("SELECT max(created_at) < now() - interval '6 seconds' FROM notifications")
            .await;
        due
    })
    .await;
    for uuid in &later {
        assert_eq!(app.detail("notify", uuid).await["status"], "cancelled");
        assert_eq!(delivered(&sink, uuid), 0, "{uuid} was cancelled and sent");
    }
    app.shutdown().await;
}

async fn act(app: &TestApp, uuid: &str, what: &str) -> TestResponse {
    app.post_raw(&format!("/api/notify/{uuid}/{what}/"), &[], "")
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_two_instances_each_cancel_and_resend_has_one_winner() {
    let sink = SmtpSink::start(Mode::Reject).await;
    let target = Target::fresh();
    let a = TestApp::builder().sink(&sink).target(&target).start().await;
    let b = TestApp::builder().sink(&sink).target(&target).start().await;

    // Resends of one failed message through both instances at once.
    let failures = failed(&a, &sink, "fail@example.org", 8).await;
    sink.set_mode(Mode::Accept);
    for uuid in &failures {
        let (ra, rb) = tokio::join!(act(&a, uuid, "retry"), act(&b, uuid, "retry"));
        let mut codes = [ra.status, rb.status];
        codes.sort();
        assert_eq!(codes, [202, 409], "{uuid}: {} / {}", ra.text(), rb.text());
    }
    // Cancels of one scheduled message through both instances at once.
    // Far enough ahead that the 8 races end before it on a loaded machine.
    let later = scheduled(&a, "later@example.org", 8, Duration::from_secs(8)).await;
    for uuid in &later {
        let (ra, rb) = tokio::join!(act(&a, uuid, "cancel"), act(&b, uuid, "cancel"));
        let mut codes = [ra.status, rb.status];
        codes.sort();
        assert_eq!(codes, [200, 409], "{uuid}: {} / {}", ra.text(), rb.text());
    }
    // Bulk cancels of the same rows through both instances at once.
    a.db()
        .await
        .execute(
            "INSERT INTO notifications (uuid, recipient, subject, body, request_hash, next_attempt_at)
             SELECT gen_random_uuid(), 'many@example.org', 'm' || n, 'b', '\\x00', now() + interval '1 day'
             FROM generate_series(1, 1500) AS n",
            &[],
        )
        .await
        .unwrap();
    let filter = json!({"to": "many@example.org"});
    let (ba, bb) = tokio::join!(
        bulk(&a, "/api/notify/cancel/", &filter),
        bulk(&b, "/api/notify/cancel/", &filter)
    );
    assert_eq!(ba["matched"], 1500);
    assert_eq!(bb["matched"], 1500);
    assert_eq!(
        ba["changed"].as_i64().unwrap() + bb["changed"].as_i64().unwrap(),
        1500,
        "{ba} {bb}"
    );
    let events: i64 = a
        .scalar("SELECT count(*) FROM message_events WHERE what = 'cancelled'")
        .await;
    assert_eq!(events, 1500 + 8, "one event per change");

    for uuid in &failures {
        let v = a.wait_final("notify", uuid, Duration::from_secs(20)).await;
        assert_eq!(v["status"], "sent", "{v}");
        assert_eq!(
            v["attempts"].as_array().unwrap().len(),
            2,
            "one new series: {v}"
        );
        assert_eq!(v["events"].as_array().unwrap().len(), 1, "{v}");
    }
    poll_until(Duration::from_secs(20), "the send_at to pass", || async {
        let due: bool = a
            .scalar("SELECT max(created_at) < now() - interval '11 seconds' FROM notifications WHERE recipient = 'later@example.org'")
            .await;
        due
    })
    .await;
    for uuid in failures.iter().chain(&later) {
        let want = usize::from(failures.contains(uuid));
        assert_eq!(delivered(&sink, uuid), want, "{uuid}");
    }
    a.shutdown().await;
    b.shutdown().await;
}
