//! SMTP over TLS against [`TlsSink`]: STARTTLS (`EMAIL_USE_TLS`), implicit
//! TLS (`EMAIL_USE_SSL`), AUTH PLAIN and LOGIN (`EMAIL_HOST_USER`,
//! `EMAIL_HOST_PASSWORD`), a wrong password, and a certificate that does
//! not verify. The sink is trusted through `EMAIL_TLS_CA_FILE`.

use std::time::Duration;

use serde_json::{Value, json};

use crate::common::TestApp;
use crate::tls_sink::{Auth, Tls, TlsReceived, TlsSink};

const WITHIN: Duration = Duration::from_secs(20);

/// The service sending through `sink` with `security` (`EMAIL_USE_TLS` or
/// `EMAIL_USE_SSL`), trusting its CA, plus `extra`.
async fn app(sink: &TlsSink, security: &str, extra: &[(&str, &str)]) -> TestApp {
    let port = sink.addr.port().to_string();
    TestApp::builder()
        .env("EMAIL_BACKEND", "smtp")
        .env("EMAIL_HOST", "127.0.0.1")
        .env("EMAIL_PORT", &port)
        .env(security, "true")
        .env("EMAIL_TLS_CA_FILE", &sink.ca_file())
        .env("EMAIL_RETRY_BASE_DELAY_MS", "200")
        .env("EMAIL_RETRY_BACKOFF_FACTOR", "1")
        .envs(extra)
        .start()
        .await
}

fn user(mechanisms: &str) -> Auth {
    Auth {
        user: "mailer@example.com".into(),
        password: "s3cret pass".into(),
        mechanisms: mechanisms.into(),
    }
}

const CREDENTIALS: [(&str, &str); 2] = [
    ("EMAIL_HOST_USER", "mailer@example.com"),
    ("EMAIL_HOST_PASSWORD", "s3cret pass"),
];

/// Sends one mail, asserts it ends `sent` and that the sink got exactly it;
/// returns what the sink saw.
async fn delivered(app: &TestApp, sink: &TlsSink) -> TlsReceived {
    let subject = format!("tls-{}", uuid::Uuid::new_v4().simple());
    let mail = json!({"to": "a@example.org", "subject": subject, "body": "over tls"});
    let v = app.notify_and_wait(&mail, WITHIN).await;
    assert_eq!(v["status"], "sent", "{v}");
    let received = sink.received();
    assert_eq!(received.len(), 1, "{received:?}");
    let got = received[0].clone();
    assert!(got.raw.contains(&subject), "{}", got.raw);
    assert!(got.raw.contains("over tls"), "{}", got.raw);
    assert_eq!(got.rcpt, vec!["<a@example.org>"]);
    got
}

fn attempts(v: &Value) -> &Vec<Value> {
    v["attempts"].as_array().expect("attempts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starttls_delivers_over_an_encrypted_session() {
    let sink = TlsSink::start(Tls::StartTls, None).await;
    let app = app(&sink, "EMAIL_USE_TLS", &[]).await;
    let got = delivered(&app, &sink).await;
    assert!(got.tls, "the mail came after STARTTLS");
    assert_eq!(got.auth, None);
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn implicit_tls_delivers_over_an_encrypted_session() {
    let sink = TlsSink::start(Tls::Implicit, None).await;
    let app = app(&sink, "EMAIL_USE_SSL", &[]).await;
    let got = delivered(&app, &sink).await;
    assert!(got.tls, "the mail came over SMTPS");
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_plain_over_starttls_delivers_as_the_configured_user() {
    let sink = TlsSink::start(Tls::StartTls, Some(user("PLAIN LOGIN"))).await;
    let app = app(&sink, "EMAIL_USE_TLS", &CREDENTIALS).await;
    let got = delivered(&app, &sink).await;
    assert!(got.tls);
    assert_eq!(
        got.auth,
        Some(("mailer@example.com".into(), "PLAIN".into()))
    );
    assert_eq!(sink.auth_failures(), 0);
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_login_over_implicit_tls_delivers_as_the_configured_user() {
    let sink = TlsSink::start(Tls::Implicit, Some(user("LOGIN"))).await;
    let app = app(&sink, "EMAIL_USE_SSL", &CREDENTIALS).await;
    let got = delivered(&app, &sink).await;
    assert!(got.tls);
    assert_eq!(
        got.auth,
        Some(("mailer@example.com".into(), "LOGIN".into()))
    );
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_is_a_permanent_failure_without_retry() {
    let sink = TlsSink::start(Tls::StartTls, Some(user("PLAIN LOGIN"))).await;
    let app = app(
        &sink,
        "EMAIL_USE_TLS",
        &[
            ("EMAIL_HOST_USER", "mailer@example.com"),
            ("EMAIL_HOST_PASSWORD", "wrong"),
        ],
    )
    .await;
    let mail = json!({"to": "a@example.org", "subject": "s", "body": "b"});
    let v = app.notify_and_wait(&mail, WITHIN).await;
    assert_eq!(v["status"], "failed", "{v}");
    assert_eq!(v["retry_count"], 0, "{v}");
    let a = attempts(&v);
    assert_eq!(a.len(), 1, "no retry: {v}");
    assert_eq!(a[0]["outcome"], "permanent", "{v}");
    assert!(v["error_message"].as_str().unwrap().contains("535"), "{v}");
    // Well past a retry delay: still one attempt.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(sink.auth_failures(), 1);
    assert!(sink.received().is_empty());
    app.shutdown().await;
}

/// Without `EMAIL_TLS_CA_FILE` the sink's certificate does not verify: each
/// attempt fails in the handshake, as a transient failure (retried), and
/// the message ends `failed` once the retries are used up. Nothing is sent.
async fn untrusted_certificate_is_retried_then_fails(tls: Tls, security: &str) {
    let sink = TlsSink::start(tls, None).await;
    let port = sink.addr.port().to_string();
    let app = TestApp::builder()
        .env("EMAIL_BACKEND", "smtp")
        .env("EMAIL_HOST", "127.0.0.1")
        .env("EMAIL_PORT", &port)
        .env(security, "true")
        .env("EMAIL_MAX_RETRIES", "1")
        .env("EMAIL_RETRY_BASE_DELAY_MS", "200")
        .start()
        .await;
    let mail = json!({"to": "a@example.org", "subject": "s", "body": "b"});
    let v = app.notify_and_wait(&mail, WITHIN).await;
    assert_eq!(v["status"], "failed", "{v}");
    let a = attempts(&v);
    assert_eq!(a.len(), 2, "first attempt and one retry: {v}");
    for attempt in a {
        assert_eq!(attempt["outcome"], "transient", "{v}");
        let error = attempt["error"].as_str().unwrap_or_default();
        assert!(
            error.contains("certificate") && error.contains("UnknownIssuer"),
            "a TLS certificate error: {v}"
        );
    }
    assert!(sink.received().is_empty());
    assert_eq!(
        sink.handshake_failures().len(),
        2,
        "{:?}",
        sink.handshake_failures()
    );
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_starttls_certificate_that_does_not_verify_is_a_transient_failure() {
    untrusted_certificate_is_retried_then_fails(Tls::StartTls, "EMAIL_USE_TLS").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_implicit_tls_certificate_that_does_not_verify_is_a_transient_failure() {
    untrusted_certificate_is_retried_then_fails(Tls::Implicit, "EMAIL_USE_SSL").await;
}
