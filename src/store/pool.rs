//! Connecting to PostgreSQL: the connection parameters of the two pools
//! (requests, and delivery bookkeeping) and the pools themselves.
//!
//! Every wait here is bounded, so that a database that is down, hung or
//! unreachable turns into a quick `503` rather than a stuck request: the
//! checkout, the connect, each statement on the server, a transaction left
//! open, and a network path that died silently. The pools connect lazily,
//! so the service starts while the database is still down.

use std::time::Duration;

use super::conn::{self, Pool, checkout};
use super::error::StoreError;

/// How long a request waits for a pooled connection: a down or hung database
/// must turn into a `503` quickly, not after bb8's default 30 s.
pub const CHECKOUT_TIMEOUT: Duration = Duration::from_secs(2);

/// Longest a single statement may run on the server.
pub const STATEMENT_TIMEOUT: Duration = Duration::from_millis(2500);

/// The connection parameters, with a connect timeout so that a hung server
/// cannot hold a connection attempt for long.
pub fn pg_config(url: &str) -> Result<tokio_postgres::Config, StoreError> {
    let mut config: tokio_postgres::Config = url
        .parse()
        .map_err(|e: tokio_postgres::Error| StoreError::Unavailable(e.to_string()))?;
    config.connect_timeout(CHECKOUT_TIMEOUT);
    config.application_name("email-service");
    // A connection whose network path died (no RST, packets black-holed)
    // must close by itself, or it would stay in the pool and hang every
    // query sent on it: the kernel gives up on unacknowledged data after the
    // user timeout, and keepalives notice a silent peer while idle.
    config.tcp_user_timeout(Duration::from_secs(5));
    config.keepalives_idle(Duration::from_secs(10));
    config.keepalives_interval(Duration::from_secs(2));
    config.keepalives_retries(3);
    // The server enforces the same budget as our own timeouts: a statement
    // stuck on a lock is cancelled there, so its connection comes back to
    // the pool usable instead of queueing every later query behind it. A
    // transaction left open by a cancelled request is ended too.
    //
    // PostgreSQL's own choice between custom and generic plans (`auto`):
    // the only statement these connections prepare and reuse is the accept
    // batch's `INSERT … SELECT FROM unnest(…)`, whose plan has one shape
    // whatever the values; every other statement is sent unnamed, and so
    // planned with its values on every call.
    config.options(server_options("auto"));
    Ok(config)
}

fn server_options(plan_cache_mode: &str) -> String {
    format!(
        "-c statement_timeout={} -c idle_in_transaction_session_timeout=10000 \
         -c plan_cache_mode={plan_cache_mode}",
        STATEMENT_TIMEOUT.as_millis()
    )
}

/// The connection parameters for delivery bookkeeping: the same, with
/// statements planned once per connection.
///
/// Planning is most of what a claim or an outcome costs PostgreSQL when it
/// is redone on every call (measured: twice the execution), so these
/// connections keep the generic plan of each prepared statement. A generic
/// plan made while a table is young could be a sequential scan, kept for
/// the life of the connection; `enable_seqscan=off` rules that out, and
/// the statements are written so that the primary key is the only index
/// that serves them. A batch's outcomes come as arrays joined to their
/// rows: with bitmap scans, hash and merge joins off, the plan made for an
/// empty table is still one index lookup per element, not a read of the
/// whole table (`tests/delivery/plans.rs` checks the plans).
///
/// Commits stay synchronous. `synchronous_commit=off` here measured 29 %
/// more deliveries per second, but a crash of PostgreSQL could then forget
/// the last ~600 ms of outcomes, and every mail sent in that window would
/// go out again: more than the one interrupted send per mailer that the
/// contract allows.
pub fn bookkeeping_config(mut config: tokio_postgres::Config) -> tokio_postgres::Config {
    config.options(format!(
        "{} -c enable_seqscan=off -c enable_bitmapscan=off -c enable_hashjoin=off -c enable_mergejoin=off",
        server_options("force_generic_plan")
    ));
    config.application_name("email-service-delivery");
    config
}

/// A pool that connects lazily: building it never fails, so the service
/// starts (and answers `/livez`) while the database is still down.
pub fn pool(config: tokio_postgres::Config, max_size: u32) -> Pool {
    bb8::Pool::builder()
        .max_size(max_size)
        .connection_timeout(CHECKOUT_TIMEOUT)
        // No `SELECT ''` round trip on every checkout: a connection that
        // died (PostgreSQL restarted) is closed, and bb8 discards closed
        // connections on their return; the one request that meets it first
        // answers 503, like any request during the outage.
        .test_on_check_out(false)
        .build_unchecked(conn::Manager::new(config))
}

pub async fn ping(pool: &Pool) -> Result<(), StoreError> {
    let conn = checkout(pool).await?;
    conn.simple_query("SELECT 1").await?;
    conn.release();
    Ok(())
}
