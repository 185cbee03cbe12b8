use std::time::Duration;

use serde_json::json;

use crate::common::process::http;
use crate::common::{TestApp, poll_until, spawn_app_with};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_file_backend_writes_one_eml_per_delivery_named_by_uuid_and_attempt() {
    let dir = std::env::temp_dir().join(format!("email-service-test-{}", uuid::Uuid::new_v4()));
    let dir_s = dir.to_str().unwrap().to_owned();
    let app = TestApp::builder()
        .env(
            "EMAIL_BACKEND",
            "django.core.mail.backends.filebased.EmailBackend",
        )
        .env("EMAIL_FILE_PATH", &dir_s)
        .start()
        .await;
    let uuid = app
        .notify(&json!({"to": "a@example.org", "subject": "File", "body": "text", "html": "<p>html</p>"}))
        .await;
    let v = app
        .wait_final("notify", &uuid, Duration::from_secs(20))
        .await;
    assert_eq!(v["status"], "sent");
    let file = dir.join(format!("{uuid}-1.eml"));
    let eml = std::fs::read_to_string(&file).expect("the .eml file");
    assert!(eml.contains(&format!("Message-ID: <{uuid}@localhost>")));
    assert!(eml.contains("multipart/alternative"));
    assert!(eml.contains("<p>html</p>"));
    let files: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
    assert_eq!(files.len(), 1, "no temporary files left behind");
    app.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_backend_delivers() {
    let app = spawn_app_with(&[("EMAIL_BACKEND", "console")]).await;
    let mail = json!({"to": "a@example.org", "subject": "Console", "body": "x"});
    let v = app.notify_and_wait(&mail, Duration::from_secs(20)).await;
    assert_eq!(v["status"], "sent");
    assert_eq!(v["attempts"][0]["outcome"], "sent");
    app.shutdown().await;
}

/// The console backend prints the whole mail: the real binary's stdout has
/// one JSON line for the delivery, with the formatted mail (headers and
/// body) in its `mail` field. The same stdout carries the log-drop counter
/// on `/metrics` (nothing dropped here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_backend_prints_the_mail_on_stdout() {
    let p = TestApp::builder()
        .env("EMAIL_BACKEND", "console")
        .env("DEFAULT_FROM_EMAIL", "Blog <noreply@example.com>")
        .process();
    let body = json!({
        "to": "reader@example.org",
        "subject": "Console subject",
        "body": "console-body-marker",
    })
    .to_string();
    let (status, resp) = http(p.addr, "POST", "/api/notify/", Some(&body));
    assert_eq!(status, 202, "{resp}");
    let uuid = serde_json::from_str::<serde_json::Value>(&resp).unwrap()["uuid"]
        .as_str()
        .unwrap()
        .to_owned();
    let line = poll_until(Duration::from_secs(20), "the console mail line", || async {
        p.stdout_lines()
            .iter()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|v| v["message"] == "console backend: mail" && v["uuid"] == uuid.as_str())
            .ok_or_else(|| p.stdout_lines().join("\n"))
    })
    .await;
    assert_eq!(line["attempt"], 1, "{line}");
    let mail = line["mail"].as_str().expect("the formatted mail");
    for part in [
        "To: reader@example.org",
        "From: Blog <noreply@example.com>",
        "Subject: Console subject",
        &format!("Message-ID: <{uuid}@example.com>"),
        "console-body-marker",
    ] {
        assert!(mail.contains(part), "{part:?} in the printed mail: {mail}");
    }
    let (status, metrics) = http(p.addr, "GET", "/metrics", None);
    assert_eq!(status, 200);
    assert!(
        metrics
            .lines()
            .any(|l| l == "email_service_log_lines_dropped_total 0"),
        "{metrics}"
    );
}
