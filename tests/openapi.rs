//! `openapi.yaml` checked for real, so that the document and the service
//! cannot drift apart:
//!
//! - the document is a valid OpenAPI 3.1 document: schemathesis loads it,
//!   the OpenAPI 3.1 meta-schema accepts it, every `$ref` resolves, and
//!   every example satisfies the schema next to it;
//! - schemathesis runs a property-based test of the live service against it:
//!   every operation, every phase (examples, coverage, fuzzing, stateful
//!   through the document's links) and every check, with positive and
//!   negative data.
//!
//! Both need schemathesis: `SCHEMATHESIS` is the path of its CLI, which
//! `scripts/test` installs into `.venv` and exports. `OPENAPI_MAX_EXAMPLES`
//! sets the number of cases per operation and phase (CI runs a short pass;
//! run it longer by hand).
//!
//! Run by hand: `SCHEMATHESIS=$PWD/.venv/bin/schemathesis cargo test
//! --features fault-injection --test openapi -- --nocapture`, with
//! `TEST_DATABASE_URL` and `TEST_REDIS_URL` set as `scripts/test` sets them.

#[path = "common/mod.rs"]
mod common;

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use common::spawn_app_with;

const API_TOKEN: &str = "test-token";
/// The `MessageId` example of `openapi.yaml`.
const EXAMPLE_UUID: &str = "3f0c8a52-5d1e-4c2b-9a6f-0d7e4b1c2a99";

/// Cases per operation and phase unless `OPENAPI_MAX_EXAMPLES` says otherwise.
const DEFAULT_MAX_EXAMPLES: u32 = 25;

/// The whole schemathesis run is killed (and the test fails) past this.
const RUN_TIME_LIMIT: Duration = Duration::from_secs(300);

fn document() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("openapi.yaml")
}

fn schemathesis() -> PathBuf {
    let path = match std::env::var_os("SCHEMATHESIS") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => panic!(
            "SCHEMATHESIS is not set: run the suite through scripts/test, which installs \
             schemathesis into .venv and exports SCHEMATHESIS (or set it to the path of a \
             schemathesis 4 CLI by hand)"
        ),
    };
    assert!(
        path.is_file(),
        "SCHEMATHESIS={} does not exist: run the suite through scripts/test, which installs it",
        path.display()
    );
    path
}

/// The Python that runs schemathesis: the interpreter on its `#!` line (a
/// virtualenv's own), else `python3` beside it.
fn python() -> PathBuf {
    let cli = schemathesis();
    let text = std::fs::read(&cli).unwrap_or_default();
    let first = text.split(|&b| b == b'\n').next().unwrap_or_default();
    if let Some(interpreter) = std::str::from_utf8(first)
        .ok()
        .and_then(|l| l.strip_prefix("#!"))
        .and_then(|l| l.split_whitespace().next())
        .filter(|p| p.contains("python") && Path::new(p).is_file())
    {
        return PathBuf::from(interpreter);
    }
    cli.with_file_name("python3")
}

/// A private working directory for one schemathesis process (its
/// `.hypothesis/` and reports land here, not in the repo).
struct Scratch(PathBuf);

