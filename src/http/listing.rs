//! `GET /api/contact/` and `/api/notify/`: the lists, newest first, with
//! their filters (`status`, `to`/`email`, `created_after`,
//! `created_before`, `search`: any combination) and two ways to page:
//! `?page=` as DRF's page-number pagination, and `?cursor=`, a keyset
//! cursor whose pages do not shift while messages arrive and cost the same
//! however deep. `count` is exact up to `COUNT_CAP`; beyond it the body
//! adds `count_capped: true`.

use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use ractor::call_t;
use serde::Serialize;

use super::error::json;
use super::messages::{QueryParams, base_url};
use super::{ACTOR_CALL_TIMEOUT_MS, ApiError, AppContext, HttpResponse};
use crate::actors::persistence::PersistenceMsg;
use crate::domain::filter::{Cursor, Filter};
use crate::domain::{FieldErrors, MessageKind};
use crate::store::{ListQuery, Paging};

pub const DEFAULT_PAGE_SIZE: u64 = 20;
pub const MAX_PAGE_SIZE: u64 = 100;

/// A page of a list, in DRF's shape (also the webhook events' list).
#[derive(Serialize)]
pub(super) struct PageBody<T> {
    pub(super) count: i64,
    /// Present (and `true`) only when `count` stopped at the cap, so a
    /// body stays DRF's four keys otherwise.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub(super) count_capped: bool,
    pub(super) next: Option<String>,
    pub(super) previous: Option<String>,
    pub(super) results: Vec<T>,
}

/// `?page=` as DRF reads it: a number from 1; anything else is `404`.
pub(super) fn page_number(params: &QueryParams) -> Result<u64, ApiError> {
    match params.get("page") {
        None => Ok(1),
        Some(raw) => raw
            .trim()
            .parse::<u64>()
            .ok()
            .filter(|p| (1..=1_000_000_000).contains(p))
            .ok_or(ApiError::NotFound("Invalid page.")),
    }
}

/// `?page_size=` as DRF reads it: one that is not a positive number falls
/// back to the default, one above the maximum counts as the maximum.
pub(super) fn page_size(params: &QueryParams) -> u64 {
    params
        .get("page_size")
        .and_then(|raw| raw.trim().parse::<u64>().ok())
        .filter(|&n| n > 0)
        .map_or(DEFAULT_PAGE_SIZE, |n| n.min(MAX_PAGE_SIZE))
}

/// The links to page `page`'s neighbours (this URL with only `page`
/// changed); an empty page past the first is `404`, as in DRF.
pub(super) fn page_links(
    params: &QueryParams,
    base: &str,
    page: u64,
    more: bool,
    empty: bool,
) -> Result<(Option<String>, Option<String>), ApiError> {
    if page > 1 && empty {
        return Err(ApiError::NotFound("Invalid page."));
    }
    Ok((
        more.then(|| params.url_with_page(base, Some(page + 1))),
        (page > 1).then(|| params.url_with_page(base, (page > 2).then_some(page - 1))),
    ))
}

pub async fn list(
    req: Request<Incoming>,
    ctx: &AppContext,
    kind: MessageKind,
) -> Result<HttpResponse, ApiError> {
    let params = QueryParams::parse(req.uri().query().unwrap_or(""));
    let filter = Filter::read(kind, |name| params.get(name)).map_err(ApiError::Validation)?;
    let paging = match params.get("cursor") {
        Some(raw) => Paging::Cursor(Cursor::parse(raw).ok_or_else(|| {
            ApiError::Validation(FieldErrors::single("cursor", "Invalid cursor."))
        })?),
        None => Paging::Page(page_number(&params)?),
    };
    let page_size = page_size(&params);

    let persistence = ctx.persistence()?;
    let query = ListQuery {
        kind,
        filter,
        paging,
        page_size,
    };
    let result = call_t!(
        persistence,
        PersistenceMsg::List,
        ACTOR_CALL_TIMEOUT_MS,
        query
    )??;
    let base = base_url(&req, ctx);
    let first = result.results.first().map(|m| m.id);
    let last = result.results.last().map(|m| m.id);
    let cursor_url = |c: Cursor| params.url_with_cursor(&base, &c.token());
    let (next, previous) = match paging {
        Paging::Page(page) => {
            page_links(&params, &base, page, result.more, result.results.is_empty())?
        }
        Paging::Cursor(Cursor::Newest) => (
            last.filter(|_| result.more)
                .map(|id| cursor_url(Cursor::Below(id))),
            None,
        ),
        // Came down from above: there is something above the first row.
        Paging::Cursor(Cursor::Below(below)) => (
            last.filter(|_| result.more)
                .map(|id| cursor_url(Cursor::Below(id))),
            Some(cursor_url(Cursor::Above(first.unwrap_or(below - 1)))),
        ),
        // Came up from below: there is something below the last row.
        Paging::Cursor(Cursor::Above(above)) => (
            Some(cursor_url(Cursor::Below(last.unwrap_or(above + 1)))),
            first
                .filter(|_| result.more)
                .map(|id| cursor_url(Cursor::Above(id))),
        ),
    };
    let body = PageBody {
        count: result.count,
        count_capped: result.count_capped,
        next,
        previous,
        results: result.results,
    };
    Ok(json(StatusCode::OK, &body))
}
