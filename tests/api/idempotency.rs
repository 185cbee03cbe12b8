//! `Idempotency-Key` and body `uuid`: replays are byte-identical and store
//! nothing, conflicts are `422`, keys are per endpoint, expire, and hold under
//! concurrency.

use std::sync::Arc;

use serde_json::{Value, json};
use tokio::sync::Barrier;
use uuid::Uuid;

use crate::common::{TestApp, TestResponse, count_rows, scalar, spawn_app, spawn_app_with};

const CONTACT: &str = "/api/contact/";
const NOTIFY: &str = "/api/notify/";

fn contact(n: u32) -> Value {
    json!({"name": format!("Ada {n}"), "email": "ada@example.com", "message": format!("Message {n}")})
}

fn notify(n: u32) -> Value {
    json!({"to": "bob@example.com", "subject": format!("Subject {n}"), "body": format!("Body {n}"),
           "metadata": {"n": n, "tags": ["a", "b"]}})
}

async fn post_with_key(app: &TestApp, path: &str, key: &str, body: &Value) -> TestResponse {
    app.post_json_with(path, &[("idempotency-key", key)], body)
        .await
}

fn assert_replay_of(first: &TestResponse, again: &TestResponse, context: &str) {
    assert_eq!(again.status, first.status, "{context}: same status");
    assert_eq!(
        again.body,
        first.body,
        "{context}: byte-identical body: {:?} vs {:?}",
        again.text(),
        first.text()
    );
    assert_eq!(
        again.header("idempotent-replayed"),
        Some("true"),
        "{context}: marked as a replay"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeat_with_the_same_key_and_body_replays_the_first_answer_byte_for_byte() {
    let app = spawn_app().await;
    for (path, body) in [(CONTACT, contact(1)), (NOTIFY, notify(1))] {
        let first = post_with_key(&app, path, "order-42", &body).await;
        assert_eq!(first.status, 202, "{path}: {}", first.text());
        assert!(
            first.header("idempotent-replayed").is_none(),
            "{path}: the first answer is not a replay"
        );
        let again = post_with_key(&app, path, "order-42", &body).await;
        assert_replay_of(&first, &again, path);
        let third = post_with_key(&app, path, "order-42", &body).await;
        assert_replay_of(&first, &third, path);
    }

    // The same content with keys reordered and surrounding whitespace is the
    // same request.
    let first = post_with_key(&app, NOTIFY, "order-42", &notify(1)).await;
    let reordered = r#"{"metadata": {"tags": ["a", "b"], "n": 1}, "body": "Body 1",
        "subject": "  Subject 1 ", "to": " bob@example.com"}"#;
    let again = app
        .post_raw(
            NOTIFY,
            &[
                ("content-type", "application/json"),
                ("idempotency-key", "order-42"),
            ],
            reordered,
        )
        .await;
    assert_replay_of(&first, &again, "reordered body");

    assert_eq!(
        app.row_counts().await,
        [1, 1, 2],
        "one message and one key per endpoint"
    );
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_key_with_a_different_body_is_a_422_and_stores_nothing_new() {
    let app = spawn_app().await;
    for (path, first_body, other_body) in [
        (CONTACT, contact(1), contact(2)),
        (NOTIFY, notify(1), notify(2)),
    ] {
        let first = post_with_key(&app, path, "key-1", &first_body).await;
        assert_eq!(first.status, 202);
        let conflict = post_with_key(&app, path, "key-1", &other_body).await;
        assert_eq!(conflict.status, 422, "{path}: {}", conflict.text());
        let detail = conflict.json();
        assert!(
            detail["detail"].as_str().is_some_and(|d| !d.is_empty()),
            "{detail}"
        );
        assert!(conflict.header("idempotent-replayed").is_none());
        // The original is still what the key stands for.
        let again = post_with_key(&app, path, "key-1", &first_body).await;
        assert_replay_of(&first, &again, path);
    }
    assert_eq!(app.row_counts().await, [1, 1, 2]);
    let subject: String = app.scalar("SELECT subject FROM notifications").await;
    assert_eq!(subject, "Subject 1", "the conflicting body was not stored");
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_key_on_contact_and_notify_is_two_independent_requests() {
    let app = spawn_app().await;
    let c = post_with_key(&app, CONTACT, "shared-key", &contact(1)).await;
    let n = post_with_key(&app, NOTIFY, "shared-key", &notify(1)).await;
    assert_eq!(c.status, 202, "{}", c.text());
    assert_eq!(n.status, 202, "{}", n.text());
    assert!(c.header("idempotent-replayed").is_none());
    assert!(
        n.header("idempotent-replayed").is_none(),
        "a key used on /api/contact/ is not replayed on /api/notify/"
    );
    assert_eq!(n.json()["message"], "Notification queued for processing");
    assert_eq!(app.row_counts().await, [1, 1, 2]);

    let again = post_with_key(&app, CONTACT, "shared-key", &contact(1)).await;
    assert_replay_of(&c, &again, "contact");
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_uuid_becomes_the_message_uuid_and_its_reuse_replays_or_conflicts() {
    let app = spawn_app().await;
    for (path, kind) in [(CONTACT, "contact"), (NOTIFY, "notify")] {
        let uuid = Uuid::new_v4();
        let mut body = if kind == "contact" {
            contact(7)
        } else {
            notify(7)
        };
        body["uuid"] = json!(uuid.to_string());

        let first = app.post_json(path, &body).await;
        assert_eq!(first.status, 202, "{path}: {}", first.text());
        assert_eq!(first.json()["uuid"], uuid.to_string(), "{path}");
        let view = app.get(&format!("/api/{kind}/{uuid}/")).await;
        assert_eq!(view.status, 200);
        assert_eq!(view.json()["id"], first.json()["id"]);

        let again = app.post_json(path, &body).await;
        assert_replay_of(&first, &again, &format!("{path} same uuid and body"));

        // The uuid in upper case is the same uuid.
        let mut upper = body.clone();
        upper["uuid"] = json!(uuid.to_string().to_uppercase());
        let again = app.post_json(path, &upper).await;
        assert_replay_of(&first, &again, &format!("{path} upper-case uuid"));

        let mut other = if kind == "contact" {
            contact(8)
        } else {
            notify(8)
        };
        other["uuid"] = json!(uuid.to_string());
        let conflict = app.post_json(path, &other).await;
        assert_eq!(conflict.status, 422, "{path}: {}", conflict.text());
        assert!(conflict.json()["detail"].is_string());

        // With a fresh Idempotency-Key the uuid still decides.
        let keyed = post_with_key(&app, path, "fresh-key", &other).await;
        assert_eq!(keyed.status, 422, "{path}: a uuid is unique for good");
    }
    assert_eq!(app.row_counts().await, [1, 1, 0]);
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_idempotency_key_is_a_400_and_stores_nothing() {
    let app = spawn_app().await;
    let too_long = "k".repeat(256);
    for key in [too_long.as_str(), "", "   ", "caf\u{e9}", "a\tb"] {
        for (path, body) in [(CONTACT, contact(1)), (NOTIFY, notify(1))] {
            let resp = post_with_key(&app, path, key, &body).await;
            assert_eq!(
                resp.status,
                400,
                "{path} key of {} chars {key:?}: {}",
                key.chars().count(),
                resp.text()
            );
            let body = resp.json();
            assert!(
                body.get("errors").is_some() || body.get("detail").is_some(),
                "a JSON error: {body}"
            );
            assert!(
                body.to_string().contains("Idempotency-Key"),
                "the error names the header: {body}"
            );
        }
    }
    app.assert_nothing_stored("after invalid keys").await;

    let longest = "k".repeat(255);
    let ok = post_with_key(&app, NOTIFY, &longest, &notify(1)).await;
    assert_eq!(ok.status, 202, "255 characters is a valid key");
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_whose_first_request_was_rejected_is_still_free() {
    let app = spawn_app().await;
    let mut invalid = notify(1);
    invalid["to"] = json!("not-an-address");
    let rejected = post_with_key(&app, NOTIFY, "retry-after-fix", &invalid).await;
    assert_eq!(rejected.status, 400);
    let malformed = app
        .post_raw(
            NOTIFY,
            &[
                ("content-type", "application/json"),
                ("idempotency-key", "retry-after-fix"),
            ],
            "{oops",
        )
        .await;
    assert_eq!(malformed.status, 400);
    app.assert_nothing_stored("after rejected requests with a key")
        .await;

    let fixed = post_with_key(&app, NOTIFY, "retry-after-fix", &notify(1)).await;
    assert_eq!(fixed.status, 202, "{}", fixed.text());
    assert!(fixed.header("idempotent-replayed").is_none());
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_concurrent_requests_with_one_key_store_one_message_and_get_one_answer() {
    let app = Arc::new(spawn_app().await);
    let barrier = Arc::new(Barrier::new(20));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let app = app.clone();
        let barrier = barrier.clone();
        tasks.spawn(async move {
            barrier.wait().await;
            post_with_key(&app, NOTIFY, "concurrent-key", &notify(1)).await
        });
    }
    let mut answers = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        answers.push(joined.expect("request task"));
    }
    assert_eq!(answers.len(), 20);
    for a in &answers {
        assert_eq!(a.status, 202, "every request is answered 202: {}", a.text());
        assert_eq!(a.body, answers[0].body, "every answer is the same");
    }
    let replays = answers
        .iter()
        .filter(|a| a.header("idempotent-replayed") == Some("true"))
        .count();
    // Exactly one answer created the message; every other is a replay.
    assert_eq!(replays, 19, "19 replays, got {replays}");
    assert_eq!(app.row_counts().await, [0, 1, 1], "exactly one message");

    let app = Arc::try_unwrap(app).unwrap_or_else(|_| panic!("app still shared"));
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_concurrent_requests_with_one_body_uuid_store_one_message_and_get_one_answer() {
    let app = Arc::new(spawn_app().await);
    let mut body = contact(3);
    body["uuid"] = json!(Uuid::new_v4().to_string());
    let barrier = Arc::new(Barrier::new(10));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..10 {
        let (app, barrier, body) = (app.clone(), barrier.clone(), body.clone());
        tasks.spawn(async move {
            barrier.wait().await;
            app.post_json(CONTACT, &body).await
        });
    }
    let mut answers = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        answers.push(joined.expect("request task"));
    }
    for a in &answers {
        assert_eq!(a.status, 202, "{}", a.text());
        assert_eq!(a.body, answers[0].body, "every answer is the same");
    }
    let replays = answers
        .iter()
        .filter(|a| a.header("idempotent-replayed") == Some("true"))
        .count();
    assert_eq!(replays, 9, "all but the first are replays");
    assert_eq!(app.row_counts().await, [1, 0, 0]);
    let app = Arc::try_unwrap(app).unwrap_or_else(|_| panic!("app still shared"));
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_key_is_accepted_again_as_a_new_request() {
    let app = spawn_app_with(&[("IDEMPOTENCY_TTL_HOURS", "1")]).await;
    let first = post_with_key(&app, NOTIFY, "expiring", &notify(1)).await;
    assert_eq!(first.status, 202);

    let db = app.db().await;
    let ttl_s: f64 = scalar(
        &db,
        "SELECT extract(epoch FROM expires_at - now())::float8 FROM idempotency_keys
         WHERE scope = 'notify' AND key = 'expiring'",
    )
    .await;
    assert!(
        (3300.0..=3700.0).contains(&ttl_s),
        "IDEMPOTENCY_TTL_HOURS=1 keeps the key for an hour, got {ttl_s} s"
    );

    // Still remembered: another body conflicts.
    let conflict = post_with_key(&app, NOTIFY, "expiring", &notify(2)).await;
    assert_eq!(conflict.status, 422);

    db.execute(
        "UPDATE idempotency_keys SET expires_at = now() - interval '1 second'",
        &[],
    )
    .await
    .unwrap();
    let second = post_with_key(&app, NOTIFY, "expiring", &notify(2)).await;
    assert_eq!(
        second.status,
        202,
        "an expired key is free: {}",
        second.text()
    );
    assert!(second.header("idempotent-replayed").is_none());
    assert_ne!(second.json()["id"], first.json()["id"], "a new message");
    assert_eq!(count_rows(&db, "notifications").await, 2);
    assert_eq!(count_rows(&db, "idempotency_keys").await, 1);

    // The key now stands for the new request.
    let again = post_with_key(&app, NOTIFY, "expiring", &notify(2)).await;
    assert_replay_of(&second, &again, "the renewed key");
    let old = post_with_key(&app, NOTIFY, "expiring", &notify(1)).await;
    assert_eq!(old.status, 422, "the old body is now the different one");
    app.shutdown().await;
}
