//! `/api/contact/` and `/api/notify/`: accept (POST) and detail (GET), and
//! what the other handlers share: reading a JSON body, the
//! `Idempotency-Key` header and its replay, the query string, links.
//!
//! The accept path checks, in order: the `Idempotency-Key` header (400),
//! media type (415), size (413, also for chunked bodies), JSON syntax and
//! shape (400), every field (400 with all errors), and only then asks
//! `Persistence`, so bad input is never stored.

use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::header::{CONTENT_LENGTH, CONTENT_TYPE, HOST, HeaderValue};
use hyper::{Request, StatusCode};
use ractor::call_t;
use serde_json::Value;

use super::error::{json, json_response};
use super::{ACTOR_CALL_TIMEOUT_MS, ApiError, AppContext, HttpResponse, MAX_BODY_BYTES};
use crate::actors::persistence::PersistenceMsg;
use crate::actors::protocol::DispatcherMsg;
use crate::domain::{FieldErrors, IdempotencyKey, MessageKind, NewMessage};
use crate::store::{AcceptOutcome, AcceptRequest, MessageRef, StoreError};

/// How long an accept may take in persistence, waiting for its commit
/// included; below [`ACTOR_CALL_TIMEOUT_MS`] so that the answer always
/// arrives before the handler would give up.
const ACCEPT_BUDGET: std::time::Duration = std::time::Duration::from_millis(2500);

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        if e.is_unavailable() {
            ApiError::Unavailable(e.to_string())
        } else {
            ApiError::Internal(e.to_string())
        }
    }
}

impl<T> From<ractor::RactorErr<T>> for ApiError {
    fn from(e: ractor::RactorErr<T>) -> Self {
        ApiError::Unavailable(match e {
            ractor::RactorErr::Timeout => "the database did not answer in time".into(),
            _ => "persistence is restarting".into(),
        })
    }
}

pub async fn accept(
    req: Request<Incoming>,
    ctx: &AppContext,
    kind: MessageKind,
) -> Result<HttpResponse, ApiError> {
    let key = idempotency_key(&req)?;
    let body = read_json_object(req).await?;
    let message = NewMessage::parse(kind, &body).map_err(ApiError::Validation)?;
    let scheduled = message.scheduled_after(chrono::Utc::now());
    let request = AcceptRequest {
        fingerprint: message.fingerprint(),
        message,
        key,
        key_ttl: ctx.config.idempotency_ttl,
    };
    let persistence = ctx.persistence()?;
    // Persistence answers by this deadline, well before the call below
    // gives up, so a request whose commit may have happened is answered
    // from what persistence knows, not from a timeout here.
    let deadline = tokio::time::Instant::now() + ACCEPT_BUDGET;
    let outcome = match call_t!(
        persistence,
        PersistenceMsg::Accept,
        ACTOR_CALL_TIMEOUT_MS,
        Box::new(request),
        deadline
    ) {
        Ok(Ok(outcome)) => outcome,
        Ok(Err(e)) if e.may_have_committed() => return Err(ApiError::MaybeStored(e.to_string())),
        Ok(Err(e)) => return Err(e.into()),
        // Persistence died or hung holding the request: it may have
        // committed it.
        Err(e) => return Err(ApiError::MaybeStored(e.to_string())),
    };
    Ok(match outcome {
        AcceptOutcome::Accepted { status, body, id } => {
            ctx.metrics
                .accepted
                .get_or_create(&crate::metrics::KindLabels {
                    kind: kind.as_str().to_owned(),
                })
                .inc();
            // Wake a mailer now, or for a `send_at` ahead schedule it then
            // (a wake-up now would be refused by the claim, and lost). If
            // this is lost (Redis down, dispatcher restarting) the message
            // is still committed, and the reconciler re-feeds it from
            // PostgreSQL once due.
            if let Some(d) = ctx.registry.dispatcher() {
                let _ = d.cast(match scheduled {
                    Some(t) => DispatcherMsg::Schedule(kind, id, t.timestamp_millis()),
                    None => DispatcherMsg::Enqueue(kind, id),
                });
            }
            json_response(code(status), body)
        }
        AcceptOutcome::Replayed { status, body } => replayed(status, body),
        AcceptOutcome::Conflict(m) => return Err(ApiError::Unprocessable(m)),
    })
}

/// The `Idempotency-Key` header, if any; a bad one is a `400`.
pub(super) fn idempotency_key(req: &Request<Incoming>) -> Result<Option<IdempotencyKey>, ApiError> {
    req.headers()
        .get("idempotency-key")
        .map(|v| {
            IdempotencyKey::parse(v.as_bytes())
                .map_err(|m| ApiError::Validation(FieldErrors::single("Idempotency-Key", m)))
        })
        .transpose()
}

/// A stored answer given again, marked as such.
pub(super) fn replayed(status: u16, body: String) -> HttpResponse {
    let mut resp = json_response(code(status), body);
    resp.headers_mut()
        .insert("idempotent-replayed", HeaderValue::from_static("true"));
    resp
}

fn code(status: u16) -> StatusCode {
    StatusCode::from_u16(status).unwrap_or(StatusCode::ACCEPTED)
}

