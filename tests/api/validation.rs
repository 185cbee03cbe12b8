//! Field validation of `POST /api/contact/` and `POST /api/notify/`: every
//! invalid body is a `400` `{"errors": {...}}` naming exactly the bad fields,
//! and nothing reaches the database.

use serde_json::{Value, json};

use crate::common::{TestApp, spawn_app};

const CONTACT: &str = "/api/contact/";
const NOTIFY: &str = "/api/notify/";

pub(super) fn valid_contact() -> Value {
    json!({"name": "Ada Lovelace", "email": "ada@example.com", "message": "Hello there"})
}

pub(super) fn valid_notify() -> Value {
    json!({"to": "bob@example.com", "subject": "Welcome", "body": "Hi Bob"})
}

/// `base` with `field` set to `value`.
pub(super) fn with(base: Value, field: &str, value: Value) -> Value {
    let mut obj = base;
    obj.as_object_mut()
        .expect("object")
        .insert(field.to_owned(), value);
    obj
}

/// `base` without `field`.
fn without(base: Value, field: &str) -> Value {
    let mut obj = base;
    obj.as_object_mut().expect("object").remove(field);
    obj
}

/// One invalid body and the fields its `errors` must name, exactly.
pub(super) struct Case {
    label: String,
    body: Value,
    fields: Vec<&'static str>,
}

