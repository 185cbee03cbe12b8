//! Shared test harness: start the service on an ephemeral port against a fresh
//! database, talk to it over HTTP (hyper-util's legacy client) or raw TCP, and
//! look at what it stored.
//!
//! Environment (exported by `scripts/test` in CI):
//! - `TEST_DATABASE_URL`: a PostgreSQL server whose role may create databases;
//!   every app gets its own `test_<uuid>` database, dropped when the app ends.
//! - `TEST_REDIS_URL`: a Redis server; every app gets its own key prefix.
//! - `TEST_LOG=1`: print the service's logs (with `RUST_LOG`, default `info`).

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Once;
use std::time::{Duration, Instant};

use email_service::config::Config;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::header::{HeaderName, HeaderValue};
use hyper::{HeaderMap, Method, Request};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use uuid::Uuid;

/// How long an app may take to create its database and apply migrations.
const READY_DEADLINE: Duration = Duration::from_secs(30);
/// How often `poll_until` tries again.
const POLL_EVERY: Duration = Duration::from_millis(50);
/// No single HTTP exchange of a test should take longer than this.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);

/// Tables whose rows the tests count.
pub const TABLES: [&str; 3] = ["contact_messages", "notifications", "idempotency_keys"];

static LOG_INIT: Once = Once::new();

fn init_logging() {
    LOG_INIT.call_once(|| {
        if std::env::var("TEST_LOG").is_ok_and(|v| v == "1" || v == "true") {
            let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| "info".to_owned());
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
                .with_test_writer()
                .try_init();
        }
    });
}

fn required_env(name: &str) -> String {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v,
        _ => panic!(
            "{name} is not set: the API tests need a PostgreSQL server and a Redis server. \
             Export TEST_DATABASE_URL (e.g. postgres://postgres@127.0.0.1:55433/postgres), \
             TEST_REDIS_URL (e.g. redis://127.0.0.1:56380/) and PG_BIN, or run scripts/test."
        ),
    }
}

/// `url` with its database name replaced by `db`, keeping any query string.
pub fn with_database(url: &str, db: &str) -> String {
    let after_scheme = url.find("://").map_or(0, |i| i + 3);
    let (head, query) = match url.find('?') {
        Some(q) => (&url[..q], &url[q..]),
        None => (url, ""),
    };
    let base = match head[after_scheme..].find('/') {
        Some(slash) => &head[..after_scheme + slash],
        None => head,
    };
    format!("{base}/{db}{query}")
}

/// A response, fully read.
#[derive(Debug, Clone)]
pub struct TestResponse {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl TestResponse {
    /// The body as JSON; panics with the body text when it is not JSON.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "response body is not JSON ({e}): status {} body {:?}",
                self.status,
                self.text()
            )
        })
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// A running service. Stop it with [`TestApp::shutdown`]; dropping it without
/// that still drops its database.
pub struct TestApp {
    pub addr: SocketAddr,
    pub port: u16,
    /// The service's `DATABASE_URL`.
    pub database_url: String,
    client: Client<HttpConnector, Full<Bytes>>,
    shutdown_tx: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), email_service::RunError>>>,
    /// `(maintenance URL, database name)` of a database this harness made up
    /// and must drop.
    owned_database: Option<(String, String)>,
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(&[]).await
}

/// Starts the service with the test defaults, then `overrides` on top, and
/// waits until its schema is ready. A `DATABASE_URL` override is used as is
/// (and not dropped at the end).
pub async fn spawn_app_with(overrides: &[(&str, &str)]) -> TestApp {
    let mut app = start_app_with(overrides).await;
    app.wait_until_ready().await;
    app
}

