//! Operator actions on a stored message: cancel one that is still waiting,
//! or send one again. Which statuses each action may change is decided
//! here, once; the store turns that into the `WHERE status = ANY(...)` of a
//! conditional `UPDATE`, so that an action and a claim racing for the same
//! row have exactly one winner.

use super::{Fingerprint, MessageKind, Status};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// A `queued` message becomes `cancelled` and is never sent.
    Cancel,
    /// A `failed` or `cancelled` message (and a `sent` one when `force`)
    /// goes back to `queued` for a new series of attempts.
    Retry { force: bool },
}

impl Action {
    /// The name in the path and in logs and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Self::Cancel => "cancel",
            Self::Retry { .. } => "retry",
        }
    }

    /// What a change by this action is called in the detail view's
    /// `events` and in logs.
    pub fn event(self) -> &'static str {
        match self {
            Self::Cancel => "cancelled",
            Self::Retry { .. } => "resent",
        }
    }

    /// The statuses this action may change. `sending` is never among them:
    /// a send under way cannot be called back, and starting another beside
    /// it would send twice.
    pub fn applies_to(self) -> &'static [Status] {
        match self {
            Self::Cancel => &[Status::Queued],
            Self::Retry { force: false } => &[Status::Failed, Status::Cancelled],
            Self::Retry { force: true } => &[Status::Failed, Status::Cancelled, Status::Sent],
        }
    }

    /// Where a changed message stands.
    pub fn target(self) -> Status {
        match self {
            Self::Cancel => Status::Cancelled,
            Self::Retry { .. } => Status::Queued,
        }
    }

    /// The status code of a change: a cancel is done (`200`), a resend is
    /// queued (`202`).
    pub fn success_code(self) -> u16 {
        match self {
            Self::Cancel => 200,
            Self::Retry { .. } => 202,
        }
    }

    /// The `Idempotency-Key` scope of this action's endpoint: keys are per
    /// endpoint, and the one-message and bulk endpoints differ.
    pub fn key_scope(self, kind: MessageKind, bulk: bool) -> String {
        let bulk = if bulk { "bulk_" } else { "" };
        format!("{}.{bulk}{}", kind.as_str(), self.name())
    }

    /// What makes two requests for one message "the same" for an
    /// `Idempotency-Key`: the message and the action, `force` included.
    pub fn fingerprint(self, id: i64) -> Fingerprint {
        let force = match self {
            Self::Retry { force } => Some(force),
            Self::Cancel => None,
        };
        Fingerprint::of(&(id, self.name(), force))
    }

    /// The `409` body for a message in `status`, as JSON text (stored as
    /// is for an `Idempotency-Key` replay).
    pub fn refusal_body(self, status: Status) -> String {
        serde_json::json!({"detail": self.refusal(status), "status": status.as_str()}).to_string()
    }

    /// Why a message in `status` is refused, for the `409` body.
    pub fn refusal(self, status: Status) -> String {
        match (self, status) {
            (Self::Retry { force: false }, Status::Sent) => {
                "The message was already sent; add ?force=true to send it again.".into()
            }
            (Self::Cancel, _) => format!(
                "Only a queued message can be cancelled; this one is {}.",
                status.as_str()
            ),
            (Self::Retry { .. }, _) => format!(
                "Only a failed, cancelled or (with ?force=true) sent message can be sent again; this one is {}.",
                status.as_str()
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_action_changes_only_its_statuses() {
        let changes = |a: Action| -> Vec<&str> {
            Status::ALL
                .into_iter()
                .filter(|s| a.applies_to().contains(s))
                .map(Status::as_str)
                .collect()
        };
        assert_eq!(changes(Action::Cancel), ["queued"]);
        assert_eq!(
            changes(Action::Retry { force: false }),
            ["failed", "cancelled"]
        );
        assert_eq!(
            changes(Action::Retry { force: true }),
            ["sent", "failed", "cancelled"]
        );
    }

    #[test]
    fn a_sent_message_is_refused_with_the_way_to_force_it() {
        let why = Action::Retry { force: false }.refusal(Status::Sent);
        assert!(why.contains("force=true"), "{why}");
        let why = Action::Cancel.refusal(Status::Sending);
        assert!(why.contains("sending"), "{why}");
    }
}
