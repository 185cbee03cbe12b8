//! CORS for browser pages on other origins, over real HTTP: preflights, the
//! headers of every answer (errors included) for allowed origins only, and
//! `HEAD` wherever `GET` answers.

use hyper::Method;
use serde_json::json;

use crate::common::{TestApp, TestResponse, spawn_app, spawn_app_with};

const BLOG: &str = "https://blog.example.com";
const EVIL: &str = "https://evil.example.net";
const ALLOW_HEADERS: [&str; 4] = [
    "content-type",
    "authorization",
    "idempotency-key",
    "x-request-id",
];
const EXPOSED: [&str; 5] = [
    "x-request-id",
    "idempotent-replayed",
    "retry-after",
    "ratelimit-policy",
    "ratelimit",
];

async fn preflight(app: &TestApp, path: &str, origin: &str) -> TestResponse {
    app.send(
        Method::OPTIONS,
        path,
        &[
            ("origin", origin),
            ("access-control-request-method", "POST"),
            (
                "access-control-request-headers",
                "content-type, idempotency-key",
            ),
        ],
        "",
    )
    .await
}

/// The comma list of a header, lower case.
fn items(r: &TestResponse, name: &str) -> Vec<String> {
    r.headers
        .get_all(name)
        .iter()
        .flat_map(|v| v.to_str().unwrap().split(','))
        .map(|s| s.trim().to_ascii_lowercase())
        .filter(|s| !s.is_empty())
        .collect()
}

fn assert_allowed(r: &TestResponse, origin: &str, context: &str) {
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some(origin),
        "{context}: {:?}",
        r.headers
    );
    assert!(items(r, "vary").contains(&"origin".to_owned()), "{context}");
    let exposed = items(r, "access-control-expose-headers");
    for h in EXPOSED {
        assert!(
            exposed.contains(&h.to_owned()),
            "{context}: {h} not exposed"
        );
    }
}

