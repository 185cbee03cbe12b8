//! The operator's inbox at `/admin/`: one HTML page, its stylesheet and its
//! script, compiled into the binary, so the service needs no other files and
//! the page loads nothing from elsewhere.
//!
//! The files hold no data and are served without a token; the page fetches
//! everything through the API with the operator's token. The policy headers
//! make the page a hard target for the strangers whose contact messages it
//! shows: the `Content-Security-Policy` runs only our own script file (no
//! inline script, no event-handler attribute), the page cannot be framed,
//! and an HTML part shown in its sandboxed frame inherits the same policy.

use std::sync::LazyLock;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::header::{
    CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, ETAG, HeaderMap, HeaderValue,
    IF_NONE_MATCH, REFERRER_POLICY, X_CONTENT_TYPE_OPTIONS, X_FRAME_OPTIONS,
};
use hyper::{Response, StatusCode};
use sha2::{Digest, Sha256};

use super::HttpResponse;

const PAGE: &str = include_str!("admin/index.html");
const SCRIPT: &str = include_str!("admin/admin.js");
const STYLE: &str = include_str!("admin/admin.css");

/// `frame-src` only matters for the mail's HTML part, a `srcdoc` frame;
/// `img-src` admits `data:` images inside it, never a remote (tracking) one.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    connect-src 'self'; img-src 'self' data:; frame-src 'self'; frame-ancestors 'none'; \
    base-uri 'none'; form-action 'self'; object-src 'none'";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Asset {
    Page,
    Script,
    Style,
}

impl Asset {
    /// The path segments after `admin`: none is the page.
    pub fn parse(rest: &[&str]) -> Option<Self> {
        match rest {
            [] => Some(Self::Page),
            ["admin.js"] => Some(Self::Script),
            ["admin.css"] => Some(Self::Style),
            _ => None,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Self::Page => "/admin/",
            Self::Script => "/admin/admin.js",
            Self::Style => "/admin/admin.css",
        }
    }

    fn content(self) -> (&'static str, &'static str) {
        match self {
            Self::Page => (PAGE, "text/html; charset=utf-8"),
            Self::Script => (SCRIPT, "text/javascript; charset=utf-8"),
            Self::Style => (STYLE, "text/css; charset=utf-8"),
        }
    }

    /// A strong validator of the file as built into this binary.
    fn etag(self) -> &'static str {
        static TAGS: LazyLock<[String; 3]> = LazyLock::new(|| {
            [Asset::Page, Asset::Script, Asset::Style].map(|a| {
                let digest = Sha256::digest(a.content().0.as_bytes());
                let hex: String = digest[..12].iter().map(|b| format!("{b:02x}")).collect();
                format!("\"{hex}\"")
            })
        });
        &TAGS[self as usize]
    }
}

/// The file, or `304` when the browser's copy is current. `no-cache` makes
/// the browser ask each time, so a new binary's page is seen at once.
pub fn serve(asset: Asset, request: &HeaderMap) -> HttpResponse {
    let (body, content_type) = asset.content();
    let etag = asset.etag();
    let fresh = request
        .get(IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    let mut resp = if fresh {
        let mut r = Response::new(Full::new(Bytes::new()));
        *r.status_mut() = StatusCode::NOT_MODIFIED;
        r
    } else {
        let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
        r.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
        r
    };
    let h = resp.headers_mut();
    h.insert(ETAG, HeaderValue::from_static(etag));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    resp
}
