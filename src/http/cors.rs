//! Cross-origin requests from browsers (a contact form on a blog posts to
//! us from another origin): the answer to `OPTIONS`, and the CORS headers of
//! every other answer.
//!
//! A browser page reads an answer only when it carries
//! `Access-Control-Allow-Origin` with the page's origin; that header, and the
//! preflight's permission, go only to origins `CORS_*` allows. A disallowed
//! origin's preflight gets a plain `204` with no CORS header, so the browser
//! never sends the real request: nothing is stored for it. Errors carry the
//! headers too, or a form could not show a `400`'s field errors or a `429`'s
//! `Retry-After`.

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::header::{
    ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS, ACCESS_CONTROL_ALLOW_ORIGIN,
    ACCESS_CONTROL_EXPOSE_HEADERS, ACCESS_CONTROL_MAX_AGE, ACCESS_CONTROL_REQUEST_METHOD, ALLOW,
    HeaderMap, HeaderValue, ORIGIN, VARY,
};
use hyper::{Response, StatusCode};

use super::HttpResponse;
use crate::config::CorsConfig;

/// The request headers a page may send: the JSON body's type, the token, and
/// the two our API reads.
const ALLOW_HEADERS: &str = "Content-Type, Authorization, Idempotency-Key, X-Request-Id";

/// The answer headers a page may read beyond the CORS-safelisted ones.
const EXPOSE_HEADERS: &str =
    "X-Request-Id, Idempotent-Replayed, Retry-After, RateLimit-Policy, RateLimit";

/// Two hours: Chromium caps a preflight's cache there anyway.
const MAX_AGE_SECS: u32 = 7200;

/// The request's `Origin`, when a browser sent one (and it is text).
pub fn origin(headers: &HeaderMap) -> Option<String> {
    headers
        .get(ORIGIN)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// The answer to `OPTIONS` on a known path: `204` with `Allow`; for a
/// preflight from an allowed origin, the methods and headers it may use.
pub fn options(headers: &HeaderMap, allow: &'static str, config: &CorsConfig) -> HttpResponse {
    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = StatusCode::NO_CONTENT;
    let h = resp.headers_mut();
    h.insert(ALLOW, HeaderValue::from_static(allow));
    let preflight = headers.contains_key(ACCESS_CONTROL_REQUEST_METHOD);
    if preflight && origin(headers).is_some_and(|o| config.allows(&o)) {
        h.insert(
            ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static(allow),
        );
        h.insert(
            ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static(ALLOW_HEADERS),
        );
        h.insert(ACCESS_CONTROL_MAX_AGE, HeaderValue::from(MAX_AGE_SECS));
    }
    resp
}

/// Adds the CORS headers to any answer (a success, an error, a preflight)
/// for a request from `origin`.
pub fn apply(resp: &mut HttpResponse, origin: Option<&str>, config: &CorsConfig) {
    if !config.enabled() {
        return;
    }
    let h = resp.headers_mut();
    // The answer depends on the Origin even when it refuses it: a shared
    // cache must not hand one origin's answer to another.
    h.append(VARY, HeaderValue::from_static("Origin"));
    let Some(origin) = origin.filter(|o| config.allows(o)) else {
        return;
    };
    // A header value that `allows` accepted is visible ASCII: it converts.
    if let Ok(v) = HeaderValue::from_str(origin) {
        h.insert(ACCESS_CONTROL_ALLOW_ORIGIN, v);
        h.insert(
            ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static(EXPOSE_HEADERS),
        );
    }
}
