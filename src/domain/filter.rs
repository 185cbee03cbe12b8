//! Which messages an operator means: the filters of the lists
//! (`?status=&to=...`) and of the bulk actions (the same names in a JSON
//! body), validated once here, and the keyset cursor of the lists.
//!
//! One [`Filter`] serves both, so a bulk action changes exactly what the
//! list with the same parameters shows. Every value is checked before it
//! reaches SQL: a bad one is a `400` naming its parameter, never a query
//! that fails or silently matches nothing.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{Map, Value};

use super::control::Action;
use super::{EmailAddress, FieldErrors, Fingerprint, MessageKind, Status};

/// The longest `search` term, in characters.
pub const SEARCH_MAX: usize = 255;

/// The messages a list shows or a bulk action changes. Every part is
/// optional; the parts present all apply (AND).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Filter {
    pub status: Option<Status>,
    /// `to` (notifications) or `email` (contact messages), compared
    /// case-insensitively.
    pub recipient: Option<String>,
    /// Strictly after / before these instants.
    pub created_after: Option<DateTime<Utc>>,
    pub created_before: Option<DateTime<Utc>>,
    /// A case-insensitive substring of the recipient or the subject
    /// (notifications), of the name or the email (contact messages).
    pub search: Option<String>,
}

/// The parameter naming a kind's recipient.
pub fn recipient_param(kind: MessageKind) -> &'static str {
    match kind {
        MessageKind::Contact => "email",
        MessageKind::Notify => "to",
    }
}

/// The parameters a filter reads, for a kind.
fn params(kind: MessageKind) -> [&'static str; 5] {
    [
        "status",
        recipient_param(kind),
        "created_after",
        "created_before",
        "search",
    ]
}

const INSTANT: &str = "Enter a valid date/time in RFC 3339 format, e.g. 2026-01-31T12:00:00Z.";

impl Filter {
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// Reads the filter from named text values (a query string, or a body's
    /// strings). An absent or blank value is no filter, as in django-filter.
    pub fn read<'a>(
        kind: MessageKind,
        get: impl Fn(&str) -> Option<&'a str>,
    ) -> Result<Self, FieldErrors> {
        let mut errors = FieldErrors::default();
        let mut f = Self::default();
        let value = |name: &str| get(name).map(str::trim).filter(|v| !v.is_empty());
        if let Some(raw) = value("status") {
            match Status::parse(raw) {
                Some(s) => f.status = Some(s),
                None => errors.add(
                    "status",
                    format!(
                        "Select a valid choice. {raw} is not one of the available choices: {}.",
                        Status::ALL.map(Status::as_str).join(", ")
                    ),
                ),
            }
        }
        let to = recipient_param(kind);
        if let Some(raw) = value(to) {
            match EmailAddress::parse(raw) {
                Ok(a) => f.recipient = Some(a.as_ref().to_owned()),
                Err(m) => errors.add(to, m),
            }
        }
        for (name, slot) in [
            ("created_after", &mut f.created_after),
            ("created_before", &mut f.created_before),
        ] {
            if let Some(raw) = value(name) {
                match instant(raw) {
                    Some(t) => *slot = Some(t),
                    None => errors.add(name, INSTANT),
                }
            }
        }
        if let Some(raw) = value("search") {
            // The length as given: a long value is refused even if most of
            // it is the whitespace around the term.
            let given = get("search").unwrap_or(raw);
            if raw.contains('\0') {
                errors.add("search", "Null characters are not allowed.");
            } else if given.chars().count() > SEARCH_MAX {
                errors.add(
                    "search",
                    format!("Ensure this field has no more than {SEARCH_MAX} characters."),
                );
            } else {
                f.search = Some(raw.to_owned());
            }
        }
        if errors.is_empty() {
            Ok(f)
        } else {
            Err(errors)
        }
    }
}

