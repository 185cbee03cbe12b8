//! `POST /api/{contact,notify}/{id}/cancel/` and `.../retry/`: an
//! operator's actions on one message. The store decides, in one conditional
//! `UPDATE`, whether the message may change; this file turns the outcome
//! into an answer, a log line and a metric, and wakes the dispatcher for a
//! message queued again.

use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use ractor::call_t;

use super::error::json_response;
use super::messages::QueryParams;
use super::{ACTOR_CALL_TIMEOUT_MS, ApiError, AppContext, HttpResponse};
use crate::actors::persistence::PersistenceMsg;
use crate::actors::protocol::DispatcherMsg;
use crate::domain::control::Action;
use crate::domain::{FieldErrors, MessageKind};
use crate::metrics::ActionLabels;
use crate::store::{ActionOutcome, ActionRequest, MessageRef};

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

pub async fn act(
    req: Request<Incoming>,
    ctx: &AppContext,
    kind: MessageKind,
    raw_id: &str,
    name: ActionName,
) -> Result<HttpResponse, ApiError> {
    let at = MessageRef::parse(raw_id).ok_or(ApiError::NotFound("Not found."))?;
    let action = match name {
        ActionName::Cancel => Action::Cancel,
        ActionName::Retry => Action::Retry {
            force: force(&QueryParams::parse(req.uri().query().unwrap_or("")))?,
        },
    };
    let persistence = ctx.persistence()?;
    let request = ActionRequest { kind, at, action };
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
    };
    ctx.metrics
        .actions
        .get_or_create(&ActionLabels {
            kind: kind.as_str().to_owned(),
            action: action.name().to_owned(),
            result: result.to_owned(),
        })
        .inc();
    match outcome {
        ActionOutcome::Changed { id, body } => {
            tracing::info!(
                target: "email_service::control",
                kind = kind.as_str(),
                id,
                action = action.name(),
                status = action.target().as_str(),
                "message {}",
                match action {
                    Action::Cancel => "cancelled",
                    Action::Retry { .. } => "queued again",
                }
            );
            let code = match action {
                Action::Cancel => StatusCode::OK,
                Action::Retry { .. } => {
                    // As after an accept: a lost wake-up only delays the
                    // send until the reconciler finds the message due.
                    if let Some(d) = ctx.registry.dispatcher() {
                        let _ = d.cast(DispatcherMsg::Enqueue(kind, id));
                    }
                    StatusCode::ACCEPTED
                }
            };
            Ok(json_response(code, body))
        }
        ActionOutcome::Refused { status } => {
            tracing::info!(
                target: "email_service::control",
                kind = kind.as_str(),
                message = raw_id,
                action = action.name(),
                status = status.as_str(),
                "action refused"
            );
            Err(ApiError::Conflict {
                detail: action.refusal(status),
                status: status.as_str(),
            })
        }
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