impl Scratch {
    fn new(what: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "email-service-openapi-{what}-{}",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("kept for inspection: {}", self.0.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// Runs `cmd` with stdout and stderr into one file; kills it at `limit`.
/// Returns its exit status (`None` when it was killed) and its output.
fn run_bounded(mut cmd: Command, limit: Duration, log: &Path) -> (Option<ExitStatus>, String) {
    let out = File::create(log).unwrap();
    cmd.stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out);
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("could not start {cmd:?}: {e}"));
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let output = String::from_utf8_lossy(&std::fs::read(log).unwrap_or_default()).into_owned();
    (status, output)
}

/// Loads the document the way schemathesis does and checks it: OpenAPI 3.1,
/// valid against the 3.1 meta-schema, every operation and `$ref` resolvable,
/// every example valid against its schema. Prints a JSON summary.
const VALIDATE_PY: &str = r##"
import json
import sys

import jsonschema_rs
import schemathesis
from schemathesis.core.result import Err


def fail(message):
    sys.exit(f"{sys.argv[1]}: {message}")


path = sys.argv[1]
schema = schemathesis.openapi.from_path(path)
raw = schema.raw_schema
version = str(raw.get("openapi", ""))
if not version.startswith("3.1."):
    fail(f"`openapi: {version}` is not OpenAPI 3.1")
try:
    schema.validate()
except jsonschema_rs.ValidationError as error:
    where = "/".join(map(str, error.instance_path)) or "(top)"
    fail(f"not a valid OpenAPI 3.1 document, at {where}: {str(error).splitlines()[0]}")

operations = []
for result in schema.get_all_operations():
    if isinstance(result, Err):
        fail(f"operation cannot be loaded: {result.err()}")
    operations.append(result.ok().label)


def resolve(pointer):
    node = raw
    for part in pointer.lstrip("#/").split("/"):
        part = part.replace("~1", "/").replace("~0", "~")
        if isinstance(node, list):
            node = node[int(part)]
        else:
            node = node[part]
    return node


def examples_of(node):
    if "example" in node:
        yield "example", node["example"]
    for name, example in (node.get("examples") or {}).items():
        if isinstance(example, dict) and "value" in example:
            yield f"examples/{name}", example["value"]


problems = []
examples = 0


def walk(node, where):
    global examples
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str):
            try:
                resolve(ref)
            except (KeyError, IndexError, ValueError, TypeError):
                problems.append(f"{where}: $ref {ref} does not resolve")
        if isinstance(node.get("schema"), dict):
            root = dict(node["schema"], components=raw.get("components", {}))
            try:
                validator = jsonschema_rs.Draft202012Validator(root, validate_formats=True)
            except jsonschema_rs.ValidationError as error:
                problems.append(f"{where}/schema: {str(error).splitlines()[0]}")
                validator = None
            for name, value in examples_of(node):
                examples += 1
                for error in validator.iter_errors(value) if validator else ():
                    at = "/".join(map(str, error.instance_path))
                    problems.append(f"{where}/{name}: at /{at}: {error.message}")
        for key, value in node.items():
            walk(value, f"{where}/{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            walk(value, f"{where}/{i}")


walk(raw, "#")
if problems:
    fail("\n  " + "\n  ".join(problems))
print(json.dumps({"openapi": version, "operations": operations, "examples": examples}))
"##;

#[test]
fn document_is_valid_openapi_3_1() {
    let python = python();
    let scratch = Scratch::new("validate");
    let script = scratch.write("validate.py", VALIDATE_PY);
    let mut cmd = Command::new(python);
    cmd.arg(&script).arg(document()).current_dir(&scratch.0);
    let (status, output) = run_bounded(cmd, Duration::from_secs(120), &scratch.0.join("out"));
    assert!(
        status.is_some_and(|s| s.success()),
        "openapi.yaml is not a valid OpenAPI 3.1 document ({status:?}):\n{output}"
    );
    let summary: Value = output
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| panic!("no summary in:\n{output}"));
    let operations = summary["operations"].as_array().unwrap();
    println!(
        "openapi.yaml: OpenAPI {}, {} operations, {} examples valid",
        summary["openapi"],
        operations.len(),
        summary["examples"]
    );
    // The walker found the examples (39 when this was written): a shape it
    // no longer recognises must not turn "every example valid" into "none
    // checked".
    assert!(
        summary["examples"].as_u64().unwrap_or(0) >= 30,
        "too few examples checked: {summary}"
    );
    // Every route of the service is documented (SPEC's table).
    for op in [
        "GET /healthz",
        "GET /livez",
        "GET /metrics",
        "POST /api/contact/",
        "GET /api/contact/",
        "GET /api/contact/{id}/",
        "POST /api/notify/",
        "GET /api/notify/",
        "GET /api/notify/{id}/",
        "POST /api/contact/cancel/",
        "POST /api/contact/retry/",
        "POST /api/notify/cancel/",
        "POST /api/notify/retry/",
        "GET /api/webhooks/events/",
        "POST /api/webhooks/events/{id}/retry/",
    ] {
        assert!(
            operations.iter().any(|o| o == op),
            "{op} is not documented: {operations:?}"
        );
    }
}

