//! The HTTP surface on raw hyper: routing, body reading, error bodies and the
//! per-request log line. Handlers never touch PostgreSQL or Redis themselves;
//! they ask the actors through [`Peers`].
//!
//! Every path answers with and without its trailing slash. Every answer is
//! JSON, carries `X-Request-Id` (the client's, when it sent a sane one), and
//! is logged once with method, path, status, duration and request id.

mod error;
mod health;
mod messages;
pub mod server;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Instant;

use hyper::body::Incoming;
use hyper::header::HeaderValue;
use hyper::{Method, Request};
use ractor::ActorRef;

pub use error::{ApiError, HttpResponse};

use crate::actors::dispatcher::DispatcherMsg;
use crate::actors::mailer::MailerMsg;
use crate::actors::persistence::PersistenceMsg;
use crate::actors::supervisor::SupervisorMsg;
use crate::config::Config;
use crate::domain::MessageKind;

/// Bodies above this size are refused with `413` (the contract's 64 KiB).
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// How long a handler waits for an actor before answering `503`. Persistence
/// bounds its own work below this, so this only fires if an actor is stuck.
pub const ACTOR_CALL_TIMEOUT_MS: u64 = 3000;

/// The current address of each actor. The supervisor replaces an entry when it
/// restarts that actor, so handlers always reach the live instance.
#[derive(Default)]
pub struct Peers {
    persistence: RwLock<Option<ActorRef<PersistenceMsg>>>,
    supervisor: RwLock<Option<ActorRef<SupervisorMsg>>>,
    dispatcher: RwLock<Option<ActorRef<DispatcherMsg>>>,
    mailers: RwLock<Vec<Option<ActorRef<MailerMsg>>>>,
}

/// Reads a lock that a panicking writer may have poisoned: the data (an
/// actor address) is always whole, so poisoning carries no meaning here.
fn read<T: Clone>(lock: &RwLock<T>) -> T {
    lock.read().unwrap_or_else(|e| e.into_inner()).clone()
}

impl Peers {
    pub fn set_dispatcher(&self, actor: Option<ActorRef<DispatcherMsg>>) {
        *self.dispatcher.write().unwrap_or_else(|e| e.into_inner()) = actor;
    }

    pub fn dispatcher(&self) -> Option<ActorRef<DispatcherMsg>> {
        read(&self.dispatcher)
    }

    pub fn set_mailer(&self, index: usize, actor: Option<ActorRef<MailerMsg>>) {
        let mut mailers = self.mailers.write().unwrap_or_else(|e| e.into_inner());
        if mailers.len() <= index {
            mailers.resize(index + 1, None);
        }
        mailers[index] = actor;
    }

    pub fn mailer(&self, index: usize) -> Option<ActorRef<MailerMsg>> {
        read(&self.mailers).get(index).cloned().flatten()
    }

    pub fn mailers(&self) -> Vec<Option<ActorRef<MailerMsg>>> {
        read(&self.mailers)
    }

    pub fn set_persistence(&self, actor: ActorRef<PersistenceMsg>) {
        *self.persistence.write().unwrap_or_else(|e| e.into_inner()) = Some(actor);
    }

    pub fn set_supervisor(&self, actor: ActorRef<SupervisorMsg>) {
        *self.supervisor.write().unwrap_or_else(|e| e.into_inner()) = Some(actor);
    }

    pub fn persistence(&self) -> Result<ActorRef<PersistenceMsg>, ApiError> {
        read(&self.persistence)
            .ok_or_else(|| ApiError::Unavailable("persistence is restarting".into()))
    }

    pub fn supervisor(&self) -> Option<ActorRef<SupervisorMsg>> {
        read(&self.supervisor)
    }
}

/// What every request handler can see.
pub struct AppContext {
    pub config: Arc<Config>,
    pub peers: Arc<Peers>,
}

/// The hyper service: never fails, every error is a response.
pub async fn handle(
    req: Request<Incoming>,
    ctx: Arc<AppContext>,
    _peer: SocketAddr,
) -> Result<HttpResponse, Infallible> {
    let started = Instant::now();
    let request_id = request_id(&req);
    let method = req.method().clone();
    let path = req.uri().path().to_owned();

    let mut resp = match route(req, &ctx).await {
        Ok(resp) => resp,
        Err(e) => e.into_response(),
    };

    if let Ok(v) = HeaderValue::from_str(&request_id) {
        resp.headers_mut().insert("x-request-id", v);
    }
    let status_code = resp.status().as_u16();
    let duration_ms = started.elapsed().as_secs_f64() * 1000.0;
    tracing::info!(
        target: "email_service::http",
        method = %method,
        path = %path,
        status_code,
        duration_ms,
        request_id = %request_id,
        "request"
    );
    Ok(resp)
}

/// The client's `X-Request-Id` when it is short printable ASCII, else a new one.
fn request_id(req: &Request<Incoming>) -> String {
    req.headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string())
}

async fn route(req: Request<Incoming>, ctx: &AppContext) -> Result<HttpResponse, ApiError> {
    let path = req.uri().path();
    let trimmed = path.strip_prefix('/').unwrap_or(path);
    let trimmed = trimmed.strip_suffix('/').unwrap_or(trimmed);
    let segments: Vec<&str> = trimmed.split('/').collect();
    let method = req.method();

    let allow = |allow: &'static str| ApiError::MethodNotAllowed {
        method: method.to_string(),
        allow,
    };
    match segments.as_slice() {
        ["livez"] => match *method {
            Method::GET => Ok(health::livez()),
            _ => Err(allow("GET")),
        },
        ["healthz"] => match *method {
            Method::GET => Ok(health::healthz(ctx).await),
            _ => Err(allow("GET")),
        },
        ["api", endpoint] | ["api", endpoint, _] => {
            let kind = match *endpoint {
                "contact" => MessageKind::Contact,
                "notify" => MessageKind::Notify,
                _ => return Err(ApiError::NotFound("Not found.")),
            };
            match (segments.get(2), method) {
                (None, &Method::POST) => messages::accept(req, ctx, kind).await,
                (None, &Method::GET) => messages::list(req, ctx, kind).await,
                (None, _) => Err(allow("GET, POST")),
                (Some(id), &Method::GET) => messages::detail(ctx, kind, id).await,
                (Some(_), _) => Err(allow("GET")),
            }
        }
        _ => Err(ApiError::NotFound("Not found.")),
    }
}
