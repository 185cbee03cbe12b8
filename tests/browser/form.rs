//! The example contact form (`examples/contact-form.html`) in Chromium,
//! served from a second origin: what a visitor of a blog sees.

use std::time::Duration;

use serde_json::json;

use crate::common::{Mode, SmtpSink, TestApp, poll_until};
use crate::driver::Browser;
use crate::site::Site;

/// Types into the form's fields and submits it.
async fn fill_and_send(b: &Browser, name: &str, email: &str, message: &str) {
    for (id, value) in [
        ("es-name", name),
        ("es-email", email),
        ("es-message", message),
    ] {
        let input = b.find(&format!("#{id}")).await;
        input.clear().await.expect("clear");
        if !value.is_empty() {
            input.send_keys(value).await.expect("type");
        }
    }
    b.click("#contact-form button[type=submit]").await;
}

async fn status_text(b: &Browser, class: &str) -> String {
    let v = b
        .wait_for(
            &format!("the form's status to be {class}"),
            "const s = document.getElementById('es-status');
             return s.classList.contains(arguments[0]) ? s.textContent : null;",
            vec![json!(class)],
        )
        .await;
    v.as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_form_on_an_allowed_origin_shows_field_errors_then_delivers_and_handles_429() {
    let sink = SmtpSink::start(Mode::Accept).await;
    let site = Site::start().await;
    let app = TestApp::builder()
        .sink(&sink)
        .env("CORS_ALLOWED_ORIGINS", &site.origin())
        .env("CONTACT_RATE_LIMIT", "3")
        .start()
        .await;
    site.point_at(&format!("http://{}", app.addr));
    let b = Browser::start().await;
    b.goto(&site.url()).await;

    // The server's 400: each field's error beside its field.
    fill_and_send(&b, "", "not-an-address", "Hello").await;
    status_text(&b, "es-bad").await;
    let errors = b
        .js(
            "const t = id => document.getElementById(id).textContent;
             return [t('es-name-error'), t('es-email-error'), t('es-message-error'),
                     document.getElementById('es-email').getAttribute('aria-invalid')];",
            vec![],
        )
        .await;
    assert!(
        !errors[0].as_str().unwrap().is_empty(),
        "name error: {errors}"
    );
    assert!(
        !errors[1].as_str().unwrap().is_empty(),
        "email error: {errors}"
    );
    assert_eq!(errors[2], "", "the message was fine: {errors}");
    assert_eq!(errors[3], "true");
    b.screenshot("contact-form-field-errors").await;
    app.assert_nothing_stored("after a refused form").await;

    // Fixed: queued, stored and delivered.
    fill_and_send(
        &b,
        "Ada Lovelace",
        "ada@example.org",
        "Hello from a browser",
    )
    .await;
    let said = status_text(&b, "es-ok").await;
    assert!(said.contains("queued"), "{said}");
    let uuid = b
        .js(
            "return document.getElementById('es-status').dataset.uuid;",
            vec![],
        )
        .await;
    let uuid = uuid.as_str().unwrap().to_owned();
    let errors_left = b
        .js(
            "return document.getElementById('es-name-error').textContent;",
            vec![],
        )
        .await;
    assert_eq!(errors_left, "", "old field errors are cleared");
    b.screenshot("contact-form-sent").await;
    let stored = app
        .wait_final("contact", &uuid, Duration::from_secs(20))
        .await;
    assert_eq!(stored["status"], "sent", "{stored}");
    assert_eq!(stored["name"], "Ada Lovelace");
    let mail = poll_until(Duration::from_secs(10), "the mail at the sink", || async {
        sink.received()
            .into_iter()
            .find(|m| m.raw.contains("Hello from a browser"))
    })
    .await;
    assert!(mail.raw.contains("ada@example.org"));

    // Over the limit: a 429 whose Retry-After the page could read.
    fill_and_send(&b, "Ada Lovelace", "ada@example.org", "Hello again").await;
    status_text(&b, "es-ok").await;
    fill_and_send(&b, "Ada Lovelace", "ada@example.org", "And again").await;
    let said = status_text(&b, "es-bad").await;
    assert!(
        said.contains("Too many") && said.contains(" seconds"),
        "a 429 with its Retry-After: {said}"
    );
    b.close().await;
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_form_on_an_origin_not_allowed_is_refused_by_the_browser_and_nothing_is_stored() {
    let site = Site::start().await;
    let app = TestApp::builder()
        .env("CORS_ALLOWED_ORIGINS", "https://blog.example.com")
        .start()
        .await;
    site.point_at(&format!("http://{}", app.addr));
    let b = Browser::start().await;
    b.goto(&site.url()).await;
    fill_and_send(
        &b,
        "Mallory",
        "mallory@example.org",
        "From a page not allowed",
    )
    .await;
    let said = status_text(&b, "es-bad").await;
    assert!(said.contains("could not be reached"), "{said}");
    b.screenshot("contact-form-refused").await;

    // The browser did ask (its preflight reached the service), and stopped.
    let metrics = app.get("/metrics").await.text();
    assert!(
        metrics
            .lines()
            .any(|l| l.contains("method=\"OPTIONS\"") && l.contains("/api/contact/")),
        "no preflight reached the service"
    );
    app.assert_nothing_stored("after a refused origin").await;
    b.close().await;
    app.shutdown().await;
}
