//! The HTTP surface on raw hyper: routing, body reading, error bodies and the
//! per-request log line. Handlers never touch PostgreSQL or Redis themselves;
//! they ask the actors, found through the actors' [`Registry`].
//!
//! Every path answers with and without its trailing slash, `HEAD` wherever
//! `GET`, and `OPTIONS` everywhere (CORS preflights, `cors.rs`). Every answer
//! but the admin page's files (`admin.rs`) is JSON, carries `X-Request-Id`
//! (the client's, when it sent a sane one), the CORS headers its origin may
//! have, and is logged once with method, path, status, duration and request id.

mod admin;
mod auth;
mod bulk;
mod control;
mod cors;
mod error;
mod health;
pub mod ingress;
mod listing;
mod messages;
pub mod ratelimit;
pub mod server;
mod webhooks;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use hyper::body::Incoming;
use hyper::header::{HeaderName, HeaderValue};
use hyper::{Method, Request};
use ractor::ActorRef;
use tracing::Instrument;

pub use error::{ApiError, HttpResponse};

use crate::actors::persistence::PersistenceMsg;
use crate::actors::registry::Registry;
use crate::config::Config;
use crate::domain::MessageKind;
use crate::metrics::{HttpLabels, Metrics, RouteLabels};
use control::ActionName;
use ratelimit::{Decision, RateLimiter};

/// Bodies above this size are refused with `413` (the contract's 64 KiB).
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// How long a handler waits for an actor before answering `503`. Persistence
/// bounds its own work below this, so this only fires if an actor is stuck.
pub const ACTOR_CALL_TIMEOUT_MS: u64 = 3000;

/// What every request handler can see.
pub struct AppContext {
    pub config: Arc<Config>,
    /// Where the actors are; the only way in from here.
    pub registry: Arc<Registry>,
    pub metrics: Arc<Metrics>,
    pub contact_limiter: RateLimiter,
}

impl AppContext {
    pub fn new(config: Arc<Config>, registry: Arc<Registry>, metrics: Arc<Metrics>) -> Self {
        Self {
            contact_limiter: RateLimiter::new(config.contact_rate_limit),
            config,
            registry,
            metrics,
        }
    }

    /// The persistence actor, or the `503` a request gets while it restarts.
    pub fn persistence(&self) -> Result<ActorRef<PersistenceMsg>, ApiError> {
        self.registry
            .persistence()
            .ok_or_else(|| ApiError::Unavailable("persistence is restarting".into()))
    }
}

