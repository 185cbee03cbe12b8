//! The vocabulary of idempotency: a client's key and the fingerprint of what
//! it asked for. A repeat is "the same request" when both match; the same key
//! with another fingerprint is a client error (422).

use serde::Serialize;
use sha2::{Digest, Sha256};

/// The `Idempotency-Key` header: 1–255 characters of visible ASCII (what an
/// HTTP header can carry without encoding ambiguity).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey(String);

pub const IDEMPOTENCY_KEY_MAX: usize = 255;

impl IdempotencyKey {
    pub fn parse(raw: &[u8]) -> Result<Self, &'static str> {
        if raw.is_empty() || raw.len() > IDEMPOTENCY_KEY_MAX {
            return Err("Idempotency-Key must be 1 to 255 characters long.");
        }
        if !raw.iter().all(|b| (0x20..0x7f).contains(b)) {
            return Err("Idempotency-Key must be printable ASCII.");
        }
        let s = std::str::from_utf8(raw).map_err(|_| "Idempotency-Key must be printable ASCII.")?;
        if s.trim().is_empty() {
            return Err("Idempotency-Key must not be blank.");
        }
        Ok(Self(s.to_owned()))
    }
}

impl AsRef<str> for IdempotencyKey {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// SHA-256 of the canonical JSON of a validated request (serde_json's `Map`
/// keeps keys sorted, so key order in the client's body does not matter).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fingerprint(pub [u8; 32]);

impl Fingerprint {
    pub fn of(value: &impl Serialize) -> Self {
        let bytes = serde_json::to_vec(value).unwrap_or_default();
        Self(Sha256::digest(&bytes).into())
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys() {
        assert!(IdempotencyKey::parse(b"order-42").is_ok());
        assert!(IdempotencyKey::parse(&[b'k'; 255]).is_ok());
        assert!(IdempotencyKey::parse(&[b'k'; 256]).is_err());
        assert!(IdempotencyKey::parse(b"").is_err());
        assert!(IdempotencyKey::parse(b"   ").is_err());
        assert!(IdempotencyKey::parse(b"caf\xc3\xa9").is_err());
        assert!(IdempotencyKey::parse(b"a\tb").is_err());
    }
}
