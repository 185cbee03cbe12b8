//! Receivers that misbehave: down, failing with 500, slow, hanging, gone.
//! Every event still arrives (or stops on 410), with the same `webhook-id`
//! on every attempt, and mail delivery does not wait for any of it.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::{HookMode, TestApp, WebhookSink, poll_until};
use crate::{SECRET, app_with_hooks, delivered_about, notification, verify};

const WITHIN: Duration = Duration::from_secs(30);

/// The outbox row of the one event of a message: `(status, attempts,
/// last_status_code, last_error)`; status `none` until it is recorded.
async fn row(app: &TestApp, uuid: &str) -> (String, i32, Option<i32>, Option<String>) {
    let db = app.db().await;
    let Some(r) = db
        .query_opt(
            "SELECT status, attempts, last_status_code, last_error FROM webhook_events
             WHERE message_uuid = $1::text::uuid",
            &[&uuid],
        )
        .await
        .unwrap()
    else {
        return ("none".into(), 0, None, None);
    };
    (r.get(0), r.get(1), r.get(2), r.get(3))
}

/// Waits until the sink has seen `n` requests in all.
async fn requests(sink: &WebhookSink, n: usize) {
    poll_until(WITHIN, &format!("{n} webhook requests"), || async {
        sink.hooks().len() >= n
    })
    .await;
}