/// Loaded by schemathesis (`SCHEMATHESIS_HOOKS`) before each request.
///
/// SPEC makes `POST` stateful: an `Idempotency-Key`, or a body `uuid`, seen
/// before with another body is answered `422`. A generator that draws keys
/// and uuids independently of the bodies repeats them across cases (the
/// document's own examples share one key), which turns schema-valid requests
/// into conflicts. This gives every schema-valid key and uuid a fresh value,
/// keeping it valid, so that each case is a first request; replays and
/// conflicts are covered by the idempotency tests. Invalid values are left
/// alone for the negative cases.
const HOOKS_PY: &str = r##"
import datetime
import itertools
import re
import uuid

import schemathesis

_RUN = uuid.uuid4().hex[:12]
_SEQUENCE = itertools.count(1)
# The document's Idempotency-Key: printable ASCII, not blank, 1 to 255.
_KEY = re.compile(r"[\x20-\x7E]*[\x21-\x7E][\x20-\x7E]*")
# JSON Schema's `format: uuid`.
_UUID = re.compile(r"[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}")


@schemathesis.hook
def before_call(context, case, kwargs):
    if case.method.upper() != "POST":
        return
    n = next(_SEQUENCE)
    headers = case.headers or {}
    for name, value in list(headers.items()):
        if name.lower() == "idempotency-key" and isinstance(value, str) and len(value) <= 255 and _KEY.fullmatch(value):
            suffix = f"~{_RUN}-{n}"
            headers[name] = value[: 255 - len(suffix)] + suffix
    body = case.body
    if isinstance(body, dict) and isinstance(body.get("uuid"), str) and _UUID.fullmatch(body["uuid"]):
        body["uuid"] = str(uuid.uuid4())
    # `send_at` may be at most 30 days ahead of the service's clock, which no
    # schema can say: a valid date-time further ahead becomes one hour ahead.
    if isinstance(body, dict) and isinstance(body.get("send_at"), str):
        try:
            at = datetime.datetime.fromisoformat(body["send_at"].replace("Z", "+00:00").replace("z", "+00:00"))
        except ValueError:
            at = None
        now = datetime.datetime.now(datetime.timezone.utc)
        if at is not None and at.tzinfo is not None and at > now + datetime.timedelta(days=29):
            body["send_at"] = (now + datetime.timedelta(hours=1)).isoformat()
"##;

/// The schemathesis configuration of the run.
fn config(token: &str) -> String {
    format!(
        r#"# Written by tests/openapi.rs for one run.

# Authenticate through the document's security scheme rather than with
# `-H "Authorization: Bearer ..."`: schemathesis then knows the header is the
# credential, so its "missing Authorization" and "ignored auth" cases really
# go without it. A header given with -H is sent on those cases too, and the
# service's 202 to such an authenticated request then reads as "missing
# required header accepted" (ST203).
[auth.openapi.bearerAuth]
bearer = "{token}"

# Link inference by dependency analysis binds `X-Request-Id` (by its name) to
# the integer `id` of a 202 body and hands the integer to `requests` as a
# header value, which `requests` refuses before sending anything ("Network
# Error: Header part (507) from ('X-Request-Id', 507) must be of type str or
# bytes"). It also links contact ids to notification details. The document
# declares the right links itself (202 -> detail by id and by uuid).
[phases.stateful.inference]
algorithms = ["location-headers"]

# Invalid data is also rightly refused with 413 when it is too big to be
# read (over 64 KiB, before any field is looked at), as the document
# declares; the default list lacks it.
[checks.negative_data_rejection]
expected-statuses = ["400", "401", "403", "404", "405", "406", "409", "413", "415", "422", "428", "429", "5xx"]

# No crash files left behind.
[cache]
enabled = false

# A warning (an unsupported pattern, a token that is refused, a low rate of
# accepted cases) means the run tested less than it seems: fail on it. Not
# on `missing_test_data`: the message routes take any number or uuid, and a
# run whose generated ids mostly name no message (a 404, as documented) is
# no less tested; the fixtures above give each route real messages too.
[warnings]
fail-on = ["missing_auth", "validation_mismatch", "missing_deserializer", "unused_openapi_auth", "method_not_allowed"]
"#
    )
}