/// The service's resources. Matching the path first and the method second
/// lets a known path with a wrong method answer 405, not 404.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Endpoint<'a> {
    Livez,
    Healthz,
    Metrics,
    Collection(MessageKind),
    Detail(MessageKind, &'a str),
    /// An operator's action on one message: `.../{id}/cancel/`, `.../{id}/retry/`.
    Action(MessageKind, &'a str, ActionName),
    /// The operator's inbox page and its files, under `/admin/`.
    Admin(admin::Asset),
    /// An operator's action on every message a filter matches:
    /// `/api/{kind}/cancel/`, `/api/{kind}/retry/` (never an id).
    Bulk(MessageKind, ActionName),
    /// The webhook outbox: `/api/webhooks/events/`.
    WebhookEvents,
    /// `/api/webhooks/events/{id}/retry/`.
    WebhookRetry(&'a str),
}

impl<'a> Endpoint<'a> {
    /// Every path answers with and without its trailing slash.
    fn parse(path: &'a str) -> Option<Self> {
        let trimmed = path.strip_prefix('/').unwrap_or(path);
        let trimmed = trimmed.strip_suffix('/').unwrap_or(trimmed);
        let segments: Vec<&str> = trimmed.split('/').collect();
        let kind = |name: &str| match name {
            "contact" => Some(MessageKind::Contact),
            "notify" => Some(MessageKind::Notify),
            _ => None,
        };
        match segments.as_slice() {
            ["livez"] => Some(Self::Livez),
            ["healthz"] => Some(Self::Healthz),
            ["metrics"] => Some(Self::Metrics),
            ["api", "webhooks", "events"] => Some(Self::WebhookEvents),
            ["api", "webhooks", "events", id, "retry"] if !id.is_empty() => {
                Some(Self::WebhookRetry(id))
            }
            ["admin", rest @ ..] => admin::Asset::parse(rest).map(Self::Admin),
            ["api", name] => kind(name).map(Self::Collection),
            ["api", name, action] if ActionName::parse(action).is_some() => {
                let action = ActionName::parse(action)?;
                kind(name).map(|k| Self::Bulk(k, action))
            }
            ["api", name, id] if !id.is_empty() => kind(name).map(|k| Self::Detail(k, id)),
            ["api", name, id, action] if !id.is_empty() => {
                let action = ActionName::parse(action)?;
                kind(name).map(|k| Self::Action(k, id, action))
            }
            _ => None,
        }
    }

    /// The route label for metrics: the path pattern, never the raw path.
    fn label(self) -> &'static str {
        match self {
            Self::Livez => "/livez",
            Self::Healthz => "/healthz",
            Self::Metrics => "/metrics",
            Self::Collection(MessageKind::Contact) => "/api/contact/",
            Self::Collection(MessageKind::Notify) => "/api/notify/",
            Self::Detail(MessageKind::Contact, _) => "/api/contact/{id}/",
            Self::Detail(MessageKind::Notify, _) => "/api/notify/{id}/",
            Self::Action(MessageKind::Contact, _, ActionName::Cancel) => {
                "/api/contact/{id}/cancel/"
            }
            Self::Action(MessageKind::Contact, _, ActionName::Retry) => "/api/contact/{id}/retry/",
            Self::Action(MessageKind::Notify, _, ActionName::Cancel) => "/api/notify/{id}/cancel/",
            Self::Action(MessageKind::Notify, _, ActionName::Retry) => "/api/notify/{id}/retry/",
            Self::Admin(asset) => asset.label(),
            Self::Bulk(MessageKind::Contact, ActionName::Cancel) => "/api/contact/cancel/",
            Self::Bulk(MessageKind::Contact, ActionName::Retry) => "/api/contact/retry/",
            Self::Bulk(MessageKind::Notify, ActionName::Cancel) => "/api/notify/cancel/",
            Self::Bulk(MessageKind::Notify, ActionName::Retry) => "/api/notify/retry/",
            Self::WebhookEvents => "/api/webhooks/events/",
            Self::WebhookRetry(_) => "/api/webhooks/events/{id}/retry/",
        }
    }

    fn allow(self) -> &'static str {
        match self {
            Self::Collection(_) => "GET, HEAD, POST, OPTIONS",
            Self::Action(..) | Self::Bulk(..) | Self::WebhookRetry(_) => "POST, OPTIONS",
            _ => "GET, HEAD, OPTIONS",
        }
    }

    fn allows(self, method: &Method) -> bool {
        let read = method == Method::GET || method == Method::HEAD;
        match self {
            Self::Collection(_) => read || method == Method::POST,
            Self::Action(..) | Self::Bulk(..) | Self::WebhookRetry(_) => method == Method::POST,
            _ => read,
        }
    }

    /// Only the public contact form, the probes and the admin page (its
    /// files hold no data; its data calls need the token) go without one.
    fn is_public(self, method: &Method) -> bool {
        match self {
            Self::Livez | Self::Healthz | Self::Admin(_) => true,
            Self::Collection(MessageKind::Contact) => method == Method::POST,
            _ => false,
        }
    }
}

