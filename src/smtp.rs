//! One SMTP connection per mailer, kept open between sends.
//!
//! lettre's pooled transport writes a message's body and its terminating
//! `<CRLF>.<CRLF>` as two writes on a socket with Nagle's algorithm on; the
//! server does not answer until the terminator arrives and delays its ACK
//! of the body, so every mail waits for the peer's delayed-ACK timer
//! (~40 ms on Linux): about 25 mails/s per connection, whatever the server.
//! Here the connection is built on our own `TcpStream` with `TCP_NODELAY`
//! and handed to lettre's SMTP client (`connect_with_transport`), which
//! still does EHLO, STARTTLS, AUTH and the transaction.
//!
//! A mailer owns its [`Session`]: it sends one mail at a time, so one
//! connection each is exactly what it can use. A connection is dropped after
//! any error (lettre has already sent QUIT), and one idle longer than
//! [`IDLE_LIMIT`] is closed before reuse (servers drop idle clients after a
//! minute or so). One idle longer than [`PROBE_AFTER`] is asked `NOOP`
//! first, and replaced if it does not answer, so a connection the server
//! closed meanwhile does not cost an attempt. A send that fails is never
//! repeated here: the failure may come after the server took the mail (a
//! reset while reading the reply to the final dot), and only the retry
//! schedule, which records every attempt, may send it again.

use std::time::{Duration, Instant};

use lettre::address::Envelope;
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{AsyncSmtpConnection, TlsParameters};
use lettre::transport::smtp::extension::ClientId;
use lettre::transport::smtp::response::Response;

use crate::config::SmtpConfig;

/// Longest a connection may sit unused before it is closed instead of reused.
pub const IDLE_LIMIT: Duration = Duration::from_secs(30);
/// A connection unused for longer is checked with `NOOP` before a send; in a
/// burst of mail the check would cost a round trip per mail for nothing.
pub const PROBE_AFTER: Duration = Duration::from_secs(1);

pub type SmtpError = lettre::transport::smtp::Error;

/// Why a send failed: an SMTP-level error from lettre (with the server's
/// reply when there was one), or our own TCP connect failing.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error(transparent)]
    Smtp(#[from] SmtpError),
    #[error("connecting to {0}: {1}")]
    Connect(String, std::io::Error),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Security {
    /// Plain SMTP (a local relay, a development inbox).
    None,
    /// `EMAIL_USE_TLS`: STARTTLS, required.
    StartTls,
    /// `EMAIL_USE_SSL`: TLS from the first byte (SMTPS).
    Implicit,
}

/// How to reach the server; shared by all mailers.
#[derive(Clone)]
pub struct Settings {
    host: String,
    port: u16,
    security: Security,
    credentials: Option<Credentials>,
    hello: ClientId,
}

impl Settings {
    /// `hello` is the name given in EHLO (the sender's domain).
    pub fn new(smtp: &SmtpConfig, hello: &str) -> Self {
        let security = if smtp.use_ssl {
            Security::Implicit
        } else if smtp.use_tls {
            Security::StartTls
        } else {
            Security::None
        };
        Self {
            host: smtp.host.clone(),
            port: smtp.port,
            security,
            credentials: (!smtp.user.is_empty())
                .then(|| Credentials::new(smtp.user.clone(), smtp.password.expose().to_owned())),
            hello: ClientId::Domain(hello.to_owned()),
        }
    }

    async fn connect(&self) -> Result<AsyncSmtpConnection, SendError> {
        let tls = || TlsParameters::new(self.host.clone());
        let mut conn = match self.security {
            // TLS wraps the socket before the greeting, inside lettre.
            Security::Implicit => {
                AsyncSmtpConnection::connect_tokio1(
                    (self.host.as_str(), self.port),
                    None,
                    &self.hello,
                    Some(tls()?),
                    None,
                )
                .await?
            }
            Security::None | Security::StartTls => {
                let stream = tokio::net::TcpStream::connect((self.host.as_str(), self.port))
                    .await
                    .map_err(|e| SendError::Connect(format!("{}:{}", self.host, self.port), e))?;
                let _ = stream.set_nodelay(true);
                AsyncSmtpConnection::connect_with_transport(Box::new(stream), &self.hello).await?
            }
        };
        if self.security == Security::StartTls {
            conn.starttls(tls()?, &self.hello).await?;
        }
        if let Some(credentials) = &self.credentials {
            conn.auth(&[Mechanism::Plain, Mechanism::Login], credentials)
                .await?;
        }
        Ok(conn)
    }
}

/// A mailer's connection, if it has one.
#[derive(Default)]
pub struct Session {
    conn: Option<(AsyncSmtpConnection, Instant)>,
}

impl Session {
    pub async fn send(
        &mut self,
        settings: &Settings,
        envelope: &Envelope,
        email: &[u8],
    ) -> Result<Response, SendError> {
        let reused = match self.conn.take() {
            Some((conn, last)) if !conn.has_broken() && last.elapsed() < PROBE_AFTER => Some(conn),
            Some((mut conn, last)) if !conn.has_broken() && last.elapsed() < IDLE_LIMIT => {
                conn.test_connected().await.then_some(conn)
            }
            Some((mut conn, _)) => {
                let _ = conn.quit().await;
                None
            }
            None => None,
        };
        let mut conn = match reused {
            Some(c) => c,
            None => settings.connect().await?,
        };
        let result = conn.send(envelope, email).await;
        if result.is_ok() {
            self.conn = Some((conn, Instant::now()));
        }
        Ok(result?)
    }
}