pub(super) fn case(label: impl Into<String>, body: Value, fields: &[&'static str]) -> Case {
    Case {
        label: label.into(),
        body,
        fields: fields.to_vec(),
    }
}

/// The usual ways a required string field can be wrong.
fn bad_required_string(base: &Value, field: &'static str) -> Vec<Case> {
    let mut cases = vec![
        case(
            format!("{field} missing"),
            without(base.clone(), field),
            &[field],
        ),
        case(
            format!("{field} null"),
            with(base.clone(), field, Value::Null),
            &[field],
        ),
        case(
            format!("{field} empty"),
            with(base.clone(), field, json!("")),
            &[field],
        ),
        case(
            format!("{field} whitespace only"),
            with(base.clone(), field, json!(" \t\r\n ")),
            &[field],
        ),
    ];
    for (kind, value) in [
        ("number", json!(42)),
        ("float", json!(1.5)),
        ("boolean", json!(true)),
        ("array", json!(["a"])),
        ("object", json!({"a": "b"})),
    ] {
        cases.push(case(
            format!("{field} is a {kind}"),
            with(base.clone(), field, value),
            &[field],
        ));
    }
    cases
}

const INVALID_EMAILS: &[&str] = &[
    "plain",
    "@example.com",
    "ada@",
    "ada@@example.com",
    "ada lovelace@example.com",
    "Ada <ada@example.com>",
    "ada@example.com\r\nBcc: victim@example.com",
    "ada@exa mple.com",
];

fn too_long_email() -> String {
    format!("{}@example.com", "a".repeat(250))
}

/// Posts every case and checks the answer and that nothing was stored; all
/// mismatches are reported together.
pub(super) async fn assert_rejections(app: &TestApp, path: &str, cases: Vec<Case>) {
    assert!(!cases.is_empty());
    let mut failures = Vec::new();
    for case in cases {
        let resp = app.post_json(path, &case.body).await;
        let label = &case.label;
        if resp.status != 400 {
            failures.push(format!(
                "{label}: expected 400, got {} {}",
                resp.status,
                resp.text()
            ));
        } else {
            match serde_json::from_slice::<Value>(&resp.body) {
                Err(e) => failures.push(format!("{label}: body is not JSON: {e}")),
                Ok(body) => {
                    if let Some(problem) = errors_problem(&body, &case.fields) {
                        failures.push(format!("{label}: {problem}; body {body}"));
                    }
                }
            }
        }
        let counts = app.row_counts().await;
        if counts != [0, 0, 0] {
            failures.push(format!("{label}: something was stored: {counts:?}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} case(s) of {path} went wrong:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// `None` when `body` is `{"errors": {field: [message, ...], ...}}` with
/// exactly `fields`, each with at least one non-empty message.
fn errors_problem(body: &Value, fields: &[&str]) -> Option<String> {
    let Some(obj) = body.as_object() else {
        return Some("body is not an object".into());
    };
    if obj.len() != 1 || !obj.contains_key("errors") {
        return Some(format!(
            "body keys should be exactly [\"errors\"], got {:?}",
            obj.keys().collect::<Vec<_>>()
        ));
    }
    let Some(errors) = obj["errors"].as_object() else {
        return Some("errors is not an object".into());
    };
    let mut got: Vec<&str> = errors.keys().map(String::as_str).collect();
    got.sort_unstable();
    let mut want = fields.to_vec();
    want.sort_unstable();
    if got != want {
        return Some(format!("errors should name {want:?}, named {got:?}"));
    }
    for (field, messages) in errors {
        let ok = messages.as_array().is_some_and(|m| {
            !m.is_empty()
                && m.iter()
                    .all(|s| s.as_str().is_some_and(|s| !s.trim().is_empty()))
        });
        if !ok {
            return Some(format!(
                "errors.{field} should be a non-empty list of messages, got {messages}"
            ));
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contact_returns_400_naming_each_missing_null_blank_or_mistyped_field() {
    let app = spawn_app().await;
    let base = valid_contact();
    let mut cases = Vec::new();
    for field in ["name", "email", "message"] {
        cases.extend(bad_required_string(&base, field));
    }
    cases.push(case(
        "empty object",
        json!({}),
        &["email", "message", "name"],
    ));
    assert_rejections(&app, CONTACT, cases).await;
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notify_returns_400_naming_each_missing_null_blank_or_mistyped_field() {
    let app = spawn_app().await;
    let base = valid_notify();
    let mut cases = Vec::new();
    for field in ["to", "subject", "body"] {
        cases.extend(bad_required_string(&base, field));
    }
    cases.push(case("empty object", json!({}), &["body", "subject", "to"]));
    for (kind, value) in [
        ("number", json!(1)),
        ("array", json!(["<p>x</p>"])),
        ("object", json!({"p": "x"})),
        ("boolean", json!(false)),
    ] {
        cases.push(case(
            format!("html is a {kind}"),
            with(base.clone(), "html", value),
            &["html"],
        ));
    }
    assert_rejections(&app, NOTIFY, cases).await;
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contact_returns_400_naming_email_when_email_is_invalid() {
    let app = spawn_app().await;
    let mut cases: Vec<Case> = INVALID_EMAILS
        .iter()
        .map(|e| {
            case(
                format!("email {e:?}"),
                with(valid_contact(), "email", json!(e)),
                &["email"],
            )
        })
        .collect();
    cases.push(case(
        "email of 263 characters",
        with(valid_contact(), "email", json!(too_long_email())),
        &["email"],
    ));
    assert_rejections(&app, CONTACT, cases).await;
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notify_returns_400_naming_to_when_the_address_is_invalid() {
    let app = spawn_app().await;
    let mut cases: Vec<Case> = INVALID_EMAILS
        .iter()
        .map(|e| {
            case(
                format!("to {e:?}"),
                with(valid_notify(), "to", json!(e)),
                &["to"],
            )
        })
        .collect();
    cases.push(case(
        "to of 263 characters",
        with(valid_notify(), "to", json!(too_long_email())),
        &["to"],
    ));
    assert_rejections(&app, NOTIFY, cases).await;
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contact_returns_400_when_name_exceeds_255_characters_or_message_exceeds_10000() {
    let app = spawn_app().await;
    let cases = vec![
        case(
            "name of 256 ASCII characters",
            with(valid_contact(), "name", json!("a".repeat(256))),
            &["name"],
        ),
        case(
            "name of 256 two-byte characters",
            with(valid_contact(), "name", json!("é".repeat(256))),
            &["name"],
        ),
        case(
            "message of 10,001 characters",
            with(valid_contact(), "message", json!("m".repeat(10_001))),
            &["message"],
        ),
        case(
            "message of 10,001 two-byte characters",
            with(valid_contact(), "message", json!("ü".repeat(10_001))),
            &["message"],
        ),
    ];
    assert_rejections(&app, CONTACT, cases).await;
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contact_accepts_limits_counted_in_characters_not_bytes() {
    let app = spawn_app().await;
    let bodies = [
        with(valid_contact(), "name", json!("é".repeat(255))),
        with(valid_contact(), "name", json!("a".repeat(255))),
        with(valid_contact(), "message", json!("ü".repeat(10_000))),
        with(valid_contact(), "name", json!("x")),
    ];
    for body in &bodies {
        let resp = app.post_json(CONTACT, body).await;
        assert_eq!(
            resp.status,
            202,
            "a body within the limits must be accepted: {}",
            resp.text()
        );
    }
    let name: String = app
        .scalar("SELECT name FROM contact_messages ORDER BY id LIMIT 1")
        .await;
    assert_eq!(name, "é".repeat(255), "the name is stored unchanged");
    assert_eq!(app.row_counts().await, [4, 0, 0]);
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notify_returns_400_naming_subject_when_it_has_a_line_break_or_over_255_characters() {
    let app = spawn_app().await;
    let mut cases = Vec::new();
    for subject in [
        "Hello\r\nBcc: victim@example.com",
        "Hello\nWorld",
        "Hello\rWorld",
        "Line one\r\n\r\nLine two",
    ] {
        cases.push(case(
            format!("subject {subject:?}"),
            with(valid_notify(), "subject", json!(subject)),
            &["subject"],
        ));
    }
    cases.push(case(
        "subject of 256 ASCII characters",
        with(valid_notify(), "subject", json!("s".repeat(256))),
        &["subject"],
    ));
    cases.push(case(
        "subject of 256 two-byte characters",
        with(valid_notify(), "subject", json!("é".repeat(256))),
        &["subject"],
    ));
    assert_rejections(&app, NOTIFY, cases).await;

    let ok = app
        .post_json(
            NOTIFY,
            &with(valid_notify(), "subject", json!("é".repeat(255))),
        )
        .await;
    assert_eq!(ok.status, 202, "255 two-byte characters fit: {}", ok.text());
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notify_returns_400_naming_metadata_when_it_is_not_an_object() {
    let app = spawn_app().await;
    let cases = [
        ("an array", json!([1, 2])),
        ("a string", json!("{\"a\": 1}")),
        ("a number", json!(7)),
        ("a boolean", json!(true)),
    ]
    .into_iter()
    .map(|(kind, value)| {
        case(
            format!("metadata is {kind}"),
            with(valid_notify(), "metadata", value),
            &["metadata"],
        )
    })
    .collect();
    assert_rejections(&app, NOTIFY, cases).await;
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_endpoints_return_400_naming_uuid_when_it_is_not_a_uuid() {
    let app = spawn_app().await;
    let bad_uuids = [
        json!("not-a-uuid"),
        json!("6f1c2a6e-1111-4222-8333-44445555666"),
        json!("6f1c2a6e-1111-4222-8333-4444555566667"),
        json!(""),
        json!(12345),
        json!(["6f1c2a6e-1111-4222-8333-444455556666"]),
        json!({"uuid": "6f1c2a6e-1111-4222-8333-444455556666"}),
    ];
    for (path, base) in [(CONTACT, valid_contact()), (NOTIFY, valid_notify())] {
        let cases = bad_uuids
            .iter()
            .map(|u| {
                case(
                    format!("uuid {u}"),
                    with(base.clone(), "uuid", u.clone()),
                    &["uuid"],
                )
            })
            .collect();
        assert_rejections(&app, path, cases).await;
    }
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn null_characters_are_rejected_with_400_in_every_text_field() {
    let app = spawn_app().await;
    let contact = ["name", "email", "message"]
        .into_iter()
        .map(|f| {
            case(
                format!("NUL in {f}"),
                with(valid_contact(), f, json!("ab\u{0}c@example.com")),
                &[f],
            )
        })
        .collect();
    assert_rejections(&app, CONTACT, contact).await;

    let mut notify: Vec<Case> = ["to", "subject", "body", "html"]
        .into_iter()
        .map(|f| {
            case(
                format!("NUL in {f}"),
                with(valid_notify(), f, json!("ab\u{0}c@example.com")),
                &[f],
            )
        })
        .collect();
    notify.push(case(
        "NUL in a metadata value",
        with(valid_notify(), "metadata", json!({"k": "v\u{0}"})),
        &["metadata"],
    ));
    notify.push(case(
        "NUL in a metadata key",
        with(valid_notify(), "metadata", json!({"k\u{0}": "v"})),
        &["metadata"],
    ));
    notify.push(case(
        "NUL deep inside metadata",
        with(
            valid_notify(),
            "metadata",
            json!({"a": [{"b": ["x", "\u{0}"]}]}),
        ),
        &["metadata"],
    ));
    assert_rejections(&app, NOTIFY, notify).await;
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_invalid_fields_are_all_reported_in_one_400() {
    let app = spawn_app().await;
    assert_rejections(
        &app,
        CONTACT,
        vec![
            case(
                "every contact field wrong",
                json!({"name": " ", "email": "nope", "message": 5, "uuid": "x"}),
                &["email", "message", "name", "uuid"],
            ),
            case(
                "two contact fields wrong",
                json!({"name": "a".repeat(300), "email": "ada@example.com", "message": null}),
                &["message", "name"],
            ),
        ],
    )
    .await;
    assert_rejections(
        &app,
        NOTIFY,
        vec![
            case(
                "every notify field wrong",
                json!({"to": "x@", "subject": "a\nb", "body": "", "html": 1, "metadata": [], "uuid": 3}),
                &["body", "html", "metadata", "subject", "to", "uuid"],
            ),
            case(
                "two notify fields wrong",
                json!({"to": "bob@example.com", "subject": null, "body": ["x"]}),
                &["body", "subject"],
            ),
        ],
    )
    .await;
    app.shutdown().await;
}
