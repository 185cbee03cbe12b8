//! Status webhooks as a receiver sees them: the event types, and the
//! Standard Webhooks signature that proves an event came from us.
//!
//! A signature is `v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`,
//! keyed with the secret's bytes (the base64 after `whsec_`). The id is the
//! event's, the same on every retry, so a receiver de-duplicates on it; the
//! timestamp is that of the attempt, so a receiver can refuse old replays.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// What happened to a message. Each type follows one status change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventType {
    /// The message was sent.
    Sent,
    /// The last attempt failed for good (permanent error or retries used up).
    Failed,
    /// An attempt failed transiently; another is scheduled.
    Retrying,
    /// An operator cancelled the queued message.
    Cancelled,
}

impl EventType {
    pub const ALL: [Self; 4] = [Self::Sent, Self::Failed, Self::Retrying, Self::Cancelled];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sent => "message.sent",
            Self::Failed => "message.failed",
            Self::Retrying => "message.retrying",
            Self::Cancelled => "message.cancelled",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == raw)
    }
}

/// The `webhook-signature` header value for one attempt.
pub fn sign(key: &[u8], id: &str, timestamp: i64, body: &[u8]) -> String {
    // HMAC takes a key of any length: `new_from_slice` cannot fail here.
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC accepts any key length");
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
}

/// The key bytes of a `whsec_<base64>` secret; `None` when it is not one.
pub fn secret_key(secret: &str) -> Option<Vec<u8>> {
    let key = STANDARD.decode(secret.strip_prefix("whsec_")?).ok()?;
    (!key.is_empty()).then_some(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_types_round_trip() {
        for t in EventType::ALL {
            assert_eq!(EventType::parse(t.as_str()), Some(t));
        }
        assert_eq!(EventType::parse("message.opened"), None);
    }

    /// The example of the Standard Webhooks specification: its secret, id,
    /// timestamp and body give its signature.
    #[test]
    fn signature_matches_the_specification_example() {
        let key = secret_key("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let body = br#"{"test": 2432232314}"#;
        assert_eq!(
            sign(&key, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn secrets_must_be_whsec_base64() {
        assert!(secret_key("whsec_").is_none());
        assert!(secret_key("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").is_none());
        assert!(secret_key("whsec_not base64!").is_none());
        assert!(secret_key("whsec_c2VjcmV0").is_some());
    }
}