/// Reads at most [`MAX_BODY_BYTES`] and parses a JSON object.
pub(super) async fn read_json_object(
    req: Request<Incoming>,
) -> Result<serde_json::Map<String, Value>, ApiError> {
    let content_type = req
        .headers()
        .get(CONTENT_TYPE)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .unwrap_or_default();
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if essence != "application/json" {
        return Err(ApiError::UnsupportedMediaType(content_type));
    }
    // Refuse a declared oversize body without reading it.
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        return Err(ApiError::PayloadTooLarge);
    }
    let bytes = match Limited::new(req.into_body(), MAX_BODY_BYTES)
        .collect()
        .await
    {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            return Err(ApiError::PayloadTooLarge);
        }
        Err(e) => {
            return Err(ApiError::BadRequest(format!(
                "Could not read the body: {e}"
            )));
        }
    };
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(other) => Err(ApiError::BadRequest(format!(
            "Invalid data. Expected a JSON object, but got {}.",
            json_type(&other)
        ))),
        Err(e) => Err(ApiError::BadRequest(format!("JSON parse error - {e}"))),
    }
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "str",
        Value::Array(_) => "list",
        Value::Object(_) => "dict",
    }
}

pub async fn detail(
    ctx: &AppContext,
    kind: MessageKind,
    raw_id: &str,
) -> Result<HttpResponse, ApiError> {
    let at = MessageRef::parse(raw_id).ok_or(ApiError::NotFound("Not found."))?;
    let persistence = ctx.persistence()?;
    match call_t!(
        persistence,
        PersistenceMsg::Get,
        ACTOR_CALL_TIMEOUT_MS,
        kind,
        at
    )?? {
        Some(view) => {
            // A message whose mail cannot be built (its attempts say why)
            // shows `mail: null`.
            let mail = crate::mail::built(view.uuid, &view.content, &ctx.config).ok();
            Ok(json(StatusCode::OK, &Detail { view: &view, mail }))
        }
        None => Err(ApiError::NotFound("Not found.")),
    }
}

/// The detail view: the message, and the mail it becomes, built by the code
/// that builds each attempt's.
#[derive(serde::Serialize)]
struct Detail<'a> {
    #[serde(flatten)]
    view: &'a crate::store::MessageView,
    mail: Option<crate::mail::BuiltMail>,
}

/// `scheme://host/path` of this request, for the `next`/`previous` links. The
/// scheme follows `X-Forwarded-Proto` so links stay right behind a TLS proxy.
pub(super) fn base_url(req: &Request<Incoming>, ctx: &AppContext) -> String {
    let scheme = match req
        .headers()
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
    {
        Some("https") => "https",
        _ => "http",
    };
    let host = req
        .headers()
        .get(HOST)
        .and_then(|v| v.to_str().ok())
        .filter(|h| {
            !h.is_empty()
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b))
        })
        .map(str::to_owned)
        .unwrap_or_else(|| format!("localhost:{}", ctx.config.port));
    format!("{scheme}://{host}{}", req.uri().path())
}

/// The query string as ordered `(name, value)` pairs, decoded.
pub(super) struct QueryParams(Vec<(String, String)>);

impl QueryParams {
    pub(super) fn parse(query: &str) -> Self {
        Self(
            form_urlencoded::parse(query.as_bytes())
                .into_owned()
                .collect(),
        )
    }

    /// The last value given for `name`, as Django's `QueryDict.get` does.
    pub(super) fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// This request's URL with `cursor` set to `token`, and no `page`.
    pub(super) fn url_with_cursor(&self, base: &str, token: &str) -> String {
        let mut query = form_urlencoded::Serializer::new(String::new());
        query.extend_pairs(self.0.iter().filter(|(k, _)| k != "page" && k != "cursor"));
        query.append_pair("cursor", token);
        format!("{base}?{}", query.finish())
    }

    /// This request's URL with `page` replaced (or removed, for page 1).
    pub(super) fn url_with_page(&self, base: &str, page: Option<u64>) -> String {
        let mut query = form_urlencoded::Serializer::new(String::new());
        query.extend_pairs(self.0.iter().filter(|(k, _)| k != "page"));
        if let Some(p) = page {
            query.append_pair("page", &p.to_string());
        }
        let query = query.finish();
        if query.is_empty() {
            base.to_owned()
        } else {
            format!("{base}?{query}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_links_keep_other_parameters() {
        let q = QueryParams::parse("status=queued&page=2&page_size=5");
        assert_eq!(q.get("page"), Some("2"));
        assert_eq!(
            q.url_with_page("http://h/api/notify/", Some(3)),
            "http://h/api/notify/?status=queued&page_size=5&page=3"
        );
        assert_eq!(
            q.url_with_page("http://h/api/notify/", None),
            "http://h/api/notify/?status=queued&page_size=5"
        );
        assert_eq!(QueryParams::parse("a=x%20y+z").get("a"), Some("x y z"));
        assert_eq!(
            QueryParams::parse("a=x%26y&page=2").url_with_page("http://h/", None),
            "http://h/?a=x%26y"
        );
    }
}
