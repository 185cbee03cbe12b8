use std::time::Duration;

use serde_json::json;

use crate::common::{TestApp, spawn_app_with};

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
