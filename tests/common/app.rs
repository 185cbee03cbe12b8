//! The service in process: [`AppBuilder`] assembles its environment (test
//! defaults, a [`Target`], an SMTP sink, the test's own variables) and starts
//! it on an ephemeral port, or as the real binary; [`TestApp`] is the running
//! service, stopped by [`TestApp::shutdown`] or, when a test panics, by drop.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Once;
use std::time::Duration;

use email_service::config::Config;
use hyper::Method;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use tokio_postgres::types::FromSqlOwned;

use super::db::{TABLES, Target, connect, count_rows, redis_url, scalar};
use super::http::{self, HttpClient, TestResponse};
use super::poll::poll_until;
use super::process::ServiceProcess;
use super::smtp_sink::SmtpSink;

/// How long an app may take to create its database and apply migrations.
const READY_WITHIN: Duration = Duration::from_secs(30);
const STOP_WITHIN: Duration = Duration::from_secs(30);

/// Defaults of an in-process app, under the test's own variables: quick to
/// stop, light on a small machine, and no SMTP server needed.
const IN_PROCESS_DEFAULTS: [(&str, &str); 4] = [
    ("EMAIL_BACKEND", "console"),
    ("HOST", "127.0.0.1"),
    ("SHUTDOWN_TIMEOUT", "5"),
    ("MAILER_WORKERS", "2"),
];

fn init_logging() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if std::env::var("TEST_LOG").is_ok_and(|v| v == "1" || v == "true") {
            let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| "info".to_owned());
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
                .with_test_writer()
                .try_init();
        }
    });
}

/// How to start the service; from [`TestApp::builder`].
#[derive(Default)]
pub struct AppBuilder {
    target: Option<Target>,
    env: Vec<(String, String)>,
}

impl AppBuilder {
    /// Sets a variable; the last setting of a name wins, over any default.
    pub fn env(mut self, name: &str, value: &str) -> Self {
        self.env.push((name.to_owned(), value.to_owned()));
        self
    }

    pub fn envs(self, vars: &[(&str, &str)]) -> Self {
        vars.iter().fold(self, |b, (k, v)| b.env(k, v))
    }

    /// Sends through `sink` over SMTP.
    pub fn sink(self, sink: &SmtpSink) -> Self {
        let port = sink.addr.port().to_string();
        self.env("EMAIL_BACKEND", "smtp")
            .env("EMAIL_HOST", "127.0.0.1")
            .env("EMAIL_PORT", &port)
    }

    /// Runs on `target` (shared with other apps, or kept for a restart)
    /// instead of a fresh one. A `DATABASE_URL` set with [`env`](Self::env)
    /// still wins; the target then only names the Redis prefix.
    pub fn target(mut self, target: &Target) -> Self {
        self.target = Some(target.clone());
        self
    }

    /// The variables of the service: the target's, then `defaults`, then
    /// the test's own.
    fn vars(&self, target: &Target, defaults: &[(&str, &str)]) -> Vec<(String, String)> {
        let mut vars = vec![
            ("DATABASE_URL".to_owned(), target.database_url()),
            ("REDIS_URL".to_owned(), redis_url()),
            ("REDIS_KEY_PREFIX".to_owned(), target.prefix.clone()),
        ];
        vars.extend(
            defaults
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        );
        vars.extend(self.env.iter().cloned());
        vars
    }

    /// Starts the service in process and waits until its schema is ready.
    pub async fn start(self) -> TestApp {
        let mut app = self.start_unready().await;
        app.wait_until_ready().await;
        app
    }

    /// Starts the service in process without waiting for its database.
    pub async fn start_unready(self) -> TestApp {
        init_logging();
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local addr");
        let target = self.target.clone().unwrap_or_else(Target::fresh);
        let port = addr.port().to_string();
        let mut defaults = IN_PROCESS_DEFAULTS.to_vec();
        defaults.push(("PORT", &port));
        let vars: HashMap<String, String> = self.vars(&target, &defaults).into_iter().collect();
        let database_url = vars["DATABASE_URL"].clone();
        let config = Config::from_map(&vars).expect("the test configuration is valid");

        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(email_service::run(config, listener, async move {
            let _ = stopped.await;
        }));
        TestApp {
            addr,
            database_url,
            client: http::client(),
            stop: Some(stop),
            task: Some(task),
            target,
        }
    }

