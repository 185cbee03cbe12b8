//! Where an app keeps its state, and the test's view of it: a [`Target`]
//! (a database on the test server and a Redis key prefix) that drops its
//! database when the last app or test holding it is gone, and helpers to
//! connect and count rows.

use std::sync::Arc;

use tokio_postgres::types::FromSqlOwned;
use uuid::Uuid;

use super::required_env;

/// Tables whose rows the tests count, in the order of `row_counts`.
pub const TABLES: [&str; 3] = ["contact_messages", "notifications", "idempotency_keys"];

/// The test server's maintenance URL (`TEST_DATABASE_URL`).
pub fn admin_url() -> String {
    required_env("TEST_DATABASE_URL")
}

pub fn redis_url() -> String {
    required_env("TEST_REDIS_URL")
}

/// Deletes every Redis key under `prefix`, which is what a FLUSHALL or an
/// empty restart does to that deployment; returns how many there were.
pub async fn wipe_redis(prefix: &str) -> usize {
    let client = redis::Client::open(redis_url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}:*"))
        .query_async(&mut conn)
        .await
        .unwrap();
    if !keys.is_empty() {
        let _: () = redis::cmd("DEL")
            .arg(&keys)
            .query_async(&mut conn)
            .await
            .unwrap();
    }
    keys.len()
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

/// Where apps keep their state. Clones share it: two instances on one
/// database, or a restart, use clones of one target, and the database is
/// dropped once, when the last clone goes (the service creates it itself).
#[derive(Clone, Debug)]
pub struct Target {
    pub database: String,
    pub prefix: String,
    owner: Arc<OwnedDatabase>,
}

impl Target {
    pub fn fresh() -> Self {
        let id = Uuid::new_v4().simple().to_string();
        let database = format!("test_{id}");
        Self {
            owner: Arc::new(OwnedDatabase {
                admin_url: admin_url(),
                name: database.clone(),
            }),
            database,
            prefix: format!("test-{id}"),
        }
    }

    /// The `DATABASE_URL` of an app on this target.
    pub fn database_url(&self) -> String {
        with_database(&self.owner.admin_url, &self.database)
    }

    pub async fn db(&self) -> tokio_postgres::Client {
        connect(&self.database_url()).await
    }
}

/// Drops its database on drop, whether the test passed or panicked.
#[derive(Debug)]
struct OwnedDatabase {
    admin_url: String,
    name: String,
}

impl Drop for OwnedDatabase {
    fn drop(&mut self) {
        if std::env::var_os("TEST_KEEP_DB").is_some() {
            return;
        }
        let (admin, name) = (self.admin_url.clone(), self.name.clone());
        // A runtime of its own on a thread of its own: this may run inside
        // the test's runtime (where blocking on a future panics) or outside
        // any runtime (a sync test, or a panic unwinding).
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

/// Best effort: a database left behind must not fail the test that made it.
async fn drop_database(admin_url: &str, name: &str) {
    let Ok((client, connection)) = tokio_postgres::connect(admin_url, tokio_postgres::NoTls).await
    else {
        return;
    };
    tokio::spawn(connection);
    // FORCE: a service stopped by a panic may still hold connections.
    let _ = client
        .batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
        .await;
}

pub async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("connecting to the test database: {e}"));
    tokio::spawn(connection);
    client
}

/// The one value `sql` selects.
pub async fn scalar<T: FromSqlOwned>(db: &tokio_postgres::Client, sql: &str) -> T {
    db.query_one(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .get(0)
}

pub async fn count_rows(db: &tokio_postgres::Client, table: &str) -> i64 {
    scalar(db, &format!("SELECT count(*) FROM {table}")).await
}