fn max_examples() -> u32 {
    std::env::var("OPENAPI_MAX_EXAMPLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_MAX_EXAMPLES)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_service_conforms_to_the_document() {
    let cli = schemathesis();
    // Webhooks on, towards a port nothing listens on: the fixtures' outcomes
    // give the events list real rows (pending, retried).
    let hooks = format!("http://127.0.0.1:{}/hooks", common::free_port());
    let app = spawn_app_with(&[
        ("API_TOKEN", API_TOKEN),
        ("WEBHOOK_URLS", &hooks),
        (
            "WEBHOOK_SECRET",
            "whsec_b3BlbmFwaS10ZXN0LXNlY3JldC0xMjM0NTY3ODk=",
        ),
    ])
    .await;
    // A message under the document's example uuid, per kind, so that the
    // operations on one message (detail, cancel) reach a real one before
    // the stateful phase has created any.
    let bearer = format!("Bearer {API_TOKEN}");
    for (path, body) in [
        (
            "/api/contact/",
            serde_json::json!({"name": "Ada", "email": "ada@example.org", "message": "hi"}),
        ),
        (
            "/api/notify/",
            serde_json::json!({"to": "a@example.org", "subject": "s", "body": "b"}),
        ),
    ] {
        let mut body = body;
        body["uuid"] = EXAMPLE_UUID.into();
        let r = app
            .post_json_with(path, &[("authorization", &bearer)], &body)
            .await;
        assert_eq!(r.status, 202, "{path}: {}", r.text());
    }
    let scratch = Scratch::new("run");
    let hooks = scratch.write("hooks.py", HOOKS_PY);
    let config = scratch.write("schemathesis.toml", &config(API_TOKEN));
    let report = scratch.0.join("report.json");
    let examples = max_examples();

    let mut cmd = Command::new(&cli);
    cmd.current_dir(&scratch.0)
        .env("SCHEMATHESIS_HOOKS", &hooks)
        .arg("--config-file")
        .arg(&config)
        .arg("run")
        .arg(document())
        .args(["--url", &format!("http://{}", app.addr)])
        .args(["--checks", "all"])
        .args(["--max-examples", &examples.to_string()])
        .arg("--generation-deterministic")
        // One worker: the machine is shared, and one keeps the run repeatable.
        .args(["--workers", "1"])
        // A request that hangs fails the run rather than the time limit.
        .args(["--request-timeout", "10"])
        // Failures print the exact request (the token is a test token).
        .args(["--output-sanitize", "false"])
        .arg("--no-color")
        .args(["--report", "json", "--report-json-path"])
        .arg(&report);
    println!("running: {cmd:?}");

    let started = Instant::now();
    let log = scratch.0.join("schemathesis.out");
    let (status, output) =
        tokio::task::spawn_blocking(move || run_bounded(cmd, RUN_TIME_LIMIT, &log))
            .await
            .unwrap();
    let elapsed = started.elapsed();
    println!("{output}");

    let status = status.unwrap_or_else(|| {
        panic!("schemathesis did not finish within {RUN_TIME_LIMIT:?}; its output is above")
    });
    let summary: Value = std::fs::read(&report)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_else(|| panic!("schemathesis ({status}) wrote no report; its output is above"));
    let ops = &summary["operations"];
    let cases = &summary["test_cases"];
    let line = format!(
        "openapi: schemathesis {} tested {}/{} operations with {} generated test cases \
         ({} with failures, {} errored, {} without checks) at --max-examples {examples} \
         in {:.0} s: {}",
        summary["schemathesis_version"].as_str().unwrap_or("?"),
        ops["tested"],
        ops["total"],
        cases["generated"],
        cases["with_failures"],
        cases["errored"],
        cases["without_checks"],
        elapsed.as_secs_f64(),
        if status.success() { "passed" } else { "FAILED" },
    );
    // Straight to stderr, past the harness's capture, so that every run of
    // scripts/test shows what was exercised.
    let _ = writeln!(std::io::stderr(), "{line}");

    assert!(
        status.success(),
        "schemathesis found the service and openapi.yaml disagreeing ({status}): \
         see its failures above; fix the service where SPEC says it is wrong, the \
         document where it is"
    );
    assert!(
        ops["total"].as_u64().unwrap_or(0) >= 9 && ops["tested"] == ops["total"],
        "not every operation was tested: {ops}"
    );
    assert!(
        cases["generated"].as_u64().unwrap_or(0) > 0,
        "no test cases: {cases}"
    );

    // Nothing it sent took an actor down.
    let health = app.healthz().await;
    assert_eq!(
        health.status,
        200,
        "unhealthy after the run: {}",
        health.text()
    );
    app.shutdown().await;
}
