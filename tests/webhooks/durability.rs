//! The outbox keeps its promise: an event recorded is delivered across a
//! kill -9 in the middle of its delivery (again, with the same
//! `webhook-id`), a Redis wipe (the outbox never used Redis), and two
//! instances on one database (each event delivered once).

use std::collections::HashMap;
use std::time::Duration;

use serde_json::{Value, json};

use crate::common::process::http;
use crate::common::{HookMode, Target, TestApp, WebhookSink, poll_until, wipe_redis};
use crate::{SECRET, app_with_hooks, delivered_about, hooked, notification, verify};

const WITHIN: Duration = Duration::from_secs(40);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_in_the_middle_of_a_delivery_delivers_it_after_restart_with_the_same_id() {
    let sink = WebhookSink::start(HookMode::Hang).await;
    let target = Target::fresh();
    // A long timeout: the attempt is still hanging when the process dies,
    // and only its lease (timeout + 2 s) ending can bring the event back.
    let start = || {
        hooked(&sink)
            .target(&target)
            .env("WEBHOOK_TIMEOUT", "4")
            .env("WEBHOOK_RETRY_SCHEDULE", "60")
            .process()
    };
    let mut p = start();
    let body = notification("crash").to_string();
    let (status, resp) = http(p.addr, "POST", "/api/notify/", Some(&body));
    assert_eq!(status, 202, "{resp}");
    let uuid = serde_json::from_str::<Value>(&resp).unwrap()["uuid"]
        .as_str()
        .unwrap()
        .to_owned();
    poll_until(
        WITHIN,
        "the first attempt to reach the receiver",
        || async { !sink.hooks().is_empty() },
    )
    .await;
    let first_id = sink.hooks()[0].id().to_owned();
    p.kill9();

    sink.set_mode(HookMode::Ok);
    let p = start();
    let hook = delivered_about(&sink, &uuid, 1, WITHIN).await.remove(0);
    assert_eq!(hook.id(), first_id, "the same webhook-id after the crash");
    verify(&hook, SECRET).unwrap();
    // The attempt's log line: the event, the receiver's host (not its URL),
    // the answer and the time it took.
    let line = poll_until(WITHIN, "the attempt's log line", || async {
        p.stdout_lines()
            .iter()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|l| l["message"] == "webhook attempt" && l["status_code"] == 204)
            .ok_or("no line yet")
    })
    .await;
    assert_eq!(line["event_id"], first_id.as_str(), "{line}");
    assert_eq!(line["url_host"], "127.0.0.1", "{line}");
    assert_eq!(line["outcome"], "delivered", "{line}");
    assert!(line["duration_ms"].as_f64().is_some(), "{line}");
    assert!(
        !line.to_string().contains("/hooks"),
        "no URL path in the log: {line}"
    );
    let db = target.db().await;
    poll_until(WITHIN, "the row delivered", || async {
        let r = db
            .query_one("SELECT status, attempts FROM webhook_events", &[])
            .await
            .unwrap();
        let (status, attempts): (String, i32) = (r.get(0), r.get(1));
        if status == "delivered" && attempts == 2 {
            Ok(())
        } else {
            Err(format!("{status} {attempts}"))
        }
    })
    .await;
    assert_eq!(
        sink.hooks().len(),
        2,
        "the hung attempt and the one after the restart"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_wipe_loses_no_event() {
    let sink = WebhookSink::start(HookMode::Status(500)).await;
    let app = app_with_hooks(
        &sink,
        &[("WEBHOOK_RETRY_SCHEDULE", "0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5")],
    )
    .await;
    let uuid = app.notify(&notification("wiped")).await;
    poll_until(WITHIN, "a refused attempt", || async {
        !sink.hooks().is_empty()
    })
    .await;
    // This test's keys are its whole Redis state: the dispatcher's stream
    // and schedule go, the outbox (in PostgreSQL) stays.
    wipe_redis(&app.target.prefix).await;
    sink.set_mode(HookMode::Ok);
    let hook = delivered_about(&sink, &uuid, 1, WITHIN).await.remove(0);
    assert_eq!(hook.event_type(), "message.sent");
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_on_one_database_deliver_each_event_once() {
    let sink = WebhookSink::start(HookMode::Slow(Duration::from_millis(20))).await;
    let target = Target::fresh();
    let a = hooked(&sink).target(&target).start().await;
    let b = hooked(&sink).target(&target).start().await;
    for i in 0..60 {
        let app: &TestApp = if i % 2 == 0 { &a } else { &b };
        app.notify(&json!({"to": "x@example.org", "subject": format!("m{i}"), "body": "b"}))
            .await;
    }
    poll_until(WITHIN, "60 events delivered", || async {
        let done: i64 = a
            .scalar("SELECT count(*) FROM webhook_events WHERE status = 'delivered'")
            .await;
        if done == 60 { Ok(()) } else { Err(done) }
    })
    .await;
    let mut per_id: HashMap<String, usize> = HashMap::new();
    for h in sink.hooks() {
        *per_id.entry(h.id().to_owned()).or_default() += 1;
    }
    assert_eq!(per_id.len(), 60);
    assert!(per_id.values().all(|&n| n == 1), "{per_id:?}");
    a.shutdown().await;
    b.shutdown().await;
}
