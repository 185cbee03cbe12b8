//! An SMTP server for the tests that speaks TLS: STARTTLS or implicit TLS
//! (SMTPS) with a certificate made at start (a private CA and a leaf for
//! `127.0.0.1` and `localhost`, whose CA the service trusts through
//! `EMAIL_TLS_CA_FILE`), and optionally AUTH PLAIN/LOGIN with one user. It
//! refuses mail before TLS (and before AUTH when it has a user), and
//! records for every accepted mail whether the session was TLS and who
//! authenticated, so a test can tell the mail really came that way.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tls {
    /// Plain greeting, `STARTTLS` offered and required before `MAIL`.
    StartTls,
    /// TLS from the first byte.
    Implicit,
}

/// The one user the sink knows, and the mechanisms it offers (`"PLAIN
/// LOGIN"`, `"LOGIN"`).
#[derive(Debug, Clone)]
pub struct Auth {
    pub user: String,
    pub password: String,
    pub mechanisms: String,
}

#[derive(Debug, Clone)]
pub struct TlsReceived {
    /// The session was encrypted when the mail came.
    pub tls: bool,
    /// Who authenticated, and how (`PLAIN`, `LOGIN`).
    pub auth: Option<(String, String)>,
    pub rcpt: Vec<String>,
    pub raw: String,
}

#[derive(Default)]
struct State {
    received: Vec<TlsReceived>,
    auth_failures: usize,
    handshake_failures: Vec<String>,
}

pub struct TlsSink {
    pub addr: SocketAddr,
    dir: PathBuf,
    state: Arc<Mutex<State>>,
    server: JoinHandle<()>,
}

struct Server {
    tls: Tls,
    auth: Option<Auth>,
    acceptor: TlsAcceptor,
    state: Arc<Mutex<State>>,
}

impl TlsSink {
    pub async fn start(tls: Tls, auth: Option<Auth>) -> Self {
        let (ca_pem, acceptor) = certificates();
        let dir = std::env::temp_dir().join(format!("tls-sink-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("sink dir");
        std::fs::write(dir.join("ca.pem"), ca_pem).expect("write ca.pem");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind sink");
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State::default()));
        let server = Arc::new(Server {
            tls,
            auth,
            acceptor,
            state: state.clone(),
        });
        let server = tokio::spawn(serve(listener, server));
        Self {
            addr,
            dir,
            state,
            server,
        }
    }

    /// The PEM file of the CA that signed the sink's certificate.
    pub fn ca_file(&self) -> String {
        self.dir.join("ca.pem").to_string_lossy().into_owned()
    }

    pub fn received(&self) -> Vec<TlsReceived> {
        self.state.lock().unwrap().received.clone()
    }

    /// `AUTH` attempts answered `535`.
    pub fn auth_failures(&self) -> usize {
        self.state.lock().unwrap().auth_failures
    }

    /// TLS handshakes that failed, with the server side's reason.
    pub fn handshake_failures(&self) -> Vec<String> {
        self.state.lock().unwrap().handshake_failures.clone()
    }
}

impl Drop for TlsSink {
    fn drop(&mut self) {
        self.server.abort();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A CA, and a server configuration with a leaf it signed; returns the CA's
/// PEM.
fn certificates() -> (String, TlsAcceptor) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "email-service test CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let leaf_params =
        CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).unwrap();
    let leaf = leaf_params
        .signed_by(&leaf_key, &Issuer::from_params(&ca_params, &ca_key))
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from(leaf.der().to_vec())],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der())),
        )
        .unwrap();
    (ca.pem(), TlsAcceptor::from(Arc::new(config)))
}

async fn serve(listener: TcpListener, server: Arc<Server>) {
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        let server = server.clone();
        connections.spawn(async move {
            if server.tls == Tls::Implicit {
                if let Some(tls) = server.handshake(tcp).await {
                    server.session(BufReader::new(tls), true).await;
                }
            } else if let Some(reader) = server.session(BufReader::new(tcp), false).await
                && let Some(tls) = server.handshake(reader.into_inner()).await
            {
                server.session(BufReader::new(tls), true).await;
            }
        });
        while connections.try_join_next().is_some() {}
    }
}

/// Sends a reply; false when the client is gone.
async fn reply<S: AsyncRead + AsyncWrite + Unpin>(s: &mut BufReader<S>, text: &str) -> bool {
    s.get_mut().write_all(text.as_bytes()).await.is_ok() && s.get_mut().flush().await.is_ok()
}

/// The next line, or `None` when the client is gone.
async fn line<S: AsyncRead + Unpin>(s: &mut BufReader<S>) -> Option<String> {
    let mut line = String::new();
    match s.read_line(&mut line).await {
        Ok(0) | Err(_) => None,
        Ok(_) => Some(line),
    }
}

fn decode(b64: &str) -> String {
    String::from_utf8_lossy(&B64.decode(b64.trim()).unwrap_or_default()).into_owned()
}