fn assert_no_cors(r: &TestResponse, context: &str) {
    for h in [
        "access-control-allow-origin",
        "access-control-allow-methods",
        "access-control-allow-headers",
        "access-control-expose-headers",
    ] {
        assert!(r.header(h).is_none(), "{context}: unexpected {h}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_preflight_from_an_allowed_origin_gets_methods_headers_and_max_age() {
    let app = spawn_app_with(&[(
        "CORS_ALLOWED_ORIGINS",
        &format!("{BLOG}, http://localhost:3000"),
    )])
    .await;
    for path in ["/api/contact/", "/api/contact", "/api/notify/7/retry/"] {
        let r = preflight(&app, path, BLOG).await;
        assert_eq!(r.status, 204, "{path}: {}", r.text());
        assert!(r.body.is_empty());
        assert_allowed(&r, BLOG, path);
        let methods = items(&r, "access-control-allow-methods");
        assert!(methods.contains(&"post".to_owned()), "{path}: {methods:?}");
        let headers = items(&r, "access-control-allow-headers");
        for h in ALLOW_HEADERS {
            assert!(
                headers.contains(&h.to_owned()),
                "{path}: {h} in {headers:?}"
            );
        }
        let max_age: u32 = r.header("access-control-max-age").unwrap().parse().unwrap();
        assert!(max_age >= 600, "{path}: max age {max_age}");
    }
    let r = preflight(&app, "/api/notify/", "http://localhost:3000").await;
    assert_allowed(&r, "http://localhost:3000", "second origin");
    app.assert_nothing_stored("after preflights").await;
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disallowed_origin_gets_no_cors_headers_and_nothing_is_done() {
    let app = spawn_app_with(&[("CORS_ALLOWED_ORIGINS", BLOG)]).await;
    for origin in [
        EVIL,
        "https://blog.example.com.evil.net",
        "null",
        "http://blog.example.com",
    ] {
        let r = preflight(&app, "/api/contact/", origin).await;
        assert_eq!(r.status, 204, "{origin}");
        assert_no_cors(&r, origin);
        // A cache must not give this answer to the allowed origin.
        assert!(items(&r, "vary").contains(&"origin".to_owned()), "{origin}");
    }
    app.assert_nothing_stored("after refused preflights").await;
    // A simple request is answered (the browser hides it from the page).
    let r = app
        .send(
            Method::POST,
            "/api/contact/",
            &[("origin", EVIL), ("content-type", "application/json")],
            serde_json::to_vec(&json!({"name": "n", "email": "a@example.org", "message": "m"}))
                .unwrap(),
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.text());
    assert_no_cors(&r, "POST from a disallowed origin");
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_answer_to_an_allowed_origin_carries_the_cors_headers() {
    let app = spawn_app_with(&[
        ("CORS_ALLOWED_ORIGINS", BLOG),
        ("API_TOKEN", "secret"),
        ("CONTACT_RATE_LIMIT", "1"),
    ])
    .await;
    let post = |body: serde_json::Value| {
        let app = &app;
        async move {
            app.send(
                Method::POST,
                "/api/contact/",
                &[("origin", BLOG), ("content-type", "application/json")],
                serde_json::to_vec(&body).unwrap(),
            )
            .await
        }
    };
    let accepted = post(json!({"name": "n", "email": "a@example.org", "message": "m"})).await;
    assert_eq!(accepted.status, 202, "{}", accepted.text());
    assert_allowed(&accepted, BLOG, "202");
    let limited = post(json!({"name": "n", "email": "a@example.org", "message": "m"})).await;
    assert_eq!(limited.status, 429, "{}", limited.text());
    assert!(limited.header("retry-after").is_some());
    assert_allowed(&limited, BLOG, "429");

    let other = spawn_app_with(&[("CORS_ALLOWED_ORIGINS", BLOG)]).await;
    let invalid = other
        .send(
            Method::POST,
            "/api/contact/",
            &[("origin", BLOG), ("content-type", "application/json")],
            r#"{"name": "", "email": "nope", "message": ""}"#,
        )
        .await;
    assert_eq!(invalid.status, 400, "{}", invalid.text());
    assert!(invalid.json()["errors"]["email"].is_array());
    assert_allowed(&invalid, BLOG, "400");
    other.shutdown().await;

    for (method, path, want) in [
        (Method::GET, "/api/contact/", 401),
        (Method::GET, "/nope", 404),
        (Method::DELETE, "/api/contact/", 405),
        (Method::GET, "/healthz", 200),
    ] {
        let r = app
            .send(method.clone(), path, &[("origin", BLOG)], "")
            .await;
        assert_eq!(r.status, want, "{method} {path}");
        assert_allowed(&r, BLOG, &format!("{method} {path}"));
    }
    let r = app
        .send(Method::GET, "/api/contact/", &[("origin", EVIL)], "")
        .await;
    assert_eq!(r.status, 401);
    assert_no_cors(&r, "401 to a disallowed origin");
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regexes_and_allow_all_select_origins_and_the_default_allows_none() {
    let app = spawn_app_with(&[(
        "CORS_ALLOWED_ORIGIN_REGEXES",
        r"https://[a-z]+\.example\.com$",
    )])
    .await;
    let r = preflight(&app, "/api/contact/", "https://shop.example.com").await;
    assert_allowed(&r, "https://shop.example.com", "regex");
    let r = preflight(&app, "/api/contact/", "https://shop.example.com.evil.net").await;
    assert_no_cors(&r, "regex suffix");
    app.shutdown().await;

    let app = spawn_app_with(&[("CORS_ALLOW_ALL_ORIGINS", "true")]).await;
    let r = preflight(&app, "/api/notify/", EVIL).await;
    assert_allowed(&r, EVIL, "allow all");
    app.shutdown().await;

    let app = spawn_app().await;
    let r = preflight(&app, "/api/contact/", BLOG).await;
    assert_eq!(r.status, 204);
    assert_no_cors(&r, "default");
    assert!(r.header("vary").is_none(), "no CORS, no Vary");
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn options_without_a_preflight_answers_allow() {
    let app = spawn_app_with(&[("API_TOKEN", "secret")]).await;
    for (path, allow) in [
        ("/api/contact/", "GET, HEAD, POST, OPTIONS"),
        ("/api/notify/1/", "GET, HEAD, OPTIONS"),
        ("/api/notify/1/cancel/", "POST, OPTIONS"),
        ("/healthz", "GET, HEAD, OPTIONS"),
        ("/admin/", "GET, HEAD, OPTIONS"),
    ] {
        let r = app.send(Method::OPTIONS, path, &[], "").await;
        assert_eq!(r.status, 204, "{path}: {}", r.text());
        assert_eq!(r.header("allow"), Some(allow), "{path}");
        assert_no_cors(&r, path);
    }
    let r = app.send(Method::OPTIONS, "/nope", &[], "").await;
    assert_eq!(r.status, 404);
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_answers_wherever_get_does_with_the_same_headers_and_no_body() {
    let app = spawn_app_with(&[("API_TOKEN", "secret")]).await;
    let uuid = {
        let r = app
            .send(
                Method::POST,
                "/api/notify/",
                &[
                    ("content-type", "application/json"),
                    ("authorization", "Bearer secret"),
                ],
                r#"{"to": "a@example.org", "subject": "s", "body": "b"}"#,
            )
            .await;
        assert_eq!(r.status, 202, "{}", r.text());
        r.json()["uuid"].as_str().unwrap().to_owned()
    };
    let auth = [("authorization", "Bearer secret")];
    for path in [
        "/livez".to_owned(),
        "/api/notify/".to_owned(),
        format!("/api/notify/{uuid}/"),
        "/api/contact/999/".to_owned(),
        "/admin/".to_owned(),
        "/admin/main.js".to_owned(),
        "/metrics".to_owned(),
    ] {
        let get = app.send(Method::GET, &path, &auth, "").await;
        let head = app.send(Method::HEAD, &path, &auth, "").await;
        assert_eq!(head.status, get.status, "{path}");
        assert!(head.body.is_empty(), "{path}: HEAD has a body");
        assert_eq!(
            head.header("content-type"),
            get.header("content-type"),
            "{path}"
        );
        if !path.starts_with("/api/notify/") && path != "/metrics" {
            // Lists and metrics may change between the two requests.
            assert_eq!(
                head.header("content-length"),
                Some(get.body.len().to_string().as_str()),
                "{path}"
            );
        }
    }
    let r = app.send(Method::HEAD, "/api/notify/", &[], "").await;
    assert_eq!(r.status, 401);
    let r = app
        .send(Method::HEAD, "/api/notify/1/cancel/", &auth, "")
        .await;
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("POST, OPTIONS"));
    app.shutdown().await;
}
