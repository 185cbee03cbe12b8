//! Fuzzing the request parsing and validation layer through the real
//! server: arbitrary bytes, arbitrary JSON (deep, huge numbers, odd strings,
//! NULs, wrong types), mutated valid bodies, and a seed corpus kept in
//! `tests/fuzz/corpus/`. Every answer must be a 202 or a 4xx with a JSON
//! body, never a 5xx; what was answered with a 4xx must not be stored (row
//! counts of messages and idempotency records unchanged), a 202 stores one
//! message, and valid input (the valid seed, a mutated body left intact)
//! must be accepted.
//!
//! `FUZZ_CASES` sets the number of generated cases per property (CI runs a
//! short pass; run it longer by hand).

#[path = "../common/mod.rs"]
mod common;

use hyper::Method;
use proptest::prelude::*;
use proptest::test_runner::TestRunner;
use serde_json::{Map, Value, json};

use common::{TABLES, TestApp, spawn_app};

/// An app and the runtime it runs on, for tests that proptest drives from
/// a plain thread. Each test starts one for all its cases (one per case
/// would test start-up), so that its counts are its own and its database
/// is dropped when it ends.
struct Server {
    /// First, so that it is dropped before the runtime it runs on.
    app: TestApp,
    /// One connection for the row counts taken around every request.
    db: tokio_postgres::Client,
    rt: tokio::runtime::Runtime,
}

impl Server {
    fn start() -> Self {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let (app, db) = rt.block_on(async {
            let app = spawn_app().await;
            let db = app.db().await;
            (app, db)
        });
        Self { app, db, rt }
    }

    fn stop(self) {
        let Self { app, db, rt } = self;
        drop(db);
        rt.block_on(app.shutdown());
    }

    /// Posts `body` and checks the invariants: a 202 or a 4xx with a JSON
    /// body that names the problem, never a 5xx; a 4xx stores nothing (no
    /// message, no idempotency record) and a 202 stores one message.
    /// Returns the status.
    fn post(&self, path: &str, content_type: &str, body: Vec<u8>) -> u16 {
        let before = self.row_counts();
        let r = self.rt.block_on(self.app.send(
            Method::POST,
            path,
            &[("content-type", content_type)],
            body.clone(),
        ));
        assert!(
            r.status == 202 || (400..500).contains(&r.status),
            "{path} answered {} to {:?}: {}",
            r.status,
            String::from_utf8_lossy(&body),
            String::from_utf8_lossy(&r.body)
        );
        let v: Value = serde_json::from_slice(&r.body).expect("a JSON body");
        let after = self.row_counts();
        if r.status == 202 {
            let [contact, notify, _] = before;
            let stored = if path.contains("contact") {
                [contact + 1, notify]
            } else {
                [contact, notify + 1]
            };
            assert_eq!(
                [after[0], after[1]],
                stored,
                "a 202 from {path} stores one message: {before:?} -> {after:?}"
            );
        } else {
            assert_eq!(
                after,
                before,
                "{path} refused {:?} with {} but rows in {TABLES:?} changed",
                String::from_utf8_lossy(&body),
                r.status
            );
            assert!(
                v.get("errors").is_some() || v.get("detail").is_some(),
                "a 4xx names the problem: {v}"
            );
        }
        r.status
    }

    /// Rows in each of [`TABLES`] (messages of both kinds, idempotency
    /// records), in one snapshot.
    fn row_counts(&self) -> [i64; 3] {
        let sql = format!(
            "SELECT {}",
            TABLES
                .map(|t| format!("(SELECT count(*) FROM {t})"))
                .join(", ")
        );
        let row = self
            .rt
            .block_on(self.db.query_one(&sql, &[]))
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        [row.get(0), row.get(1), row.get(2)]
    }

    fn stored_rows(&self) -> u64 {
        let [contact, notify, _] = self.row_counts();
        (contact + notify) as u64
    }
}