/// Like [`spawn_app_with`], without waiting for the database.
pub async fn start_app_with(overrides: &[(&str, &str)]) -> TestApp {
    init_logging();
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind 127.0.0.1:0");
    let addr = listener.local_addr().expect("local addr");

    let mut vars: HashMap<String, String> = HashMap::new();
    let own_db = !overrides.iter().any(|(k, _)| *k == "DATABASE_URL");
    let mut owned_database = None;
    if own_db {
        let admin = required_env("TEST_DATABASE_URL");
        let name = format!("test_{}", Uuid::new_v4().simple());
        vars.insert("DATABASE_URL".into(), with_database(&admin, &name));
        owned_database = Some((admin, name));
    }
    vars.insert("REDIS_URL".into(), required_env("TEST_REDIS_URL"));
    vars.insert(
        "REDIS_KEY_PREFIX".into(),
        format!("test-{}", Uuid::new_v4()),
    );
    vars.insert("EMAIL_BACKEND".into(), "console".into());
    vars.insert("HOST".into(), "127.0.0.1".into());
    vars.insert("PORT".into(), addr.port().to_string());
    vars.insert("SHUTDOWN_TIMEOUT".into(), "5".into());
    vars.insert("MAILER_WORKERS".into(), "2".into());
    for (k, v) in overrides {
        vars.insert((*k).to_owned(), (*v).to_owned());
    }
    let database_url = vars["DATABASE_URL"].clone();
    let config = Config::from_map(&vars).expect("the test configuration is valid");

    let (shutdown_tx, shutdown_rx) = oneshot::channel::<()>();
    let task = tokio::spawn(email_service::run(config, listener, async move {
        let _ = shutdown_rx.await;
    }));

    let client = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(0)
        .build_http();
    TestApp {
        addr,
        port: addr.port(),
        database_url,
        client,
        shutdown_tx: Some(shutdown_tx),
        task: Some(task),
        owned_database,
    }
}

