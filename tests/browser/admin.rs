//! The admin page (`/admin/`) in Chromium against the running service: it
//! follows the messages by itself, its buttons act, strangers' content stays
//! text, and without a valid token it shows nothing.

use std::time::Duration;

use serde_json::json;

use crate::common::{Mode, SmtpSink, TestApp, poll_until};
use crate::driver::{Browser, SHOWS_WITHIN};

/// The status the page shows in the row of message `uuid`, once there.
const ROW_STATUS: &str =
    "const tr = document.querySelector(`#rows tr[data-uuid=\"${arguments[0]}\"]`);
     return tr ? tr.querySelector('.badge').textContent : null;";

async fn row_status(b: &Browser, uuid: &str) -> String {
    let v = b
        .wait_for(&format!("a row for {uuid}"), ROW_STATUS, vec![json!(uuid)])
        .await;
    v.as_str().unwrap().to_owned()
}

async fn wait_row_status(b: &Browser, uuid: &str, want: &str) {
    b.wait_for(
        &format!("the row of {uuid} to show {want}"),
        "const tr = document.querySelector(`#rows tr[data-uuid=\"${arguments[0]}\"]`);
         return tr !== null && tr.querySelector('.badge').textContent === arguments[1];",
        vec![json!(uuid), json!(want)],
    )
    .await;
}

pub(crate) async fn open_row(b: &Browser, uuid: &str) {
    row_status(b, uuid).await;
    b.click(&format!("#rows tr[data-uuid=\"{uuid}\"] td.what"))
        .await;
    b.wait_for(
        "the detail pane",
        "const d = document.getElementById('detail');
         return !d.hidden && d.dataset.status ? d.dataset.status : null;",
        vec![],
    )
    .await;
}

pub(crate) async fn detail_status(b: &Browser, want: &str) {
    b.wait_for(
        &format!("the detail pane to show {want}"),
        "return document.getElementById('detail').dataset.status === arguments[0];",
        vec![json!(want)],
    )
    .await;
}

/// A browser on the admin page, up, on the tab of `kind`.
pub(crate) async fn open_page(app: &TestApp, kind: &str) -> Browser {
    let b = Browser::start().await;
    b.goto(&app.url("/admin/")).await;
    b.wait_for(
        "the page to be up",
        "return !document.getElementById('app').hidden;",
        vec![],
    )
    .await;
    if kind == "notify" {
        b.click(".tab[data-kind=notify]").await;
    }
    b
}

async fn status_of(app: &TestApp, kind: &str, uuid: &str) -> String {
    app.detail(kind, uuid).await["status"]
        .as_str()
        .unwrap()
        .to_owned()
}

async fn wait_status(app: &TestApp, kind: &str, uuid: &str, want: &str) {
    poll_until(SHOWS_WITHIN, &format!("{uuid} to be {want}"), || async {
        let s = status_of(app, kind, uuid).await;
        if s == want { Ok(()) } else { Err(s) }
    })
    .await;
}

