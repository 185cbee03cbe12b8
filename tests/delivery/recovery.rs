//! Work that must not wait out a lease when no process died: jobs claimed
//! but not started when the service drains go back to the queue at once,
//! a message whose wake-up was lost is found while a backlog lasts, and a
//! backlog left in Redis by a stopped instance is sent as soon as the next
//! one starts.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use email_service::domain::MessageKind;
use email_service::queue::Queue;
use serde_json::json;

use crate::common::{Mode, SmtpSink, Target, TestApp, poll_until, redis_url, scalar};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_gives_claimed_unstarted_jobs_back_at_once_and_a_restart_sends_each_once() {
    // One second per mail, two mailers, two seconds to drain: jobs claimed
    // ahead of the mailers cannot all be sent before the deadline.
    let sink = SmtpSink::start(Mode::Slow(Duration::from_secs(1))).await;
    let target = Target::fresh();
    let start = || {
        TestApp::builder()
            .sink(&sink)
            .target(&target)
            .envs(&[("MAILER_WORKERS", "2"), ("SHUTDOWN_TIMEOUT", "2")])
            .start()
    };
    let app = start().await;
    let mut uuids = Vec::new();
    for i in 0..12 {
        let mail = json!({"to": "a@example.org", "subject": format!("d{i}"), "body": "b"});
        uuids.push(app.notify(&mail).await);
    }
    let db = target.db().await;
    poll_until(
        Duration::from_secs(10),
        "jobs claimed ahead of the two mailers",
        || async {
            scalar::<i64>(
                &db,
                "SELECT count(*) FROM notifications WHERE status = 'sending'",
            )
            .await
                > 2
        },
    )
    .await;
    app.shutdown().await;
    let sending: i64 = scalar(
        &db,
        "SELECT count(*) FROM notifications WHERE status = 'sending'",
    )
    .await;
    assert_eq!(
        sending, 0,
        "after the drain nothing is left under a lease: the sends in flight \
         finished, the jobs not started went back to the queue"
    );
    let unfinished_attempts: i64 = scalar(
        &db,
        "SELECT count(*) FROM delivery_attempts WHERE finished_at IS NULL",
    )
    .await;
    assert_eq!(unfinished_attempts, 0, "a job never started has no attempt");

    sink.set_mode(Mode::Accept);
    let app = start().await;
    for uuid in &uuids {
        // Due already: the restart's reconciler re-feeds them within its
        // first rounds, long before any lease could have run out.
        let v = app
            .wait_final("notify", uuid, Duration::from_secs(20))
            .await;
        assert_eq!(v["status"], "sent", "{v}");
    }
    let deliveries = sink.by_message_id();
    assert_eq!(deliveries.len(), 12);
    assert!(
        deliveries.values().all(|&n| n == 1),
        "each mail sent once: {deliveries:?}"
    );
    let crashes: i64 = scalar(
        &db,
        "SELECT count(*) FROM delivery_attempts WHERE outcome = 'crash'",
    )
    .await;
    assert_eq!(crashes, 0, "no crash is recorded when nothing crashed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_wake_up_is_found_while_a_backlog_lasts() {
    // One mailer at ~6 mails/s and posts at ~12/s: the ready stream grows
    // for as long as the posts go on, far past the 10 entries above which
    // the re-feed used to be skipped.
    let sink = SmtpSink::start(Mode::Slow(Duration::from_millis(150))).await;
    let app = Arc::new(
        TestApp::builder()
            .sink(&sink)
            .env("MAILER_WORKERS", "1")
            .start()
            .await,
    );
    let db = app.db().await;
    // A message committed as due whose wake-up never reached Redis (a push
    // that failed).
    let lost: i64 = scalar(
        &db,
        "INSERT INTO notifications (uuid, recipient, subject, body, request_hash, next_attempt_at)
         VALUES (gen_random_uuid(), 'lost@example.org', 'lost', 'b', '\\x00', now())
         RETURNING id",
    )
    .await;
    let posting = Arc::new(AtomicBool::new(true));
    let poster = {
        let (app, posting) = (app.clone(), posting.clone());
        tokio::spawn(async move {
            let mut i = 0;
            while posting.load(Ordering::Relaxed) && i < 1000 {
                let mail = json!({"to": "a@example.org", "subject": format!("b{i}"), "body": "b"});
                app.notify(&mail).await;
                i += 1;
                tokio::time::sleep(Duration::from_millis(80)).await;
            }
        })
    };
    let waiting_behind = poll_until(
        Duration::from_secs(60),
        "the message whose wake-up was lost to be sent during the backlog",
        || async {
            let status: String = scalar(
                &db,
                &format!("SELECT status FROM notifications WHERE id = {lost}"),
            )
            .await;
            let queued: i64 = scalar(
                &db,
                "SELECT count(*) FROM notifications WHERE status = 'queued'",
            )
            .await;
            if status == "sent" {
                Ok(queued)
            } else {
                Err(format!("{status}, {queued} queued"))
            }
        },
    )
    .await;
    posting.store(false, Ordering::Relaxed);
    poster.await.unwrap();
    assert!(
        waiting_behind >= 10,
        "found while the backlog lasted, not after it drained ({waiting_behind} still queued)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_left_in_redis_is_sent_at_start_without_waiting_for_the_re_feed() {
    // Messages committed with their wake-ups by an instance that stopped
    // before sending them. The next start reads them at once; one that read
    // before its schema check was done put them into claims that failed at
    // once, and they waited for the re-feed (5 s plus the backlog's age).
    // The schema made by the service's own migrations, without starting a
    // service: a stopped dispatcher's last blocking read could still be
    // waiting in Redis and take the first wake-up.
    let target = Target::fresh();
    let config = email_service::store::pg_config(&target.database_url()).unwrap();
    email_service::store::migrate::ensure_database(&config)
        .await
        .unwrap();
    email_service::store::migrate::run(&config).await.unwrap();
    let db = target.db().await;
    let rows = db
        .query(
            "INSERT INTO notifications (uuid, recipient, subject, body, request_hash, next_attempt_at)
             SELECT gen_random_uuid(), 'b' || g || '@example.org', 'backlog ' || g, 'b', '\\x00', now()
             FROM generate_series(1, 60) AS g
             RETURNING id",
            &[],
        )
        .await
        .unwrap();
    let jobs: Vec<(MessageKind, i64)> = rows
        .iter()
        .map(|r| (MessageKind::Notify, r.get(0)))
        .collect();
    let queue = Queue::new(&redis_url(), &target.prefix).unwrap();
    queue.push(&jobs).await.unwrap();

    let sink = SmtpSink::start(Mode::Accept).await;
    let _app = TestApp::builder()
        .sink(&sink)
        .target(&target)
        .env("MAILER_WORKERS", "2")
        .start_unready()
        .await;
    poll_until(
        Duration::from_secs(4),
        "the whole backlog sent, well before any re-feed",
        || async {
            let n = sink.attempts();
            if n >= jobs.len() {
                Ok(n)
            } else {
                Err(format!("{n} of {} at the sink", jobs.len()))
            }
        },
    )
    .await;
    let attempts: i64 = scalar(
        &db,
        "SELECT count(*) FROM delivery_attempts WHERE outcome = 'sent'",
    )
    .await;
    assert_eq!(attempts, 60, "each sent once");
}
