//! Talking to an in-process app over HTTP the way a well-behaved client does
//! (hyper-util's client), and the fully read [`TestResponse`].

use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::header::{HeaderName, HeaderValue};
use hyper::{HeaderMap, Method, Request};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

use super::TestApp;

/// No single HTTP exchange of a test should take longer than this.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// Without kept connections: a connection the service closed (on a timeout,
/// or at shutdown) must not fail the next request of a test.
pub fn client() -> HttpClient {
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(0)
        .build_http()
}

/// A response, fully read.
#[derive(Debug, Clone)]
pub struct TestResponse {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl TestResponse {
    /// The body as JSON; panics with the body text when it is not JSON.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "response body is not JSON ({e}): status {} body {:?}",
                self.status,
                self.text()
            )
        })
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Sends one request to `path_or_url` (a path, or an absolute URL such
    /// as a `next` link); a failure is returned, for tests that expect one.
    pub async fn try_send(
        &self,
        method: Method,
        path_or_url: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> Result<TestResponse, String> {
        let uri = if path_or_url.starts_with("http://") {
            path_or_url.to_owned()
        } else {
            self.url(path_or_url)
        };
        let mut req = Request::builder()
            .method(method)
            .uri(&uri)
            .body(Full::new(body))
            .map_err(|e| format!("building request to {uri}: {e}"))?;
        for (name, value) in headers {
            let name = HeaderName::from_bytes(name.as_bytes()).map_err(|e| e.to_string())?;
            let value = HeaderValue::from_bytes(value.as_bytes()).map_err(|e| e.to_string())?;
            req.headers_mut().append(name, value);
        }
        let exchange = async {
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| format!("{uri}: {e:?}"))?;
            let status = resp.status().as_u16();
            let headers = resp.headers().clone();
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| format!("{uri}: reading body: {e}"))?
                .to_bytes();
            Ok(TestResponse {
                status,
                headers,
                body,
            })
        };
        tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .map_err(|_| format!("{uri}: no answer within {REQUEST_TIMEOUT:?}"))?
    }

    pub async fn send(
        &self,
        method: Method,
        path_or_url: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> TestResponse {
        self.try_send(method, path_or_url, headers, body.into())
            .await
            .unwrap_or_else(|e| panic!("request failed: {e}"))
    }

    pub async fn get(&self, path_or_url: &str) -> TestResponse {
        self.send(Method::GET, path_or_url, &[], Bytes::new()).await
    }

    pub async fn healthz(&self) -> TestResponse {
        self.get("/healthz").await
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> TestResponse {
        self.post_json_with(path, &[], body).await
    }

    /// A JSON POST with extra headers (e.g. `Idempotency-Key`).
    pub async fn post_json_with(
        &self,
        path: &str,
        headers: &[(&str, &str)],
        body: &Value,
    ) -> TestResponse {
        let mut all = vec![("content-type", "application/json")];
        all.extend_from_slice(headers);
        let bytes = serde_json::to_vec(body).expect("serialize");
        self.send(Method::POST, path, &all, bytes).await
    }

    /// A POST with exactly these headers (no Content-Type added) and bytes.
    pub async fn post_raw(
        &self,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> TestResponse {
        self.send(Method::POST, path, headers, body).await
    }
}
