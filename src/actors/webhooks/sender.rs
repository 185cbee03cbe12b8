//! One webhook attempt: a signed `POST` of the stored body to its receiver,
//! bounded by `WEBHOOK_TIMEOUT` from the connect to the end of the answer.
//!
//! The client is hyper's pooled one over rustls (`https`) or plain TCP
//! (`http`), trusting the bundled web PKI roots, as the SMTP side does. The
//! answer's body is read (up to a small cap) so that the connection can be
//! reused; what it says does not matter, only the status.

use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper::{Method, Request};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::domain::webhook::sign;
use crate::store::webhooks::Claimed;

/// More of an answer's body than this is not read.
const MAX_ANSWER: usize = 16 * 1024;

/// What one attempt came to.
#[derive(Debug, Clone)]
pub struct Attempt {
    /// The receiver's status code, when it answered.
    pub status: Option<u16>,
    /// Why it did not count as delivered (a non-2xx, a timeout, a refused
    /// connection); `None` when delivered.
    pub error: Option<String>,
    pub duration: Duration,
}

impl Attempt {
    pub fn delivered(&self) -> bool {
        self.error.is_none()
    }

    /// `410 Gone`: the receiver asks for no more of these.
    pub fn gone(&self) -> bool {
        self.status == Some(410)
    }
}

#[derive(Clone)]
pub struct Sender {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    key: Arc<Vec<u8>>,
    timeout: Duration,
}

impl Sender {
    pub fn new(key: Vec<u8>, timeout: Duration, max_idle: usize) -> Result<Self, String> {
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS settings: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(timeout));
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(max_idle)
            .build(https);
        Ok(Self {
            client,
            key: Arc::new(key),
            timeout,
        })
    }

    /// Posts `event` once, signed for this moment.
    pub async fn attempt(&self, event: &Claimed) -> Attempt {
        let started = Instant::now();
        let result = tokio::time::timeout(self.timeout, self.post(event)).await;
        let (status, error) = match result {
            Err(_) => (
                None,
                Some(format!(
                    "no answer within {} s (WEBHOOK_TIMEOUT)",
                    self.timeout.as_secs()
                )),
            ),
            Ok(Err(e)) => (None, Some(e)),
            Ok(Ok(code)) if (200..300).contains(&code) => (Some(code), None),
            Ok(Ok(code)) => (Some(code), Some(format!("the receiver answered {code}"))),
        };
        Attempt {
            status,
            error,
            duration: started.elapsed(),
        }
    }

    async fn post(&self, event: &Claimed) -> Result<u16, String> {
        let timestamp = chrono::Utc::now().timestamp();
        let signature = sign(
            &self.key,
            &event.event_id,
            timestamp,
            event.payload.as_bytes(),
        );
        let request = Request::builder()
            .method(Method::POST)
            .uri(&event.url)
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .header(hyper::header::USER_AGENT, "email-service-webhooks")
            .header("webhook-id", &event.event_id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(Full::new(Bytes::from(event.payload.clone())))
            .map_err(|e| format!("building the request: {e}"))?;
        let response = self
            .client
            .request(request)
            .await
            .map_err(|e| error_chain(&e))?;
        let status = response.status().as_u16();
        // Reading the answer lets the connection serve the next attempt; an
        // answer too long or broken only costs that connection.
        let _ = Limited::new(response.into_body(), MAX_ANSWER)
            .collect()
            .await;
        Ok(status)
    }
}

/// An error with its causes ("client error (Connect): tcp connect error:
/// Connection refused"), which is what an operator needs to see.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
