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

/// Every file of the page: its path (also the metrics' route label), its
/// content and its media type. The script is split by what each part owns
/// into ES modules; `main.js` imports the others.
const FILES: &[(&str, &str, &str)] = &[
    ("/admin/", include_str!("admin/index.html"), HTML),
    ("/admin/admin.css", include_str!("admin/admin.css"), CSS),
    ("/admin/main.js", include_str!("admin/main.js"), JS),
    ("/admin/api.js", include_str!("admin/api.js"), JS),
    ("/admin/dom.js", include_str!("admin/dom.js"), JS),
    ("/admin/state.js", include_str!("admin/state.js"), JS),
    ("/admin/access.js", include_str!("admin/access.js"), JS),
    ("/admin/list.js", include_str!("admin/list.js"), JS),
    ("/admin/detail.js", include_str!("admin/detail.js"), JS),
    ("/admin/actions.js", include_str!("admin/actions.js"), JS),
    ("/admin/health.js", include_str!("admin/health.js"), JS),
    ("/admin/refresh.js", include_str!("admin/refresh.js"), JS),
];
const HTML: &str = "text/html; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";

/// `frame-src` only matters for the mail's HTML part, a `srcdoc` frame;
/// `img-src` admits `data:` images inside it, never a remote (tracking) one.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    connect-src 'self'; img-src 'self' data:; frame-src 'self'; frame-ancestors 'none'; \
    base-uri 'none'; form-action 'self'; object-src 'none'";

/// One of [`FILES`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Asset(usize);

impl Asset {
    /// The path segments after `admin`: none is the page.
    pub fn parse(rest: &[&str]) -> Option<Self> {
        let name = match rest {
            [] => "",
            [name] => name,
            _ => return None,
        };
        FILES
            .iter()
            .position(|f| f.0.strip_prefix("/admin/") == Some(name))
            .map(Self)
    }

    pub fn label(self) -> &'static str {
        FILES[self.0].0
    }

    fn content(self) -> (&'static str, &'static str) {
        (FILES[self.0].1, FILES[self.0].2)
    }

    /// A strong validator of the file as built into this binary.
    fn etag(self) -> &'static str {
        static TAGS: LazyLock<Vec<String>> = LazyLock::new(|| {
            FILES
                .iter()
                .map(|f| {
                    let digest = Sha256::digest(f.1.as_bytes());
                    let hex: String = digest[..12].iter().map(|b| format!("{b:02x}")).collect();
                    format!("\"{hex}\"")
                })
                .collect()
        });
        &TAGS[self.0]
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
