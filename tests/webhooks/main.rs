//! Status webhooks against a receiver the tests control
//! (`tests/common/webhook_sink.rs`): each event type arrives once, with the
//! right body and a signature that the independent `standardwebhooks`
//! package (PyPI, run as a child process) verifies; receivers that are down,
//! failing, slow, hanging or gone; the outbox across a kill -9, a Redis wipe
//! and two instances; the events API; the purge.

#[path = "../common/mod.rs"]
mod common;

mod api;
mod durability;
mod events;
mod outages;
mod purge;

use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

use common::{AppBuilder, Hook, TestApp, WebhookSink, poll_until};

/// The secret of every test: `whsec_` and the base64 of 32 bytes.
pub const SECRET: &str = "whsec_C2FtcGxlLXNlY3JldC1mb3ItdGhlLXdlYmhvb2stdGVzdHM=";

/// Quick retries, so that a test sees a few of them.
pub const FAST_SCHEDULE: &str = "0.3,0.6,1";

/// The variables that point the service at `sink`, signed with [`SECRET`].
pub fn hook_env(sink: &WebhookSink) -> Vec<(String, String)> {
    vec![
        ("WEBHOOK_URLS".into(), sink.url()),
        ("WEBHOOK_SECRET".into(), SECRET.into()),
        ("WEBHOOK_RETRY_SCHEDULE".into(), FAST_SCHEDULE.into()),
        ("WEBHOOK_TIMEOUT".into(), "2".into()),
    ]
}

/// A service (not started yet) sending its webhooks to `sink`.
pub fn hooked(sink: &WebhookSink) -> AppBuilder {
    hook_env(sink)
        .iter()
        .fold(TestApp::builder(), |b, (k, v)| b.env(k, v))
}

/// An in-process service sending its webhooks to `sink`, with `extra`
/// variables on top.
pub async fn app_with_hooks(sink: &WebhookSink, extra: &[(&str, &str)]) -> TestApp {
    hooked(sink).envs(extra).start().await
}

pub fn notification(subject: &str) -> Value {
    json!({"to": "reader@example.org", "subject": subject, "body": "the secret body text",
           "metadata": {"order": 42}})
}

/// Waits until the sink has delivered `n` requests about `uuid`; returns them.
pub async fn delivered_about(
    sink: &WebhookSink,
    uuid: &str,
    n: usize,
    within: Duration,
) -> Vec<Hook> {
    poll_until(within, &format!("{n} webhooks about {uuid}"), || async {
        let hooks: Vec<Hook> = sink
            .delivered()
            .into_iter()
            .filter(|h| h.message() == uuid)
            .collect();
        if hooks.len() >= n {
            Ok(hooks)
        } else {
            Err(format!(
                "{} so far: {:?}",
                hooks.len(),
                sink.hooks()
                    .iter()
                    .map(|h| (h.event_type(), h.answered))
                    .collect::<Vec<_>>()
            ))
        }
    })
    .await
}

/// Checks a received webhook with the `standardwebhooks` package (pinned,
/// installed by `scripts/test` into the virtualenv named by
/// `WEBHOOK_VERIFY_PYTHON`): `Err` with its complaint when it refuses.
pub fn verify(hook: &Hook, secret: &str) -> Result<(), String> {
    let python = std::env::var("WEBHOOK_VERIFY_PYTHON").unwrap_or_else(|_| {
        panic!("WEBHOOK_VERIFY_PYTHON is not set: run the tests through scripts/test, which installs standardwebhooks")
    });
    let headers = json!({
        "webhook-id": hook.headers.get("webhook-id"),
        "webhook-timestamp": hook.headers.get("webhook-timestamp"),
        "webhook-signature": hook.headers.get("webhook-signature"),
    });
    let script = "import sys, json\n\
        from standardwebhooks.webhooks import Webhook\n\
        Webhook(sys.argv[1]).verify(sys.stdin.buffer.read(), json.loads(sys.argv[2]))\n";
    let mut child = Command::new(python)
        .args(["-c", script, secret, &headers.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start python");
    use std::io::Write;
    child.stdin.take().unwrap().write_all(&hook.body).unwrap();
    let out = child.wait_with_output().unwrap();
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}
