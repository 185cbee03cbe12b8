//! One SMTP connection per mailer, kept open between sends.
//!
//! lettre's pooled transport writes a message's body and its terminating
//! `<CRLF>.<CRLF>` as two writes on a socket with Nagle's algorithm on; the
//! server does not answer until the terminator arrives and delays its ACK
//! of the body, so every mail waits for the peer's delayed-ACK timer
//! (~40 ms on Linux): about 25 mails/s per connection, whatever the server.
//! Here the connection is built on our own `TcpStream` with `TCP_NODELAY`
//! and handed to lettre's SMTP client (`connect_with_transport`), which
//! still does EHLO, STARTTLS, AUTH and the transaction. With implicit TLS
//! (`EMAIL_USE_SSL`) the TLS session is opened here, on that same socket,
//! before lettre reads the greeting: lettre's own SMTPS connect would make
//! its own socket, without `TCP_NODELAY`.
//!
//! Trust: the bundled web PKI roots (as lettre's `tokio1-rustls-tls`), plus
//! the certificates of `EMAIL_TLS_CA_FILE`, for both STARTTLS and SMTPS.
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

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use lettre::address::Envelope;
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{
    AsyncSmtpConnection, AsyncTokioStream, Certificate, TlsParameters,
};
use lettre::transport::smtp::commands::{Data, Mail, Rcpt};
use lettre::transport::smtp::extension::{ClientId, Extension, MailBodyParameter, MailParameter};
use lettre::transport::smtp::response::Response;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

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
    /// The TLS handshake of implicit TLS failed (e.g. a certificate that
    /// does not verify).
    #[error("TLS with {0}: {1}")]
    Tls(String, std::io::Error),
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
    /// For STARTTLS, through lettre.
    starttls: TlsParameters,
    /// For implicit TLS, on our socket.
    implicit: Arc<rustls::ClientConfig>,
}

impl Settings {
    /// `hello` is the name given in EHLO (the sender's domain). Fails when
    /// the TLS settings cannot be built (a certificate of
    /// `EMAIL_TLS_CA_FILE` that is not a valid root).
    pub fn new(smtp: &SmtpConfig, hello: &str) -> Result<Self, String> {
        let security = if smtp.use_ssl {
            Security::Implicit
        } else if smtp.use_tls {
            Security::StartTls
        } else {
            Security::None
        };
        let ca = |e: &dyn std::fmt::Display| format!("EMAIL_TLS_CA_FILE: {e}");
        let mut starttls = TlsParameters::builder(smtp.host.clone());
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        for der in &smtp.tls_extra_roots {
            starttls = starttls
                .add_root_certificate(Certificate::from_der(der.clone()).map_err(|e| ca(&e))?);
            roots.add(der.clone().into()).map_err(|e| ca(&e))?;
        }
        let starttls = starttls
            .build_rustls()
            .map_err(|e| format!("TLS settings: {e}"))?;
        let implicit = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS settings: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
        Ok(Self {
            host: smtp.host.clone(),
            port: smtp.port,
            security,
            credentials: (!smtp.user.is_empty())
                .then(|| Credentials::new(smtp.user.clone(), smtp.password.expose().to_owned())),
            hello: ClientId::Domain(hello.to_owned()),
            starttls,
            implicit: Arc::new(implicit),
        })
    }

    fn addr(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    /// Our own socket, with `TCP_NODELAY` (see the module's comment).
    async fn tcp(&self) -> Result<TcpStream, SendError> {
        let stream = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| SendError::Connect(self.addr(), e))?;
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }

    async fn connect(&self) -> Result<AsyncSmtpConnection, SendError> {
        let stream: Box<dyn AsyncTokioStream> = match self.security {
            Security::Implicit => Box::new(self.implicit_tls(self.tcp().await?).await?),
            Security::None | Security::StartTls => Box::new(self.tcp().await?),
        };
        let mut conn = AsyncSmtpConnection::connect_with_transport(stream, &self.hello).await?;
        if self.security == Security::StartTls {
            conn.starttls(self.starttls.clone(), &self.hello).await?;
        }
        if let Some(credentials) = &self.credentials {
            conn.auth(&[Mechanism::Plain, Mechanism::Login], credentials)
                .await?;
        }
        Ok(conn)
    }