/// RFC 3339. In a query string an unencoded `+` of the offset arrives as a
/// space; it is read back as the `+` it was.
fn instant(raw: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(raw)
        .or_else(|_| DateTime::parse_from_rfc3339(&raw.replace(' ', "+")))
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// A bulk action: the filter of its body and the action, `force` included.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bulk {
    pub filter: Filter,
    pub action: Action,
}

impl Bulk {
    /// Validates a bulk body: only the filter's names (and `force`, a
    /// boolean, for a resend), each a string that is not blank (a body
    /// names the filters it means; unlike a query string, it has no empty
    /// values to ignore), at least one of them.
    pub fn parse(
        kind: MessageKind,
        retry: bool,
        body: &Map<String, Value>,
    ) -> Result<Self, FieldErrors> {
        let mut errors = FieldErrors::default();
        let names = params(kind);
        let mut force = false;
        for (name, value) in body {
            if retry && name == "force" {
                match value {
                    Value::Bool(b) => force = *b,
                    _ => errors.add("force", "Must be a valid boolean."),
                }
            } else if !names.contains(&name.as_str()) {
                errors.add(
                    name.as_str(),
                    format!(
                        "Unknown field. Filters are: {}{}.",
                        names.join(", "),
                        if retry { "; and force" } else { "" }
                    ),
                );
            } else {
                match value {
                    Value::String(s) if s.trim().is_empty() => {
                        errors.add(name.as_str(), "This field may not be blank.")
                    }
                    Value::String(_) => {}
                    Value::Null => errors.add(name.as_str(), "This field may not be null."),
                    _ => errors.add(name.as_str(), "Not a valid string."),
                }
            }
        }
        let filter = Filter::read(kind, |name| body.get(name).and_then(Value::as_str));
        let filter = match filter {
            Ok(f) if errors.is_empty() && f.is_empty() => {
                errors.add(
                    "non_field_errors",
                    format!(
                        "Give at least one filter ({}): an empty filter would change every message.",
                        names.join(", ")
                    ),
                );
                None
            }
            Ok(f) => Some(f),
            Err(e) => {
                for (field, messages) in e {
                    for m in messages {
                        errors.add(field.as_str(), m);
                    }
                }
                None
            }
        };
        match filter {
            Some(filter) if errors.is_empty() => Ok(Self {
                filter,
                action: if retry {
                    Action::Retry { force }
                } else {
                    Action::Cancel
                },
            }),
            _ => Err(errors),
        }
    }

    /// What makes two bulk requests "the same" for an `Idempotency-Key`.
    pub fn fingerprint(&self) -> Fingerprint {
        let force = match self.action {
            Action::Retry { force } => Some(force),
            Action::Cancel => None,
        };
        Fingerprint::of(&(&self.filter, force))
    }
}

/// Where a keyset page starts, newest first: at the newest message, just
/// below an id (the next page) or just above one (the previous page).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cursor {
    Newest,
    Below(i64),
    Above(i64),
}

impl Cursor {
    /// The opaque token of `?cursor=`. Empty is the newest page.
    pub fn parse(raw: &str) -> Option<Self> {
        if raw.is_empty() {
            return Some(Self::Newest);
        }
        if raw.len() > 40 || !raw.len().is_multiple_of(2) {
            return None;
        }
        let bytes: Option<Vec<u8>> = (0..raw.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(raw.get(i..i + 2)?, 16).ok())
            .collect();
        let text = String::from_utf8(bytes?).ok()?;
        let (dir, id) = text.split_at_checked(2)?;
        let id = id.parse::<i64>().ok().filter(|&id| id > 0)?;
        match dir {
            "b:" => Some(Self::Below(id)),
            "a:" => Some(Self::Above(id)),
            _ => None,
        }
    }