impl Server {
    async fn handshake<S>(&self, tcp: S) -> Option<tokio_rustls::server::TlsStream<S>>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        match self.acceptor.accept(tcp).await {
            Ok(tls) => Some(tls),
            Err(e) => {
                let mut state = self.state.lock().unwrap();
                state.handshake_failures.push(e.to_string());
                None
            }
        }
    }

    /// One SMTP session. Returns the stream when the client asked for
    /// STARTTLS (after the `220`), to be wrapped and served again.
    async fn session<S>(&self, mut s: BufReader<S>, tls: bool) -> Option<BufReader<S>>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        if (tls == (self.tls == Tls::Implicit)) && !reply(&mut s, "220 sink ESMTP test\r\n").await {
            return None;
        }
        let mut authed: Option<(String, String)> = None;
        let mut rcpt = Vec::new();
        loop {
            let line = line(&mut s).await?;
            let upper = line.trim_end().to_ascii_uppercase();
            let text: String = if upper.starts_with("EHLO") {
                let mut ehlo = String::from("250-sink\r\n");
                if !tls {
                    ehlo.push_str("250-STARTTLS\r\n");
                }
                if let (true, Some(auth)) = (tls, &self.auth) {
                    ehlo.push_str(&format!("250-AUTH {}\r\n", auth.mechanisms));
                }
                ehlo + "250 8BITMIME\r\n"
            } else if upper == "STARTTLS" && !tls && self.tls == Tls::StartTls {
                return reply(&mut s, "220 2.0.0 Ready to start TLS\r\n")
                    .await
                    .then_some(s);
            } else if upper.starts_with("AUTH ") {
                if !tls {
                    "538 5.7.11 Encryption required\r\n".into()
                } else {
                    let (ok, who) = self.auth(&mut s, line.trim_end()).await?;
                    if ok {
                        authed = who;
                        "235 2.7.0 Authentication successful\r\n".into()
                    } else {
                        self.state.lock().unwrap().auth_failures += 1;
                        "535 5.7.8 Authentication credentials invalid\r\n".into()
                    }
                }
            } else if upper.starts_with("MAIL FROM") {
                if !tls {
                    "530 5.7.0 Must issue a STARTTLS command first\r\n".into()
                } else if self.auth.is_some() && authed.is_none() {
                    "530 5.7.0 Authentication required\r\n".into()
                } else {
                    rcpt.clear();
                    "250 2.1.0 Ok\r\n".into()
                }
            } else if upper.starts_with("RCPT TO") {
                rcpt.push(line.trim_end()[8..].trim().to_owned());
                "250 2.1.5 Ok\r\n".into()
            } else if upper == "DATA" {
                if !reply(&mut s, "354 End data with <CR><LF>.<CR><LF>\r\n").await {
                    return None;
                }
                let mut raw = String::new();
                loop {
                    let l = self::line(&mut s).await?;
                    if l == ".\r\n" || l == ".\n" {
                        break;
                    }
                    raw.push_str(l.strip_prefix('.').unwrap_or(&l));
                }
                self.state.lock().unwrap().received.push(TlsReceived {
                    tls,
                    auth: authed.clone(),
                    rcpt: rcpt.clone(),
                    raw,
                });
                "250 2.0.0 Ok: queued\r\n".into()
            } else if upper.starts_with("RSET") || upper.starts_with("NOOP") {
                "250 2.0.0 Ok\r\n".into()
            } else if upper.starts_with("QUIT") {
                reply(&mut s, "221 2.0.0 Bye\r\n").await;
                return None;
            } else {
                "502 5.5.2 Command not recognized\r\n".into()
            };
            if !reply(&mut s, &text).await {
                return None;
            }
        }
    }

    /// Runs an `AUTH` exchange; returns whether the credentials match, and
    /// who with which mechanism. `None` when the client is gone.
    async fn auth<S>(
        &self,
        s: &mut BufReader<S>,
        command: &str,
    ) -> Option<(bool, Option<(String, String)>)>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let Some(auth) = &self.auth else {
            return Some((false, None));
        };
        let mut words = command.split_whitespace().skip(1);
        let mechanism = words.next().unwrap_or_default().to_ascii_uppercase();
        let initial = words.next().map(str::to_owned);
        if !auth.mechanisms.split(' ').any(|m| m == mechanism) {
            return Some((false, None));
        }
        let (user, password) = if mechanism == "PLAIN" {
            let response = match initial {
                Some(r) => r,
                None => {
                    reply(s, "334 \r\n").await;
                    line(s).await?
                }
            };
            let plain = decode(&response);
            let mut parts = plain.split('\0').skip(1);
            (
                parts.next().unwrap_or_default().to_owned(),
                parts.next().unwrap_or_default().to_owned(),
            )
        } else {
            let user = match initial {
                Some(u) => decode(&u),
                None => {
                    reply(s, &format!("334 {}\r\n", B64.encode("Username:"))).await;
                    decode(&line(s).await?)
                }
            };
            reply(s, &format!("334 {}\r\n", B64.encode("Password:"))).await;
            (user, decode(&line(s).await?))
        };
        let ok = user == auth.user && password == auth.password;
        Some((ok, ok.then_some((user, mechanism))))
    }
}
