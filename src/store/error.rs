//! The store's one error type, and the line between "the database is
//! unavailable" (the client gets a `503` and may retry) and "the query was
//! wrong" (a bug: requests are validated before they reach SQL).
//!
//! Errors carry the server's own message, detail and SQLSTATE, because
//! tokio-postgres alone prints only "db error" and the log is what an
//! operator has to go on.

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// The work was sent but its end was not seen (a deadline, a lost
    /// connection): it may have been committed.
    #[error("database did not confirm: {0}")]
    InDoubt(String),
    #[error("database error: {}", describe(.0))]
    Query(#[from] tokio_postgres::Error),
}

/// tokio-postgres prints only "db error" for a server error; the server's
/// message, detail and code are what an operator needs in the log.
fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => {
            let mut s = format!("{}: {} ({})", db.severity(), db.message(), db.code().code());
            if let Some(detail) = db.detail() {
                s.push_str(": ");
                s.push_str(detail);
            }
            s
        }
        None => {
            let mut s = e.to_string();
            let mut source = std::error::Error::source(e);
            while let Some(cause) = source {
                s.push_str(": ");
                s.push_str(&cause.to_string());
                source = cause.source();
            }
            s
        }
    }
}

impl From<bb8::RunError<StoreError>> for StoreError {
    fn from(e: bb8::RunError<StoreError>) -> Self {
        match e {
            bb8::RunError::User(Self::Query(e)) => Self::Unavailable(describe(&e)),
            bb8::RunError::User(e) => e,
            bb8::RunError::TimedOut => {
                Self::Unavailable("timed out waiting for a connection".into())
            }
        }
    }
}

impl StoreError {
    /// Whether the database (not the request) is at fault: the caller answers
    /// `503` for these. A query error caused by the request itself is a bug,
    /// because validation runs first.
    pub fn is_unavailable(&self) -> bool {
        match self {
            Self::Unavailable(_) | Self::InDoubt(_) => true,
            Self::Query(e) => {
                e.is_closed()
                    || e.as_db_error().is_none()
                    || matches!(
                        e.code().map(|c| c.code()),
                        Some(c) if c.starts_with("08") || c.starts_with("57") || c.starts_with("53")
                    )
            }
        }
    }

    /// Whether the work may have been committed despite the error: the
    /// statement had been sent when the connection broke or the deadline
    /// passed. A server error, or no connection at all, means it was not.
    pub fn may_have_committed(&self) -> bool {
        match self {
            Self::Unavailable(_) => false,
            Self::InDoubt(_) => true,
            Self::Query(e) => e.is_closed() || e.as_db_error().is_none(),
        }
    }
}
