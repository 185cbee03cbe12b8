use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use crate::common::{Mode, SmtpSink, TestApp, poll_until, wipe_redis};

/// Retries in tests: 300 ms, 600 ms, 1200 ms.
const FAST_RETRIES: [(&str, &str); 3] = [
    ("EMAIL_RETRY_BASE_DELAY_MS", "300"),
    ("EMAIL_RETRY_BACKOFF_FACTOR", "2"),
    ("EMAIL_MAX_RETRIES", "3"),
];

async fn app_with_sink(sink: &SmtpSink, extra: &[(&str, &str)]) -> TestApp {
    TestApp::builder()
        .sink(sink)
        .envs(&FAST_RETRIES)
        .envs(extra)
        .start()
        .await
}

/// The notification most of these tests send.
fn mail() -> Value {
    json!({"to": "a@example.org", "subject": "s", "body": "b"})
}

/// Sends [`mail`] and waits until it is sent or failed; returns its view.
async fn send_mail(app: &TestApp) -> Value {
    app.notify_and_wait(&mail(), Duration::from_secs(20)).await
}

/// Posts [`mail`] and waits until its first attempt failed (`what`);
/// returns its uuid.
async fn mail_retried(app: &TestApp, what: &str) -> String {
    let uuid = app.notify(&mail()).await;
    poll_until(Duration::from_secs(10), what, || async {
        app.detail("notify", &uuid).await["retry_count"].as_i64() >= Some(1)
    })
    .await;
    uuid
}

fn attempts(v: &Value) -> Vec<Value> {
    v["attempts"].as_array().cloned().unwrap_or_default()
}

fn started(a: &Value) -> DateTime<Utc> {
    a["started_at"].as_str().unwrap().parse().unwrap()
}

