//! The admin page's operator control in Chromium against the running
//! service: the detail pane shows the mail as the service builds it (its
//! Message-ID is what the SMTP server receives) and the events each action
//! leaves, with their request ids; search and the creation dates narrow the
//! table on the server; a bulk action on everything a filter matches is
//! confirmed first, refused without a filter, and what it cancels is never
//! sent.

use std::time::Duration;

use serde_json::{Value, json};

use crate::admin::{detail_status, open_page as page, open_row};
use crate::common::{Mode, SmtpSink, TestApp, poll_until};
use crate::driver::{Browser, SHOWS_WITHIN};

/// Waits until the table lists exactly `want`.
async fn wait_shown(b: &Browser, what: &str, mut want: Vec<String>) {
    want.sort();
    b.wait_for(
        what,
        "return JSON.stringify([...document.querySelectorAll('#rows tr')]
           .map(tr => tr.dataset.uuid).sort()) === JSON.stringify(arguments[0]);",
        vec![json!(want)],
    )
    .await;
}

/// The header `name` as the pane's header table shows it.
async fn shown_header(b: &Browser, name: &str) -> String {
    b.wait_for(
        &format!("the {name} header in the pane"),
        "const th = [...document.querySelectorAll('#d-headers tr')]
           .find(tr => tr.dataset.name === arguments[0]);
         return th ? th.querySelector('td').textContent : null;",
        vec![json!(name)],
    )
    .await
    .as_str()
    .unwrap()
    .to_owned()
}

/// The pane's events as `[what, request id]`, once there are `n`.
async fn shown_events(b: &Browser, n: usize) -> Vec<(String, String)> {
    let v = b
        .wait_for(
            &format!("{n} events in the pane"),
            "const li = [...document.querySelectorAll('#d-events li')];
             return li.length === arguments[0]
               ? li.map(e => [e.dataset.what, e.dataset.requestId || '', e.textContent]) : null;",
            vec![json!(n)],
        )
        .await;
    v.as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let text = e[2].as_str().unwrap();
            let id = e[1].as_str().unwrap().to_owned();
            assert!(text.contains(&id), "the request id is shown: {text}");
            (e[0].as_str().unwrap().to_owned(), id)
        })
        .collect()
}