    /// TLS from the first byte, on `tcp`, as SMTPS servers expect.
    async fn implicit_tls(&self, tcp: TcpStream) -> Result<TlsTcp, SendError> {
        let name = ServerName::try_from(self.host.clone()).map_err(|e| {
            SendError::Tls(
                self.addr(),
                std::io::Error::new(std::io::ErrorKind::InvalidInput, e),
            )
        })?;
        tokio_rustls::TlsConnector::from(self.implicit.clone())
            .connect(name, tcp)
            .await
            .map(TlsTcp)
            .map_err(|e| SendError::Tls(self.addr(), e))
    }
}

/// A TLS session on our socket, as lettre takes a transport.
#[derive(Debug)]
struct TlsTcp(tokio_rustls::client::TlsStream<TcpStream>);

impl AsyncTokioStream for TlsTcp {
    fn peer_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.0.get_ref().0.peer_addr()
    }
}

impl AsyncRead for TlsTcp {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsTcp {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// A mailer's connection, if it has one.
#[derive(Default)]
pub struct Session {
    conn: Option<(AsyncSmtpConnection, Instant)>,
}

impl Session {
    /// Sends one mail. `gate` is awaited after the server has taken the
    /// envelope (`MAIL`, `RCPT`, `DATA`) and before the content and its
    /// final dot, which is what makes the server take the mail: a mailer
    /// opens its next transaction while its last outcome is being
    /// committed, and completes it only once it is.
    pub async fn send(
        &mut self,
        settings: &Settings,
        envelope: &Envelope,
        email: &[u8],
        gate: impl Future<Output = ()>,
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
        let result = send_gated(&mut conn, envelope, email, gate).await;
        if result.is_ok() {
            self.conn = Some((conn, Instant::now()));
        } else {
            // Whatever state the transaction is in, it is not reused.
            conn.abort().await;
        }
        Ok(result?)
    }
}

/// lettre's `send`, with `gate` awaited between the envelope and the
/// content. A mail this server could not take (non-ASCII without
/// `SMTPUTF8` or `8BITMIME`) goes through lettre's own `send` after the
/// gate, which refuses it with its error before writing anything.
async fn send_gated(
    conn: &mut AsyncSmtpConnection,
    envelope: &Envelope,
    email: &[u8],
    gate: impl Future<Output = ()>,
) -> Result<Response, SmtpError> {
    let info = conn.server_info();
    let non_ascii = |a: &lettre::Address| !AsRef::<str>::as_ref(a).is_ascii();
    let utf8 = envelope.from().is_some_and(non_ascii) || envelope.to().iter().any(non_ascii);
    let eight_bit = !email.is_ascii();
    if (utf8 && !info.supports_feature(Extension::SmtpUtfEight))
        || (eight_bit && !info.supports_feature(Extension::EightBitMime))
    {
        gate.await;
        return conn.send(envelope, email).await;
    }
    let mut options = Vec::new();
    if utf8 {
        options.push(MailParameter::SmtpUtfEight);
    }
    if eight_bit {
        options.push(MailParameter::Body(MailBodyParameter::EightBitMime));
    }
    conn.command(Mail::new(envelope.from().cloned(), options))
        .await?;
    for to in envelope.to() {
        conn.command(Rcpt::new(to.clone(), Vec::new())).await?;
    }
    conn.command(Data).await?;
    gate.await;
    conn.message(email).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(use_tls: bool, use_ssl: bool, port: u16) -> Settings {
        let smtp = SmtpConfig {
            host: "127.0.0.1".into(),
            port,
            use_tls,
            use_ssl,
            user: String::new(),
            password: crate::config::Secret::new(""),
            timeout: Duration::from_secs(5),
            tls_ca_file: None,
            tls_extra_roots: Vec::new(),
        };
        Settings::new(&smtp, "test.localhost").unwrap()
    }

    /// Every security mode, SMTPS included, connects on a `TCP_NODELAY`
    /// socket (the one [`Settings::connect`] hands to TLS and lettre):
    /// without it each mail waits for the server's delayed ACK.
    #[tokio::test]
    async fn every_mode_connects_with_tcp_nodelay() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        for (use_tls, use_ssl) in [(false, false), (true, false), (false, true)] {
            let s = settings(use_tls, use_ssl, port);
            let stream = s.tcp().await.unwrap();
            assert!(
                stream.nodelay().unwrap(),
                "TCP_NODELAY with {:?}",
                s.security
            );
        }
    }
}
