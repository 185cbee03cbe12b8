//! `POST /api/{contact,notify}/cancel/` and `.../retry/`: an operator's
//! action on every message a filter matches (the list's filters, as a JSON
//! body; an empty one is refused). The store changes them in short
//! batches; this handler runs the batches one after another, wakes the
//! dispatcher for each batch a resend queued (one call per batch, one
//! pipelined Redis round trip), and answers `{"matched", "changed"}`.
//!
//! The batches run in a task of their own: a client that hangs up does not
//! stop a bulk action half-way (running it again would finish it, but an
//! operator should not have to know that).

use std::sync::Arc;
use std::time::Instant;

use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use ractor::{ActorRef, call_t};
use serde::Serialize;

use super::control::{ActionName, count, wake};
use super::error::json_response;
use super::messages::{idempotency_key, read_json_object, replayed};
use super::{ACTOR_CALL_TIMEOUT_MS, ApiError, AppContext, HttpResponse};
use crate::actors::persistence::PersistenceMsg;
use crate::domain::MessageKind;
use crate::domain::control::Action;
use crate::domain::filter::Bulk;
use crate::store::{BulkBatch, BulkKey, KeyClaim, Origin};

#[derive(Debug, Clone, Copy, Default, Serialize)]
struct Counts {
    matched: u64,
    changed: u64,
}

pub async fn bulk(
    req: Request<Incoming>,
    ctx: &Arc<AppContext>,
    kind: MessageKind,
    name: ActionName,
    request_id: &str,
) -> Result<HttpResponse, ApiError> {
    let key = idempotency_key(&req)?;
    let body = read_json_object(req).await?;
    let bulk = Bulk::parse(kind, name == ActionName::Retry, &body).map_err(ApiError::Validation)?;
    let action = bulk.action;
    // The metrics' and logs' name: `bulk_cancel`, `bulk_retry`.
    let label = format!("bulk_{}", action.name());
    let persistence = ctx.persistence()?;
    let key = key.map(|key| BulkKey {
        scope: action.key_scope(kind, true),
        key,
        fingerprint: bulk.fingerprint(),
        ttl: ctx.config.idempotency_ttl,
    });
    if let Some(k) = &key {
        match call_t!(
            persistence,
            PersistenceMsg::BulkLookup,
            ACTOR_CALL_TIMEOUT_MS,
            Box::new(k.clone())
        )?? {
            None | Some(KeyClaim::Claimed) => {}
            Some(other) => return answer_claimed(other, kind, &label, request_id),
        }
    }

    let started = Instant::now();
    let run = tokio::spawn(run_batches(
        ctx.clone(),
        persistence.clone(),
        BulkBatch {
            kind,
            filter: bulk.filter.clone(),
            action,
            below: None,
            origin: Origin {
                request_id: request_id.to_owned(),
                bulk: true,
            },
        },
    ));
    let (counts, failure) = run
        .await
        .map_err(|e| ApiError::Internal(format!("a bulk action's task failed: {e}")))?;
    count(ctx, kind, &label, "changed", counts.changed);
    count(
        ctx,
        kind,
        &label,
        "unchanged",
        counts.matched - counts.changed,
    );
    tracing::info!(
        target: "email_service::control",
        kind = kind.as_str(),
        action = %label,
        filter = ?bulk.filter,
        force = matches!(action, Action::Retry { force: true }),
        matched = counts.matched,
        changed = counts.changed,
        duration_ms = started.elapsed().as_secs_f64() * 1000.0,
        complete = failure.is_none(),
        request_id,
        "bulk action: {} messages {}",
        counts.changed,
        action.event()
    );
    if let Some(e) = failure {
        // What was committed stays; running the request again finishes it.
        return Err(if counts.matched > 0 {
            ApiError::MaybeStored(e.to_string())
        } else {
            e
        });
    }
    let body = serde_json::to_string(&counts).unwrap_or_default();
    if let Some(k) = key {
        match call_t!(
            persistence,
            PersistenceMsg::BulkFinish,
            ACTOR_CALL_TIMEOUT_MS,
            Box::new(k),
            body.clone()
        )?? {
            KeyClaim::Claimed => {}
            other => return answer_claimed(other, kind, &label, request_id),
        }
    }
    Ok(json_response(StatusCode::OK, body))
}

/// Runs the batches until one comes back short, or one fails: the counts
/// so far, and the failure if any.
async fn run_batches(
    ctx: Arc<AppContext>,
    persistence: ActorRef<PersistenceMsg>,
    mut batch: BulkBatch,
) -> (Counts, Option<ApiError>) {
    let mut counts = Counts::default();
    loop {
        let outcome = match call_t!(
            persistence,
            PersistenceMsg::BulkBatch,
            ACTOR_CALL_TIMEOUT_MS,
            Box::new(batch.clone())
        ) {
            Ok(Ok(o)) => o,
            Ok(Err(e)) => return (counts, Some(e.into())),
            Err(e) => return (counts, Some(e.into())),
        };
        counts.matched += outcome.matched;
        counts.changed += outcome.changed.len() as u64;
        if matches!(batch.action, Action::Retry { .. }) && !outcome.changed.is_empty() {
            wake(&ctx, batch.kind, outcome.changed);
        }
        match outcome.next {
            Some(next) => batch.below = Some(next),
            None => return (counts, None),
        }
    }
}

/// The answer when an earlier request holds the key: its answer again, or
/// `422` when it asked for something else.
fn answer_claimed(
    claim: KeyClaim,
    kind: MessageKind,
    label: &str,
    request_id: &str,
) -> Result<HttpResponse, ApiError> {
    match claim {
        KeyClaim::Replay { status, body } => {
            tracing::info!(
                target: "email_service::control",
                kind = kind.as_str(),
                action = label,
                request_id,
                "bulk action replayed for its Idempotency-Key; nothing changed"
            );
            Ok(replayed(status, body))
        }
        _ => Err(ApiError::Unprocessable(
            "Idempotency-Key was already used with a different request.",
        )),
    }
}