fn in_an_hour() -> String {
    (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_posted_through_the_api_appears_and_turns_sent_without_a_reload() {
    // A slow SMTP server keeps the message unsent for a few polls.
    let sink = SmtpSink::start(Mode::Slow(Duration::from_secs(4))).await;
    let app = TestApp::builder().sink(&sink).start().await;
    let b = open_page(&app, "contact").await;
    b.js("window.__sameDocument = true;", vec![]).await;

    let r = app
        .post_json(
            "/api/contact/",
            &json!({"name": "Grace Hopper", "email": "grace@example.org",
                    "message": "Please look at the compiler."}),
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.text());
    let uuid = r.json()["uuid"].as_str().unwrap().to_owned();
    let first = row_status(&b, &uuid).await;
    assert!(
        first == "queued" || first == "sending",
        "seen first as {first}"
    );
    wait_row_status(&b, &uuid, "sent").await;
    assert_eq!(
        b.js("return window.__sameDocument === true;", vec![]).await,
        true,
        "the page reloaded"
    );
    b.wait_for(
        "the health strip",
        "return document.getElementById('health').textContent.includes('mailer-0');",
        vec![],
    )
    .await;
    b.screenshot("admin-list").await;

    open_row(&b, &uuid).await;
    let attempts = b
        .wait_for(
            "the attempt with its SMTP code",
            "const t = document.querySelector('#d-attempts tbody').textContent;
             return t.includes('250') ? t : null;",
            vec![],
        )
        .await;
    assert!(attempts.as_str().unwrap().contains("sent"), "{attempts}");
    let text = b
        .js(
            "return document.getElementById('d-text').textContent;",
            vec![],
        )
        .await;
    // The text part as built: the form's message inside it.
    assert!(
        text.as_str()
            .unwrap()
            .ends_with("\n\nPlease look at the compiler.\n"),
        "{text}"
    );
    b.screenshot("admin-detail").await;
    b.close().await;
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resend_cancel_bulk_cancel_and_the_filters_work_from_the_page() {
    let sink = SmtpSink::start(Mode::Accept).await;
    let app = TestApp::builder().sink(&sink).start().await;
    let later = |subject: &str| json!({"to": "ops@example.org", "subject": subject, "body": "b", "send_at": in_an_hour()});
    let scheduled = app.notify(&later("scheduled")).await;
    let bulk: Vec<String> = vec![
        app.notify(&later("bulk one")).await,
        app.notify(&later("bulk two")).await,
    ];
    let sent = app
        .notify_and_wait(
            &json!({"to": "ops@example.org", "subject": "sent once", "body": "b"}),
            Duration::from_secs(20),
        )
        .await;
    assert_eq!(sent["status"], "sent");
    let sent = sent["uuid"].as_str().unwrap().to_owned();

    let b = open_page(&app, "notify").await;

    // Cancel a queued message, then resend it: it goes out.
    open_row(&b, &scheduled).await;
    detail_status(&b, "queued").await;
    b.click("#d-cancel").await;
    wait_status(&app, "notify", &scheduled, "cancelled").await;
    detail_status(&b, "cancelled").await;
    wait_row_status(&b, &scheduled, "cancelled").await;
    b.click("#d-retry").await;
    poll_until(SHOWS_WITHIN, "the resent message at the sink", || async {
        sink.received().iter().any(|m| m.raw.contains(&scheduled))
    })
    .await;
    wait_row_status(&b, &scheduled, "sent").await;

    // Force a second delivery of a sent one: same Message-ID, twice.
    open_row(&b, &sent).await;
    detail_status(&b, "sent").await;
    b.click("#d-force").await;
    poll_until(SHOWS_WITHIN, "a second copy at the sink", || async {
        let n = sink
            .received()
            .iter()
            .filter(|m| m.raw.contains(&sent))
            .count();
        if n == 2 { Ok(()) } else { Err(n) }
    })
    .await;

    // A checkbox selection, cancelled in one go.
    for uuid in &bulk {
        row_status(&b, uuid).await;
        b.click(&format!("#rows tr[data-uuid=\"{uuid}\"] input.select"))
            .await;
    }
    let selected = b
        .js(
            "return document.getElementById('selection').textContent;",
            vec![],
        )
        .await;
    assert_eq!(selected, "2 selected");
    b.click("#bulk-cancel").await;
    for uuid in &bulk {
        wait_status(&app, "notify", uuid, "cancelled").await;
        wait_row_status(&b, uuid, "cancelled").await;
    }
    let said = b
        .wait_for(
            "the bulk result",
            "const t = document.getElementById('bulk-result').textContent;
             return t.includes('changed') ? t : null;",
            vec![],
        )
        .await;
    assert_eq!(said, "2 of 2 changed", "{said}");

    // The status filter (the list's `?status=`): only the cancelled two.
    b.find("#f-status")
        .await
        .select_by_label("cancelled")
        .await
        .expect("choose a status");
    let mut want = bulk.clone();
    want.sort();
    b.wait_for(
        "only the cancelled messages listed",
        "const ids = [...document.querySelectorAll('#rows tr')].map(tr => tr.dataset.uuid).sort();
         return JSON.stringify(ids) === JSON.stringify(arguments[0]);",
        vec![json!(want)],
    )
    .await;
    b.screenshot("admin-actions").await;

    // The other filters go out as the list parameters of the contract
    // (the server may not apply them all yet; the page must send them).
    b.js(
        "window.__asked = [];
         const fetch0 = window.fetch;
         window.fetch = (url, init) => { window.__asked.push(String(url)); return fetch0(url, init); };",
        vec![],
    )
    .await;
    b.find("#f-recipient")
        .await
        .send_keys("ops@example.org")
        .await
        .expect("type");
    b.find("#f-search")
        .await
        .send_keys("bulk one")
        .await
        .expect("type");
    b.js(
        "for (const [id, v] of [['f-after', '2026-01-02T03:04'], ['f-before', '2030-05-06T07:08']]) {
           const input = document.getElementById(id);
           input.value = v;
           input.dispatchEvent(new Event('change', {bubbles: true}));
         }",
        vec![],
    )
    .await;
    let asked = b
        .wait_for(
            "a list request with every filter",
            "return window.__asked.map(u => new URL(u, location.href)).find(u =>
               u.pathname === '/api/notify/' && u.searchParams.get('to') === 'ops@example.org'
               && u.searchParams.get('search') === 'bulk one' && u.searchParams.has('created_after')
               && u.searchParams.has('created_before'))?.search ?? null;",
            vec![],
        )
        .await;
    let query: std::collections::HashMap<String, String> =
        form_urlencoded::parse(asked.as_str().unwrap().trim_start_matches('?').as_bytes())
            .into_owned()
            .collect();
    assert_eq!(query["status"], "cancelled", "{asked}");
    assert_eq!(
        query["cursor"], "",
        "keyset paging from the newest: {asked}"
    );
    for (name, year) in [
        ("created_after", "2026-01-0"),
        ("created_before", "2030-05-0"),
    ] {
        let t = chrono::DateTime::parse_from_rfc3339(&query[name])
            .unwrap_or_else(|e| panic!("{name} is not RFC 3339 ({e}): {asked}"));
        assert!(t.to_rfc3339().starts_with(year), "{name}: {asked}");
    }
    b.close().await;
    app.shutdown().await;
}

const HOSTILE: &str = "<script>window.__pwned=1</script><img src=x onerror=\"window.__pwned=1\">";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_content_shows_as_text_and_runs_nothing() {
    let app = TestApp::builder().start().await;
    let r = app
        .post_json(
            "/api/contact/",
            &json!({"name": format!("Mallory {HOSTILE}"), "email": "m@example.org",
                    "message": format!("Hi {HOSTILE} bye")}),
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.text());
    let contact = r.json()["uuid"].as_str().unwrap().to_owned();
    let notify = app
        .notify(&json!({
            "to": "ops@example.org",
            "subject": format!("Subject {HOSTILE}"),
            "body": "plain",
            "html": format!("<p>Rich <b>part</b></p>{HOSTILE}\
                <img src=x onerror=\"parent.__pwned=1\"><script>parent.__pwned=1</script>"),
        }))
        .await;

    let b = Browser::start().await;
    b.goto(&app.url("/admin/")).await;
    open_row(&b, &contact).await;
    // A poll later (the page draws again), with the broken image's error
    // event long fired had it been an element.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let shown = b
        .js(
            "const row = document.querySelector(`#rows tr[data-uuid=\"${arguments[0]}\"]`);
             return {
               pwned: window.__pwned !== undefined,
               row: row.textContent,
               text: document.getElementById('d-text').textContent,
               fields: document.getElementById('d-fields').textContent,
               injected: document.querySelectorAll('#rows img, #rows script, #detail img, #detail script').length,
             };",
            vec![json!(contact)],
        )
        .await;
    assert_eq!(
        shown["pwned"], false,
        "a script from a message ran: {shown}"
    );
    assert_eq!(
        shown["injected"], 0,
        "markup from a message became elements: {shown}"
    );
    assert!(
        shown["row"].as_str().unwrap().contains("Mallory <script>"),
        "{shown}"
    );
    assert!(
        shown["text"]
            .as_str()
            .unwrap()
            .ends_with(&format!("\n\nHi {HOSTILE} bye\n")),
        "{shown}"
    );
    assert!(
        shown["fields"].as_str().unwrap().contains(HOSTILE),
        "{shown}"
    );
    b.screenshot("admin-hostile-contact").await;

    b.click(".tab[data-kind=notify]").await;
    open_row(&b, &notify).await;
    // The part renders inside its frame, as markup, and runs nothing there.
    b.wait_for(
        "the HTML part's frame",
        "return document.getElementById('d-html').srcdoc !== '';",
        vec![],
    )
    .await;
    b.find("#d-html")
        .await
        .enter_frame()
        .await
        .expect("enter the frame");
    let inside = b
        .wait_for(
            "the HTML part inside its frame",
            "return document.body && document.body.innerText.includes('Rich part')
                ? {bold: document.querySelectorAll('b').length, pwned: window.__pwned !== undefined
                    || (function () { try { return parent.__pwned !== undefined; } catch (e) { return false; } })()}
                : null;",
            vec![],
        )
        .await;
    b.client
        .enter_parent_frame()
        .await
        .expect("leave the frame");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let pwned = b.js("return window.__pwned !== undefined;", vec![]).await;
    assert_eq!(pwned, false, "a script from the HTML part reached the page");
    assert_eq!(
        inside["pwned"], false,
        "a script ran in the frame: {inside}"
    );
    assert_eq!(
        inside["bold"], 1,
        "the HTML part is shown as HTML: {inside}"
    );
    let frame = b
        .js(
            "const f = document.getElementById('d-html');
             return {sandbox: f.getAttribute('sandbox'), visible: !document.getElementById('d-html-box').hidden,
                     injected: document.querySelectorAll('#rows img, #rows script, #detail img, #detail script').length};",
            vec![],
        )
        .await;
    assert_eq!(
        frame["sandbox"], "",
        "a sandbox without any allowance: {frame}"
    );
    assert_eq!(frame["visible"], true);
    assert_eq!(frame["injected"], 0, "{frame}");
    b.screenshot("admin-hostile-notification").await;
    b.close().await;
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_token_set_a_wrong_token_shows_no_data_and_the_right_one_does() {
    let app = TestApp::builder().env("API_TOKEN", "s3cret").start().await;
    let r = app
        .post_json(
            "/api/contact/",
            &json!({"name": "Private Person", "email": "p@example.org", "message": "private"}),
        )
        .await;
    assert_eq!(r.status, 202);
    let uuid = r.json()["uuid"].as_str().unwrap().to_owned();

    let b = Browser::start().await;
    b.goto(&app.url("/admin/")).await;
    b.wait_for(
        "the token prompt",
        "return !document.getElementById('login').hidden;",
        vec![],
    )
    .await;
    let token = b.find("#token").await;
    token.send_keys("wrong-token").await.unwrap();
    b.click("#login-form button[type=submit]").await;
    let error = b
        .wait_for(
            "the refusal",
            "const t = document.getElementById('login-error').textContent;
             return t.includes('refused') ? t : null;",
            vec![],
        )
        .await;
    assert!(error.as_str().unwrap().contains("refused"));
    let seen = b
        .js(
            "return {app: document.getElementById('app').hidden,
                     rows: document.querySelectorAll('#rows tr').length,
                     text: document.body.innerText,
                     stored: sessionStorage.length};",
            vec![],
        )
        .await;
    assert_eq!(seen["app"], true, "{seen}");
    assert_eq!(seen["rows"], 0, "{seen}");
    assert!(
        !seen["text"].as_str().unwrap().contains("Private Person"),
        "{seen}"
    );
    assert_eq!(seen["stored"], 0, "a refused token is not kept");
    b.screenshot("admin-token-refused").await;

    let token = b.find("#token").await;
    token.send_keys("s3cret").await.unwrap();
    b.click("#login-form button[type=submit]").await;
    row_status(&b, &uuid).await;
    let kept = b
        .js(
            "return Object.values(sessionStorage).includes('s3cret');",
            vec![],
        )
        .await;
    assert_eq!(kept, true, "the token is kept in the tab's session storage");
    b.close().await;
    app.shutdown().await;
}