impl TestApp {
    /// Waits until `GET /api/notify/` answers `200`: the schema is in place.
    pub async fn wait_until_ready(&mut self) {
        let last = std::sync::Mutex::new(String::from("no answer yet"));
        let ready = poll_until(READY_DEADLINE, || async {
            if self.task.as_ref().is_none_or(|t| t.is_finished()) {
                return Some(false);
            }
            let answer = match self
                .try_send(Method::GET, "/api/notify/", &[], Bytes::new())
                .await
            {
                Ok(resp) if resp.status == 200 => return Some(true),
                Ok(resp) => format!("{} {}", resp.status, resp.text()),
                Err(e) => e,
            };
            *last.lock().unwrap_or_else(|e| e.into_inner()) = answer;
            None
        })
        .await;
        match ready {
            Some(true) => {}
            Some(false) => {
                let result = self.task.take().expect("task").await;
                panic!("the service stopped during start-up: {result:?}");
            }
            None => panic!(
                "the service was not ready within {READY_DEADLINE:?}; last answer: {}",
                last.lock().unwrap_or_else(|e| e.into_inner())
            ),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Sends one request to `path_or_url` (a path, or an absolute URL such as
    /// a `next` link).
    pub async fn try_send(
        &self,
        method: Method,
        path_or_url: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> Result<TestResponse, String> {
        let uri = if path_or_url.starts_with("http://") {
            path_or_url.to_owned()
        } else {
            self.url(path_or_url)
        };
        let mut req = Request::builder()
            .method(method)
            .uri(&uri)
            .body(Full::new(body))
            .map_err(|e| format!("building request to {uri}: {e}"))?;
        for (name, value) in headers {
            let name = HeaderName::from_bytes(name.as_bytes()).map_err(|e| e.to_string())?;
            let value = HeaderValue::from_bytes(value.as_bytes()).map_err(|e| e.to_string())?;
            req.headers_mut().append(name, value);
        }
        let exchange = async {
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| format!("{uri}: {e:?}"))?;
            let status = resp.status().as_u16();
            let headers = resp.headers().clone();
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| format!("{uri}: reading body: {e}"))?
                .to_bytes();
            Ok(TestResponse {
                status,
                headers,
                body,
            })
        };
        tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .map_err(|_| format!("{uri}: no answer within {REQUEST_TIMEOUT:?}"))?
    }

    pub async fn send(
        &self,
        method: Method,
        path_or_url: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> TestResponse {
        self.try_send(method, path_or_url, headers, body.into())
            .await
            .unwrap_or_else(|e| panic!("request failed: {e}"))
    }

    pub async fn get(&self, path_or_url: &str) -> TestResponse {
        self.send(Method::GET, path_or_url, &[], Bytes::new()).await
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> TestResponse {
        self.post_json_with(path, &[], body).await
    }

    /// A JSON POST with extra headers (e.g. `Idempotency-Key`).
    pub async fn post_json_with(
        &self,
        path: &str,
        headers: &[(&str, &str)],
        body: &Value,
    ) -> TestResponse {
        let mut all = vec![("content-type", "application/json")];
        all.extend_from_slice(headers);
        let bytes = serde_json::to_vec(body).expect("serialize");
        self.send(Method::POST, path, &all, bytes).await
    }

    /// A POST with exactly these headers (no Content-Type added) and bytes.
    pub async fn post_raw(
        &self,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> TestResponse {
        self.send(Method::POST, path, headers, body).await
    }

    /// A client connected to this app's database.
    pub async fn db(&self) -> tokio_postgres::Client {
        connect_db(&self.database_url).await
    }

    /// Rows in each of [`TABLES`], in that order.
    pub async fn row_counts(&self) -> [i64; 3] {
        let db = self.db().await;
        let mut counts = [0; 3];
        for (i, table) in TABLES.iter().enumerate() {
            counts[i] = count_rows(&db, table).await;
        }
        counts
    }

    /// Panics unless nothing at all was stored.
    pub async fn assert_nothing_stored(&self, context: &str) {
        let counts = self.row_counts().await;
        assert_eq!(
            counts,
            [0, 0, 0],
            "{context}: rows in {TABLES:?} should all be 0, got {counts:?}"
        );
    }

    /// Stops the service (as SIGTERM would) and drops its database.
    pub async fn shutdown(mut self) {
        if let Some(tx) = self.shutdown_tx.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            match tokio::time::timeout(Duration::from_secs(30), task).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(e))) => panic!("the service stopped with an error: {e}"),
                Ok(Err(e)) => panic!("the service task failed: {e}"),
                Err(_) => panic!("the service did not stop within 30 s of shutdown"),
            }
        }
        if let Some((admin, name)) = self.owned_database.take() {
            drop_database(&admin, &name).await;
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown_tx.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.abort();
        }
        if std::env::var("TEST_KEEP_DB").is_ok() {
            return;
        }
        // A test that failed before `shutdown`: drop the database from a
        // thread of its own, since this may run inside the test's runtime.
        if let Some((admin, name)) = self.owned_database.take() {
            let _ = std::thread::spawn(move || {
                if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    rt.block_on(drop_database(&admin, &name));
                }
            })
            .join();
        }
    }
}

pub async fn connect_db(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("connecting to the test database: {e}"));
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

pub async fn count_rows(db: &tokio_postgres::Client, table: &str) -> i64 {
    db.query_one(&format!("SELECT count(*) FROM {table}"), &[])
        .await
        .unwrap_or_else(|e| panic!("counting {table}: {e}"))
        .get(0)
}

pub async fn drop_database(admin_url: &str, name: &str) {
    if std::env::var("TEST_KEEP_DB").is_ok() {
        return;
    }
    let Ok((client, connection)) = tokio_postgres::connect(admin_url, tokio_postgres::NoTls).await
    else {
        return;
    };
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let _ = client
        .batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
        .await;
}

