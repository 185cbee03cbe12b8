//! Validated domain types. A request body becomes a [`NewContact`] or a
//! [`NewNotification`] only through `parse`, which checks every field and
//! collects every problem into [`FieldErrors`] (the `{"errors": {...}}` body),
//! so nothing unvalidated reaches the database or a mail header.
//!
//! The messages follow Django REST framework's wording, because clients of the
//! service we replace may match on them.

pub mod control;
pub mod delivery;
mod fields;
pub mod filter;
mod idempotency;
pub mod webhook;

pub use fields::{EmailAddress, FieldErrors};
pub use idempotency::{Fingerprint, IdempotencyKey};

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{Map, Value};
use uuid::Uuid;

use fields::Reader;

/// The two kinds of message the service accepts. Each has its own endpoint,
/// table and idempotency scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MessageKind {
    Contact,
    Notify,
}

impl MessageKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Contact => "contact",
            Self::Notify => "notify",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "contact" => Some(Self::Contact),
            "notify" => Some(Self::Notify),
            _ => None,
        }
    }

    /// The sentence in the `202` body, as the Django service wrote it.
    pub fn accepted_message(self) -> &'static str {
        match self {
            Self::Contact => "Message queued for processing",
            Self::Notify => "Notification queued for processing",
        }
    }
}

/// Delivery status of a stored message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Queued,
    Sending,
    Sent,
    Failed,
    /// Stopped by an operator before it was sent; final until a resend.
    Cancelled,
}

impl Status {
    pub const ALL: [Status; 5] = [
        Self::Queued,
        Self::Sending,
        Self::Sent,
        Self::Failed,
        Self::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Sending => "sending",
            Self::Sent => "sent",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == raw)
    }
}

/// A contact-form message, validated.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NewContact {
    pub uuid: Option<Uuid>,
    pub name: String,
    pub email: EmailAddress,
    pub message: String,
    /// When to send it; `None` (or a past instant) means now.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub send_at: Option<DateTime<Utc>>,
}

/// A notification from another service, validated.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NewNotification {
    pub uuid: Option<Uuid>,
    pub to: EmailAddress,
    pub subject: String,
    pub body: String,
    pub html: Option<String>,
    pub metadata: Option<Map<String, Value>>,
    /// When to send it; `None` (or a past instant) means now.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub send_at: Option<DateTime<Utc>>,
}

/// Either kind of new message, as the persistence layer receives it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum NewMessage {
    Contact(NewContact),
    Notify(NewNotification),
}

impl NewMessage {
    pub fn kind(&self) -> MessageKind {
        match self {
            Self::Contact(_) => MessageKind::Contact,
            Self::Notify(_) => MessageKind::Notify,
        }
    }

    pub fn uuid(&self) -> Option<Uuid> {
        match self {
            Self::Contact(c) => c.uuid,
            Self::Notify(n) => n.uuid,
        }
    }

    /// The requested send time as given (absent: now). A past one means now.
    pub fn send_at(&self) -> Option<DateTime<Utc>> {
        match self {
            Self::Contact(c) => c.send_at,
            Self::Notify(n) => n.send_at,
        }
    }

    /// When the message is due in Redis' schedule: `Some` only for a
    /// `send_at` still ahead of `now`.
    pub fn scheduled_after(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.send_at().filter(|t| *t > now)
    }

    /// Validates a JSON object as a message of `kind`.
    pub fn parse(kind: MessageKind, body: &Map<String, Value>) -> Result<Self, FieldErrors> {
        match kind {
            MessageKind::Contact => NewContact::parse(body).map(Self::Contact),
            MessageKind::Notify => NewNotification::parse(body).map(Self::Notify),
        }
    }

    /// What makes two requests "the same body" for idempotency: the validated
    /// content, so that key order and surrounding whitespace do not matter.
    pub fn fingerprint(&self) -> Fingerprint {
        Fingerprint::of(self)
    }
}

