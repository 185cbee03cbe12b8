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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_contact_form_is_rate_limited_per_ip_with_standard_headers() {
    let app = spawn_app_with(&[("CONTACT_RATE_LIMIT", "3")]).await;
    let json_ct = ("content-type", "application/json");
    for i in 0..3 {
        let r = app
            .send(Method::POST, "/api/contact/", &[json_ct], CONTACT)
            .await;
        assert_eq!(r.status, 202, "request {i}");
        assert_eq!(r.header("ratelimit-policy"), Some("\"contact\";q=3;w=60"));
        assert!(
            r.header("ratelimit")
                .unwrap()
                .starts_with(&format!("\"contact\";r={}", 2 - i))
        );
    }
    let r = app
        .send(Method::POST, "/api/contact/", &[json_ct], CONTACT)
        .await;
    // The window may roll over between requests; then this one is allowed.
    if r.status == 202 {
        eprintln!("minute boundary crossed; skipping the 429 assertions");
        app.shutdown().await;
        return;
    }
    assert_eq!(r.status, 429);
    let retry_after: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry_after));
    assert_eq!(r.header("ratelimit-policy"), Some("\"contact\";q=3;w=60"));
    assert!(
        r.header("ratelimit")
            .unwrap()
            .starts_with("\"contact\";r=0;t=")
    );
    assert!(r.json()["detail"].as_str().unwrap().contains("throttled"));
    // The refused request stored nothing; notifications are not limited.
    let n: i64 = app.scalar("SELECT count(*) FROM contact_messages").await;
    assert_eq!(n, 3);
    let r = app
        .post_json(
            "/api/notify/",
            &json!({"to": "a@example.org", "subject": "s", "body": "b"}),
        )
        .await;
    assert_eq!(r.status, 202);
    app.shutdown().await;
}
