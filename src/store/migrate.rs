//! Schema set-up at start: create the database when it is missing, then apply
//! the numbered files of `sql/` that are not yet recorded in
//! `schema_migrations`, each in its own transaction.
//!
//! Everything runs on a dedicated connection holding a session-level advisory
//! lock, so two instances starting together apply each migration once; if
//! this process dies half-way, closing the connection releases the lock and
//! the open transaction rolls back.

use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, Config, NoTls};

use super::error::StoreError;

/// The migrations, in order. A file once shipped is never edited: add a new one.
const MIGRATIONS: &[(i32, &str, &str)] = &[
    (1, "init", include_str!("../../sql/0001_init.sql")),
    (
        2,
        "reclaim_grace",
        include_str!("../../sql/0002_reclaim_grace.sql"),
    ),
    (3, "cancelled", include_str!("../../sql/0003_cancelled.sql")),
    (
        4,
        "attempt_base",
        include_str!("../../sql/0004_attempt_base.sql"),
    ),
    (5, "events", include_str!("../../sql/0005_events.sql")),
    (6, "webhooks", include_str!("../../sql/0006_webhooks.sql")),
];

/// An arbitrary constant naming "email-service migrations" among advisory locks.
const MIGRATION_LOCK: i64 = 0x656d_6169_6c5f_6d67;

/// Connects to the configured database, creating it first if PostgreSQL says
/// it does not exist (and the role may create databases).
pub async fn ensure_database(config: &Config) -> Result<(), StoreError> {
    match connect(config).await {
        Ok(_) => Ok(()),
        Err(e) if e.code() == Some(&SqlState::INVALID_CATALOG_NAME) => {
            let name = config.get_dbname().unwrap_or("postgres").to_owned();
            let mut maintenance = config.clone();
            maintenance.dbname("postgres");
            let client = connect(&maintenance).await?;
            let sql = format!("CREATE DATABASE \"{}\"", name.replace('"', "\"\""));
            match client.batch_execute(&sql).await {
                Ok(()) => {
                    tracing::info!(database = %name, "created database");
                    Ok(())
                }
                // Another instance created it between our two steps.
                Err(e) if e.code() == Some(&SqlState::DUPLICATE_DATABASE) => Ok(()),
                Err(e) => Err(e.into()),
            }
        }
        Err(e) => Err(e.into()),
    }
}

pub async fn run(config: &Config) -> Result<(), StoreError> {
    let mut client = connect(config).await?;
    // Migrations may legitimately run long (an index on a big table) and
    // wait for the other instance's lock.
    client.batch_execute("SET statement_timeout = 0").await?;
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (
                version    INTEGER PRIMARY KEY,
                name       TEXT NOT NULL,
                applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
            )",
        )
        .await?;
    for &(version, name, sql) in MIGRATIONS {
        let tx = client.transaction().await?;
        let done = tx
            .query_opt(
                "SELECT 1 FROM schema_migrations WHERE version = $1",
                &[&version],
            )
            .await?
            .is_some();
        if done {
            continue;
        }
        tx.batch_execute(sql).await?;
        tx.execute(
            "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
            &[&version, &name],
        )
        .await?;
        tx.commit().await?;
        tracing::info!(version, name, "applied migration");
    }
    client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
        .await?;
    Ok(())
}

async fn connect(config: &Config) -> Result<Client, tokio_postgres::Error> {
    let (client, connection) = config.connect(NoTls).await?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "migration connection closed");
        }
    });
    Ok(client)
}
