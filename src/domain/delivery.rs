//! The delivery domain: a message claimed for one attempt ([`MailJob`]), what
//! it carries ([`Content`]), what an attempt produced ([`AttemptResult`]) and
//! where the message stands once that is recorded ([`Settled`]). Plain data,
//! shared by the store that writes it, the mail builder and the actors that
//! move it; none of it knows about SQL or Redis.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{Map, Value};
use uuid::Uuid;

use super::MessageKind;

/// What a message says, as it was accepted.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(untagged)]
pub enum Content {
    Contact {
        name: String,
        email: String,
        message: String,
    },
    Notify {
        to: String,
        subject: String,
        body: String,
        html: Option<String>,
        metadata: Option<Map<String, Value>>,
    },
}

/// One message claimed for one attempt.
#[derive(Debug, Clone)]
pub struct MailJob {
    pub kind: MessageKind,
    pub id: i64,
    pub uuid: Uuid,
    /// Retries already done before this attempt.
    pub retry_count: i32,
    /// 1-based attempt number, counted over every series of attempts (a
    /// resend goes on after the last one).
    pub attempt: i32,
    pub lease_token: Uuid,
    pub content: Content,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Sent,
    /// Worth retrying: SMTP 4xx, network errors, timeouts, TLS.
    Transient,
    /// Never worth retrying: SMTP 5xx, an envelope the server refuses.
    Permanent,
    /// The mailer crashed during the attempt, or its process died.
    Crash,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sent => "sent",
            Self::Transient => "transient",
            Self::Permanent => "permanent",
            Self::Crash => "crash",
        }
    }
}

/// What one attempt produced.
#[derive(Debug, Clone)]
pub struct AttemptResult {
    pub outcome: Outcome,
    pub smtp_code: Option<i32>,
    pub smtp_reply: Option<String>,
    pub error: Option<String>,
    pub duration_ms: i64,
}

/// Where a message stands after an attempt was recorded.
#[derive(Debug, Clone, PartialEq)]
pub struct Settled {
    pub kind: MessageKind,
    pub id: i64,
    pub status: String,
    pub next_attempt_at: Option<DateTime<Utc>>,
}

impl Settled {
    /// `(kind, id, due time in Unix ms)` when this is a scheduled retry.
    pub fn retry_due(&self) -> Option<(MessageKind, i64, i64)> {
        (self.status == "queued")
            .then_some(self.next_attempt_at)
            .flatten()
            .map(|at| (self.kind, self.id, at.timestamp_millis()))
    }
}

/// A lease that was taken back from a sender that stopped mid-send: the
/// message as it stands now, and the attempt that was closed as a `crash`.
#[derive(Debug, Clone)]
pub struct Reclaimed {
    pub settled: Settled,
    pub uuid: Uuid,
    /// The number of the attempt that was closed.
    pub attempt: i32,
    /// From the claim to the reclaim.
    pub duration_ms: i64,
    pub error: &'static str,
}

impl Reclaimed {
    /// The closed attempt, as the attempt log line tells it.
    pub fn result(&self) -> AttemptResult {
        AttemptResult {
            outcome: Outcome::Crash,
            smtp_code: None,
            smtp_reply: None,
            error: Some(self.error.to_owned()),
            duration_ms: self.duration_ms,
        }
    }
}

/// Which claim of which message: what releasing a claim needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClaimRef {
    pub kind: MessageKind,
    pub id: i64,
    pub lease_token: Uuid,
}

impl MailJob {
    /// A first attempt at a plain notification, for unit tests.
    #[cfg(test)]
    pub(crate) fn sample(id: i64) -> Self {
        Self {
            kind: MessageKind::Notify,
            id,
            uuid: Uuid::new_v4(),
            retry_count: 0,
            attempt: 1,
            lease_token: Uuid::nil(),
            content: Content::Notify {
                to: "a@example.com".into(),
                subject: "s".into(),
                body: "b".into(),
                html: None,
                metadata: None,
            },
        }
    }

    pub fn claim_ref(&self) -> ClaimRef {
        ClaimRef {
            kind: self.kind,
            id: self.id,
            lease_token: self.lease_token,
        }
    }
}