    /// Starts the real binary and waits until its schema is ready.
    pub fn process(self) -> ServiceProcess {
        let p = self.process_unready();
        p.wait_ready();
        p
    }

    /// Starts the real binary with the target's variables and the test's
    /// own, and no in-process defaults: as an operator would run it.
    pub fn process_unready(self) -> ServiceProcess {
        let target = self.target.clone().unwrap_or_else(Target::fresh);
        let vars = self.vars(&target, &[]);
        ServiceProcess::start(&vars, target)
    }
}

fn schema_ready(health: &TestResponse) -> bool {
    serde_json::from_slice::<Value>(&health.body)
        .is_ok_and(|h| h["actors"]["persistence"]["schema_ready"] == true)
}

/// A running service. Stop it with [`TestApp::shutdown`]; dropped without
/// that, it is stopped at once. Its database goes with the last holder of
/// its [`Target`].
pub struct TestApp {
    pub addr: SocketAddr,
    /// The service's `DATABASE_URL`.
    pub database_url: String,
    pub(super) client: HttpClient,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), email_service::RunError>>>,
    /// Where it keeps its state. `Drop` stops the service before this goes
    /// (with the database, when this is its last holder).
    pub target: Target,
}

impl TestApp {
    pub fn builder() -> AppBuilder {
        AppBuilder::default()
    }

    /// Waits until `/healthz` reports the schema in place (it answers even
    /// with `API_TOKEN` set, or Redis down).
    pub async fn wait_until_ready(&mut self) {
        let task = self.task.as_ref().expect("a running service");
        let running = poll_until(READY_WITHIN, "the service to be ready", || async {
            if task.is_finished() {
                return Ok(false);
            }
            match self
                .try_send(Method::GET, "/healthz", &[], Default::default())
                .await
            {
                Ok(r) if schema_ready(&r) => Ok(true),
                Ok(r) => Err(format!("{} {}", r.status, r.text())),
                Err(e) => Err(e),
            }
        })
        .await;
        if !running {
            let result = self.task.take().expect("task").await;
            panic!("the service stopped during start-up: {result:?}");
        }
    }

    /// A client connected to this app's database.
    pub async fn db(&self) -> tokio_postgres::Client {
        connect(&self.database_url).await
    }

    /// The one value `sql` selects from this app's database.
    pub async fn scalar<T: FromSqlOwned>(&self, sql: &str) -> T {
        scalar(&self.db().await, sql).await
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

    /// Posts a notification and returns its uuid (asserting the 202).
    pub async fn notify(&self, body: &Value) -> String {
        let r = self.post_json("/api/notify/", body).await;
        assert_eq!(r.status, 202, "{}", r.text());
        r.json()["uuid"].as_str().unwrap().to_owned()
    }

    /// The detail view of a message of `kind` (`notify` or `contact`).
    pub async fn detail(&self, kind: &str, id: &str) -> Value {
        let r = self.get(&format!("/api/{kind}/{id}/")).await;
        assert_eq!(r.status, 200, "{}", r.text());
        r.json()
    }

    /// Posts a notification and waits until it is sent or failed; returns
    /// its view.
    pub async fn notify_and_wait(&self, body: &Value, within: Duration) -> Value {
        let uuid = self.notify(body).await;
        self.wait_final("notify", &uuid, within).await
    }

    /// Waits until the message reaches `sent` or `failed`; returns its view.
    pub async fn wait_final(&self, kind: &str, id: &str, within: Duration) -> Value {
        let what = format!("message {id} to be sent or failed");
        poll_until(within, &what, || async {
            let v = self.detail(kind, id).await;
            if v["status"] == "sent" || v["status"] == "failed" {
                Ok(v)
            } else {
                Err(v)
            }
        })
        .await
    }

    /// Stops the service as SIGTERM would, and waits for it to finish.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            match tokio::time::timeout(STOP_WITHIN, task).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(e))) => panic!("the service stopped with an error: {e}"),
                Ok(Err(e)) => panic!("the service task failed: {e}"),
                Err(_) => panic!("the service did not stop within {STOP_WITHIN:?} of shutdown"),
            }
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}
