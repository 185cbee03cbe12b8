//! Every way a request can fail, and the one place that maps each to a status
//! code and a JSON body. Client errors carry a message naming the problem;
//! server errors are logged here once, with the reason, and answered with a
//! fixed sentence: a database's error text is for the operator, not for
//! whoever can reach the port. A `503` says whether the request may have
//! been stored, and how to retry it safely when it may.

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::header::{ALLOW, CONTENT_TYPE, HeaderValue, RETRY_AFTER, WWW_AUTHENTICATE};
use hyper::{Response, StatusCode};
use serde::Serialize;

use crate::domain::FieldErrors;

pub type HttpResponse = Response<Full<Bytes>>;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("validation failed")]
    Validation(FieldErrors),
    #[error("{0}")]
    BadRequest(String),
    #[error("not found")]
    NotFound(&'static str),
    #[error("unauthorized")]
    Unauthorized,
    /// Over the per-IP limit; seconds until the window resets.
    #[error("rate limited")]
    RateLimited(u64),
    #[error("method {method} not allowed")]
    MethodNotAllowed { method: String, allow: &'static str },
    #[error("payload too large")]
    PayloadTooLarge,
    #[error("unsupported media type {0:?}")]
    UnsupportedMediaType(String),
    #[error("{0}")]
    Unprocessable(&'static str),
    /// The resource is in a status the action may not change (a webhook
    /// event that is not failed; operator actions build their own 409 body).
    #[error("{detail}")]
    Conflict {
        detail: String,
        status: &'static str,
    },
    /// A dependency is down, slow or restarting, and nothing was done. The
    /// reason goes to the log, not to the client.
    #[error("{0}")]
    Unavailable(String),
    /// Like `Unavailable`, but an accept may have been committed: the
    /// database did not confirm in time, or its answer was lost.
    #[error("{0}")]
    MaybeStored(String),
    #[error("internal error: {0}")]
    Internal(String),
}

#[derive(Serialize)]
struct Detail<'a> {
    detail: &'a str,
}

/// A `503`'s body: a fixed sentence and the request id to quote.
#[derive(Serialize)]
struct Unavailable<'a> {
    detail: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    request_id: Option<&'a str>,
}

const UNAVAILABLE: &str = "Service temporarily unavailable. Nothing was stored; try again later.";
const MAYBE_STORED: &str = "Service temporarily unavailable. The request may have been stored: \
    to retry without risking a duplicate, send it again with the same Idempotency-Key header \
    (or the same uuid in the body).";

#[derive(Serialize)]
struct Errors<'a> {
    errors: &'a FieldErrors,
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Validation(_) | Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
            Self::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::Conflict { .. } => StatusCode::CONFLICT,
            Self::Unavailable(_) | Self::MaybeStored(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The response, without a request id in its body.
    pub fn into_response(self) -> HttpResponse {
        self.respond(None)
    }

    /// The response; a `503` names `request_id` in its body, so that a
    /// client can quote it and an operator find the log line with the
    /// reason. Server-side failures are logged here, once.
    pub fn respond(self, request_id: Option<&str>) -> HttpResponse {
        let status = self.status();
        let body = match &self {
            Self::Validation(errors) => serde_json::to_vec(&Errors { errors }),
            Self::BadRequest(m) => detail(m),
            Self::NotFound(m) => detail(m),
            Self::Unauthorized => {
                detail("Authentication credentials were not provided or are invalid.")
            }
            Self::RateLimited(reset) => detail(&format!(
                "Request was throttled. Expected available in {reset} seconds."
            )),
            Self::MethodNotAllowed { method, .. } => {
                detail(&format!("Method \"{method}\" not allowed."))
            }
            Self::PayloadTooLarge => detail(&format!(
                "Request body is larger than {} bytes.",
                super::MAX_BODY_BYTES
            )),
            Self::UnsupportedMediaType(ct) => detail(&format!(
                "Unsupported media type \"{ct}\" in request. Use application/json."
            )),
            Self::Unprocessable(m) => detail(m),
            Self::Conflict { detail, status } => {
                serde_json::to_vec(&serde_json::json!({"detail": detail, "status": status}))
            }
            Self::Unavailable(m) => {
                tracing::warn!(reason = %m, "answering 503");
                serde_json::to_vec(&Unavailable {
                    detail: UNAVAILABLE,
                    request_id,
                })
            }
            Self::MaybeStored(m) => {
                tracing::warn!(reason = %m, "answering 503; the request may have been stored");
                serde_json::to_vec(&Unavailable {
                    detail: MAYBE_STORED,
                    request_id,
                })
            }
            Self::Internal(m) => {
                tracing::error!(error = %m, "internal error");
                detail("Internal server error.")
            }
        };
        let mut resp = json_response(status, body.unwrap_or_default());
        match self {
            Self::MethodNotAllowed { allow, .. } => {
                resp.headers_mut()
                    .insert(ALLOW, HeaderValue::from_static(allow));
            }
            Self::Unauthorized => {
                resp.headers_mut()
                    .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            Self::RateLimited(reset) => {
                resp.headers_mut()
                    .insert(RETRY_AFTER, HeaderValue::from(reset));
            }
            Self::Unavailable(_) | Self::MaybeStored(_) => {
                resp.headers_mut()
                    .insert(RETRY_AFTER, HeaderValue::from_static("1"));
            }
            _ => {}
        }
        resp
    }
}

fn detail(message: &str) -> serde_json::Result<Vec<u8>> {
    serde_json::to_vec(&Detail { detail: message })
}

pub fn json_response(status: StatusCode, body: impl Into<Bytes>) -> HttpResponse {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

/// A `200` (or other) answer with `value` serialized as JSON.
pub fn json<T: Serialize>(status: StatusCode, value: &T) -> HttpResponse {
    match serde_json::to_vec(value) {
        Ok(body) => json_response(status, body),
        Err(e) => ApiError::Internal(format!("serializing a response: {e}")).into_response(),
    }
}
