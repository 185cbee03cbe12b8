//! The webhook settings: where status events go (`WEBHOOK_URLS`), the
//! secret they are signed with (`WEBHOOK_SECRET`), which types are sent
//! (`WEBHOOK_EVENTS`), and how deliveries are timed.
//!
//! Webhooks are off while `WEBHOOK_URLS` is empty; then the other variables
//! are not required, and no event is recorded. With URLs, a missing or
//! malformed secret stops the start: an unsigned event could not be told
//! apart from a forged one.

use std::time::Duration;

use super::ConfigError;
use super::secret::Secret;
use super::vars::Vars;
use crate::domain::webhook::{EventType, secret_key};

/// After a failed attempt, the waits before the next ones; past the last
/// one the event is given up (`failed`).
const DEFAULT_SCHEDULE: &str = "5,60,600,3600,21600";

#[derive(Debug, Clone)]
pub struct WebhookConfig {
    /// The receivers, each an `http` or `https` URL; empty means off.
    pub urls: Vec<String>,
    /// `whsec_<base64>`; the key is the decoded base64.
    pub secret: Secret,
    /// The types recorded; every type by default.
    pub events: Vec<EventType>,
    /// One attempt, connection included.
    pub timeout: Duration,
    /// `WEBHOOK_RETRY_SCHEDULE` (seconds): the wait after failed attempt n
    /// is its n-th entry.
    pub retry_schedule: Vec<Duration>,
    /// `WEBHOOK_RETENTION_HOURS`: delivered and given-up events are purged
    /// this long after they finished.
    pub retention: Duration,
    /// `WEBHOOK_CONCURRENCY`: deliveries in flight at most, per instance.
    pub concurrency: usize,
}

impl WebhookConfig {
    pub fn enabled(&self) -> bool {
        !self.urls.is_empty()
    }

    /// Whether events of this type are recorded.
    pub fn wants(&self, event: EventType) -> bool {
        self.enabled() && self.events.contains(&event)
    }

    /// The signing key (the secret's decoded base64); empty when off.
    pub fn key(&self) -> Vec<u8> {
        secret_key(self.secret.expose()).unwrap_or_default()
    }
}

fn list(raw: &str) -> impl Iterator<Item = &str> {
    raw.split(',').map(str::trim).filter(|s| !s.is_empty())
}

/// An absolute `http`/`https` URL with a host.
fn valid_url(raw: &str) -> bool {
    match raw.parse::<hyper::Uri>() {
        Ok(uri) => {
            matches!(uri.scheme_str(), Some("http" | "https"))
                && uri.host().is_some_and(|h| !h.is_empty())
        }
        Err(_) => false,
    }
}

