//! `POST /api/{contact,notify}/{id}/cancel/` and `.../retry/`: an
//! operator's actions on one message. The store decides, under the row's
//! lock, whether the message may change, and records the change, its event
//! and its `Idempotency-Key` answer in one transaction; this file turns the
//! outcome into an answer, a log line and a metric, and wakes the
//! dispatcher for a message queued again. Bulk actions are in `bulk.rs`.

use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use ractor::call_t;

use super::error::json_response;
use super::messages::{QueryParams, idempotency_key, replayed};
use super::{ACTOR_CALL_TIMEOUT_MS, ApiError, AppContext, HttpResponse};
use crate::actors::persistence::PersistenceMsg;
use crate::actors::protocol::DispatcherMsg;
use crate::domain::control::Action;
use crate::domain::{FieldErrors, MessageKind};
use crate::metrics::ActionLabels;
use crate::store::{ActionOutcome, ActionRequest, MessageRef, Origin};

/// Which action a path names (`cancel` or `retry`), before its parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActionName {
    Cancel,
    Retry,
}

impl ActionName {
    pub fn parse(segment: &str) -> Option<Self> {
        match segment {
            "cancel" => Some(Self::Cancel),
            "retry" => Some(Self::Retry),
            _ => None,
        }
    }
}

/// Counts one operator action's result in `/metrics`.
pub(super) fn count(ctx: &AppContext, kind: MessageKind, action: &str, result: &str, n: u64) {
    ctx.metrics
        .actions
        .get_or_create(&ActionLabels {
            kind: kind.as_str().to_owned(),
            action: action.to_owned(),
            result: result.to_owned(),
        })
        .inc_by(n);
}

/// A message that went back to `queued` is due now: wake a mailer. As
/// after an accept, a lost wake-up only delays the send until the
/// reconciler finds the message due.
pub(super) fn wake(ctx: &AppContext, kind: MessageKind, ids: Vec<i64>) {
    if let Some(d) = ctx.registry.dispatcher() {
        let _ = d.cast(match ids.as_slice() {
            [id] => DispatcherMsg::Enqueue(kind, *id),
            _ => DispatcherMsg::EnqueueMany(kind, ids),
        });
    }
}

pub async fn act(
    req: Request<Incoming>,
    ctx: &AppContext,
    kind: MessageKind,
    raw_id: &str,
    name: ActionName,
    request_id: &str,
) -> Result<HttpResponse, ApiError> {
    let at = MessageRef::parse(raw_id).ok_or(ApiError::NotFound("Not found."))?;
    let action = match name {
        ActionName::Cancel => Action::Cancel,
        ActionName::Retry => Action::Retry {
            force: force(&QueryParams::parse(req.uri().query().unwrap_or("")))?,
        },
    };
    let key = idempotency_key(&req)?;
    let persistence = ctx.persistence()?;
    let request = ActionRequest {
        kind,
        at,
        action,
        key,
        key_ttl: ctx.config.idempotency_ttl,
        origin: Origin {
            request_id: request_id.to_owned(),
            bulk: false,
        },
    };
    let outcome = call_t!(
        persistence,
        PersistenceMsg::Act,
        ACTOR_CALL_TIMEOUT_MS,
        Box::new(request)
    )??;
    let result = match &outcome {
        ActionOutcome::Changed { .. } => "changed",
        ActionOutcome::Refused { .. } => "refused",
        ActionOutcome::NotFound => "not_found",
        ActionOutcome::Replayed { .. } => "replayed",
        ActionOutcome::KeyConflict => "key_conflict",
    };
    count(ctx, kind, action.name(), result, 1);
    match outcome {
        ActionOutcome::Changed { id, body } => {
            tracing::info!(
                target: "email_service::control",
                kind = kind.as_str(),
                id,
                action = action.name(),
                force = matches!(action, Action::Retry { force: true }),
                status = action.target().as_str(),
                request_id,
                "message {}",
                action.event()
            );
            if matches!(action, Action::Retry { .. }) {
                wake(ctx, kind, vec![id]);
            }
            let code = StatusCode::from_u16(action.success_code()).unwrap_or(StatusCode::OK);
            Ok(json_response(code, body))
        }
        ActionOutcome::Refused { status, body } => {
            tracing::info!(
                target: "email_service::control",
                kind = kind.as_str(),
                message_ref = raw_id,
                action = action.name(),
                status = status.as_str(),
                request_id,
                "action refused"
            );
            Ok(json_response(StatusCode::CONFLICT, body))
        }
        ActionOutcome::Replayed { status, body } => {
            tracing::info!(
                target: "email_service::control",
                kind = kind.as_str(),
                message_ref = raw_id,
                action = action.name(),
                request_id,
                "action replayed for its Idempotency-Key; nothing changed"
            );
            Ok(replayed(status, body))
        }
        ActionOutcome::KeyConflict => Err(ApiError::Unprocessable(
            "Idempotency-Key was already used with a different request.",
        )),
        ActionOutcome::NotFound => Err(ApiError::NotFound("Not found.")),
    }
}

/// `?force=`: DRF's boolean spellings; anything else is a `400` naming it.
fn force(query: &QueryParams) -> Result<bool, ApiError> {
    let raw = query.get("force").map(|v| v.trim().to_ascii_lowercase());
    match raw.as_deref() {
        None | Some("" | "false" | "0" | "no" | "off") => Ok(false),
        Some("true" | "1" | "yes" | "on") => Ok(true),
        Some(_) => Err(ApiError::Validation(FieldErrors::single(
            "force",
            "Must be a valid boolean.",
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn force_reads_booleans_and_refuses_anything_else() {
        assert!(!force(&QueryParams::parse("")).unwrap());
        assert!(!force(&QueryParams::parse("force=false")).unwrap());
        assert!(force(&QueryParams::parse("force=true")).unwrap());
        assert!(force(&QueryParams::parse("a=1&force=TRUE")).unwrap());
        assert!(matches!(
            force(&QueryParams::parse("force=maybe")),
            Err(ApiError::Validation(_))
        ));
    }
}
