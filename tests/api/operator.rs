//! Operator actions' bookkeeping: the detail view's `events`, the
//! `Idempotency-Key` on single and bulk actions, the bulk body's
//! validation, and bulk actions over more rows than one batch.

use serde_json::{Value, json};

use crate::common::{TestApp, TestResponse, spawn_app_with};

/// An app that delivers nothing (its Redis is unreachable): messages stay
/// `queued` unless the test changes them.
async fn frozen(extra: &[(&str, &str)]) -> TestApp {
    let mut vars = vec![("REDIS_URL", "redis://127.0.0.1:1/")];
    vars.extend_from_slice(extra);
    spawn_app_with(&vars).await
}

async fn queued(app: &TestApp, to: &str) -> i64 {
    let r = app
        .post_json(
            "/api/notify/",
            &json!({"to": to, "subject": "s", "body": "b"}),
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.text());
    r.json()["id"].as_i64().unwrap()
}

async fn post(app: &TestApp, path: &str, headers: &[(&str, &str)], body: &Value) -> TestResponse {
    app.post_json_with(path, headers, body).await
}

fn events(view: &Value) -> Vec<Value> {
    view["events"]
        .as_array()
        .unwrap_or_else(|| panic!("no events: {view}"))
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_detail_view_lists_each_action_oldest_first_with_its_request_id() {
    let app = frozen(&[]).await;
    let id = queued(&app, "a@example.org").await.to_string();
    assert_eq!(
        events(&app.detail("notify", &id).await),
        Vec::<Value>::new()
    );
    let path = |what: &str| format!("/api/notify/{id}/{what}/");
    let r = app
        .post_raw(&path("cancel"), &[("x-request-id", "req-cancel-1")], "")
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(events(&r.json()).len(), 1, "the answer shows its own event");
    let r = app
        .post_raw(&path("retry"), &[("x-request-id", "req-retry-2")], "")
        .await;
    assert_eq!(r.status, 202, "{}", r.text());
    let refused = app.post_raw(&path("retry"), &[], "").await;
    assert_eq!(refused.status, 409, "a refusal records nothing");

    let got = events(&app.detail("notify", &id).await);
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(got[0]["what"], "cancelled");
    assert_eq!(got[0]["request_id"], "req-cancel-1");
    assert_eq!(got[0]["from_status"], "queued");
    assert_eq!(got[0]["bulk"], false);
    assert!(got[0].get("force").is_none(), "{got:?}");
    assert_eq!(got[1]["what"], "resent");
    assert_eq!(got[1]["request_id"], "req-retry-2");
    assert_eq!(got[1]["from_status"], "cancelled");
    assert_eq!(got[1]["force"], false);
    assert!(got[0]["at"].as_str().unwrap() <= got[1]["at"].as_str().unwrap());
    let list = app.get("/api/notify/").await.json();
    assert!(
        list["results"][0].get("events").is_none(),
        "lists stay summaries"
    );
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_action_with_its_key_is_replayed_and_changes_nothing() {
    let app = frozen(&[]).await;
    let first = queued(&app, "a@example.org").await;
    let other = queued(&app, "b@example.org").await;
    let cancel = |id: i64| format!("/api/notify/{id}/cancel/");
    let key = [("idempotency-key", "op-1")];

    let r1 = app.post_raw(&cancel(first), &key, "").await;
    assert_eq!(r1.status, 200, "{}", r1.text());
    assert!(r1.header("idempotent-replayed").is_none());
    let r2 = app.post_raw(&cancel(first), &key, "").await;
    assert_eq!(r2.status, 200, "{}", r2.text());
    assert_eq!(r2.header("idempotent-replayed"), Some("true"));
    assert_eq!(r2.body, r1.body, "byte for byte");
    assert_eq!(
        events(&app.detail("notify", &first.to_string()).await).len(),
        1
    );

    // The same key for another message is another request.
    let r = app.post_raw(&cancel(other), &key, "").await;
    assert_eq!(r.status, 422, "{}", r.text());
    assert_eq!(
        app.detail("notify", &other.to_string()).await["status"],
        "queued"
    );
    // Keys are per endpoint: the resend endpoint has its own.
    let retry = format!("/api/notify/{first}/retry/");
    let r = app.post_raw(&retry, &key, "").await;
    assert_eq!(r.status, 202, "{}", r.text());
    let r = app.post_raw(&format!("{retry}?force=true"), &key, "").await;
    assert_eq!(r.status, 422, "force makes another request: {}", r.text());

    // A refusal is the answer its request got, and is replayed as such.
    let key2 = [("idempotency-key", "op-2")];
    let r1 = app.post_raw(&retry, &key2, "").await;
    assert_eq!(r1.status, 409, "{}", r1.text());
    app.db()
        .await
        .execute(
            "UPDATE notifications SET status = 'failed' WHERE id = $1",
            &[&first],
        )
        .await
        .unwrap();
    let r2 = app.post_raw(&retry, &key2, "").await;
    assert_eq!(
        (r2.status, r2.header("idempotent-replayed")),
        (409, Some("true"))
    );
    assert_eq!(r2.body, r1.body);
    assert_eq!(
        app.detail("notify", &first.to_string()).await["status"],
        "failed"
    );
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_bulk_action_with_its_key_is_replayed_and_changes_nothing() {
    let app = frozen(&[]).await;
    for _ in 0..2 {
        queued(&app, "k@example.org").await;
    }
    let key = [("idempotency-key", "bulk-1")];
    let filter = json!({"to": "k@example.org"});
    let r1 = post(&app, "/api/notify/cancel/", &key, &filter).await;
    assert_eq!(r1.status, 200, "{}", r1.text());
    assert_eq!(r1.json(), json!({"matched": 2, "changed": 2}));

    let late = queued(&app, "k@example.org").await;
    let r2 = post(&app, "/api/notify/cancel/", &key, &filter).await;
    assert_eq!(
        (r2.status, r2.header("idempotent-replayed")),
        (200, Some("true"))
    );
    assert_eq!(r2.body, r1.body);
    assert_eq!(
        app.detail("notify", &late.to_string()).await["status"],
        "queued"
    );

    let r = post(
        &app,
        "/api/notify/cancel/",
        &key,
        &json!({"to": "x@example.org"}),
    )
    .await;
    assert_eq!(r.status, 422, "{}", r.text());
    // Without the key it is a new request: only the late one changes.
    let r = post(&app, "/api/notify/cancel/", &[], &filter).await;
    assert_eq!(r.json(), json!({"matched": 3, "changed": 1}));
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bulk_body_must_name_a_known_filter_and_bad_ones_change_nothing() {
    let app = frozen(&[("API_TOKEN", "t0k")]).await;
    let auth = [("authorization", "Bearer t0k")];
    let r = app
        .post_json_with(
            "/api/notify/",
            &auth,
            &json!({"to": "a@example.org", "subject": "s", "body": "b"}),
        )
        .await;
    assert_eq!(r.status, 202);
    let cases = [
        ("/api/notify/cancel/", json!({}), "non_field_errors"),
        (
            "/api/notify/retry/",
            json!({"force": true}),
            "non_field_errors",
        ),
        (
            "/api/notify/cancel/",
            json!({"status": "", "search": "x"}),
            "status",
        ),
        (
            "/api/notify/cancel/",
            json!({"to": null, "search": "x"}),
            "to",
        ),
        (
            "/api/notify/cancel/",
            json!({"status": "queued", "colour": "red"}),
            "colour",
        ),
        (
            "/api/notify/cancel/",
            json!({"status": "queued", "force": true}),
            "force",
        ),
        (
            "/api/notify/retry/",
            json!({"status": "failed", "force": "yes"}),
            "force",
        ),
        ("/api/contact/cancel/", json!({"to": "a@example.org"}), "to"),
        (
            "/api/notify/cancel/",
            json!({"status": ["queued"]}),
            "status",
        ),
        (
            "/api/notify/cancel/",
            json!({"created_after": "soon"}),
            "created_after",
        ),
    ];
    for (path, body, field) in cases {
        let r = post(&app, path, &auth, &body).await;
        assert_eq!(r.status, 400, "{path} {body}: {}", r.text());
        assert!(
            r.json()["errors"][field].is_array(),
            "{path} {body}: {}",
            r.text()
        );
    }
    let r = app
        .post_raw("/api/notify/cancel/", &auth, "{\"status\": \"queued\"}")
        .await;
    assert_eq!(r.status, 415, "{}", r.text());
    let r = post(
        &app,
        "/api/notify/cancel/",
        &[],
        &json!({"status": "queued"}),
    )
    .await;
    assert_eq!(r.status, 401, "{}", r.text());
    let r = app.get("/api/notify/cancel/").await;
    assert_eq!((r.status, r.header("allow")), (405, Some("POST, OPTIONS")));
    let r = app
        .send(hyper::Method::GET, "/api/notify/?status=queued", &auth, "")
        .await;
    assert_eq!(r.json()["count"], 1, "nothing was cancelled: {}", r.text());
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bulk_action_over_several_batches_changes_each_row_once() {
    let app = frozen(&[]).await;
    let db = app.db().await;
    // 2,500 waiting messages (three batches), 100 already sent.
    db.execute(
        "INSERT INTO notifications (uuid, recipient, subject, body, request_hash, status, next_attempt_at)
         SELECT gen_random_uuid(), 'many@example.org', 's' || n, 'b', '\\x00',
                CASE WHEN n <= 100 THEN 'sent' ELSE 'queued' END, now() + interval '1 day'
         FROM generate_series(1, 2600) AS n",
        &[],
    )
    .await
    .unwrap();
    let filter = json!({"search": "MANY@"});
    let r = post(
        &app,
        "/api/notify/cancel/",
        &[("x-request-id", "bulk-req")],
        &filter,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json(), json!({"matched": 2600, "changed": 2500}));
    let cancelled: i64 = app
        .scalar("SELECT count(*) FROM notifications WHERE status = 'cancelled'")
        .await;
    assert_eq!(cancelled, 2500);
    let events: i64 = app
        .scalar(
            "SELECT count(DISTINCT message_id) FROM message_events
             WHERE what = 'cancelled' AND bulk AND request_id = 'bulk-req'",
        )
        .await;
    assert_eq!(events, 2500, "one event per changed message");
    let again = post(&app, "/api/notify/cancel/", &[], &filter).await;
    assert_eq!(again.json(), json!({"matched": 2600, "changed": 0}));

    let r = post(&app, "/api/notify/retry/", &[], &json!({"status": "sent"})).await;
    assert_eq!(
        r.json(),
        json!({"matched": 100, "changed": 0}),
        "sent needs force"
    );
    let r = post(
        &app,
        "/api/notify/retry/",
        &[],
        &json!({"status": "sent", "force": true}),
    )
    .await;
    assert_eq!(r.json(), json!({"matched": 100, "changed": 100}));
    let metrics = app.get("/metrics").await.text();
    for line in [
        r#"email_service_operator_actions_total{kind="notify",action="bulk_cancel",result="changed"} 2500"#,
        r#"email_service_operator_actions_total{kind="notify",action="bulk_cancel",result="unchanged"} 2700"#,
        r#"email_service_operator_actions_total{kind="notify",action="bulk_retry",result="changed"} 100"#,
    ] {
        assert!(metrics.contains(line), "{line} in {metrics}");
    }
    app.shutdown().await;
}
