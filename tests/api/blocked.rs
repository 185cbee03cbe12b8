//! A database that stops answering in the middle of a request (here: a query
//! blocked behind a table lock that a test holds) costs a bounded time: the
//! client gets a `503`, the half-done transaction is rolled back, and the
//! service carries on once the lock is gone.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::common::{count_rows, poll_until, spawn_app};

const WITHIN: Duration = Duration::from_millis(3500);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_blocked_on_a_locked_table_answers_503_fast_and_is_not_stored() {
    let app = spawn_app().await;
    let body = json!({"to": "bob@example.com", "subject": "Locked", "body": "b"});
    let locker = app.db().await;
    locker
        .batch_execute("BEGIN; LOCK TABLE notifications IN ACCESS EXCLUSIVE MODE")
        .await
        .expect("lock the notifications table");

    for headers in [vec![], vec![("idempotency-key", "blocked-key")]] {
        let started = Instant::now();
        let resp = app.post_json_with("/api/notify/", &headers, &body).await;
        let took = started.elapsed();
        assert_eq!(resp.status, 503, "{headers:?}: {}", resp.text());
        assert!(resp.json()["detail"].is_string(), "{}", resp.text());
        assert!(took < WITHIN, "{headers:?}: answered after {took:?}");
    }
    let started = Instant::now();
    let list = app.get("/api/notify/").await;
    assert_eq!(list.status, 503, "{}", list.text());
    assert!(
        started.elapsed() < WITHIN,
        "list answered after {:?}",
        started.elapsed()
    );

    locker.batch_execute("ROLLBACK").await.expect("unlock");

    // The key of the request that got a 503 is free: its claim was rolled back.
    let retried = poll_until(
        Duration::from_secs(15),
        "the service to recover once the lock is released",
        || async {
            let resp = app
                .post_json_with("/api/notify/", &[("idempotency-key", "blocked-key")], &body)
                .await;
            (resp.status != 503).then_some(resp)
        },
    )
    .await;
    assert_eq!(retried.status, 202, "{}", retried.text());
    assert!(
        retried.header("idempotent-replayed").is_none(),
        "the 503'd attempt stored nothing to replay"
    );

    // Give any straggling statement of the timed-out transactions the time
    // to finish, then check that none of them committed.
    let db = app.db().await;
    poll_until(
        Duration::from_secs(10),
        "the statements still running to finish",
        || async {
            let busy: i64 = db
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity
                 WHERE datname = current_database() AND state = 'active'
                   AND pid <> pg_backend_pid()",
                    &[],
                )
                .await
                .unwrap()
                .get(0);
            busy == 0
        },
    )
    .await;
    assert_eq!(
        count_rows(&db, "notifications").await,
        1,
        "only the accepted notification is stored; the ones answered 503 are not"
    );
    assert_eq!(count_rows(&db, "idempotency_keys").await, 1);
    app.shutdown().await;
}

/// A statement that outlives its request's time budget must not poison the
/// connection pool: other requests, on other tables, keep working and the
/// database still reads as healthy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timed_out_request_does_not_make_requests_on_other_tables_fail() {
    let app = spawn_app().await;
    let locker = app.db().await;
    locker
        .batch_execute("BEGIN; LOCK TABLE notifications IN ACCESS EXCLUSIVE MODE")
        .await
        .expect("lock the notifications table");
    let blocked = app
        .post_json(
            "/api/notify/",
            &json!({"to": "bob@example.com", "subject": "Locked", "body": "b"}),
        )
        .await;
    assert_eq!(blocked.status, 503, "{}", blocked.text());

    let mut failures = Vec::new();
    for n in 0..3 {
        let contact = app
            .post_json(
                "/api/contact/",
                &json!({"name": "Ada", "email": "ada@example.com", "message": format!("m{n}")}),
            )
            .await;
        if contact.status != 202 {
            failures.push(format!(
                "POST /api/contact/ #{n}: {} {}",
                contact.status,
                contact.text()
            ));
        }
    }
    let health = app.get("/healthz").await;
    if health.status != 200 {
        failures.push(format!("GET /healthz: {} {}", health.status, health.text()));
    }
    locker.batch_execute("ROLLBACK").await.expect("unlock");
    assert!(
        failures.is_empty(),
        "with only the notifications table locked (the database is up), \
         unrelated requests failed:\n{}",
        failures.join("\n")
    );
    app.shutdown().await;
}
