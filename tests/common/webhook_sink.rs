//! A webhook receiver for the tests, on 127.0.0.1, that records every
//! request it gets (headers, body, what it answered) and answers as the test
//! says: `204`, any status (`500`, `410`), slowly, never, or not at all
//! (port closed, then back on the same port).

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

#[derive(Debug, Clone, PartialEq)]
pub enum HookMode {
    /// `204 No Content`.
    Ok,
    /// This status, always (`500`, `410`...).
    Status(u16),
    /// Wait this long, then `204`.
    Slow(Duration),
    /// Never answer.
    Hang,
}

#[derive(Debug, Clone)]
pub struct Hook {
    /// Header names in lower case.
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
    /// What the sink answered; `None` for a request it never answered.
    pub answered: Option<u16>,
    pub at: Instant,
}

impl Hook {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("a webhook body is JSON")
    }

    pub fn id(&self) -> &str {
        &self.headers["webhook-id"]
    }

    /// `data.uuid` of the body: the message the event is about.
    pub fn message(&self) -> String {
        self.json()["data"]["uuid"]
            .as_str()
            .unwrap_or("")
            .to_owned()
    }

    pub fn event_type(&self) -> String {
        self.json()["type"].as_str().unwrap_or("").to_owned()
    }
}

struct State {
    mode: HookMode,
    hooks: Vec<Hook>,
}

pub struct WebhookSink {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    server: Mutex<Option<JoinHandle<()>>>,
}

impl WebhookSink {
    pub async fn start(mode: HookMode) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind sink");
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State {
            mode,
            hooks: Vec::new(),
        }));
        let server = tokio::spawn(serve(listener, state.clone()));
        Self {
            addr,
            state,
            server: Mutex::new(Some(server)),
        }
    }

    /// A sink with nothing listening (yet): [`up`](Self::up) starts it.
    pub async fn down_from_start(mode: HookMode) -> Self {
        let sink = Self::start(mode).await;
        sink.down();
        sink
    }

    pub fn url(&self) -> String {
        format!("http://{}/hooks", self.addr)
    }

    pub fn set_mode(&self, mode: HookMode) {
        self.state.lock().unwrap().mode = mode;
    }

    /// Closes the port and cuts open connections: connections are refused
    /// until [`up`](Self::up).
    pub fn down(&self) {
        if let Some(server) = self.server.lock().unwrap().take() {
            server.abort();
        }
    }

    /// Listens again on the same port.
    pub async fn up(&self) {
        let listener = super::smtp_sink::rebind(self.addr).await;
        let server = tokio::spawn(serve(listener, self.state.clone()));
        *self.server.lock().unwrap() = Some(server);
    }

    /// Every request so far, in arrival order.
    pub fn hooks(&self) -> Vec<Hook> {
        self.state.lock().unwrap().hooks.clone()
    }

    /// The requests answered with a 2xx.
    pub fn delivered(&self) -> Vec<Hook> {
        self.hooks()
            .into_iter()
            .filter(|h| h.answered.is_some_and(|s| (200..300).contains(&s)))
            .collect()
    }
}

impl Drop for WebhookSink {
    fn drop(&mut self) {
        self.down();
    }
}

async fn serve(listener: TcpListener, state: Arc<Mutex<State>>) {
    super::smtp_sink::serve_each(listener, |stream| {
        let state = state.clone();
        async move {
            let service = service_fn(move |req| handle(req, state.clone()));
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        }
    })
    .await;
}

async fn handle(
    req: Request<Incoming>,
    state: Arc<Mutex<State>>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let headers = req
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_owned(),
                v.to_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes().to_vec())
        .unwrap_or_default();
    let (mode, index) = {
        let mut s = state.lock().unwrap();
        s.hooks.push(Hook {
            headers,
            body,
            answered: None,
            at: Instant::now(),
        });
        (s.mode.clone(), s.hooks.len() - 1)
    };
    let status = match mode {
        HookMode::Ok => 204,
        HookMode::Status(code) => code,
        HookMode::Slow(wait) => {
            tokio::time::sleep(wait).await;
            204
        }
        HookMode::Hang => std::future::pending().await,
    };
    state.lock().unwrap().hooks[index].answered = Some(status);
    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
    Ok(resp)
}
