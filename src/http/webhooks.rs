//! `GET /api/webhooks/events/` and `POST /api/webhooks/events/{id}/retry/`:
//! what became of each status event, and a second chance for one that was
//! given up. Both are answered by the `Webhooks` actor, which owns the
//! outbox's connections.

use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use ractor::call_t;

use super::error::json;
use super::listing::{PageBody, page_links, page_number, page_size};
use super::messages::{QueryParams, base_url};
use super::{ACTOR_CALL_TIMEOUT_MS, ApiError, AppContext, HttpResponse};
use crate::actors::webhooks::WebhooksMsg;
use crate::domain::FieldErrors;
use crate::domain::filter::not_a_choice;
use crate::store::webhooks::{EVENT_STATUSES, EventQuery, RequeueOutcome};

fn actor(ctx: &AppContext) -> Result<ractor::ActorRef<WebhooksMsg>, ApiError> {
    ctx.registry
        .webhooks()
        .ok_or_else(|| ApiError::Unavailable("the webhooks actor is restarting".into()))
}

pub async fn list(req: Request<Incoming>, ctx: &AppContext) -> Result<HttpResponse, ApiError> {
    let params = QueryParams::parse(req.uri().query().unwrap_or(""));
    let page = page_number(&params)?;
    let page_size = page_size(&params);
    let mut errors = FieldErrors::default();
    let status = match params.get("status").map(str::trim) {
        None | Some("") => None,
        Some(raw) => {
            let found = EVENT_STATUSES.into_iter().find(|s| *s == raw);
            if found.is_none() {
                errors.add("status", not_a_choice(raw, &EVENT_STATUSES));
            }
            found
        }
    };
    let message = match params.get("message") {
        None | Some("") => None,
        Some(raw) => {
            // The hyphenated form only, as the document's `format: uuid`.
            let parsed = (raw.len() == 36)
                .then(|| uuid::Uuid::parse_str(raw).ok())
                .flatten();
            if parsed.is_none() {
                errors.add("message", "Must be a valid UUID.");
            }
            parsed
        }
    };
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    let query = EventQuery {
        status,
        message,
        page,
        page_size,
    };
    let result = call_t!(actor(ctx)?, WebhooksMsg::List, ACTOR_CALL_TIMEOUT_MS, query)??;
    let more = page * page_size < result.count.max(0) as u64;
    let base = base_url(&req, ctx);
    let (next, previous) = page_links(&params, &base, page, more, result.results.is_empty())?;
    let body = PageBody {
        count: result.count,
        count_capped: false,
        next,
        previous,
        results: result.results,
    };
    Ok(json(StatusCode::OK, &body))
}

pub async fn retry(ctx: &AppContext, raw_id: &str) -> Result<HttpResponse, ApiError> {
    let id: i64 = raw_id
        .parse()
        .ok()
        .filter(|id| *id > 0)
        .ok_or(ApiError::NotFound("Not found."))?;
    let outcome = call_t!(actor(ctx)?, WebhooksMsg::Requeue, ACTOR_CALL_TIMEOUT_MS, id)??;
    match outcome {
        RequeueOutcome::Requeued(view) => {
            tracing::info!(
                target: "email_service::webhooks",
                id,
                event_id = %view.event_id,
                "webhook event queued again"
            );
            Ok(json(StatusCode::ACCEPTED, &view))
        }
        RequeueOutcome::Refused { status } => Err(ApiError::Conflict {
            detail: format!("Only a failed or gone event can be retried; this one is {status}."),
            status: EVENT_STATUSES
                .into_iter()
                .find(|s| *s == status)
                .unwrap_or("pending"),
        }),
        RequeueOutcome::NotFound => Err(ApiError::NotFound("Not found.")),
    }
}
