//! The operator actions' HTTP surface: which statuses each action may
//! change, what a refusal says, the routing, and the token.

use std::time::Duration;

use hyper::Method;
use serde_json::json;

use crate::common::{TestApp, TestResponse, spawn_app, spawn_app_with};

async fn action(app: &TestApp, path: &str) -> TestResponse {
    app.post_raw(path, &[], "").await
}

async fn sent_notification(app: &TestApp) -> String {
    let v = app
        .notify_and_wait(
            &json!({"to": "a@example.org", "subject": "s", "body": "b"}),
            Duration::from_secs(20),
        )
        .await;
    assert_eq!(v["status"], "sent", "{v}");
    v["uuid"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sent_message_cannot_be_cancelled_and_stays_sent() {
    let app = spawn_app().await;
    let uuid = sent_notification(&app).await;
    let id = app.detail("notify", &uuid).await["id"].to_string();
    for path in [
        format!("/api/notify/{uuid}/cancel/"),
        format!("/api/notify/{id}/cancel"),
    ] {
        let r = action(&app, &path).await;
        assert_eq!(r.status, 409, "{path}: {}", r.text());
        let body = r.json();
        assert_eq!(body["status"], "sent", "{body}");
        assert!(
            body["detail"].as_str().unwrap().contains("queued"),
            "{body}"
        );
    }
    assert_eq!(app.detail("notify", &uuid).await["status"], "sent");
    let metrics = app.get("/metrics").await.text();
    assert!(
        metrics.contains(
            r#"email_service_operator_actions_total{kind="notify",action="cancel",result="refused"} 2"#
        ),
        "{metrics}"
    );
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actions_on_unknown_messages_wrong_methods_and_unknown_actions() {
    let app = spawn_app().await;
    for path in [
        "/api/notify/999/cancel/",
        "/api/contact/6f1c2a6e-1111-4222-8333-444455556666/cancel/",
        "/api/notify/not-an-id/retry/",
        "/api/notify/1/archive/",
    ] {
        let r = action(&app, path).await;
        assert_eq!(r.status, 404, "{path}: {}", r.text());
        assert!(r.json()["detail"].is_string(), "{path}");
    }
    let r = app
        .send(Method::GET, "/api/notify/1/cancel/", &[], "")
        .await;
    assert_eq!(r.status, 405, "{}", r.text());
    assert_eq!(r.header("allow"), Some("POST, OPTIONS"));
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actions_need_the_token_even_on_contact_messages() {
    let app = spawn_app_with(&[("API_TOKEN", "secret")]).await;
    let r = app
        .post_json(
            "/api/contact/",
            &json!({"name": "Ada", "email": "ada@example.org", "message": "hi"}),
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.text());
    let uuid = r.json()["uuid"].as_str().unwrap().to_owned();
    for what in ["cancel", "retry"] {
        let path = format!("/api/contact/{uuid}/{what}/");
        let r = action(&app, &path).await;
        assert_eq!(r.status, 401, "{path}: {}", r.text());
        let r = app
            .post_raw(&path, &[("authorization", "Bearer secret")], "")
            .await;
        assert_ne!(r.status, 401, "{path}: {}", r.text());
    }
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_list_filters_by_the_cancelled_status() {
    let app = spawn_app().await;
    let r = app.get("/api/notify/?status=cancelled").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["count"], 0);
    let r = app.get("/api/notify/?status=delivered").await;
    assert_eq!(r.status, 400);
    let why = r.json()["errors"]["status"][0].as_str().unwrap().to_owned();
    assert!(
        why.ends_with("queued, sending, sent, failed, cancelled."),
        "{why}"
    );
    app.shutdown().await;
}
