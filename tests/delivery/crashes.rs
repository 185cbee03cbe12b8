//! Crashes of the dispatcher and of persistence (the test-only
//! `fault-injection` markers), and mailers that stop answering: each actor
//! is back after a restart, accepts answer `202` or `503`, nothing accepted
//! is lost or sent twice, and nothing waits out a lease. `/healthz` says so
//! while the mailers do not answer.
#![cfg(feature = "fault-injection")]

use std::time::Duration;

use email_service::faults::{DISPATCHER_PANIC, MAILER_STALL, PERSISTENCE_PANIC};
use serde_json::{Value, json};

use crate::common::{Mode, SmtpSink, TestApp, poll_until};

fn mail(subject: &str, body: &str) -> Value {
    json!({"to": "a@example.org", "subject": subject, "body": body})
}

/// The supervisor's restart count of `child`.
async fn restarts_of(app: &TestApp, child: &str) -> u64 {
    let health = app.healthz().await.json();
    health["actors"]["supervisor"]["children"][child]["restarts"]
        .as_u64()
        .unwrap_or_else(|| panic!("no {child} in {health}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dispatcher_crash_loses_no_outcome_and_sends_nothing_twice() {
    let sink = SmtpSink::start(Mode::Accept).await;
    let app = TestApp::builder().sink(&sink).start().await;
    let mut uuids = Vec::new();
    for i in 0..5 {
        uuids.push(app.notify(&mail(&format!("a{i}"), "b")).await);
    }
    // Sent, then the dispatcher dies holding its outcome, unwritten.
    let crash = app
        .notify(&mail("crash", &format!("x {DISPATCHER_PANIC}")))
        .await;
    uuids.push(crash.clone());
    for i in 0..5 {
        uuids.push(app.notify(&mail(&format!("b{i}"), "b")).await);
    }
    for uuid in &uuids {
        // Well inside the 90 s lease: nothing may wait it out.
        let v = app
            .wait_final("notify", uuid, Duration::from_secs(15))
            .await;
        assert_eq!(v["status"], "sent", "{v}");
    }
    let crashed = app.detail("notify", &crash).await;
    let attempts = crashed["attempts"].as_array().unwrap();
    assert_eq!(
        attempts.len(),
        1,
        "one attempt, recorded by the restarted dispatcher: {crashed}"
    );
    assert_eq!(attempts[0]["outcome"], "sent");
    let deliveries = sink.by_message_id();
    assert_eq!(deliveries.len(), uuids.len());
    assert!(
        deliveries.values().all(|&n| n == 1),
        "each mail sent once: {deliveries:?}"
    );
    assert!(restarts_of(&app, "dispatcher").await >= 1);
    let health = app.healthz().await;
    assert_eq!(health.status, 200, "{}", health.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_persistence_crash_answers_503_then_persistence_is_back_and_nothing_is_lost() {
    let sink = SmtpSink::start(Mode::Accept).await;
    let app = TestApp::builder().sink(&sink).start().await;
    let before = app.notify(&mail("before", "b")).await;
    let r = app
        .post_json(
            "/api/notify/",
            &mail("crash", &format!("x {PERSISTENCE_PANIC}")),
        )
        .await;
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(r.json()["request_id"].is_string(), "{}", r.text());
    let after = poll_until(
        Duration::from_secs(10),
        "accepts to work again after the restart",
        || async {
            let r = app.post_json("/api/notify/", &mail("after", "b")).await;
            match r.status {
                202 => Ok(r.json()["uuid"].as_str().unwrap().to_owned()),
                503 => Err(r.text()),
                other => panic!("an accept answers 202 or 503, not {other}: {}", r.text()),
            }
        },
    )
    .await;
    for uuid in [&before, &after] {
        let v = app
            .wait_final("notify", uuid, Duration::from_secs(15))
            .await;
        assert_eq!(v["status"], "sent", "{v}");
    }
    let refused: i64 = app
        .scalar("SELECT count(*) FROM notifications WHERE subject = 'crash'")
        .await;
    assert_eq!(
        refused, 0,
        "the request persistence crashed on was not stored"
    );
    assert!(restarts_of(&app, "persistence").await >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_turns_503_while_no_mailer_answers_and_back_to_200_after() {
    let sink = SmtpSink::start(Mode::Accept).await;
    let app = TestApp::builder()
        .sink(&sink)
        .env("MAILER_WORKERS", "1")
        .start()
        .await;
    let stalled = app
        .notify(&mail("stall", &format!("x {MAILER_STALL}")))
        .await;
    let health = poll_until(
        Duration::from_secs(5),
        "/healthz to report that no mailer answers",
        || async {
            let r = app.healthz().await;
            let h = r.json();
            if r.status == 503
                && h["checks"]["mailers"]
                    .as_str()
                    .unwrap_or("")
                    .starts_with("error")
            {
                Ok(h)
            } else {
                Err(h)
            }
        },
    )
    .await;
    assert_eq!(health["checks"]["database"], "ok", "{health}");
    assert_eq!(health["checks"]["redis"], "ok", "{health}");
    poll_until(Duration::from_secs(15), "/healthz back to 200", || async {
        app.healthz().await.status == 200
    })
    .await;
    let v = app
        .wait_final("notify", &stalled, Duration::from_secs(15))
        .await;
    assert_eq!(v["status"], "sent", "{v}");
}
