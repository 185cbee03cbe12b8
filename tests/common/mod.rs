//! The one test harness of every suite: the service in process
//! ([`TestApp::builder`]) or as a child process ([`AppBuilder::process`]),
//! each on a fresh database and Redis key prefix ([`Target`]) that are
//! dropped after the test, an SMTP sink the test controls, HTTP and raw TCP
//! clients, and [`poll_until`].
//!
//! Environment (exported by `scripts/test`):
//! - `TEST_DATABASE_URL`: a PostgreSQL server whose role may create
//!   databases; every [`Target`] names its own `test_<uuid>` database.
//! - `TEST_REDIS_URL`: a Redis server; every [`Target`] has its own prefix.
//! - `TEST_LOG=1`: print the in-process service's logs (`RUST_LOG`, default
//!   `info`); `TEST_KEEP_DB=1`: keep the databases for a post-mortem.
//!
//! Each suite uses a part of it, hence the `allow` below.

#![allow(dead_code, unused_imports)]

pub mod app;
pub mod db;
pub mod http;
pub mod poll;
pub mod process;
pub mod raw;
pub mod smtp_sink;
pub mod webhook_sink;

pub use app::{AppBuilder, TestApp};
pub use db::{TABLES, Target, connect, count_rows, redis_url, scalar, wipe_redis};
pub use http::TestResponse;
pub use poll::poll_until;
pub use process::ServiceProcess;
pub use raw::{RawConn, RawResponse, raw_exchange};
pub use smtp_sink::{Mode, SmtpSink};
pub use webhook_sink::{Hook, HookMode, WebhookSink};

/// Starts the service with the test defaults on a fresh [`Target`].
pub async fn spawn_app() -> TestApp {
    TestApp::builder().start().await
}

/// Like [`spawn_app`], with these variables over the defaults.
pub async fn spawn_app_with(vars: &[(&str, &str)]) -> TestApp {
    TestApp::builder().envs(vars).start().await
}

/// Like [`spawn_app_with`], sending through `sink` over SMTP.
pub async fn spawn_app_with_sink(sink: &SmtpSink, vars: &[(&str, &str)]) -> TestApp {
    TestApp::builder().sink(sink).envs(vars).start().await
}

/// A port nothing listens on (for a moment): for servers a test starts and
/// for addresses that must refuse connections.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port on 127.0.0.1")
        .port()
}

/// A variable that `scripts/test` exports; the panic says how to get it.
fn required_env(name: &str) -> String {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v,
        _ => panic!(
            "{name} is not set: these tests need a PostgreSQL server and a Redis server. \
             Export TEST_DATABASE_URL (e.g. postgres://postgres@127.0.0.1:55433/postgres), \
             TEST_REDIS_URL (e.g. redis://127.0.0.1:56380/) and PG_BIN, or run scripts/test."
        ),
    }
}