pub(super) fn load(v: &Vars) -> Result<WebhookConfig, ConfigError> {
    let raw_urls = v.string("WEBHOOK_URLS", "");
    let mut urls = Vec::new();
    for url in list(&raw_urls) {
        if !valid_url(url) {
            return Err(v.error(
                "WEBHOOK_URLS",
                url,
                "each entry must be an http:// or https:// URL with a host",
            ));
        }
        if !urls.iter().any(|u| u == url) {
            urls.push(url.to_owned());
        }
    }
    let secret = Secret::new(v.string("WEBHOOK_SECRET", ""));
    if !urls.is_empty() {
        if secret.is_empty() {
            return Err(v.error(
                "WEBHOOK_SECRET",
                "",
                "required when WEBHOOK_URLS is set (whsec_ followed by base64)",
            ));
        }
        if secret_key(secret.expose()).is_none() {
            return Err(v.error(
                "WEBHOOK_SECRET",
                "***",
                "expected whsec_ followed by base64 (e.g. whsec_ and 32 random bytes in base64)",
            ));
        }
    }
    let events = match v.opt("WEBHOOK_EVENTS") {
        None => EventType::ALL.to_vec(),
        Some(raw) => {
            let mut events = Vec::new();
            for name in list(&raw) {
                let event = EventType::parse(name).ok_or_else(|| {
                    v.error(
                        "WEBHOOK_EVENTS",
                        name,
                        &format!(
                            "unknown event type; expected some of {}",
                            EventType::ALL.map(EventType::as_str).join(", ")
                        ),
                    )
                })?;
                if !events.contains(&event) {
                    events.push(event);
                }
            }
            events
        }
    };
    let timeout: u64 = v.parse("WEBHOOK_TIMEOUT", 15)?;
    if !(1..=300).contains(&timeout) {
        return Err(v.error(
            "WEBHOOK_TIMEOUT",
            &timeout.to_string(),
            "must be between 1 and 300 seconds",
        ));
    }
    let raw_schedule = v.string("WEBHOOK_RETRY_SCHEDULE", DEFAULT_SCHEDULE);
    let mut retry_schedule = Vec::new();
    for step in list(&raw_schedule) {
        let secs = step
            .parse::<f64>()
            .ok()
            .filter(|s| s.is_finite() && (0.0..=7.0 * 86_400.0).contains(s))
            .ok_or_else(|| {
                v.error(
                    "WEBHOOK_RETRY_SCHEDULE",
                    &raw_schedule,
                    "expected a comma list of seconds, each between 0 and 604800",
                )
            })?;
        retry_schedule.push(Duration::from_secs_f64(secs));
    }
    let retention_hours: u64 = v.parse("WEBHOOK_RETENTION_HOURS", 168)?;
    if retention_hours == 0 || retention_hours > 24 * 365 {
        return Err(v.error(
            "WEBHOOK_RETENTION_HOURS",
            &retention_hours.to_string(),
            "must be between 1 and 8760",
        ));
    }
    let concurrency: usize = v.parse("WEBHOOK_CONCURRENCY", 16)?;
    if !(1..=256).contains(&concurrency) {
        return Err(v.error(
            "WEBHOOK_CONCURRENCY",
            &concurrency.to_string(),
            "must be between 1 and 256",
        ));
    }
    Ok(WebhookConfig {
        urls,
        secret,
        events,
        timeout: Duration::from_secs(timeout),
        retry_schedule,
        retention: Duration::from_secs(retention_hours * 3600),
        concurrency,
    })
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::super::Config;
    use super::*;

    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

    fn load(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_map(&map)
    }

    #[test]
    fn off_by_default_with_the_documented_defaults() {
        let w = load(&[]).unwrap().webhooks;
        assert!(!w.enabled());
        assert_eq!(w.events, EventType::ALL.to_vec());
        assert_eq!(w.timeout, Duration::from_secs(15));
        let secs: Vec<u64> = w.retry_schedule.iter().map(Duration::as_secs).collect();
        assert_eq!(secs, vec![5, 60, 600, 3600, 21600]);
    }

    #[test]
    fn urls_events_and_schedule_are_read() {
        let w = load(&[
            (
                "WEBHOOK_URLS",
                "http://a.example/hook, https://b.example:8443/x",
            ),
            ("WEBHOOK_SECRET", SECRET),
            ("WEBHOOK_EVENTS", "message.sent,message.failed"),
            ("WEBHOOK_RETRY_SCHEDULE", "0.2,1"),
        ])
        .unwrap()
        .webhooks;
        assert_eq!(w.urls.len(), 2);
        assert!(w.wants(EventType::Sent));
        assert!(!w.wants(EventType::Cancelled));
        assert_eq!(w.retry_schedule[0], Duration::from_millis(200));
        assert!(!w.key().is_empty());
        assert!(!format!("{w:?}").contains("MfKQ9r8"));
    }

    #[test]
    fn bad_values_name_their_variable() {
        let url = ("WEBHOOK_URLS", "http://a.example/hook");
        let secret = ("WEBHOOK_SECRET", SECRET);
        let cases: [(&[(&str, &str)], &str); 8] = [
            (&[url], "WEBHOOK_SECRET"),
            (&[url, ("WEBHOOK_SECRET", "not-whsec")], "WEBHOOK_SECRET"),
            (
                &[("WEBHOOK_URLS", "ftp://a.example/"), secret],
                "WEBHOOK_URLS",
            ),
            (
                &[("WEBHOOK_URLS", "a.example/hook"), secret],
                "WEBHOOK_URLS",
            ),
            (&[("WEBHOOK_EVENTS", "message.opened")], "WEBHOOK_EVENTS"),
            (&[("WEBHOOK_TIMEOUT", "0")], "WEBHOOK_TIMEOUT"),
            (
                &[("WEBHOOK_RETRY_SCHEDULE", "5,soon")],
                "WEBHOOK_RETRY_SCHEDULE",
            ),
            (&[("WEBHOOK_CONCURRENCY", "0")], "WEBHOOK_CONCURRENCY"),
        ];
        for (vars, variable) in cases {
            let err = load(vars).expect_err(variable);
            assert_eq!(err.variable, variable, "{vars:?}");
        }
    }
}