/// Sets a `datetime-local` input to an instant, in the browser's zone, or
/// clears it.
async fn set_instant(b: &Browser, id: &str, at: Option<chrono::DateTime<chrono::Utc>>) {
    b.js(
        "const input = document.getElementById(arguments[0]);
         if (arguments[1] === null) {
           input.value = '';
         } else {
           input.step = '0.001';
           const d = new Date(arguments[1]);
           input.valueAsNumber = d.getTime() - d.getTimezoneOffset() * 60000;
         }
         input.dispatchEvent(new Event('change', {bubbles: true}));",
        vec![json!(id), json!(at.map(|t| t.to_rfc3339()))],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_detail_pane_shows_the_built_mail_and_each_actions_event() {
    let sink = SmtpSink::start(Mode::Accept).await;
    let app = TestApp::builder().sink(&sink).start().await;
    let in_an_hour = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    let uuid = app
        .notify(
            &json!({"to": "reader@example.org", "subject": "Your invoice",
                        "body": "The text part.", "html": "<p>The <b>HTML</b> part.</p>",
                        "send_at": in_an_hour}),
        )
        .await;
    let b = page(&app, "notify").await;
    open_row(&b, &uuid).await;
    detail_status(&b, "queued").await;

    let message_id = shown_header(&b, "Message-ID").await;
    assert!(message_id.contains(&uuid), "{message_id}");
    assert_eq!(shown_header(&b, "To").await, "reader@example.org");
    assert_eq!(shown_header(&b, "Subject").await, "Your invoice");
    assert_eq!(
        shown_header(&b, "Content-Type").await,
        "multipart/alternative"
    );
    let parts = b
        .js(
            "return [...document.querySelectorAll('#d-parts tr[data-name=\"Content-Type\"] td')]
               .map(td => td.textContent);",
            vec![],
        )
        .await;
    assert_eq!(
        parts,
        json!(["text/plain; charset=utf-8", "text/html; charset=utf-8"])
    );
    let shown = b
        .js(
            "return [document.getElementById('d-text').textContent,
                     document.getElementById('d-html').getAttribute('srcdoc')];",
            vec![],
        )
        .await;
    assert_eq!(
        shown,
        json!(["The text part.", "<p>The <b>HTML</b> part.</p>"])
    );

    // Cancel, then resend: each leaves its event with the request id the
    // API recorded.
    b.click("#d-cancel").await;
    detail_status(&b, "cancelled").await;
    let events = shown_events(&b, 1).await;
    assert_eq!(events[0].0, "cancelled");
    b.click("#d-retry").await;
    let events = shown_events(&b, 2).await;
    assert_eq!(events[1].0, "resent");
    let recorded: Vec<(String, String)> = app.detail("notify", &uuid).await["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["what"].as_str().unwrap().to_owned(),
                e["request_id"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    assert_eq!(events, recorded);
    assert!(events.iter().all(|e| !e.1.is_empty()), "{events:?}");

    // The resent mail arrives with the Message-ID the pane showed.
    let received = poll_until(SHOWS_WITHIN, "the resent mail at the sink", || async {
        sink.received()
            .into_iter()
            .find(|m| m.raw.contains(&uuid))
            .ok_or("not yet")
    })
    .await;
    assert_eq!(received.message_id.as_deref(), Some(message_id.as_str()));
    detail_status(&b, "sent").await;
    b.js(
        "document.getElementById('d-events').scrollIntoView();",
        vec![],
    )
    .await;
    b.screenshot("admin-detail-mail-events").await;
    b.close().await;
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_and_dates_narrow_the_table_and_a_bulk_cancel_by_filter_stops_the_matches() {
    let sink = SmtpSink::start(Mode::Accept).await;
    let app = TestApp::builder().sink(&sink).start().await;
    // Due soon, not now: sent unless cancelled first.
    let soon = (chrono::Utc::now() + chrono::Duration::seconds(25)).to_rfc3339();
    let tag = format!("invoice-{}", uuid::Uuid::new_v4().simple());
    let post = |subject: String| {
        let body =
            json!({"to": "ops@example.org", "subject": subject, "body": "b", "send_at": soon});
        let app = &app;
        async move { app.notify(&body).await }
    };
    let first = post(format!("{tag} first")).await;
    let other = post("newsletter".to_owned()).await;
    let second = post(format!("{tag} second")).await;
    let created = |v: Value| {
        chrono::DateTime::parse_from_rfc3339(v["created_at"].as_str().unwrap())
            .unwrap()
            .to_utc()
    };
    let t_first = created(app.detail("notify", &first).await);
    let t_second = created(app.detail("notify", &second).await);
    assert!(t_first < t_second);
    let between = t_first + (t_second - t_first) / 2;

    let b = page(&app, "notify").await;
    wait_shown(
        &b,
        "all three listed",
        vec![first.clone(), other.clone(), second.clone()],
    )
    .await;
    // Without a filter, the buttons that act on everything matching are off.
    let off = b
        .js(
            "return [...document.querySelectorAll('button.by-filter')].map(b => b.disabled);",
            vec![],
        )
        .await;
    assert_eq!(off, json!([true, true, true]));
    // ... and the 400 an empty filter gets is shown as it reads.
    b.js(
        "const button = document.getElementById('filter-cancel');
         button.disabled = false;
         button.click();",
        vec![],
    )
    .await;
    b.click("#confirm-go").await;
    let refused = b
        .wait_for(
            "the refusal of an empty filter",
            "const t = document.getElementById('filter-result').textContent;
             return t.startsWith('400') ? t : null;",
            vec![],
        )
        .await;
    assert!(
        refused.as_str().unwrap().contains("at least one filter"),
        "{refused}"
    );

    b.find("#f-search")
        .await
        .send_keys(&tag)
        .await
        .expect("type");
    wait_shown(&b, "the search's two", vec![first.clone(), second.clone()]).await;
    set_instant(&b, "f-after", Some(between)).await;
    wait_shown(&b, "created after: the second", vec![second.clone()]).await;
    set_instant(&b, "f-after", None).await;
    set_instant(&b, "f-before", Some(between)).await;
    wait_shown(&b, "created before: the first", vec![first.clone()]).await;
    set_instant(&b, "f-before", None).await;
    wait_shown(
        &b,
        "the search's two again",
        vec![first.clone(), second.clone()],
    )
    .await;

    // Cancel everything the search matches, after seeing the filter sent.
    b.click("#filter-cancel").await;
    let filter = b
        .wait_for(
            "the confirmation",
            "const c = document.getElementById('confirm');
             return c.hidden ? null : document.getElementById('confirm-filter').textContent;",
            vec![],
        )
        .await;
    let filter: Value = serde_json::from_str(filter.as_str().unwrap()).unwrap();
    assert_eq!(filter, json!({"search": tag}));
    let count = b
        .js(
            "return document.getElementById('confirm-count').textContent;",
            vec![],
        )
        .await;
    assert!(
        count.as_str().unwrap().starts_with("2 match now"),
        "{count}"
    );
    b.screenshot("admin-bulk-confirm").await;
    b.click("#confirm-go").await;
    let counts = b
        .wait_for(
            "the bulk answer",
            "const r = document.getElementById('filter-result');
             return r.dataset.changed ? [r.dataset.matched, r.dataset.changed, r.textContent] : null;",
            vec![],
        )
        .await;
    assert_eq!(counts[0], "2", "{counts}");
    assert_eq!(counts[1], "2", "{counts}");
    assert!(
        counts[2].as_str().unwrap().contains("2 changed"),
        "{counts}"
    );

    // The one not matched goes out when due; the cancelled two never do.
    poll_until(
        Duration::from_secs(60),
        "the unmatched message at the sink",
        || async { sink.received().iter().any(|m| m.raw.contains(&other)) },
    )
    .await;
    for uuid in [&first, &second] {
        assert_eq!(app.detail("notify", uuid).await["status"], "cancelled");
        assert!(
            !sink
                .received()
                .iter()
                .any(|m| m.raw.contains(uuid.as_str())),
            "{uuid} was sent"
        );
    }
    b.close().await;
    app.shutdown().await;
}