fn ids(sink: &WebhookSink) -> HashSet<String> {
    sink.hooks().iter().map(|h| h.id().to_owned()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_is_down_gets_the_event_once_it_is_back_and_health_stays_200() {
    let sink = WebhookSink::down_from_start(HookMode::Ok).await;
    let app = app_with_hooks(
        &sink,
        &[("WEBHOOK_RETRY_SCHEDULE", "0.3,0.5,1,1,1,1,1,1,1,1")],
    )
    .await;
    let uuid = app.notify(&notification("while down")).await;
    poll_until(WITHIN, "two refused attempts", || async {
        let (status, attempts, _, error) = row(&app, &uuid).await;
        if status == "pending" && attempts >= 2 {
            Ok(())
        } else {
            Err(format!("{status} {attempts} {error:?}"))
        }
    })
    .await;
    let (_, _, code, error) = row(&app, &uuid).await;
    assert_eq!(code, None);
    assert!(
        error.as_deref().is_some_and(|e| e.contains("onnect")),
        "{error:?}"
    );
    // A receiver's outage is not the service's: health stays 200.
    let h = app.healthz().await;
    assert_eq!(h.status, 200, "{}", h.text());
    let health: Value = h.json();
    assert_eq!(health["checks"]["webhooks"], "ok", "{health}");
    assert_eq!(health["actors"]["webhooks"]["enabled"], true, "{health}");

    sink.up().await;
    let hook = delivered_about(&sink, &uuid, 1, WITHIN).await.remove(0);
    verify(&hook, SECRET).unwrap();
    poll_until(WITHIN, "the row delivered", || async {
        row(&app, &uuid).await.0 == "delivered"
    })
    .await;
    assert_eq!(sink.hooks().len(), 1);
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_500_is_retried_with_the_same_webhook_id_until_the_receiver_accepts() {
    let sink = WebhookSink::start(HookMode::Status(500)).await;
    let app = app_with_hooks(&sink, &[]).await;
    let uuid = app.notify(&notification("flaky")).await;
    requests(&sink, 2).await;
    sink.set_mode(HookMode::Ok);
    delivered_about(&sink, &uuid, 1, WITHIN).await;
    poll_until(WITHIN, "the row delivered", || async {
        row(&app, &uuid).await.0 == "delivered"
    })
    .await;
    let hooks = sink.hooks();
    assert_eq!(
        ids(&sink).len(),
        1,
        "one event, one id on every attempt: {hooks:?}"
    );
    for h in &hooks {
        verify(h, SECRET).expect("every attempt is signed");
    }
    assert!(hooks.iter().filter(|h| h.answered == Some(500)).count() >= 2);
    let (_, attempts, code, error) = row(&app, &uuid).await;
    assert_eq!(attempts as usize, hooks.len());
    assert_eq!((code, error), (Some(204), None));
    // The retries are spaced by the schedule (0.3 s, then 0.6 s).
    let gap = hooks[1].at - hooks[0].at;
    assert!(gap >= Duration::from_millis(250), "{gap:?}");

    let metrics = app.get("/metrics").await.text();
    for line in [
        "email_service_webhook_attempts_total{outcome=\"retry\"}",
        "email_service_webhook_attempts_total{outcome=\"delivered\"} 1",
        "email_service_webhook_attempt_duration_seconds_count",
        "email_service_webhook_queue_depth",
    ] {
        assert!(metrics.contains(line), "{line} in\n{metrics}");
    }
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_receiver_within_the_timeout_gets_each_event_once() {
    let sink = WebhookSink::start(HookMode::Slow(Duration::from_millis(1200))).await;
    let app = app_with_hooks(&sink, &[]).await;
    let uuid = app.notify(&notification("slowly")).await;
    delivered_about(&sink, &uuid, 1, WITHIN).await;
    poll_until(WITHIN, "the row delivered", || async {
        row(&app, &uuid).await.0 == "delivered"
    })
    .await;
    assert_eq!(row(&app, &uuid).await.1, 1);
    assert_eq!(sink.hooks().len(), 1);
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_receiver_times_out_is_retried_and_does_not_hold_up_mail() {
    let sink = WebhookSink::start(HookMode::Hang).await;
    let app = app_with_hooks(
        &sink,
        &[("WEBHOOK_TIMEOUT", "1"), ("WEBHOOK_CONCURRENCY", "2")],
    )
    .await;
    let first = app.notify(&notification("first")).await;
    requests(&sink, 1).await;
    // Mail goes on at its own pace while every webhook slot hangs.
    let started = Instant::now();
    let mut uuids = Vec::new();
    for i in 0..20 {
        uuids.push(app.notify(&notification(&format!("m{i}"))).await);
    }
    for uuid in &uuids {
        let v = app.wait_final("notify", uuid, WITHIN).await;
        assert_eq!(v["status"], "sent", "{v}");
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );

    poll_until(WITHIN, "a timed-out attempt recorded", || async {
        let (status, attempts, _, error) = row(&app, &first).await;
        let timed_out = error
            .as_deref()
            .is_some_and(|e| e.contains("no answer within 1 s"));
        if status == "pending" && attempts >= 1 && timed_out {
            Ok(())
        } else {
            Err(format!("{status} {attempts} {error:?}"))
        }
    })
    .await;
    sink.set_mode(HookMode::Ok);
    let hook = delivered_about(&sink, &first, 1, WITHIN).await.remove(0);
    let tried: HashSet<String> = sink
        .hooks()
        .iter()
        .filter(|h| h.message() == first)
        .map(|h| h.id().to_owned())
        .collect();
    assert_eq!(tried, HashSet::from([hook.id().to_owned()]));
    assert!(sink.hooks().iter().filter(|h| h.message() == first).count() >= 2);
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_410_gone_stops_the_retries_of_that_event() {
    let sink = WebhookSink::start(HookMode::Status(410)).await;
    let app = app_with_hooks(&sink, &[]).await;
    let uuid = app.notify(&notification("unwanted")).await;
    poll_until(WITHIN, "the row gone", || async {
        row(&app, &uuid).await.0 == "gone"
    })
    .await;
    let (_, attempts, code, _) = row(&app, &uuid).await;
    assert_eq!((attempts, code), (1, Some(410)));
    // Longer than the whole retry schedule (0.3 + 0.6 + 1 s): nothing more.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(sink.hooks().len(), 1);
    assert_eq!(row(&app, &uuid).await.0, "gone");
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_is_given_up_after_the_retry_schedule() {
    let sink = WebhookSink::start(HookMode::Status(503)).await;
    let app = app_with_hooks(&sink, &[("WEBHOOK_RETRY_SCHEDULE", "0.2,0.2")]).await;
    let uuid = app.notify(&notification("never")).await;
    poll_until(WITHIN, "the row failed", || async {
        row(&app, &uuid).await.0 == "failed"
    })
    .await;
    let (_, attempts, code, error) = row(&app, &uuid).await;
    assert_eq!((attempts, code), (3, Some(503)), "{error:?}");
    assert_eq!(sink.hooks().len(), 3);
    app.shutdown().await;
}

/// A receiver that refuses at once does not turn the outbox into a busy
/// loop taking the database from mail: after a failure, the next claim
/// waits for the actor's tick (250 ms), even when the event is due again
/// at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_attempts_are_paced_by_the_tick_not_looped() {
    let sink = WebhookSink::down_from_start(HookMode::Ok).await;
    let zeros = vec!["0"; 200].join(",");
    let app = app_with_hooks(&sink, &[("WEBHOOK_RETRY_SCHEDULE", &zeros)]).await;
    let uuid = app.notify(&notification("refused")).await;
    poll_until(WITHIN, "a first refused attempt", || async {
        row(&app, &uuid).await.1 >= 1
    })
    .await;
    let before = row(&app, &uuid).await.1;
    // A window to count attempts in: 2 s is 8 ticks.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (status, after, _, error) = row(&app, &uuid).await;
    assert_eq!(status, "pending", "{error:?}");
    assert!(after - before <= 12, "{} attempts in 2 s", after - before);
    assert!(
        after - before >= 2,
        "still retried: {} attempts in 2 s",
        after - before
    );
    app.shutdown().await;
}
