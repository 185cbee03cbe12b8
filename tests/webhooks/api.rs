//! `GET /api/webhooks/events/` and `POST /api/webhooks/events/{id}/retry/`.

use std::time::Duration;

use hyper::Method;
use serde_json::Value;

use crate::common::{HookMode, WebhookSink, poll_until};
use crate::{app_with_hooks, delivered_about, notification};

const WITHIN: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_are_listed_newest_first_paged_and_filtered() {
    let sink = WebhookSink::start(HookMode::Ok).await;
    let app = app_with_hooks(&sink, &[]).await;
    let mut uuids = Vec::new();
    for i in 0..3 {
        let uuid = app.notify(&notification(&format!("l{i}"))).await;
        delivered_about(&sink, &uuid, 1, WITHIN).await;
        uuids.push(uuid);
    }
    poll_until(WITHIN, "three delivered rows", || async {
        let page = app
            .get("/api/webhooks/events/?status=delivered")
            .await
            .json();
        page["count"] == 3
    })
    .await;

    let page = app.get("/api/webhooks/events/?page_size=2").await;
    assert_eq!(page.status, 200, "{}", page.text());
    let page: Value = page.json();
    assert_eq!(page["count"], 3);
    assert_eq!(page["previous"], Value::Null);
    let next = page["next"].as_str().expect("a next page").to_owned();
    assert!(
        next.contains("page=2") && next.contains("page_size=2"),
        "{next}"
    );
    let results = page["results"].as_array().unwrap();
    assert_eq!(results.len(), 2);
    assert_eq!(
        results[0]["message_uuid"],
        uuids[2].as_str(),
        "newest first"
    );
    let event = &results[0];
    assert_eq!(event["type"], "message.sent");
    assert_eq!(event["status"], "delivered");
    assert_eq!(event["attempts"], 1);
    assert_eq!(event["last_status_code"], 204);
    assert_eq!(event["url"], sink.url().as_str());
    assert!(event["event_id"].as_str().unwrap().starts_with("msg_"));
    assert_eq!(event["payload"]["data"]["uuid"], uuids[2].as_str());
    let second = app.get(&next).await.json();
    assert_eq!(second["results"].as_array().unwrap().len(), 1);

    let one = app
        .get(&format!("/api/webhooks/events/?message={}", uuids[0]))
        .await
        .json();
    assert_eq!(one["count"], 1, "{one}");
    assert_eq!(one["results"][0]["message_uuid"], uuids[0].as_str());
    let none = app.get("/api/webhooks/events/?status=failed").await.json();
    assert_eq!(none["count"], 0);

    let bad = app
        .get("/api/webhooks/events/?status=lost&message=nope")
        .await;
    assert_eq!(bad.status, 400, "{}", bad.text());
    let errors = &bad.json()["errors"];
    assert!(
        errors["status"].is_array() && errors["message"].is_array(),
        "{errors}"
    );
    let past = app.get("/api/webhooks/events/?page=9").await;
    assert_eq!(past.status, 404);
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_given_up_event_can_be_retried_and_is_then_delivered() {
    let sink = WebhookSink::start(HookMode::Status(410)).await;
    let app = app_with_hooks(&sink, &[]).await;
    let uuid = app.notify(&notification("again")).await;
    let id = poll_until(WITHIN, "the event gone", || async {
        let page = app.get("/api/webhooks/events/?status=gone").await.json();
        page["results"][0]["id"].as_i64().ok_or(page)
    })
    .await;

    sink.set_mode(HookMode::Ok);
    let r = app
        .post_raw(&format!("/api/webhooks/events/{id}/retry/"), &[], "")
        .await;
    assert_eq!(r.status, 202, "{}", r.text());
    let v = r.json();
    assert_eq!(v["status"], "pending", "{v}");
    assert_eq!(v["attempts"], 0, "{v}");
    let hooks = delivered_about(&sink, &uuid, 1, WITHIN).await;
    assert_eq!(
        sink.hooks()[0].id(),
        hooks[0].id(),
        "the same event id after a retry"
    );
    poll_until(WITHIN, "delivered", || async {
        app.get(&format!("/api/webhooks/events/?message={uuid}"))
            .await
            .json()["results"][0]["status"]
            == "delivered"
    })
    .await;

    let again = app
        .post_raw(&format!("/api/webhooks/events/{id}/retry/"), &[], "")
        .await;
    assert_eq!(again.status, 409, "{}", again.text());
    assert_eq!(again.json()["status"], "delivered");
    for missing in [
        "/api/webhooks/events/999999/retry/",
        "/api/webhooks/events/x/retry/",
    ] {
        let r = app.post_raw(missing, &[], "").await;
        assert_eq!(r.status, 404, "{missing}: {}", r.text());
    }
    let wrong = app
        .send(
            Method::GET,
            &format!("/api/webhooks/events/{id}/retry/"),
            &[],
            "",
        )
        .await;
    assert_eq!(wrong.status, 405);
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_events_api_needs_the_token() {
    let sink = WebhookSink::start(HookMode::Ok).await;
    let app = app_with_hooks(&sink, &[("API_TOKEN", "tok")]).await;
    for (method, path) in [
        (Method::GET, "/api/webhooks/events/"),
        (Method::POST, "/api/webhooks/events/1/retry/"),
    ] {
        let r = app.send(method.clone(), path, &[], "").await;
        assert_eq!(r.status, 401, "{method} {path}");
    }
    let r = app
        .send(
            Method::GET,
            "/api/webhooks/events/",
            &[("authorization", "Bearer tok")],
            "",
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    app.shutdown().await;
}