fn finished(a: &Value) -> DateTime<Utc> {
    a["finished_at"].as_str().unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn temporary_failures_are_retried_on_the_backoff_schedule_then_sent() {
    let sink = SmtpSink::start(Mode::TempFail(2)).await;
    let app = app_with_sink(&sink, &[]).await;
    let v = send_mail(&app).await;
    assert_eq!(v["status"], "sent", "{v}");
    assert_eq!(v["retry_count"], 2);
    let a = attempts(&v);
    let outcomes: Vec<&str> = a.iter().map(|a| a["outcome"].as_str().unwrap()).collect();
    assert_eq!(outcomes, ["transient", "transient", "sent"]);
    assert_eq!(a[0]["smtp_code"], 451);
    assert!(a[0]["error"].as_str().unwrap().contains("451") || a[0]["smtp_reply"].is_string());
    // Retry n waits base × factor^(n-1): 300 ms, then 600 ms.
    let gap1 = started(&a[1]) - finished(&a[0]);
    let gap2 = started(&a[2]) - finished(&a[1]);
    assert!(gap1.num_milliseconds() >= 290, "first retry after {gap1}");
    assert!(gap2.num_milliseconds() >= 590, "second retry after {gap2}");
    assert!(gap2 > gap1);
    assert_eq!(sink.received().len(), 1);
    assert!(v["error_message"].as_str().unwrap().contains("451"), "{v}");
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permanent_rejection_fails_at_once_without_retry() {
    let sink = SmtpSink::start(Mode::Reject).await;
    let app = app_with_sink(&sink, &[]).await;
    let v = send_mail(&app).await;
    assert_eq!(v["status"], "failed", "{v}");
    assert_eq!(v["retry_count"], 0);
    let a = attempts(&v);
    assert_eq!(a.len(), 1);
    assert_eq!(a[0]["outcome"], "permanent");
    assert_eq!(a[0]["smtp_code"], 550);
    assert!(v["error_message"].as_str().unwrap().contains("550"));
    assert!(v["next_attempt_at"].is_null());
    // Nothing else is tried later.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(sink.attempts(), 1);
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exhausted_retries_end_in_failed_with_the_last_error() {
    let sink = SmtpSink::start(Mode::TempFail(usize::MAX)).await;
    let app = app_with_sink(&sink, &[("EMAIL_MAX_RETRIES", "2")]).await;
    let v = send_mail(&app).await;
    assert_eq!(v["status"], "failed", "{v}");
    assert_eq!(v["retry_count"], 2);
    let a = attempts(&v);
    assert_eq!(a.len(), 3, "first attempt + 2 retries: {v}");
    assert!(a.iter().all(|a| a["outcome"] == "transient"));
    assert!(v["error_message"].as_str().unwrap().contains("451"));
    assert_eq!(sink.attempts(), 3);
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_smtp_server_that_is_down_then_back_gets_the_mail() {
    let sink = SmtpSink::start(Mode::Accept).await;
    let app = app_with_sink(&sink, &[("EMAIL_MAX_RETRIES", "6")]).await;
    sink.down();
    let uuid = mail_retried(&app, "a refused attempt").await;
    sink.up().await;
    let v = app
        .wait_final("notify", &uuid, Duration::from_secs(30))
        .await;
    assert_eq!(v["status"], "sent", "{v}");
    let a = attempts(&v);
    assert_eq!(a[0]["outcome"], "transient");
    assert!(a[0]["smtp_code"].is_null());
    assert_eq!(sink.received().len(), 1);
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_server_times_out_and_is_retried() {
    let sink = SmtpSink::start(Mode::Hang).await;
    let app = app_with_sink(&sink, &[("EMAIL_TIMEOUT", "1")]).await;
    let uuid = mail_retried(&app, "a timed-out attempt").await;
    // While a send hangs, health still answers at once.
    let started = std::time::Instant::now();
    let _ = app.healthz().await;
    assert!(started.elapsed() < Duration::from_secs(2));
    sink.set_mode(Mode::Accept);
    let v = app
        .wait_final("notify", &uuid, Duration::from_secs(30))
        .await;
    assert_eq!(v["status"], "sent", "{v}");
    let first = &attempts(&v)[0];
    assert_eq!(first["outcome"], "transient");
    assert!(
        first["error"].as_str().unwrap().contains("timed out"),
        "{first}"
    );
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_server_within_the_timeout_is_fine() {
    let sink = SmtpSink::start(Mode::Slow(Duration::from_millis(400))).await;
    let app = app_with_sink(&sink, &[("EMAIL_TIMEOUT", "5")]).await;
    let v = send_mail(&app).await;
    assert_eq!(v["status"], "sent");
    assert!(attempts(&v)[0]["duration_ms"].as_i64().unwrap() >= 400);
    app.shutdown().await;
}

#[cfg(feature = "fault-injection")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mailer_that_crashes_mid_send_is_restarted_and_the_message_retried() {
    use email_service::faults::{MAILER_PANIC, SEND_TASK_PANIC};
    let sink = SmtpSink::start(Mode::Accept).await;
    let app = app_with_sink(&sink, &[("MAILER_WORKERS", "2")]).await;
    let a = app
        .notify(
            &json!({"to": "a@example.org", "subject": "s", "body": format!("boom {MAILER_PANIC}")}),
        )
        .await;
    let b = app
        .notify(&json!({"to": "a@example.org", "subject": "s", "body": format!("task {SEND_TASK_PANIC}")}))
        .await;
    for uuid in [&a, &b] {
        let v = app
            .wait_final("notify", uuid, Duration::from_secs(20))
            .await;
        assert_eq!(v["status"], "sent", "{v}");
        let at = attempts(&v);
        assert_eq!(at.len(), 2, "{v}");
        assert_eq!(at[0]["outcome"], "crash");
        assert!(at[0]["error"].as_str().unwrap().contains("mailer crashed"));
        assert_eq!(at[1]["outcome"], "sent");
        // The crash became a scheduled retry with backoff, not an instant one.
        let gap = started(&at[1]) - finished(&at[0]);
        assert!(gap.num_milliseconds() >= 290, "retry after {gap}");
    }
    let health = app.healthz().await.json();
    let restarts: u64 = health["actors"]["mailers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["restarts"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(restarts, 2, "{health}");
    let children = &health["actors"]["supervisor"]["children"];
    let sup_restarts: u64 = ["mailer-0", "mailer-1"]
        .iter()
        .map(|m| children[m]["restarts"].as_u64().unwrap())
        .sum();
    assert_eq!(sup_restarts, 2, "{health}");
    assert_eq!(health["checks"]["mailers"], "ok");
    // And in /metrics: the restarts by child, and the crash attempts.
    let metrics = String::from_utf8(app.get("/metrics").await.body.to_vec()).unwrap();
    let restarts: u64 = metrics
        .lines()
        .filter(|l| l.starts_with("email_service_actor_restarts_total{child=\"mailer-"))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum();
    assert_eq!(restarts, 2, "{metrics}");
    assert!(
        metrics
            .contains("email_service_delivery_attempts_total{kind=\"notify\",outcome=\"crash\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics
            .lines()
            .any(|l| l
                == "email_service_delivery_attempts_total{kind=\"notify\",outcome=\"crash\"} 2"),
        "exactly 2 crash attempts: {metrics}"
    );
    assert_eq!(sink.by_message_id().len(), 2);
    assert!(sink.by_message_id().values().all(|&n| n == 1));
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_every_redis_key_while_messages_wait_delays_but_loses_nothing() {
    // The sink refuses for a while, so messages sit in the retry schedule
    // and the ready stream when Redis forgets everything.
    let sink = SmtpSink::start(Mode::TempFail(10)).await;
    let app = app_with_sink(
        &sink,
        &[
            ("EMAIL_MAX_RETRIES", "8"),
            ("EMAIL_RETRY_BASE_DELAY_MS", "500"),
            ("EMAIL_RETRY_BACKOFF_FACTOR", "1"),
        ],
    )
    .await;
    let mut uuids = Vec::new();
    for i in 0..10 {
        uuids.push(
            app.notify(&json!({"to": "a@example.org", "subject": format!("r{i}"), "body": "b"}))
                .await,
        );
    }
    poll_until(
        Duration::from_secs(10),
        "the refusals to be used up",
        || async { sink.attempts() >= 10 },
    )
    .await;
    // This test's keys are its whole Redis state: deleting them is what a
    // FLUSHALL or an empty restart does to this deployment.
    assert!(wipe_redis(&app.target.prefix).await > 0);

    for uuid in &uuids {
        let v = app
            .wait_final("notify", uuid, Duration::from_secs(40))
            .await;
        assert_eq!(v["status"], "sent", "{v}");
    }
    let counts = sink.by_message_id();
    assert_eq!(counts.len(), 10);
    assert!(counts.values().all(|&n| n == 1), "{counts:?}");
    app.shutdown().await;
}

/// A mailer keeps its SMTP connection between sends; when the server has
/// closed it meanwhile, the next mail must still go out in one attempt
/// (checked with `NOOP` before the send), not cost a failed attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_the_server_closed_while_idle_costs_no_attempt() {
    let sink = SmtpSink::start(Mode::Accept).await;
    let app = app_with_sink(&sink, &[("MAILER_WORKERS", "1")]).await;
    let first = json!({"to": "a@example.org", "subject": "one", "body": "b"});
    let v = app.notify_and_wait(&first, Duration::from_secs(10)).await;
    assert_eq!(v["status"], "sent", "{v}");
    // The server drops every open connection and comes back.
    sink.down();
    sink.up().await;
    // The idle time is the condition under test: past it, the kept
    // connection is checked before it is used.
    tokio::time::sleep(email_service::smtp::PROBE_AFTER + Duration::from_millis(200)).await;
    let second = json!({"to": "a@example.org", "subject": "two", "body": "b"});
    let v = app.notify_and_wait(&second, Duration::from_secs(10)).await;
    assert_eq!(v["status"], "sent", "{v}");
    assert_eq!(
        attempts(&v).len(),
        1,
        "the closed connection cost an attempt: {v}"
    );
    assert_eq!(sink.received().len(), 2);
    app.shutdown().await;
}

/// A mailer holds one job queued behind its send; when it dies at the end
/// of that send, the queued job is handed out again at once, not left to
/// its lease.
#[cfg(feature = "fault-injection")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mailer_that_dies_with_a_job_queued_behind_its_send_gives_that_job_back() {
    use email_service::faults::SEND_TASK_PANIC_AFTER_SEND;
    // A slow answer keeps the first send running while the second message
    // is claimed and queued behind it in the only mailer.
    let sink = SmtpSink::start(Mode::Slow(Duration::from_millis(1500))).await;
    let app = app_with_sink(&sink, &[("MAILER_WORKERS", "1")]).await;
    let a = app
        .notify(&json!({"to": "a@example.org", "subject": "first", "body": format!("late {SEND_TASK_PANIC_AFTER_SEND}")}))
        .await;
    poll_until(
        Duration::from_secs(10),
        "the first mail's content at the sink",
        || async { sink.attempts() >= 1 },
    )
    .await;
    let b = app
        .notify(&json!({"to": "b@example.org", "subject": "second", "body": "queued"}))
        .await;
    // Well inside the lease (90 s): only a hand-out after the crash makes it.
    let v = app.wait_final("notify", &b, Duration::from_secs(15)).await;
    assert_eq!(v["status"], "sent", "{v}");
    let at = attempts(&v);
    assert_eq!(at.len(), 1, "the queued job was never started before: {v}");
    assert_eq!(at[0]["outcome"], "sent");
    // The first one died with its mailer after the sink took it: a crash
    // attempt, then sent again (the one repeat a crash mid-send may cost).
    let v = app.wait_final("notify", &a, Duration::from_secs(20)).await;
    assert_eq!(v["status"], "sent", "{v}");
    assert_eq!(attempts(&v)[0]["outcome"], "crash", "{v}");
    let second = sink
        .received()
        .iter()
        .filter(|r| r.raw.contains("Subject: second"))
        .count();
    assert_eq!(second, 1, "the queued mail went out once");
    app.shutdown().await;
}