pub const NAME_MAX: usize = 255;
pub const SUBJECT_MAX: usize = 255;
pub const CONTACT_MESSAGE_MAX: usize = 10_000;
/// How far ahead `send_at` may be.
pub const SEND_AT_MAX_AHEAD_DAYS: i64 = 30;

fn send_at(r: &mut Reader) -> Option<DateTime<Utc>> {
    let latest = Utc::now() + chrono::TimeDelta::days(SEND_AT_MAX_AHEAD_DAYS);
    r.optional_instant(
        "send_at",
        latest,
        "Ensure this datetime is at most 30 days ahead.",
    )
}

impl NewContact {
    pub fn parse(body: &Map<String, Value>) -> Result<Self, FieldErrors> {
        let mut r = Reader::new(body);
        let uuid = r.optional_uuid("uuid");
        let name = r.text("name", Some(NAME_MAX));
        let email = r.email("email");
        let message = r.text("message", Some(CONTACT_MESSAGE_MAX));
        let send_at = send_at(&mut r);
        r.finish()?;
        Ok(Self {
            uuid,
            name: name.expect("validated"),
            email: email.expect("validated"),
            message: message.expect("validated"),
            send_at,
        })
    }
}

impl NewNotification {
    pub fn parse(body: &Map<String, Value>) -> Result<Self, FieldErrors> {
        let mut r = Reader::new(body);
        let uuid = r.optional_uuid("uuid");
        let to = r.email("to");
        let subject = r.single_line("subject", SUBJECT_MAX);
        let body_text = r.text("body", None);
        let html = r.optional_text("html");
        let metadata = r.optional_object("metadata");
        let send_at = send_at(&mut r);
        r.finish()?;
        Ok(Self {
            uuid,
            to: to.expect("validated"),
            subject: subject.expect("validated"),
            body: body_text.expect("validated"),
            html,
            metadata,
            send_at,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    fn errors_of(kind: MessageKind, v: Value) -> Vec<(String, Vec<String>)> {
        NewMessage::parse(kind, &obj(v))
            .expect_err("should be invalid")
            .into_iter()
            .collect()
    }

    #[test]
    fn a_valid_contact_is_trimmed_and_accepted() {
        let c = NewContact::parse(&obj(json!({
            "name": "  Ada Lovelace ", "email": "ada@example.com", "message": "Hello"
        })))
        .unwrap();
        assert_eq!(c.name, "Ada Lovelace");
        assert_eq!(c.email.as_ref(), "ada@example.com");
        assert_eq!(c.uuid, None);
    }

    #[test]
    fn every_contact_field_error_is_collected() {
        let errs = errors_of(
            MessageKind::Contact,
            json!({"name": " ", "email": "nope", "message": 5}),
        );
        let fields: Vec<&str> = errs.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(fields, vec!["email", "message", "name"]);
        assert_eq!(errs[2].1, vec!["This field may not be blank."]);
    }

    #[test]
    fn contact_limits_count_characters_not_bytes() {
        let ok = "é".repeat(NAME_MAX);
        assert!(
            NewContact::parse(&obj(json!({"name": ok, "email": "a@b.co", "message": "x"}))).is_ok()
        );
        let long = "é".repeat(NAME_MAX + 1);
        let errs = errors_of(
            MessageKind::Contact,
            json!({"name": long, "email": "a@b.co", "message": "x".repeat(CONTACT_MESSAGE_MAX + 1)}),
        );
        assert_eq!(errs.len(), 2);
    }

    #[test]
    fn notification_subject_rejects_line_breaks() {
        for subject in [
            "a\r\nBcc: x@y.z",
            "a\nb",
            "a\rb",
            "Welcome\n",
            "\r\nWelcome",
        ] {
            let errs = errors_of(
                MessageKind::Notify,
                json!({"to": "a@b.co", "subject": subject, "body": "x"}),
            );
            assert_eq!(errs[0].0, "subject");
        }
    }

    #[test]
    fn notification_optional_fields() {
        let n = NewNotification::parse(&obj(json!({
            "to": "a@b.co", "subject": "Hi", "body": "x",
            "html": "<p>x</p>", "metadata": {"k": [1, 2]},
            "uuid": "6f1c2a6e-1111-4222-8333-444455556666"
        })))
        .unwrap();
        assert_eq!(n.html.as_deref(), Some("<p>x</p>"));
        assert_eq!(n.metadata.unwrap()["k"], json!([1, 2]));
        assert!(n.uuid.is_some());

        let errs = errors_of(
            MessageKind::Notify,
            json!({"to": "a@b.co", "subject": "Hi", "body": "x", "metadata": [1], "uuid": "nope", "html": 3}),
        );
        let fields: Vec<&str> = errs.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(fields, vec!["html", "metadata", "uuid"]);
    }

    #[test]
    fn null_characters_are_rejected_everywhere() {
        let errs = errors_of(
            MessageKind::Notify,
            json!({"to": "a@b.co", "subject": "a\u{0}", "body": "x", "metadata": {"k\u{0}": 1}}),
        );
        let fields: Vec<&str> = errs.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(fields, vec!["metadata", "subject"]);
    }

    #[test]
    fn send_at_is_optional_bounded_and_part_of_the_fingerprint() {
        let base = json!({"to": "a@b.co", "subject": "Hi", "body": "x"});
        let with = |v: Value| {
            let mut o = obj(base.clone());
            o.insert("send_at".into(), v);
            o
        };
        let plain = NewMessage::parse(MessageKind::Notify, &obj(base.clone())).unwrap();
        assert_eq!(plain.send_at(), None);
        let null = NewMessage::parse(MessageKind::Notify, &with(Value::Null)).unwrap();
        assert_eq!(plain.fingerprint(), null.fingerprint());
        let soon = (Utc::now() + chrono::TimeDelta::hours(1)).to_rfc3339();
        let later = NewMessage::parse(MessageKind::Notify, &with(json!(soon))).unwrap();
        assert!(later.scheduled_after(Utc::now()).is_some());
        assert_ne!(plain.fingerprint(), later.fingerprint());
        let past = NewMessage::parse(
            MessageKind::Notify,
            &with(json!("2001-02-03T04:05:06+01:00")),
        )
        .unwrap();
        assert_eq!(past.scheduled_after(Utc::now()), None);
        let far = (Utc::now() + chrono::TimeDelta::days(31)).to_rfc3339();
        for bad in [json!(far), json!("tomorrow"), json!("2030-01-01"), json!(5)] {
            let errs = errors_of(MessageKind::Contact, {
                let mut o = with(bad).clone();
                o.insert("name".into(), json!("n"));
                o.insert("email".into(), json!("a@b.co"));
                o.insert("message".into(), json!("m"));
                Value::Object(o)
            });
            assert_eq!(errs.len(), 1);
            assert_eq!(errs[0].0, "send_at");
        }
    }

    #[test]
    fn fingerprint_ignores_key_order_and_trim_but_not_content() {
        let a = NewMessage::parse(
            MessageKind::Notify,
            &obj(
                json!({"to": "a@b.co", "subject": "Hi", "body": "x", "metadata": {"a": 1, "b": 2}}),
            ),
        )
        .unwrap();
        let b = NewMessage::parse(
            MessageKind::Notify,
            &obj(json!({"metadata": {"b": 2, "a": 1}, "body": "x", "subject": " Hi ", "to": "a@b.co"})),
        )
        .unwrap();
        let c = NewMessage::parse(
            MessageKind::Notify,
            &obj(json!({"to": "a@b.co", "subject": "Hi", "body": "y"})),
        )
        .unwrap();
        assert_eq!(a.fingerprint(), b.fingerprint());
        assert_ne!(a.fingerprint(), c.fingerprint());
    }
}
