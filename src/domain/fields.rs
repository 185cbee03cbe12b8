//! Field-level parsing shared by the message types: a [`Reader`] walks one JSON
//! object, records every problem it meets under the field's name, and hands
//! back only values that passed.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{Map, Value};
use uuid::Uuid;

/// `{"field": ["what is wrong", ...]}`, sorted by field for stable output.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct FieldErrors(BTreeMap<String, Vec<String>>);

impl FieldErrors {
    pub fn add(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.0.entry(field.into()).or_default().push(message.into());
    }

    pub fn single(field: impl Into<String>, message: impl Into<String>) -> Self {
        let mut e = Self::default();
        e.add(field, message);
        e
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl IntoIterator for FieldErrors {
    type Item = (String, Vec<String>);
    type IntoIter = std::collections::btree_map::IntoIter<String, Vec<String>>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

/// A syntactically valid address (`local@domain`), checked by lettre's parser,
/// so whatever is accepted here can be put in an envelope later. It can hold
/// no CR/LF, which closes header injection through addresses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct EmailAddress(String);

/// RFC 5321's limit on a forward path.
const EMAIL_MAX: usize = 254;

impl EmailAddress {
    pub fn parse(raw: &str) -> Result<Self, &'static str> {
        let raw = raw.trim();
        if raw.len() > EMAIL_MAX {
            return Err("Ensure this address has no more than 254 bytes in UTF-8.");
        }
        raw.parse::<lettre::Address>()
            .map(|_| Self(raw.to_owned()))
            .map_err(|_| "Enter a valid email address.")
    }
}

impl AsRef<str> for EmailAddress {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

pub(super) struct Reader<'a> {
    body: &'a Map<String, Value>,
    errors: FieldErrors,
}

const REQUIRED: &str = "This field is required.";
const NOT_NULL: &str = "This field may not be null.";
const NOT_BLANK: &str = "This field may not be blank.";
const NOT_STRING: &str = "Not a valid string.";
const NO_NUL: &str = "Null characters are not allowed.";

impl<'a> Reader<'a> {
    pub(super) fn new(body: &'a Map<String, Value>) -> Self {
        Self {
            body,
            errors: FieldErrors::default(),
        }
    }

    pub(super) fn finish(self) -> Result<(), FieldErrors> {
        if self.errors.is_empty() {
            Ok(())
        } else {
            Err(self.errors)
        }
    }

    fn fail<T>(&mut self, field: &str, message: &str) -> Option<T> {
        self.errors.add(field, message);
        None
    }

    /// A required string, trimmed (as DRF's `CharField` does), not blank.
    fn required_str(&mut self, field: &str) -> Option<String> {
        match self.body.get(field) {
            None => self.fail(field, REQUIRED),
            Some(Value::Null) => self.fail(field, NOT_NULL),
            Some(Value::String(s)) => {
                let s = s.trim();
                if s.is_empty() {
                    self.fail(field, NOT_BLANK)
                } else if s.contains('\0') {
                    self.fail(field, NO_NUL)
                } else {
                    Some(s.to_owned())
                }
            }
            Some(_) => self.fail(field, NOT_STRING),
        }
    }

    pub(super) fn text(&mut self, field: &str, max_chars: Option<usize>) -> Option<String> {
        let s = self.required_str(field)?;
        match max_chars {
            Some(max) if s.chars().count() > max => self.fail(
                field,
                &format!("Ensure this field has no more than {max} characters."),
            ),
            _ => Some(s),
        }
    }

    /// A header-bound string: no line breaks, so it cannot start a new header.
    /// A header-bound string: no line breaks anywhere, not even at the ends
    /// where trimming would hide them, so it cannot start a new header.
    pub(super) fn single_line(&mut self, field: &str, max_chars: usize) -> Option<String> {
        let raw_has_break = matches!(
            self.body.get(field),
            Some(Value::String(s)) if s.contains(['\r', '\n'])
        );
        let s = self.text(field, Some(max_chars))?;
        if raw_has_break {
            self.fail(field, "This field may not contain line breaks.")
        } else {
            Some(s)
        }
    }

    pub(super) fn email(&mut self, field: &str) -> Option<EmailAddress> {
        let s = self.required_str(field)?;
        match EmailAddress::parse(&s) {
            Ok(a) => Some(a),
            Err(msg) => self.fail(field, msg),
        }
    }

    /// An optional string; absent, null and blank all mean "none".
    pub(super) fn optional_text(&mut self, field: &str) -> Option<String> {
        match self.body.get(field) {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if s.trim().is_empty() => None,
            Some(Value::String(s)) if s.contains('\0') => self.fail(field, NO_NUL),
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => self.fail(field, NOT_STRING),
        }
    }

    pub(super) fn optional_uuid(&mut self, field: &str) -> Option<Uuid> {
        match self.body.get(field) {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => match Uuid::parse_str(s.trim()) {
                Ok(u) => Some(u),
                Err(_) => self.fail(field, "Must be a valid UUID."),
            },
            Some(_) => self.fail(field, "Must be a valid UUID."),
        }
    }

    /// An optional RFC 3339 instant no later than `latest`; absent and null
    /// mean "none". An instant in the past is kept as given (it means now).
    pub(super) fn optional_instant(
        &mut self,
        field: &str,
        latest: DateTime<Utc>,
        too_late: &str,
    ) -> Option<DateTime<Utc>> {
        const INVALID: &str = "Datetime has wrong format. Use one of these formats instead: YYYY-MM-DDThh:mm[:ss[.uuuuuu]]+HH:MM|-HH:MM|Z.";
        match self.body.get(field) {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => match DateTime::parse_from_rfc3339(s.trim()) {
                Ok(t) if t.with_timezone(&Utc) > latest => self.fail(field, too_late),
                Ok(t) => Some(t.with_timezone(&Utc)),
                Err(_) => self.fail(field, INVALID),
            },
            Some(_) => self.fail(field, INVALID),
        }
    }

    /// An optional JSON object, stored as `jsonb`: PostgreSQL refuses `\u0000`
    /// in `jsonb` text, so it is refused here rather than failing at insert.
    pub(super) fn optional_object(&mut self, field: &str) -> Option<Map<String, Value>> {
        match self.body.get(field) {
            None | Some(Value::Null) => None,
            Some(Value::Object(m)) => {
                if m.iter().any(|(k, v)| k.contains('\0') || has_nul(v)) {
                    self.fail(field, NO_NUL)
                } else {
                    Some(m.clone())
                }
            }
            Some(_) => self.fail(field, "Must be a JSON object."),
        }
    }
}

fn has_nul(v: &Value) -> bool {
    match v {
        Value::String(s) => s.contains('\0'),
        Value::Array(a) => a.iter().any(has_nul),
        Value::Object(m) => m.iter().any(|(k, v)| k.contains('\0') || has_nul(v)),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        for ok in [
            "a@b.co",
            "admin@localhost",
            "first.last+tag@sub.example.org",
        ] {
            assert!(EmailAddress::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "plain",
            "@b.co",
            "a@",
            "a b@c.d",
            "a@b.co\r\nBcc: x@y.z",
            "Name <a@b.co>",
        ] {
            assert!(EmailAddress::parse(bad).is_err(), "{bad:?}");
        }
        let long = format!("{}@example.com", "a".repeat(250));
        assert!(EmailAddress::parse(&long).is_err());
    }
}
