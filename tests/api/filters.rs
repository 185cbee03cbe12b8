//! The lists' filters (each and combined), the `400` for each bad value,
//! keyset cursor paging while messages arrive, and the capped count.

use serde_json::{Value, json};

use crate::common::{TestApp, spawn_app_with};

/// An app that delivers nothing (its Redis is unreachable), so statuses
/// stay as the test sets them.
async fn frozen() -> TestApp {
    spawn_app_with(&[("REDIS_URL", "redis://127.0.0.1:1/")]).await
}

async fn post(app: &TestApp, to: &str, subject: &str) -> i64 {
    let r = app
        .post_json(
            "/api/notify/",
            &json!({"to": to, "subject": subject, "body": "b"}),
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.text());
    r.json()["id"].as_i64().unwrap()
}

fn ids(page: &Value) -> Vec<i64> {
    page["results"]
        .as_array()
        .unwrap_or_else(|| panic!("no results: {page}"))
        .iter()
        .map(|m| m["id"].as_i64().unwrap())
        .collect()
}

/// The ids a list query shows, checking that `count` agrees.
async fn listed(app: &TestApp, path: &str) -> Vec<i64> {
    let r = app.get(path).await;
    assert_eq!(r.status, 200, "{path}: {}", r.text());
    let page = r.json();
    let found = ids(&page);
    assert_eq!(page["count"], found.len(), "{path}: {page}");
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_filter_and_any_combination_narrow_the_lists() {
    let app = frozen().await;
    let a = post(&app, "alice@example.org", "Invoice 1").await;
    let b = post(&app, "bob@example.org", "Invoice 2").await;
    let c = post(&app, "Alice@Example.org", "Welcome").await;
    let d = post(&app, "carol@example.org", "50% off_now").await;
    let db = app.db().await;
    db.execute(
        "UPDATE notifications SET status = 'failed' WHERE id = ANY($1)",
        &[&vec![a, c]],
    )
    .await
    .unwrap();
    db.execute(
        "UPDATE notifications SET created_at = '2020-06-01T00:00:00Z' WHERE id = $1",
        &[&d],
    )
    .await
    .unwrap();

    let cases: [(&str, Vec<i64>); 13] = [
        ("", vec![d, c, b, a]),
        ("status=failed", vec![c, a]),
        ("to=alice@example.org", vec![c, a]),
        ("to=ALICE@example.org&status=queued", vec![]),
        ("search=invoice", vec![b, a]),
        ("search=ALICE", vec![c, a]),
        ("search=%25", vec![d]),
        ("search=o_f", vec![]),
        ("created_before=2021-01-01T00:00:00Z", vec![d]),
        ("created_after=2021-01-01T00:00:00%2B01:00", vec![c, b, a]),
        // An unencoded `+` of the offset arrives as a space.
        (
            "created_after=2021-01-01T00:00:00+01:00&search=invoice",
            vec![b, a],
        ),
        ("status=failed&search=invoice&to=alice@example.org", vec![a]),
        ("status=failed&search=invoice&to=bob@example.org", vec![]),
    ];
    for (query, want) in cases {
        let path = format!("/api/notify/?{query}");
        assert_eq!(listed(&app, &path).await, want, "{path}");
    }

    let contact = |name: &str, email: &str| json!({"name": name, "email": email, "message": "m"});
    let mut cids = Vec::new();
    for (name, email) in [
        ("Ada Lovelace", "ada@example.org"),
        ("Bob", "BOB@example.org"),
    ] {
        let r = app.post_json("/api/contact/", &contact(name, email)).await;
        assert_eq!(r.status, 202, "{}", r.text());
        cids.push(r.json()["id"].as_i64().unwrap());
    }
    assert_eq!(
        listed(&app, "/api/contact/?email=bob@example.org").await,
        [cids[1]]
    );
    assert_eq!(
        listed(&app, "/api/contact/?search=lovelace").await,
        [cids[0]]
    );
    assert_eq!(
        listed(&app, "/api/contact/?search=example").await,
        [cids[1], cids[0]]
    );
    // `to` is the notifications' name; on contact messages it filters nothing.
    assert_eq!(listed(&app, "/api/contact/?to=nope").await.len(), 2);
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_filter_or_cursor_is_400_naming_each_parameter() {
    let app = frozen().await;
    let long = "x".repeat(256);
    let r = app
        .get(&format!(
            "/api/notify/?status=gone&to=nope&created_after=yesterday&created_before=2026-01-01&search={long}"
        ))
        .await;
    assert_eq!(r.status, 400, "{}", r.text());
    let errors = r.json()["errors"].clone();
    let named: Vec<&String> = errors.as_object().unwrap().keys().collect();
    assert_eq!(
        named,
        ["created_after", "created_before", "search", "status", "to"],
        "{errors}"
    );
    assert!(
        errors["created_after"][0]
            .as_str()
            .unwrap()
            .contains("RFC 3339")
    );
    let r = app.get("/api/contact/?email=not-an-address").await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.json()["errors"]["email"].is_array());
    for cursor in ["zz", "abc", "623a2d35", "7a3a35"] {
        let r = app.get(&format!("/api/notify/?cursor={cursor}")).await;
        assert_eq!(r.status, 400, "{cursor}: {}", r.text());
        assert_eq!(r.json()["errors"]["cursor"][0], "Invalid cursor.");
    }
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cursor_pages_walk_newest_first_and_do_not_shift_while_messages_arrive() {
    let app = frozen().await;
    let mut posted = Vec::new();
    for i in 0..7 {
        posted.push(post(&app, "a@example.org", &format!("m{i}")).await);
    }
    let base = format!("http://127.0.0.1:{}/api/notify/", app.addr.port());
    let page1 = app
        .get("/api/notify/?status=queued&cursor=&page_size=3")
        .await;
    assert_eq!(page1.status, 200, "{}", page1.text());
    let page1 = page1.json();
    assert_eq!(ids(&page1), [posted[6], posted[5], posted[4]]);
    assert_eq!(page1["count"], 7);
    assert_eq!(page1["previous"], Value::Null);
    let next = page1["next"].as_str().expect("a next page").to_owned();
    assert!(
        next.starts_with(&format!("{base}?status=queued&page_size=3&cursor=")),
        "{next}"
    );

    // New messages arrive: the pages below the first do not move.
    let newer = [
        post(&app, "a@example.org", "new 1").await,
        post(&app, "a@example.org", "new 2").await,
    ];
    let page2 = app.get(&next).await.json();
    assert_eq!(ids(&page2), [posted[3], posted[2], posted[1]], "{page2}");
    let page3 = app.get(page2["next"].as_str().unwrap()).await.json();
    assert_eq!(ids(&page3), [posted[0]], "{page3}");
    assert_eq!(
        page3["count"], 9,
        "counted, not taken from the page: {page3}"
    );
    assert_eq!(page3["next"], Value::Null, "the oldest page ends the walk");

    // Back up: the same pages, then the newer messages above them.
    let back2 = app.get(page3["previous"].as_str().unwrap()).await.json();
    assert_eq!(ids(&back2), ids(&page2));
    let back1 = app.get(back2["previous"].as_str().unwrap()).await.json();
    assert_eq!(ids(&back1), ids(&page1));
    let top = app.get(back1["previous"].as_str().unwrap()).await.json();
    assert_eq!(ids(&top), [newer[1], newer[0]], "{top}");
    assert_eq!(top["previous"], Value::Null);
    assert_eq!(
        app.get(top["next"].as_str().unwrap()).await.json()["results"],
        back1["results"]
    );
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_count_stops_at_ten_thousand_and_says_so() {
    let app = frozen().await;
    app.db()
        .await
        .execute(
            "INSERT INTO notifications (uuid, recipient, subject, body, request_hash, status)
             SELECT gen_random_uuid(), 'bulk@example.org', 'old ' || n, 'b', '\\x00', 'sent'
             FROM generate_series(1, 10050) AS n",
            &[],
        )
        .await
        .unwrap();
    post(&app, "new@example.org", "fresh").await;
    let page = app.get("/api/notify/?page_size=5").await.json();
    assert_eq!(page["count"], 10_000, "{}", page["count"]);
    assert_eq!(page["count_capped"], true);
    assert!(page["next"].is_string());
    let page = app.get("/api/notify/?status=queued").await.json();
    assert_eq!(page["count"], 1);
    assert!(page.get("count_capped").is_none(), "{page}");
    let page = app
        .get("/api/notify/?to=bulk@example.org&cursor=")
        .await
        .json();
    assert_eq!(page["count_capped"], true);
    assert_eq!(ids(&page).len(), 20);
    app.shutdown().await;
}
