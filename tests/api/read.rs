//! The `202` answer, detail views (by id and by uuid), lists, pagination and
//! the status filter.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::common::{TestApp, spawn_app_with};

const CONTACT: &str = "/api/contact/";
const NOTIFY: &str = "/api/notify/";

fn notify_body(n: usize) -> Value {
    json!({"to": format!("user{n}@example.com"), "subject": format!("Subject {n}"), "body": format!("Body {n}")})
}

fn keys(v: &Value) -> BTreeSet<String> {
    v.as_object()
        .unwrap_or_else(|| panic!("not an object: {v}"))
        .keys()
        .cloned()
        .collect()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

/// Posts `count` notifications; returns their ids in posting order.
async fn post_notifications(app: &TestApp, count: usize) -> Vec<i64> {
    let mut ids = Vec::with_capacity(count);
    for n in 0..count {
        let resp = app.post_json(NOTIFY, &notify_body(n)).await;
        assert_eq!(resp.status, 202, "{}", resp.text());
        ids.push(resp.json()["id"].as_i64().expect("id"));
    }
    ids
}

fn ids_of(page: &Value) -> Vec<i64> {
    page["results"]
        .as_array()
        .unwrap_or_else(|| panic!("results is not a list: {page}"))
        .iter()
        .map(|r| r["id"].as_i64().expect("id"))
        .collect()
}

fn assert_timestamp(v: &Value, field: &str) -> DateTime<Utc> {
    let raw = v[field]
        .as_str()
        .unwrap_or_else(|| panic!("{field} should be a timestamp string: {v}"));
    DateTime::parse_from_rfc3339(raw)
        .unwrap_or_else(|e| panic!("{field}={raw:?} is not RFC 3339: {e}"))
        .with_timezone(&Utc)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accepted_contact_and_notify_answer_202_with_id_uuid_status_and_the_spec_message() {
    let app = spawn_frozen_app().await;
    let contact = app
        .post_json(
            CONTACT,
            &json!({"name": "Ada", "email": "ada@example.com", "message": "Hi"}),
        )
        .await;
    let notify = app.post_json(NOTIFY, &notify_body(1)).await;
    for (resp, message) in [
        (&contact, "Message queued for processing"),
        (&notify, "Notification queued for processing"),
    ] {
        assert_eq!(resp.status, 202, "{}", resp.text());
        assert_eq!(resp.header("content-type"), Some("application/json"));
        assert!(resp.header("idempotent-replayed").is_none());
        let body = resp.json();
        assert_eq!(keys(&body), set(&["id", "uuid", "status", "message"]));
        assert!(body["id"].as_i64().is_some_and(|id| id >= 1), "{body}");
        let uuid = body["uuid"].as_str().expect("uuid is a string");
        Uuid::parse_str(uuid).expect("uuid parses");
        assert_eq!(body["status"], "queued");
        assert_eq!(body["message"], message);
    }
    assert_ne!(contact.json()["uuid"], notify.json()["uuid"]);
    assert_eq!(app.row_counts().await, [1, 1, 0]);
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notification_detail_shows_every_stored_field_by_id_and_by_uuid() {
    let app = spawn_frozen_app().await;
    let metadata =
        json!({"user_id": 42, "tags": ["welcome", "ü"], "nested": {"a": null, "b": 1.5}});
    let sent = json!({
        "to": "  bob@example.com ",
        "subject": " Welcome, Bob ",
        "body": "Hello Bob,\nwelcome aboard.",
        "html": "<p>Hello <b>Bob</b></p>",
        "metadata": metadata,
    });
    let accepted = app.post_json(NOTIFY, &sent).await.json();
    let id = accepted["id"].as_i64().unwrap();
    let uuid = accepted["uuid"].as_str().unwrap().to_owned();

    let by_id = app.get(&format!("/api/notify/{id}/")).await;
    assert_eq!(by_id.status, 200, "{}", by_id.text());
    let view = by_id.json();
    assert_eq!(view["id"], id);
    assert_eq!(view["uuid"], uuid);
    assert_eq!(view["to"], "bob@example.com");
    assert_eq!(view["subject"], "Welcome, Bob");
    assert_eq!(view["body"], "Hello Bob,\nwelcome aboard.");
    assert_eq!(view["html"], "<p>Hello <b>Bob</b></p>");
    assert_eq!(view["metadata"], metadata, "metadata round-trips");
    assert_eq!(view["status"], "queued");
    assert_eq!(view["retry_count"], 0);
    assert_eq!(view["error_message"], Value::Null);
    assert_eq!(view["attempts"], json!([]));
    let created = assert_timestamp(&view, "created_at");
    let updated = assert_timestamp(&view, "updated_at");
    assert!(updated >= created);
    let age = Utc::now() - created;
    assert!(
        age.num_seconds().abs() < 120,
        "created_at is now-ish: {created}"
    );
    for field in ["sent_at", "next_attempt_at"] {
        assert!(
            view.get(field).is_none_or(|v| v.is_null() || v.is_string()),
            "{field}: {view}"
        );
    }
    assert_eq!(view["sent_at"], Value::Null, "not sent yet");
    // Both are always present: null until known, then a timestamp.
    assert!(
        view.get("sent_at").is_some_and(Value::is_null),
        "sent_at is shown: {view}"
    );
    assert_timestamp(&view, "next_attempt_at");

    for path in [
        format!("/api/notify/{uuid}/"),
        format!("/api/notify/{uuid}"),
        format!("/api/notify/{}/", uuid.to_uppercase()),
    ] {
        let by_uuid = app.get(&path).await;
        assert_eq!(by_uuid.status, 200, "{path}");
        assert_eq!(by_uuid.json(), view, "{path} shows the same message");
    }

    // Without the optional fields they read as null.
    let plain = app.post_json(NOTIFY, &notify_body(2)).await.json();
    let view = app
        .get(&format!("/api/notify/{}/", plain["id"]))
        .await
        .json();
    assert_eq!(view["html"], Value::Null);
    assert_eq!(view["metadata"], Value::Null);
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_contact_detail_shows_name_email_and_message_by_id_and_by_uuid() {
    let app = spawn_frozen_app().await;
    let accepted = app
        .post_json(
            CONTACT,
            &json!({"name": " Ada Lovelace ", "email": "ada@example.com", "message": "Line 1\nLine 2 — ü"}),
        )
        .await
        .json();
    let id = accepted["id"].as_i64().unwrap();
    let uuid = accepted["uuid"].as_str().unwrap();
    let view = app.get(&format!("/api/contact/{id}")).await;
    assert_eq!(view.status, 200);
    let view = view.json();
    assert_eq!(view["name"], "Ada Lovelace");
    assert_eq!(view["email"], "ada@example.com");
    assert_eq!(view["message"], "Line 1\nLine 2 — ü");
    assert_eq!(view["uuid"], uuid);
    assert_eq!(view["status"], "queued");
    assert_eq!(view["retry_count"], 0);
    assert_eq!(view["error_message"], Value::Null);
    assert_eq!(view["attempts"], json!([]));
    assert_timestamp(&view, "created_at");
    assert_timestamp(&view, "updated_at");
    for absent in ["to", "subject", "body", "html", "metadata"] {
        assert!(view.get(absent).is_none(), "a contact has no {absent}");
    }
    let by_uuid = app.get(&format!("/api/contact/{uuid}/")).await;
    assert_eq!(by_uuid.json(), view);
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn detail_returns_404_for_unknown_garbage_or_other_kind_ids() {
    let app = spawn_frozen_app().await;
    let contact = app
        .post_json(
            CONTACT,
            &json!({"name": "Ada", "email": "ada@example.com", "message": "Hi"}),
        )
        .await
        .json();
    let contact_id = contact["id"].as_i64().unwrap();
    let contact_uuid = contact["uuid"].as_str().unwrap();
    assert_eq!(
        app.get(&format!("/api/contact/{contact_id}/")).await.status,
        200
    );

    let paths = [
        // The contact's id and uuid are not notifications.
        format!("/api/notify/{contact_id}/"),
        format!("/api/notify/{contact_uuid}/"),
        "/api/contact/999999/".to_owned(),
        format!("/api/contact/{}/", Uuid::new_v4()),
        "/api/contact/0/".to_owned(),
        "/api/contact/-1/".to_owned(),
        "/api/contact/abc/".to_owned(),
        "/api/contact/1.5/".to_owned(),
        "/api/contact/99999999999999999999999/".to_owned(),
        "/api/contact/6f1c2a6e-1111-4222-8333-44445555666/".to_owned(),
        "/api/notify/%27%20OR%201=1/".to_owned(),
    ];
    for path in &paths {
        let resp = app.get(path).await;
        assert_eq!(resp.status, 404, "GET {path}: {}", resp.text());
        assert!(resp.json()["detail"].is_string(), "{path}");
    }

    // And the other way round.
    let notify = app.post_json(NOTIFY, &notify_body(1)).await.json();
    let notify_uuid = notify["uuid"].as_str().unwrap();
    let resp = app.get(&format!("/api/contact/{notify_uuid}/")).await;
    assert_eq!(resp.status, 404, "a notification's uuid is not a contact");
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_show_newest_first_with_count_and_no_links_on_a_single_page() {
    let app = spawn_frozen_app().await;
    let empty = app.get(CONTACT).await;
    assert_eq!(empty.status, 200);
    assert_eq!(
        empty.json(),
        json!({"count": 0, "next": null, "previous": null, "results": []})
    );

    let ids = post_notifications(&app, 3).await;
    let page = app.get(NOTIFY).await.json();
    assert_eq!(keys(&page), set(&["count", "next", "previous", "results"]));
    assert_eq!(page["count"], 3);
    assert_eq!(page["next"], Value::Null);
    assert_eq!(page["previous"], Value::Null);
    let mut newest_first = ids.clone();
    newest_first.reverse();
    assert_eq!(ids_of(&page), newest_first);
    let first = &page["results"][0];
    assert_eq!(first["subject"], "Subject 2");
    assert_eq!(first["to"], "user2@example.com");
    assert_eq!(first["status"], "queued");
    assert!(
        first.get("attempts").is_none(),
        "list items are summaries without attempts: {first}"
    );

    let contacts = app.get(CONTACT).await.json();
    assert_eq!(contacts["count"], 0, "kinds are listed separately");
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pagination_links_are_absolute_urls_that_walk_every_page() {
    let app = spawn_frozen_app().await;
    let ids = post_notifications(&app, 5).await;
    let port = app.addr.port();
    let base = format!("http://127.0.0.1:{port}/api/notify/");

    let page1 = app.get("/api/notify/?page_size=2").await;
    assert_eq!(page1.status, 200);
    let page1 = page1.json();
    assert_eq!(page1["count"], 5);
    assert_eq!(page1["previous"], Value::Null);
    assert_eq!(page1["next"], format!("{base}?page_size=2&page=2"));
    assert_eq!(ids_of(&page1), vec![ids[4], ids[3]]);

    let page2 = app.get(page1["next"].as_str().unwrap()).await;
    assert_eq!(page2.status, 200, "following next works");
    let page2 = page2.json();
    assert_eq!(page2["count"], 5);
    assert_eq!(ids_of(&page2), vec![ids[2], ids[1]]);
    assert_eq!(page2["next"], format!("{base}?page_size=2&page=3"));
    let previous = page2["previous"].as_str().expect("page 2 has a previous");
    assert!(previous.starts_with(&base), "{previous} is absolute");

    let page3 = app.get(page2["next"].as_str().unwrap()).await.json();
    assert_eq!(ids_of(&page3), vec![ids[0]]);
    assert_eq!(page3["next"], Value::Null, "the last page has no next");
    assert_eq!(page3["count"], 5, "the last page counts every page");
    let back = app.get(page3["previous"].as_str().unwrap()).await.json();
    assert_eq!(back, page2, "previous of page 3 is page 2");
    let back = app.get(previous).await.json();
    assert_eq!(back, page1, "previous of page 2 is page 1");

    // Every id exactly once across the pages.
    let mut all: Vec<i64> = [&page1, &page2, &page3]
        .iter()
        .flat_map(|p| ids_of(p))
        .collect();
    all.sort_unstable();
    assert_eq!(all, ids);

    for bad in [
        "page=4",
        "page=0",
        "page=abc",
        "page=-1",
        "page=1.5",
        "page=99999999999",
    ] {
        let resp = app.get(&format!("/api/notify/?page_size=2&{bad}")).await;
        assert_eq!(resp.status, 404, "{bad}: {}", resp.text());
        assert!(resp.json()["detail"].is_string());
    }
    // Other parameters are kept in the links.
    let filtered = app
        .get("/api/notify/?status=queued&page_size=2")
        .await
        .json();
    assert_eq!(
        filtered["next"],
        format!("{base}?status=queued&page_size=2&page=2")
    );
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn page_size_defaults_to_20_and_is_capped_at_100() {
    let app = spawn_frozen_app().await;
    // 105 rows straight into the table: this test is about the list, not
    // about accepting.
    let db = app.db().await;
    db.batch_execute(
        "INSERT INTO notifications (uuid, recipient, subject, body, request_hash, next_attempt_at)
         SELECT gen_random_uuid(), 'u' || n || '@example.com', 'S' || n, 'B', '\\x00', now()
         FROM generate_series(1, 105) AS n",
    )
    .await
    .expect("insert 105 notifications");

    let default = app.get(NOTIFY).await.json();
    assert_eq!(default["count"], 105);
    assert_eq!(ids_of(&default).len(), 20, "default page size");

    for size in ["1000", "101", "100"] {
        let page = app.get(&format!("/api/notify/?page_size={size}")).await;
        assert_eq!(page.status, 200);
        let page = page.json();
        assert_eq!(page["count"], 105);
        assert_eq!(ids_of(&page).len(), 100, "page_size={size} counts as 100");
        assert!(page["next"].is_string());
        let rest = app.get(page["next"].as_str().unwrap()).await.json();
        assert_eq!(ids_of(&rest).len(), 5, "page_size={size}: second page");
    }
    let seven = app.get("/api/notify/?page_size=7").await.json();
    assert_eq!(ids_of(&seven).len(), 7);
    let ids = ids_of(&app.get("/api/notify/?page_size=100").await.json());
    assert!(ids.windows(2).all(|w| w[0] > w[1]), "newest first");
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_filter_selects_matching_messages_and_an_invalid_status_is_a_400() {
    let app = spawn_frozen_app().await;
    let ids = post_notifications(&app, 4).await;
    // A finished message never changes again, so mark two as failed.
    let db = app.db().await;
    db.execute(
        "UPDATE notifications SET status = 'failed', error_message = 'boom' WHERE id = ANY($1)",
        &[&vec![ids[0], ids[2]]],
    )
    .await
    .unwrap();

    let failed = app.get("/api/notify/?status=failed").await;
    assert_eq!(failed.status, 200);
    let failed = failed.json();
    assert_eq!(failed["count"], 2);
    assert_eq!(ids_of(&failed), vec![ids[2], ids[0]]);
    assert_eq!(failed["results"][0]["error_message"], "boom");

    let queued = app.get("/api/notify?status=queued").await.json();
    for item in queued["results"].as_array().unwrap() {
        assert_eq!(item["status"], "queued");
    }
    assert!(queued["count"].as_i64().unwrap() <= 2);
    // Delivery is frozen in this app, so the two others are still queued.
    assert_eq!(queued["count"], 2, "{queued}");
    assert_eq!(ids_of(&queued), vec![ids[3], ids[1]]);
    let mut others = 0;
    for status in ["queued", "sending", "sent"] {
        let page = app
            .get(&format!("/api/notify/?status={status}"))
            .await
            .json();
        others += page["count"].as_i64().unwrap();
    }
    assert_eq!(others, 2, "the two others are in exactly one other status");
    let contacts = app.get("/api/contact/?status=failed").await.json();
    assert_eq!(contacts["count"], 0);

    for bad in ["bogus", "QUEUED", "sent,failed", "queued%00"] {
        let resp = app.get(&format!("/api/notify/?status={bad}")).await;
        assert_eq!(resp.status, 400, "status={bad}: {}", resp.text());
        let body = resp.json();
        assert_eq!(
            keys(&body["errors"]),
            set(&["status"]),
            "status={bad}: {body}"
        );
    }
    app.shutdown().await;
}

/// These tests read back exactly what was stored, so delivery must not move
/// the messages on meanwhile: with no reachable Redis the dispatcher hands
/// nothing to the mailers, and every message stays `queued`. (Delivery has
/// its own suite.)
async fn spawn_frozen_app() -> TestApp {
    spawn_app_with(&[("REDIS_URL", "redis://127.0.0.1:1/")]).await
}