    /// The token for this position; hex, so it needs no URL encoding, and
    /// opaque to clients, who only pass it back.
    pub fn token(self) -> String {
        let text = match self {
            Self::Newest => return String::new(),
            Self::Below(id) => format!("b:{id}"),
            Self::Above(id) => format!("a:{id}"),
        };
        text.bytes().map(|b| format!("{b:02x}")).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn query(pairs: &[(&'static str, &'static str)]) -> Result<Filter, FieldErrors> {
        Filter::read(MessageKind::Notify, |n| {
            pairs.iter().find(|(k, _)| *k == n).map(|(_, v)| *v)
        })
    }

    fn fields(e: FieldErrors) -> Vec<String> {
        e.into_iter().map(|(f, _)| f).collect()
    }

    #[test]
    fn a_filter_reads_every_part_and_blank_means_none() {
        let f = query(&[
            ("status", "failed"),
            ("to", " A@Example.org "),
            ("created_after", "2026-01-02T03:04:05+01:00"),
            ("created_before", "2026-01-02T03:04:05 01:00"),
            ("search", "  Invoice "),
        ])
        .unwrap();
        assert_eq!(f.status, Some(Status::Failed));
        assert_eq!(f.recipient.as_deref(), Some("A@Example.org"));
        assert_eq!(f.created_after, f.created_before);
        assert_eq!(f.search.as_deref(), Some("Invoice"));
        assert!(
            query(&[("status", " "), ("search", "")])
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn every_bad_value_is_named() {
        let e = query(&[
            ("status", "delivered"),
            ("to", "nope"),
            ("created_after", "yesterday"),
            ("created_before", "2026-01-02"),
            ("search", "a\0b"),
        ])
        .unwrap_err();
        assert_eq!(
            fields(e),
            ["created_after", "created_before", "search", "status", "to"]
        );
        let long = "x".repeat(SEARCH_MAX + 1);
        let e = Filter::read(MessageKind::Contact, |n| {
            (n == "search").then_some(long.as_str())
        });
        assert_eq!(fields(e.unwrap_err()), ["search"]);
    }

    #[test]
    fn a_bulk_body_needs_a_filter_and_knows_its_fields() {
        let obj = |v: Value| v.as_object().unwrap().clone();
        let parse = |kind, retry, v| Bulk::parse(kind, retry, &obj(v));
        let e = parse(MessageKind::Notify, false, json!({})).unwrap_err();
        assert_eq!(fields(e), ["non_field_errors"]);
        let e = parse(MessageKind::Notify, true, json!({"force": true}));
        assert_eq!(fields(e.unwrap_err()), ["non_field_errors"]);
        let e = parse(
            MessageKind::Notify,
            true,
            json!({"status": "", "to": null, "search": "x", "force": null}),
        );
        assert_eq!(fields(e.unwrap_err()), ["force", "status", "to"]);
        let e = parse(
            MessageKind::Notify,
            false,
            json!({"status": "queued", "force": true}),
        );
        assert_eq!(fields(e.unwrap_err()), ["force"]);
        let e = parse(MessageKind::Contact, false, json!({"to": "a@b.co"}));
        assert_eq!(fields(e.unwrap_err()), ["to"]);
        let e = parse(MessageKind::Notify, false, json!({"status": 3}));
        assert_eq!(fields(e.unwrap_err()), ["status"]);
        let b = parse(
            MessageKind::Notify,
            true,
            json!({"status": "sent", "force": true}),
        )
        .unwrap();
        assert_eq!(b.action, Action::Retry { force: true });
        let c = parse(MessageKind::Notify, true, json!({"status": "sent"})).unwrap();
        assert_ne!(b.fingerprint(), c.fingerprint());
        let b = parse(MessageKind::Contact, false, json!({"email": "a@b.co"})).unwrap();
        assert_eq!(b.action, Action::Cancel);
    }

    #[test]
    fn cursors_round_trip_and_refuse_garbage() {
        for c in [Cursor::Below(42), Cursor::Above(1), Cursor::Newest] {
            assert_eq!(Cursor::parse(&c.token()), Some(c));
        }
        for bad in ["zz", "b:42", "623a", "623a2d31", "613a30", "x"] {
            assert_eq!(Cursor::parse(bad), None, "{bad}");
        }
    }
}
