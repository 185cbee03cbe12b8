use std::time::Instant;

use hyper::Method;
use serde_json::json;

use crate::common::spawn_app_with;

const CONTACT: &str = r#"{"name": "Ann", "email": "ann@example.org", "message": "hi"}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_api_token_set_internal_endpoints_need_a_valid_bearer_token() {
    let app = spawn_app_with(&[("API_TOKEN", "old-token, new-token")]).await;
    let json_ct = ("content-type", "application/json");

    for path in [
        "/api/notify/",
        "/api/contact/",
        "/api/notify/1/",
        "/metrics",
    ] {
        let r = app.send(Method::GET, path, &[], "").await;
        assert_eq!(r.status, 401, "{path}");
        assert!(r.json()["detail"].is_string());
        assert_eq!(r.header("www-authenticate"), Some("Bearer"));
        let r = app
            .send(Method::GET, path, &[("authorization", "Bearer wrong")], "")
            .await;
        assert_eq!(r.status, 401, "{path} with a wrong token");
        let r = app
            .send(
                Method::GET,
                path,
                &[("authorization", "Token new-token")],
                "",
            )
            .await;
        assert_eq!(r.status, 401, "{path} with another scheme");
    }
    for token in ["old-token", "new-token"] {
        let auth = format!("Bearer {token}");
        let r = app
            .send(Method::GET, "/api/notify/", &[("authorization", &auth)], "")
            .await;
        assert_eq!(r.status, 200, "{token}");
        let r = app
            .send(Method::GET, "/metrics", &[("authorization", &auth)], "")
            .await;
        assert_eq!(r.status, 200);
    }
    let body = r#"{"to": "a@example.org", "subject": "s", "body": "b"}"#;
    let r = app
        .send(Method::POST, "/api/notify/", &[json_ct], body)
        .await;
    assert_eq!(r.status, 401, "notify needs the token");
    let r = app
        .send(
            Method::POST,
            "/api/notify/",
            &[json_ct, ("authorization", "Bearer new-token")],
            body,
        )
        .await;
    assert_eq!(r.status, 202);

    // The public form and the probes stay open.
    let r = app
        .send(Method::POST, "/api/contact/", &[json_ct], CONTACT)
        .await;
    assert_eq!(r.status, 202);
    assert_eq!(app.get("/livez").await.status, 200);
    assert_eq!(app.get("/healthz").await.status, 200);
    app.shutdown().await;
}

/// `"contact";r=R;t=T` into `(R, T)`.
fn rate_limit_state(header: Option<&str>) -> (u32, u64) {
    let h = header.expect("a RateLimit header");
    let rest = h.strip_prefix("\"contact\";r=").expect(h);
    let (r, t) = rest.split_once(";t=").expect(h);
    (r.parse().expect(h), t.parse().expect(h))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_contact_form_is_rate_limited_per_ip_with_standard_headers() {
    // 3 at once, then one more every 20 s: requests sent back to back meet
    // a 429 by the fourth, and however slow the machine, the number let
    // through stays within what the elapsed time allows. No clock boundary
    // can make the 429 assertions below be skipped.
    let app = spawn_app_with(&[("CONTACT_RATE_LIMIT", "3")]).await;
    let json_ct = ("content-type", "application/json");
    let started = Instant::now();
    let mut accepted = 0u64;
    let refused = loop {
        let r = app
            .send(Method::POST, "/api/contact/", &[json_ct], CONTACT)
            .await;
        assert_eq!(r.header("ratelimit-policy"), Some("\"contact\";q=3;w=60"));
        if r.status != 202 {
            break r;
        }
        accepted += 1;
        let (remaining, reset) = rate_limit_state(r.header("ratelimit"));
        assert!(remaining <= 2, "{remaining} left after a request");
        assert!((1..=60).contains(&reset), "t={reset}");
        if accepted < 3 {
            assert!(remaining >= 1, "a fresh client has 3 at once");
        }
        assert!(accepted < 20, "no 429 after {accepted} requests");
    };
    let elapsed = started.elapsed();
    assert_eq!(refused.status, 429, "{}", refused.text());
    assert!(accepted >= 3, "the first 3 pass: only {accepted} did");
    let allowed = 3 + elapsed.as_secs() / 20;
    assert!(
        accepted <= allowed,
        "{accepted} let through in {elapsed:?}, at most {allowed} allowed"
    );
    let retry_after: u64 = refused.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=20).contains(&retry_after), "Retry-After {retry_after}");
    assert_eq!(
        rate_limit_state(refused.header("ratelimit")),
        (0, retry_after)
    );
    assert!(
        refused.json()["detail"]
            .as_str()
            .unwrap()
            .contains("throttled")
    );
    // The refused request stored nothing; notifications are not limited.
    let n: i64 = app.scalar("SELECT count(*) FROM contact_messages").await;
    assert_eq!(n as u64, accepted);
    let r = app
        .post_json(
            "/api/notify/",
            &json!({"to": "a@example.org", "subject": "s", "body": "b"}),
        )
        .await;
    assert_eq!(r.status, 202);
    app.shutdown().await;
}
