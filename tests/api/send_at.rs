//! `send_at` on both POST bodies: an invalid value or one more than 30 days
//! ahead is a `400` naming `send_at` with nothing stored; a valid one is
//! stored `queued` with `next_attempt_at` at that time (a past one: now), on
//! the group-commit path and the keyed one alike, and is part of what makes
//! two requests "the same" for `Idempotency-Key`.

use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use serde_json::{Value, json};

use crate::common::{Mode, SmtpSink, TestApp, spawn_app, spawn_app_with_sink};
use crate::validation::{assert_rejections, case, valid_contact, valid_notify, with};

const ENDPOINTS: [(&str, &str); 2] = [("contact", "/api/contact/"), ("notify", "/api/notify/")];

fn base(kind: &str) -> Value {
    if kind == "contact" {
        valid_contact()
    } else {
        valid_notify()
    }
}

fn instant(v: &Value) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(v.as_str().unwrap_or_else(|| panic!("not a time: {v}")))
        .unwrap()
        .with_timezone(&Utc)
}

async fn next_attempt_at(app: &TestApp, kind: &str, answer: &Value) -> DateTime<Utc> {
    let v = app.detail(kind, answer["uuid"].as_str().unwrap()).await;
    assert_eq!(v["status"], "queued", "{v}");
    instant(&v["next_attempt_at"])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_endpoints_return_400_naming_send_at_when_invalid_or_more_than_30_days_ahead() {
    let app = spawn_app().await;
    let too_far = (Utc::now() + TimeDelta::days(30) + TimeDelta::minutes(5)).to_rfc3339();
    for (kind, path) in ENDPOINTS {
        let mut cases = Vec::new();
        for (label, bad) in [
            ("a word", json!("tomorrow")),
            ("a date without time", json!("2030-01-01")),
            ("no offset", json!("2030-01-01T10:00:00")),
            ("month 13", json!("2030-13-01T10:00:00Z")),
            ("blank", json!("")),
            ("a number", json!(1_900_000_000)),
            ("an object", json!({"at": "2030-01-01T10:00:00Z"})),
            ("more than 30 days ahead", json!(too_far)),
        ] {
            cases.push(case(
                format!("send_at {label}"),
                with(base(kind), "send_at", bad),
                &["send_at"],
            ));
        }
        assert_rejections(&app, path, cases).await;
    }
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_at_ahead_is_stored_as_next_attempt_at_and_a_past_one_means_now() {
    // A server that never finishes a mail: a message due now is claimed and
    // stays `sending` with the `next_attempt_at` it was stored with, which
    // is what this test reads.
    let sink = SmtpSink::start(Mode::Hang).await;
    let app = spawn_app_with_sink(&sink, &[]).await;
    // Whole milliseconds, which every layer keeps exactly.
    let at = (Utc::now() + TimeDelta::hours(2))
        .duration_trunc(TimeDelta::milliseconds(1))
        .unwrap();
    let nearly_30_days = Utc::now() + TimeDelta::days(30) - TimeDelta::minutes(1);
    for (kind, path) in ENDPOINTS {
        // Group commit (plain), then the single-transaction path (keyed).
        let plain = app
            .post_json(path, &with(base(kind), "send_at", json!(at.to_rfc3339())))
            .await;
        assert_eq!(plain.status, 202, "{}", plain.text());
        assert_eq!(plain.json()["status"], "queued");
        assert_eq!(next_attempt_at(&app, kind, &plain.json()).await, at);

        let body = with(base(kind), "send_at", json!(at.to_rfc3339()));
        let key = format!("{kind}-scheduled");
        let keyed = app
            .post_json_with(path, &[("idempotency-key", &key)], &body)
            .await;
        assert_eq!(keyed.status, 202, "{}", keyed.text());
        assert_eq!(next_attempt_at(&app, kind, &keyed.json()).await, at);
        // The same body replays; another send_at under the same key is
        // another request.
        let again = app
            .post_json_with(path, &[("idempotency-key", &key)], &body)
            .await;
        assert_eq!(again.status, 202, "{}", again.text());
        assert_eq!(again.header("idempotent-replayed"), Some("true"));
        let other = with(
            base(kind),
            "send_at",
            json!((at + TimeDelta::minutes(1)).to_rfc3339()),
        );
        let moved = app
            .post_json_with(path, &[("idempotency-key", &key)], &other)
            .await;
        assert_eq!(moved.status, 422, "{}", moved.text());

        let far = app
            .post_json(
                path,
                &with(base(kind), "send_at", json!(nearly_30_days.to_rfc3339())),
            )
            .await;
        assert_eq!(far.status, 202, "{}", far.text());
        assert!(next_attempt_at(&app, kind, &far.json()).await > at);

        // A past send_at means now, not then.
        let before = Utc::now() - TimeDelta::seconds(2);
        let past = app
            .post_json(
                path,
                &with(base(kind), "send_at", json!("2001-02-03T04:05:06+01:00")),
            )
            .await;
        assert_eq!(past.status, 202, "{}", past.text());
        let v = app
            .detail(kind, past.json()["uuid"].as_str().unwrap())
            .await;
        assert!(instant(&v["next_attempt_at"]) >= before, "{v}");
    }
    app.shutdown().await;
}