/// The hyper service: never fails, every error is a response.
pub async fn handle(
    req: Request<Incoming>,
    ctx: Arc<AppContext>,
    peer: SocketAddr,
) -> Result<HttpResponse, Infallible> {
    let started = Instant::now();
    let request_id = request_id(&req);
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let origin = cors::origin(req.headers());
    let endpoint = Endpoint::parse(&path);
    let route = endpoint.map_or("unmatched", Endpoint::label);
    // A refusal may come before the body is read (415, 413, 401, 429...);
    // then the connection cannot be reused, and saying so spares a
    // keep-alive client from sending its next request into a closed socket.
    let has_body = req.headers().contains_key(hyper::header::TRANSFER_ENCODING)
        || req
            .headers()
            .get(hyper::header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0");

    // Every line logged while this request is served (a `503`, a store
    // error) carries its request id: the JSON format puts span fields at
    // the top level.
    let span = tracing::info_span!("request", request_id = %request_id);
    let mut resp = async {
        match endpoint {
            None => ApiError::NotFound("Not found.").into_response(),
            Some(endpoint) => route_to(endpoint, req, &ctx, peer, &request_id)
                .await
                .unwrap_or_else(|e| e.respond(Some(&request_id))),
        }
    }
    .instrument(span)
    .await;

    if let Ok(v) = HeaderValue::from_str(&request_id) {
        resp.headers_mut().insert("x-request-id", v);
    }
    cors::apply(&mut resp, origin.as_deref(), &ctx.config.cors);
    if has_body && resp.status().as_u16() >= 400 {
        resp.headers_mut()
            .insert(hyper::header::CONNECTION, HeaderValue::from_static("close"));
    }
    let status_code = resp.status().as_u16();
    let elapsed = started.elapsed();
    ctx.metrics
        .http_requests
        .get_or_create(&HttpLabels {
            route: route.to_owned(),
            method: method_label(&method).to_owned(),
            status: status_code.to_string(),
        })
        .inc();
    ctx.metrics
        .http_duration
        .get_or_create(&RouteLabels {
            route: route.to_owned(),
        })
        .observe(elapsed.as_secs_f64());
    tracing::info!(
        target: "email_service::http",
        method = %method,
        path = %path,
        status_code,
        duration_ms = elapsed.as_secs_f64() * 1000.0,
        request_id = %request_id,
        "request"
    );
    Ok(resp)
}

/// The method label for metrics: a standard method by its name, anything
/// else (`FOO`, `get`) as `OTHER`, so that clients cannot add series. With
/// the route labels (a fixed set and `unmatched`) and the status codes,
/// every label of the request metrics is bounded.
fn method_label(method: &Method) -> &'static str {
    const KNOWN: [&str; 9] = [
        "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE",
    ];
    KNOWN
        .into_iter()
        .find(|m| *m == method.as_str())
        .unwrap_or("OTHER")
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

async fn route_to(
    endpoint: Endpoint<'_>,
    req: Request<Incoming>,
    ctx: &Arc<AppContext>,
    peer: SocketAddr,
    request_id: &str,
) -> Result<HttpResponse, ApiError> {
    let method = req.method().clone();
    // Before the token check: a browser's preflight never carries one.
    if method == Method::OPTIONS {
        return Ok(cors::options(
            req.headers(),
            endpoint.allow(),
            &ctx.config.cors,
        ));
    }
    if !endpoint.allows(&method) {
        return Err(ApiError::MethodNotAllowed {
            method: method.to_string(),
            allow: endpoint.allow(),
        });
    }
    if !endpoint.is_public(&method) && !auth::authorized(&req, &ctx.config.api_tokens) {
        return Err(ApiError::Unauthorized);
    }
    match endpoint {
        Endpoint::Livez => Ok(health::livez()),
        Endpoint::Healthz => Ok(health::healthz(ctx).await),
        Endpoint::Metrics => Ok(health::metrics(ctx).await),
        Endpoint::Collection(MessageKind::Contact) if method == Method::POST => {
            let decision = ctx
                .contact_limiter
                .enabled()
                .then(|| ctx.contact_limiter.check(peer.ip()));
            let result = match decision {
                Some(d) if !d.allowed => {
                    ctx.metrics.rate_limited.inc();
                    Err(ApiError::RateLimited(d.reset))
                }
                _ => messages::accept(req, ctx, MessageKind::Contact).await,
            };
            let mut resp = result.unwrap_or_else(|e| e.respond(Some(request_id)));
            if let Some(d) = decision {
                rate_limit_headers(&mut resp, d);
            }
            Ok(resp)
        }
        Endpoint::Collection(kind) if method == Method::POST => {
            messages::accept(req, ctx, kind).await
        }
        Endpoint::Collection(kind) => listing::list(req, ctx, kind).await,
        Endpoint::Detail(kind, id) => messages::detail(ctx, kind, id).await,
        Endpoint::Action(kind, id, action) => {
            control::act(req, ctx, kind, id, action, request_id).await
        }
        Endpoint::Bulk(kind, action) => bulk::bulk(req, ctx, kind, action, request_id).await,
        Endpoint::Admin(asset) => Ok(admin::serve(asset, req.headers())),
        Endpoint::WebhookEvents => webhooks::list(req, ctx).await,
        Endpoint::WebhookRetry(id) => webhooks::retry(ctx, id).await,
    }
}

/// The IETF `RateLimit-Policy` / `RateLimit` fields (draft-ietf-httpapi-
/// ratelimit-headers) on every limited request; a refusal also carries
/// `Retry-After` (set by `ApiError::RateLimited`).
fn rate_limit_headers(resp: &mut HttpResponse, d: Decision) {
    let headers = resp.headers_mut();
    let policy = format!("\"contact\";q={};w=60", d.limit);
    let state = format!("\"contact\";r={};t={}", d.remaining, d.reset);
    for (name, value) in [("ratelimit-policy", policy), ("ratelimit", state)] {
        if let Ok(v) = HeaderValue::from_str(&value) {
            headers.insert(HeaderName::from_static(name), v);
        }
    }
}
