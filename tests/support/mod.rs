//! Shared test harness: the real service on port 0, against the real
//! PostgreSQL and Redis that `scripts/test` provisions (`TEST_DATABASE_URL`,
//! `TEST_REDIS_URL`), with a fresh database and a fresh Redis key prefix per
//! app, and an SMTP sink the test controls.

#![allow(dead_code)]

pub mod process;
pub mod smtp_sink;

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Once;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub fn database_admin_url() -> String {
    std::env::var("TEST_DATABASE_URL")
        .expect("TEST_DATABASE_URL is not set: run the suite through scripts/test")
}

pub fn redis_url() -> String {
    std::env::var("TEST_REDIS_URL")
        .expect("TEST_REDIS_URL is not set: run the suite through scripts/test")
}

/// `postgres://…/postgres` with another database name.
pub fn database_url(name: &str) -> String {
    let admin = database_admin_url();
    let base = admin.rsplit_once('/').expect("url with a database").0;
    format!("{base}/{name}")
}

fn init_logs() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if std::env::var_os("TEST_LOG").is_some() {
            let _ = tracing_subscriber::fmt()
                .with_env_filter("info")
                .with_test_writer()
                .try_init();
        }
    });
}

/// Where a test app keeps its state: which database and Redis prefix.
#[derive(Clone, Debug)]
pub struct Target {
    pub database: String,
    pub prefix: String,
}

impl Target {
    pub fn fresh() -> Self {
        let id = uuid::Uuid::new_v4().simple().to_string();
        Self {
            database: format!("test_{id}"),
            prefix: format!("test-{id}"),
        }
    }
}

pub struct TestApp {
    pub addr: SocketAddr,
    pub target: Target,
    client: Client<HttpConnector, Full<Bytes>>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

pub struct TestResponse {
    pub status: u16,
    pub headers: hyper::HeaderMap,
    pub body: Bytes,
}

impl TestResponse {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// Starts the service sending through `sink` over SMTP, with `extra`.
pub async fn spawn_app_with_sink(sink: &smtp_sink::SmtpSink, extra: &[(&str, &str)]) -> TestApp {
    let port = sink.addr.port().to_string();
    let mut overrides = vec![
        ("EMAIL_BACKEND", "smtp"),
        ("EMAIL_HOST", "127.0.0.1"),
        ("EMAIL_PORT", port.as_str()),
    ];
    overrides.extend_from_slice(extra);
    spawn_app(&overrides).await
}

/// Starts the service with the defaults of a test and `overrides`.
pub async fn spawn_app(overrides: &[(&str, &str)]) -> TestApp {
    spawn_app_on(Target::fresh(), overrides).await
}

/// Starts the service on a given database and prefix (to run two instances
/// on one database, or to restart one).
pub async fn spawn_app_on(target: Target, overrides: &[(&str, &str)]) -> TestApp {
    init_logs();
    let mut vars: HashMap<String, String> = HashMap::new();
    vars.insert("DATABASE_URL".into(), database_url(&target.database));
    vars.insert("REDIS_URL".into(), redis_url());
    vars.insert("REDIS_KEY_PREFIX".into(), target.prefix.clone());
    vars.insert("EMAIL_BACKEND".into(), "console".into());
    vars.insert("SHUTDOWN_TIMEOUT".into(), "5".into());
    for (k, v) in overrides {
        vars.insert((*k).into(), (*v).into());
    }
    let config = email_service::config::Config::from_map(&vars).expect("test config");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        email_service::run(config, listener, async {
            let _ = stopped.await;
        })
        .await
        .expect("service run");
    });
    let app = TestApp {
        addr,
        target,
        client: Client::builder(TokioExecutor::new()).build_http(),
        stop: Some(stop),
        task: Some(task),
    };
    // Ready once persistence reports the schema in place (`/healthz` is
    // open even when API_TOKEN is set).
    poll_until(
        Duration::from_secs(30),
        "the service to be ready",
        || async {
            let r = app.get("/healthz").await;
            serde_json::from_slice::<Value>(&r.body)
                .is_ok_and(|h| h["actors"]["persistence"]["schema_ready"] == true)
        },
    )
    .await;
    app
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub async fn request(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> TestResponse {
        let mut req = Request::builder().method(method).uri(self.url(path));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(Full::new(body.into())).unwrap();
        let resp = tokio::time::timeout(Duration::from_secs(30), self.client.request(req))
            .await
            .expect("response within 30 s")
            .expect("HTTP request");
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        TestResponse {
            status,
            headers,
            body,
        }
    }

    pub async fn get(&self, path: &str) -> TestResponse {
        self.request(Method::GET, path, &[], Bytes::new()).await
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> TestResponse {
        self.request(
            Method::POST,
            path,
            &[("content-type", "application/json")],
            serde_json::to_vec(body).unwrap(),
        )
        .await
    }

    /// Posts a notification and returns its uuid (asserting the 202).
    pub async fn notify(&self, body: &Value) -> String {
        let r = self.post_json("/api/notify/", body).await;
        assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
        r.json()["uuid"].as_str().unwrap().to_owned()
    }

    /// The detail view of a message of `kind` (`notify` or `contact`).
    pub async fn detail(&self, kind: &str, id: &str) -> Value {
        let r = self.get(&format!("/api/{kind}/{id}/")).await;
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        r.json()
    }

    /// Waits until the message reaches `sent` or `failed`; returns its view.
    pub async fn wait_final(&self, kind: &str, id: &str, within: Duration) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let v = self.detail(kind, id).await;
            if v["status"] == "sent" || v["status"] == "failed" {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "message {id} still {} after {within:?}: {v}",
                v["status"]
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn db(&self) -> tokio_postgres::Client {
        let (client, conn) =
            tokio_postgres::connect(&database_url(&self.target.database), tokio_postgres::NoTls)
                .await
                .expect("connect to the test database");
        tokio::spawn(conn);
        client
    }

    pub async fn healthz(&self) -> TestResponse {
        self.get("/healthz").await
    }

    /// Stops the service as SIGTERM would, and waits for it.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(30), task)
                .await
                .expect("service stops within 30 s")
                .expect("service task");
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Polls `check` every 50 ms until it holds, failing the test at `within`.
pub async fn poll_until<F, Fut>(within: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    loop {
        if check().await {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
