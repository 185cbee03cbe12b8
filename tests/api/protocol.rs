//! HTTP-level behaviour: bodies that are not JSON objects, media types, size
//! limits (declared and chunked), routing errors, request ids, trailing
//! slashes, keep-alive and the header-read timeout.

use std::time::{Duration, Instant};

use hyper::Method;
use hyper::body::Bytes;
use serde_json::{Value, json};

use crate::common::{RawConn, TestApp, TestResponse, raw_exchange, spawn_app};

const CONTACT: &str = "/api/contact/";
const NOTIFY: &str = "/api/notify/";
const JSON: (&str, &str) = ("content-type", "application/json");

fn valid_notify() -> Value {
    json!({"to": "bob@example.com", "subject": "Welcome", "body": "Hi Bob"})
}

fn valid_contact() -> Value {
    json!({"name": "Ada Lovelace", "email": "ada@example.com", "message": "Hello"})
}

/// Panics unless `resp` is `status` with a JSON `{"detail": "<non-empty>"}`.
fn assert_detail(resp: &TestResponse, status: u16, context: &str) {
    assert_eq!(
        resp.status,
        status,
        "{context}: expected {status}, got {} {}",
        resp.status,
        resp.text()
    );
    assert_eq!(
        resp.header("content-type"),
        Some("application/json"),
        "{context}: error bodies are JSON"
    );
    let body = resp.json();
    let detail = body.get("detail").and_then(Value::as_str);
    assert!(
        detail.is_some_and(|d| !d.trim().is_empty()),
        "{context}: body should carry a non-empty \"detail\": {body}"
    );
    assert!(
        body.get("errors").is_none(),
        "{context}: a protocol error is not a field error: {body}"
    );
}

/// A notify body serialized to exactly `len` bytes, padded in `body`.
fn notify_json_of_len(len: usize) -> Vec<u8> {
    let frame = |pad: usize| {
        format!(
            r#"{{"to":"bob@example.com","subject":"Padding","body":"{}"}}"#,
            "x".repeat(pad)
        )
    };
    let overhead = frame(0).len();
    let bytes = frame(len - overhead).into_bytes();
    assert_eq!(bytes.len(), len);
    bytes
}

