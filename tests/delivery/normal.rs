use std::time::Duration;

use serde_json::json;

use crate::common::{Mode, SmtpSink, Target, TestApp, poll_until, spawn_app_with_sink};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_accepted_notification_is_delivered_exactly_once_with_its_message_id() {
    let sink = SmtpSink::start(Mode::Accept).await;
    let from = ("DEFAULT_FROM_EMAIL", "Service <noreply@example.com>");
    let app = spawn_app_with_sink(&sink, &[from]).await;

    let mut uuids = Vec::new();
    for i in 0..40 {
        uuids.push(
            app.notify(&json!({"to": format!("user{i}@example.org"), "subject": format!("n{i}"), "body": "hello"}))
                .await,
        );
    }
    for uuid in &uuids {
        let v = app
            .wait_final("notify", uuid, Duration::from_secs(20))
            .await;
        assert_eq!(v["status"], "sent", "{v}");
        assert_eq!(v["attempts"].as_array().unwrap().len(), 1, "{v}");
        assert_eq!(v["attempts"][0]["outcome"], "sent");
        assert_eq!(v["attempts"][0]["smtp_code"], 250);
        assert!(v["sent_at"].is_string());
    }
    let counts = sink.by_message_id();
    assert_eq!(counts.len(), 40, "{counts:?}");
    for uuid in &uuids {
        assert_eq!(
            counts.get(&format!("<{uuid}@example.com>")),
            Some(&1),
            "{uuid}: {counts:?}"
        );
    }
    let mail = sink
        .received()
        .into_iter()
        .find(|r| r.raw.contains("Subject: n7"))
        .unwrap();
    assert!(mail.raw.contains("From: Service <noreply@example.com>"));
    assert!(mail.raw.contains("Date: "));
    assert_eq!(mail.rcpt, vec!["<user7@example.org>"]);
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_contact_message_goes_to_the_recipient_with_reply_to_the_sender() {
    let sink = SmtpSink::start(Mode::Accept).await;
    let app = spawn_app_with_sink(&sink, &[("CONTACT_RECIPIENT", "owner@example.com")]).await;
    let r = app
        .post_json(
            "/api/contact/",
            &json!({"name": "Ada Lovelace", "email": "ada@example.org", "message": "Hello from the form"}),
        )
        .await;
    assert_eq!(r.status, 202);
    let uuid = r.json()["uuid"].as_str().unwrap().to_owned();
    let v = app
        .wait_final("contact", &uuid, Duration::from_secs(20))
        .await;
    assert_eq!(v["status"], "sent");
    let mail = &sink.received()[0];
    assert_eq!(mail.rcpt, vec!["<owner@example.com>"]);
    let reply_to = mail
        .raw
        .lines()
        .find(|l| l.starts_with("Reply-To:"))
        .unwrap();
    assert!(
        reply_to.contains("Ada Lovelace") && reply_to.contains("<ada@example.org>"),
        "{reply_to}"
    );
    assert!(mail.raw.contains("Ada Lovelace"));
    assert!(mail.raw.contains("Hello from the form"));
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_on_one_database_and_prefix_deliver_each_message_once() {
    let sink = SmtpSink::start(Mode::Accept).await;
    let target = Target::fresh();
    let a = TestApp::builder().sink(&sink).target(&target).start().await;
    let b = TestApp::builder().sink(&sink).target(&target).start().await;

    // Both instances accept and both deliver, at the same time.
    for i in 0..300 {
        let app = if i % 2 == 0 { &a } else { &b };
        app.notify(&json!({"to": "x@example.org", "subject": format!("m{i}"), "body": "b"}))
            .await;
    }
    poll_until(Duration::from_secs(60), "300 deliveries", || async {
        sink.received().len() >= 300
    })
    .await;
    // Give a duplicate, if there were one, the time to arrive.
    poll_until(Duration::from_secs(10), "all rows sent", || async {
        let sent: i64 = a
            .scalar("SELECT count(*) FROM notifications WHERE status = 'sent'")
            .await;
        sent == 300
    })
    .await;
    let counts = sink.by_message_id();
    assert_eq!(counts.len(), 300);
    assert!(counts.values().all(|&n| n == 1), "duplicates: {counts:?}");
    a.shutdown().await;
    b.shutdown().await;
}