fn cases() -> u32 {
    std::env::var("FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200)
}

/// Runs `case` on every value of `strategy` against one server of its own,
/// shrinking a failure to its smallest input as `proptest!` would.
fn check<S>(strategy: S, case: impl Fn(&Server, S::Value))
where
    S: Strategy,
    S::Value: std::fmt::Debug,
{
    let server = Server::start();
    let mut runner = TestRunner::new(ProptestConfig {
        cases: cases(),
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    if let Err(e) = runner.run(&strategy, |v| {
        case(&server, v);
        Ok(())
    }) {
        panic!("{e}");
    }
    server.stop();
}

fn endpoint(contact: bool) -> &'static str {
    if contact {
        "/api/contact/"
    } else {
        "/api/notify/"
    }
}

fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        ".{0,40}".prop_map(Value::String),
        prop_oneof![
            Just("\u{0}".to_owned()),
            Just("a\r\nBcc: x@y.z".to_owned()),
            Just("é".repeat(300)),
            Just(" ".to_owned()),
            Just("a@b.co".to_owned()),
        ]
        .prop_map(Value::String),
    ];
    leaf.prop_recursive(6, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(".{0,12}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A notification or contact body with each field maybe replaced by junk,
/// and whether it was left valid (no field replaced).
fn mutated_body() -> impl Strategy<Value = (bool, Value, bool)> {
    (
        any::<bool>(),
        prop::collection::vec(prop::option::weighted(0.3, any_json()), 8),
    )
        .prop_map(|(contact, junk)| {
            let mut base: Map<String, Value> = if contact {
                json!({"name": "Ann", "email": "ann@example.org", "message": "hello"})
            } else {
                json!({"to": "a@example.org", "subject": "s", "body": "b", "html": "<p>x</p>", "metadata": {"k": 1}})
            }
            .as_object()
            .unwrap()
            .clone();
            let fields = ["name", "email", "message", "to", "subject", "body", "metadata", "uuid"];
            let mut valid = true;
            for (field, j) in fields.iter().zip(junk) {
                if let Some(j) = j {
                    base.insert((*field).to_owned(), j);
                    valid = false;
                }
            }
            (contact, Value::Object(base), valid)
        })
}

#[test]
fn arbitrary_bytes_never_yield_a_5xx() {
    let bytes = (prop::collection::vec(any::<u8>(), 0..2048), any::<bool>());
    check(bytes, |server, (bytes, contact)| {
        server.post(endpoint(contact), "application/json", bytes);
    });
}

#[test]
fn arbitrary_json_never_yields_a_5xx() {
    check((any_json(), any::<bool>()), |server, (v, contact)| {
        let body = serde_json::to_vec(&v).unwrap();
        server.post(endpoint(contact), "application/json", body);
    });
}

#[test]
fn mutated_valid_bodies_are_accepted_or_refused_cleanly() {
    check(mutated_body(), |server, (contact, v, valid)| {
        let body = serde_json::to_vec(&v).unwrap();
        let status = server.post(endpoint(contact), "application/json; charset=utf-8", body);
        if valid {
            assert_eq!(status, 202, "a valid body is accepted: {v}");
        }
    });
}

#[test]
fn the_seed_corpus_never_yields_a_5xx_and_refusals_store_nothing() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz/corpus");
    let mut seeds: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    seeds.sort();
    assert!(seeds.len() >= 10, "corpus at {}", dir.display());
    // The valid notification must be stored; the duplicate-keys one may be
    // (its last key wins, as in Django). Every other answer is a 4xx that
    // stores nothing, which `post` checks.
    let must = ("valid-notify.json", "/api/notify/");
    let may = ("duplicate-keys.json", "/api/notify/");
    let server = Server::start();
    let mut accepted = Vec::new();
    for seed in &seeds {
        let body = std::fs::read(seed).unwrap();
        let name = seed.file_name().unwrap().to_str().unwrap();
        for path in ["/api/contact/", "/api/notify/"] {
            if server.post(path, "application/json", body.clone()) == 202 {
                accepted.push((name, path));
            }
        }
    }
    assert!(accepted.contains(&must), "the valid seed was refused");
    assert!(
        accepted.iter().all(|a| *a == must || *a == may),
        "seeds accepted: {accepted:?}"
    );
    assert_eq!(server.stored_rows(), accepted.len() as u64);
    server.stop();
}

#[test]
fn oversized_and_chunked_bodies_are_refused_with_413() {
    let s = Server::start();
    let big = format!(
        "{{\"to\":\"a@b.co\",\"subject\":\"x\",\"body\":\"{}\"}}",
        "x".repeat(70_000)
    );
    assert_eq!(
        s.post("/api/notify/", "application/json", big.into_bytes()),
        413
    );
    // Chunked: no Content-Length; the limit applies to what arrives.
    s.rt.block_on(async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut c = tokio::net::TcpStream::connect(s.app.addr).await.unwrap();
        let head = "POST /api/notify/ HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n";
        c.write_all(head.as_bytes()).await.unwrap();
        for _ in 0..20 {
            let chunk = "y".repeat(4096);
            if c.write_all(format!("{:x}\r\n{chunk}\r\n", chunk.len()).as_bytes()).await.is_err() {
                break;
            }
        }
        let _ = c.write_all(b"0\r\n\r\n").await;
        let mut out = Vec::new();
        let _ = c.read_to_end(&mut out).await;
        let text = String::from_utf8_lossy(&out);
        assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    });
    s.stop();
}