/// Calls `check` every 50 ms until it returns `Some`, for at most `deadline`.
pub async fn poll_until<T, F, Fut>(deadline: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let started = Instant::now();
    loop {
        if let Some(v) = check().await {
            return Some(v);
        }
        if started.elapsed() >= deadline {
            return None;
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
}

// ===== Raw HTTP/1.1 over TCP, for what a well-behaved client cannot send =====

/// A response read off a raw connection.
#[derive(Debug, Clone)]
pub struct RawResponse {
    pub status: u16,
    /// Header names lower-cased.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "raw response body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

/// One TCP connection speaking HTTP/1.1 by hand.
pub struct RawConn {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl RawConn {
    pub async fn connect(addr: SocketAddr) -> Self {
        let stream = TcpStream::connect(addr).await.expect("connect");
        Self {
            stream,
            buf: Vec::new(),
        }
    }

    /// Writes `bytes`; a write error (the server may have answered and closed
    /// already) is returned, not raised.
    pub async fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes).await?;
        self.stream.flush().await
    }

    /// Reads exactly one response (the service always sends Content-Length).
    pub async fn read_response(&mut self) -> RawResponse {
        read_one_response(&mut self.stream, &mut self.buf).await
    }

    /// Waits for the server to close the connection (EOF or reset); returns
    /// how long that took, or `None` if it stayed open past `deadline`.
    pub async fn wait_for_close(&mut self, deadline: Duration) -> Option<Duration> {
        let started = Instant::now();
        let wait = async {
            let mut chunk = [0u8; 4096];
            loop {
                match self.stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        };
        tokio::time::timeout(deadline, wait)
            .await
            .ok()
            .map(|()| started.elapsed())
    }
}

/// Reads one response from `reader`; `buf` keeps bytes read past it.
pub async fn read_one_response<R: AsyncRead + Unpin>(
    reader: &mut R,
    buf: &mut Vec<u8>,
) -> RawResponse {
    tokio::time::timeout(REQUEST_TIMEOUT, read_response_inner(reader, buf))
        .await
        .expect("no raw response in time")
        .unwrap_or_else(|e| panic!("reading a raw response: {e}"))
}

async fn fill<R: AsyncRead + Unpin>(reader: &mut R, buf: &mut Vec<u8>) -> std::io::Result<usize> {
    let mut chunk = [0u8; 8192];
    let n = reader.read(&mut chunk).await?;
    buf.extend_from_slice(&chunk[..n]);
    Ok(n)
}

async fn read_response_inner<R: AsyncRead + Unpin>(
    reader: &mut R,
    buf: &mut Vec<u8>,
) -> Result<RawResponse, String> {
    let head_end = loop {
        if let Some(i) = find(buf, b"\r\n\r\n") {
            break i;
        }
        match fill(reader, buf).await {
            Ok(0) => {
                return Err(format!(
                    "connection closed before a full response head: {:?}",
                    String::from_utf8_lossy(buf)
                ));
            }
            Ok(_) => {}
            Err(e) => return Err(format!("read error before a full head: {e}")),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let length: usize = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .ok_or("response without Content-Length")?;
    let body_start = head_end + 4;
    while buf.len() < body_start + length {
        match fill(reader, buf).await {
            Ok(0) => return Err("connection closed in the middle of a body".into()),
            Ok(_) => {}
            Err(e) => return Err(format!("read error in a body: {e}")),
        }
    }
    let body = buf[body_start..body_start + length].to_vec();
    buf.drain(..body_start + length);
    Ok(RawResponse {
        status,
        headers,
        body,
    })
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Sends `request` on a new connection and reads one response, writing and
/// reading at the same time: the server may answer (413) and stop reading
/// before everything is written.
pub async fn raw_exchange(addr: SocketAddr, request: &[u8]) -> RawResponse {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (mut reader, mut writer) = stream.into_split();
    let request = request.to_vec();
    let write = tokio::spawn(async move {
        let _ = writer.write_all(&request).await;
        let _ = writer.flush().await;
        // Keep the write half open until the response is read.
        writer
    });
    let mut buf = Vec::new();
    let resp = read_one_response(&mut reader, &mut buf).await;
    write.abort();
    resp
}