async fn post_bytes_as_json(app: &TestApp, path: &str, body: impl Into<Bytes>) -> TestResponse {
    app.post_raw(path, &[JSON], body).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_json_returns_400_with_a_detail_and_stores_nothing() {
    let app = spawn_app().await;
    let bodies: [&[u8]; 10] = [
        b"{\"name\": \"\\ud800\", \"email\": \"ada@example.com\", \"message\": \"x\"}",
        b"{\"to\": \"bob@example.com\", \"subject\": \"s\", \"body\": 1e999}",
        b"{\"name\": ",
        b"{name: \"Ada\"}",
        b"{\"to\": \"bob@example.com\",}",
        b"{'to': 'bob@example.com'}",
        b"",
        b"   ",
        b"{\"to\": \"bob@example.com\"} trailing",
        b"{\"to\": \"bob@example.com\"}{}",
    ];
    for path in [CONTACT, NOTIFY] {
        for body in bodies {
            let resp = post_bytes_as_json(&app, path, body.to_vec()).await;
            assert_detail(
                &resp,
                400,
                &format!("{path} {:?}", String::from_utf8_lossy(body)),
            );
        }
    }
    app.assert_nothing_stored("after malformed JSON").await;
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valid_json_that_is_not_an_object_returns_400_with_a_detail() {
    let app = spawn_app().await;
    let bodies = [
        json!([]),
        json!([valid_notify()]),
        json!("a string"),
        json!(42),
        json!(4.2),
        json!(null),
        json!(true),
    ];
    for path in [CONTACT, NOTIFY] {
        for body in &bodies {
            let resp = app.post_json(path, body).await;
            assert_detail(&resp, 400, &format!("{path} {body}"));
        }
    }
    app.assert_nothing_stored("after non-object JSON").await;
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_utf8_returns_400_and_stores_nothing() {
    let app = spawn_app().await;
    let bodies: [&[u8]; 3] = [
        b"{\"to\": \"bob@example.com\", \"subject\": \"\xff\xfe\", \"body\": \"x\"}",
        b"{\"name\": \"Ada \xc3\x28\", \"email\": \"ada@example.com\", \"message\": \"x\"}",
        b"\xef\xbb\xbf\xc0\xaf{}",
    ];
    for path in [CONTACT, NOTIFY] {
        for body in bodies {
            let resp = post_bytes_as_json(&app, path, body.to_vec()).await;
            assert_eq!(resp.status, 400, "{path}: {}", resp.text());
            assert!(resp.json().get("detail").is_some(), "{}", resp.text());
        }
    }
    app.assert_nothing_stored("after invalid UTF-8").await;
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deeply_nested_json_returns_400_and_never_a_5xx() {
    let app = spawn_app().await;
    let open_only = "[".repeat(10_000);
    let balanced = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let objects = format!("{}1{}", "{\"a\":".repeat(5_000), "}".repeat(5_000));
    let deep_metadata = format!(
        r#"{{"to":"bob@example.com","subject":"s","body":"b","metadata":{{"k":{}1{}}}}}"#,
        "[".repeat(1_000),
        "]".repeat(1_000)
    );
    for path in [CONTACT, NOTIFY] {
        for body in [&open_only, &balanced, &objects, &deep_metadata] {
            let resp = post_bytes_as_json(&app, path, body.clone()).await;
            assert_detail(&resp, 400, &format!("{path} nested {} bytes", body.len()));
        }
    }
    let alive = app.get("/livez").await;
    assert_eq!(alive.status, 200, "the service survived");
    app.assert_nothing_stored("after nested JSON").await;
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_without_a_json_content_type_returns_415() {
    let app = spawn_app().await;
    let body = serde_json::to_vec(&valid_notify()).unwrap();
    let cases: [&[(&str, &str)]; 6] = [
        &[],
        &[("content-type", "text/plain")],
        &[("content-type", "application/x-www-form-urlencoded")],
        &[("content-type", "multipart/form-data; boundary=x")],
        &[("content-type", "application/jsonx")],
        &[("content-type", "")],
    ];
    for path in [CONTACT, NOTIFY] {
        for headers in cases {
            let resp = app.post_raw(path, headers, body.clone()).await;
            assert_detail(&resp, 415, &format!("{path} with {headers:?}"));
        }
    }
    app.assert_nothing_stored("after 415s").await;
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_content_type_with_a_charset_or_in_capitals_is_accepted() {
    let app = spawn_app().await;
    for content_type in [
        "application/json; charset=utf-8",
        "application/json;charset=UTF-8",
        "Application/JSON",
    ] {
        let body = serde_json::to_vec(&valid_notify()).unwrap();
        let resp = app
            .post_raw(NOTIFY, &[("content-type", content_type)], body)
            .await;
        assert_eq!(resp.status, 202, "{content_type}: {}", resp.text());
    }
    assert_eq!(app.row_counts().await, [0, 3, 0]);
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declared_content_length_of_65537_returns_413_and_65536_bytes_are_accepted() {
    let app = spawn_app().await;

    // Only the head: the service must refuse without waiting for the body.
    let head = "POST /api/notify/ HTTP/1.1\r\nHost: 127.0.0.1\r\n\
                Content-Type: application/json\r\nContent-Length: 65537\r\n\r\n";
    let resp = raw_exchange(app.addr, head.as_bytes()).await;
    assert_eq!(resp.status, 413, "{}", String::from_utf8_lossy(&resp.body));
    assert!(resp.json()["detail"].is_string());

    // The whole 65,537 bytes of valid JSON, through the ordinary client path
    // of raw bytes.
    let mut full = head.as_bytes().to_vec();
    full.extend(notify_json_of_len(65_537));
    let resp = raw_exchange(app.addr, &full).await;
    assert_eq!(resp.status, 413);

    // Exactly the limit is fine.
    let at_limit = notify_json_of_len(65_536);
    let resp = post_bytes_as_json(&app, NOTIFY, at_limit).await;
    assert_eq!(
        resp.status,
        202,
        "65,536 bytes is not over the limit: {}",
        resp.text()
    );
    assert_eq!(app.row_counts().await, [0, 1, 0]);
    app.shutdown().await;
}

/// `body` sent with `Transfer-Encoding: chunked` in chunks of `chunk` bytes.
fn chunked_request(path: &str, body: &[u8], chunk: usize) -> Vec<u8> {
    let mut req = format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
         Transfer-Encoding: chunked\r\n\r\n"
    )
    .into_bytes();
    for part in body.chunks(chunk) {
        req.extend(format!("{:x}\r\n", part.len()).as_bytes());
        req.extend(part);
        req.extend(b"\r\n");
    }
    req.extend(b"0\r\n\r\n");
    req
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_body_over_64_kib_returns_413_and_a_small_one_is_accepted() {
    let app = spawn_app().await;
    let big = notify_json_of_len(70_000);
    let resp = raw_exchange(app.addr, &chunked_request(NOTIFY, &big, 4096)).await;
    assert_eq!(resp.status, 413, "{}", String::from_utf8_lossy(&resp.body));
    assert!(resp.json()["detail"].is_string());

    let just_over = notify_json_of_len(65_537);
    let resp = raw_exchange(app.addr, &chunked_request(NOTIFY, &just_over, 1000)).await;
    assert_eq!(resp.status, 413, "one byte over the limit, chunked");
    app.assert_nothing_stored("after chunked 413s").await;

    let small = notify_json_of_len(2_000);
    let resp = raw_exchange(app.addr, &chunked_request(NOTIFY, &small, 300)).await;
    assert_eq!(
        resp.status,
        202,
        "a small chunked body: {}",
        String::from_utf8_lossy(&resp.body)
    );
    let at_limit = notify_json_of_len(65_536);
    let resp = raw_exchange(app.addr, &chunked_request(NOTIFY, &at_limit, 5000)).await;
    assert_eq!(resp.status, 202, "exactly 65,536 bytes, chunked");
    assert_eq!(app.row_counts().await, [0, 2, 0]);
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_paths_return_404_with_a_json_detail() {
    let app = spawn_app().await;
    for path in [
        "/",
        "/nope",
        "/api",
        "/api/",
        "/api/unknown/",
        "/api/contacts/",
        "/api/contact/1/extra/",
        "/api/notify/1/attempts",
        "/apix/notify/",
        "/healthz/extra",
    ] {
        let resp = app.get(path).await;
        assert_detail(&resp, 404, &format!("GET {path}"));
    }
    let resp = app.post_json("/api/unknown/", &valid_notify()).await;
    assert_detail(&resp, 404, "POST /api/unknown/");
    app.assert_nothing_stored("after 404s").await;
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_methods_return_405_with_the_allowed_methods() {
    let app = spawn_app().await;
    let body = serde_json::to_vec(&valid_notify()).unwrap();
    let cases = [
        (Method::DELETE, "/api/contact/", "GET, HEAD, POST, OPTIONS"),
        (Method::PUT, "/api/contact/", "GET, HEAD, POST, OPTIONS"),
        (Method::PATCH, "/api/contact", "GET, HEAD, POST, OPTIONS"),
        (Method::DELETE, "/api/notify/", "GET, HEAD, POST, OPTIONS"),
        (Method::PUT, "/api/notify", "GET, HEAD, POST, OPTIONS"),
        (Method::POST, "/api/contact/1/", "GET, HEAD, OPTIONS"),
        (Method::DELETE, "/api/contact/1/", "GET, HEAD, OPTIONS"),
        (Method::POST, "/api/notify/1", "GET, HEAD, OPTIONS"),
        (Method::PUT, "/api/notify/1/", "GET, HEAD, OPTIONS"),
        (Method::POST, "/healthz", "GET, HEAD, OPTIONS"),
        (Method::POST, "/livez/", "GET, HEAD, OPTIONS"),
    ];
    for (method, path, allow) in cases {
        let resp = app.send(method.clone(), path, &[JSON], body.clone()).await;
        assert_detail(&resp, 405, &format!("{method} {path}"));
        assert_eq!(
            resp.header("allow"),
            Some(allow),
            "{method} {path}: Allow header"
        );
    }
    app.assert_nothing_stored("after 405s").await;
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x_request_id_is_echoed_when_given_and_generated_when_absent() {
    let app = spawn_app().await;
    for path in ["/livez", "/api/notify/", "/nope", "/api/contact/999/"] {
        let resp = app
            .send(
                Method::GET,
                path,
                &[("x-request-id", "Req-42.ABC_x")],
                Bytes::new(),
            )
            .await;
        assert_eq!(resp.header("x-request-id"), Some("Req-42.ABC_x"), "{path}");
    }
    let resp = app
        .post_raw(
            NOTIFY,
            &[JSON, ("x-request-id", "post-1")],
            b"{broken".to_vec(),
        )
        .await;
    assert_eq!(resp.status, 400);
    assert_eq!(
        resp.header("x-request-id"),
        Some("post-1"),
        "also on errors"
    );

    let a = app.get("/livez").await;
    let b = app.get("/api/contact/").await;
    let id_a = a.header("x-request-id").unwrap_or_default().to_owned();
    let id_b = b.header("x-request-id").unwrap_or_default().to_owned();
    assert!(!id_a.trim().is_empty(), "a request id is generated");
    assert!(!id_b.trim().is_empty(), "a request id is generated");
    assert_ne!(id_a, id_b, "each request gets its own id");
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_path_answers_with_and_without_a_trailing_slash() {
    let app = spawn_app().await;
    for path in ["/api/contact", "/api/contact/"] {
        let resp = app.post_json(path, &valid_contact()).await;
        assert_eq!(resp.status, 202, "POST {path}: {}", resp.text());
    }
    for path in ["/api/notify", "/api/notify/"] {
        let resp = app.post_json(path, &valid_notify()).await;
        assert_eq!(resp.status, 202, "POST {path}: {}", resp.text());
    }
    assert_eq!(app.row_counts().await, [2, 2, 0]);
    for path in [
        "/api/contact",
        "/api/contact/",
        "/api/notify",
        "/api/notify/",
        "/api/contact/1",
        "/api/contact/1/",
        "/api/notify/2",
        "/api/notify/2/",
        "/livez",
        "/livez/",
        "/healthz",
        "/healthz/",
    ] {
        let resp = app.get(path).await;
        assert_eq!(resp.status, 200, "GET {path}: {}", resp.text());
        resp.json();
    }
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_requests_on_one_keep_alive_connection_are_both_answered() {
    let app = spawn_app().await;
    let mut conn = RawConn::connect(app.addr).await;
    conn.send(b"GET /livez HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .unwrap();
    let first = conn.read_response().await;
    assert_eq!(first.status, 200);
    assert_ne!(first.header("connection"), Some("close"));

    let body = serde_json::to_string(&valid_notify()).unwrap();
    let post = format!(
        "POST /api/notify/ HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    conn.send(post.as_bytes()).await.unwrap();
    let second = conn.read_response().await;
    assert_eq!(
        second.status,
        202,
        "{}",
        String::from_utf8_lossy(&second.body)
    );

    // A third, pipelined pair on the same connection.
    conn.send(
        b"GET /api/notify/ HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n\
          GET /api/notify/1/ HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
    )
    .await
    .unwrap();
    let list = conn.read_response().await;
    let detail = conn.read_response().await;
    assert_eq!(list.status, 200);
    assert_eq!(list.json()["count"], 1);
    assert_eq!(detail.status, 200);
    assert_eq!(detail.json()["id"], 1);
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_stalls_in_the_request_head_is_closed_within_15_seconds() {
    let app = spawn_app().await;
    let mut stalled = RawConn::connect(app.addr).await;
    stalled
        .send(b"POST /api/contact/ HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Ty")
        .await
        .unwrap();
    let started = Instant::now();
    let mut silent = RawConn::connect(app.addr).await;

    // A slow client that completes its head in time is still served.
    let mut slow = RawConn::connect(app.addr).await;
    slow.send(b"GET /livez HTTP/1.1\r\nHost: 12").await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    slow.send(b"7.0.0.1\r\n\r\n").await.unwrap();
    assert_eq!(slow.read_response().await.status, 200);

    // Meanwhile the service answers everyone else.
    let resp = app.get("/livez").await;
    assert_eq!(resp.status, 200);

    let waited_before = started.elapsed();
    let budget = Duration::from_secs(15).saturating_sub(waited_before);
    let (stalled_closed, silent_closed) = tokio::join!(
        stalled.wait_for_close(budget),
        silent.wait_for_close(budget),
    );
    let Some(took) = stalled_closed else {
        panic!(
            "a connection stuck in its request head was still open after {:?}",
            started.elapsed()
        );
    };
    let closed_after = waited_before + took;
    assert!(
        closed_after >= Duration::from_secs(5),
        "closed after {closed_after:?}: too eager for a client that is merely slow"
    );
    assert!(
        silent_closed.is_some(),
        "a connection that never sent a byte was still open after {:?}",
        started.elapsed()
    );
    app.assert_nothing_stored("after a stalled request").await;
    app.shutdown().await;
}
