//! The connection pool, with one rule bb8 does not know by itself: a
//! connection is given back to the pool only when the work on it finished.
//!
//! A request's work runs under a deadline; when the deadline drops the work
//! mid-statement (a lock wait, a hung server, a network path that died),
//! the connection may still be busy or dead, and the next request to get it
//! would wait behind it. So each checkout marks its connection in use, the
//! work marks it free with [`Conn::release`] when it is done, and the
//! manager reports a connection still marked in use as broken: bb8 then
//! closes it and opens a fresh one.

use std::ops::{Deref, DerefMut};
use std::time::Duration;

use bb8::ManageConnection;
use bb8_postgres::PostgresConnectionManager;
use std::collections::HashMap;

use tokio_postgres::{Client, NoTls, Statement};

use super::error::StoreError;

pub type Pool = bb8::Pool<Manager>;

pub struct Manager(PostgresConnectionManager<NoTls>);

impl Manager {
    pub fn new(config: tokio_postgres::Config) -> Self {
        Self(PostgresConnectionManager::new(config, NoTls))
    }
}

/// A client, whether a piece of work on it is unfinished, and the
/// statements already prepared on it (hot statements are parsed and planned
/// once per connection, not on every call).
pub struct Tracked {
    client: Client,
    in_use: bool,
    prepared: HashMap<String, Statement>,
}

/// The longest a new connection may take, the login included.
/// tokio-postgres's `connect_timeout` bounds only the TCP connect: a server
/// (or a network path) that accepts and then never answers would hold the
/// attempt, and its pool slot, for good, and enough of them leave the pool
/// with no slot to connect with once the server answers again.
const CONNECT_WITHIN: Duration = Duration::from_secs(5);

impl ManageConnection for Manager {
    type Connection = Tracked;
    type Error = StoreError;

    async fn connect(&self) -> Result<Tracked, StoreError> {
        let client = tokio::time::timeout(CONNECT_WITHIN, self.0.connect())
            .await
            .map_err(|_| {
                StoreError::Unavailable(format!(
                    "connecting took over {} s",
                    CONNECT_WITHIN.as_secs()
                ))
            })??;
        Ok(Tracked {
            client,
            in_use: false,
            prepared: HashMap::new(),
        })
    }

    async fn is_valid(&self, conn: &mut Tracked) -> Result<(), StoreError> {
        Ok(self.0.is_valid(&mut conn.client).await?)
    }

    fn has_broken(&self, conn: &mut Tracked) -> bool {
        conn.in_use || conn.client.is_closed()
    }
}

/// A checked-out connection. Dropped without [`release`](Self::release),
/// it is discarded instead of pooled.
pub struct Conn<'a>(bb8::PooledConnection<'a, Manager>);

pub async fn checkout(pool: &Pool) -> Result<Conn<'_>, StoreError> {
    let mut conn = pool.get().await?;
    conn.in_use = true;
    Ok(Conn(conn))
}

impl Conn<'_> {
    /// The statement for `sql`, prepared on this connection the first time.
    pub async fn prepared(&mut self, sql: &str) -> Result<Statement, tokio_postgres::Error> {
        if let Some(s) = self.0.prepared.get(sql) {
            return Ok(s.clone());
        }
        let s = self.0.client.prepare(sql).await?;
        self.0.prepared.insert(sql.to_owned(), s.clone());
        Ok(s)
    }

    /// The work is done: the connection may serve the next request.
    pub fn release(mut self) {
        self.0.in_use = false;
    }
}

impl Deref for Conn<'_> {
    type Target = Client;
    fn deref(&self) -> &Client {
        &self.0.client
    }
}

impl DerefMut for Conn<'_> {
    fn deref_mut(&mut self) -> &mut Client {
        &mut self.0.client
    }
}
