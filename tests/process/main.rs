//! The real binary as a child process: SIGTERM drains and exits 0, a second
//! signal exits at once, `kill -9` loses no accepted message, logs are JSON
//! lines without secrets, a panic is one JSON line, and a database that is
//! down at start is waited for while `/livez` answers.

#[path = "../common/mod.rs"]
mod common;
mod schedule;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use common::process::{ServiceProcess, http};
use common::{Mode, SmtpSink, Target, TestApp, free_port, poll_until};

/// The binary on `target`, sending through `sink`, retrying after 200 ms
/// and then twice as long each time, with `env` on top; once it is ready.
fn service(sink: &SmtpSink, target: &Target, env: &[(&str, &str)]) -> ServiceProcess {
    TestApp::builder()
        .target(target)
        .sink(sink)
        .env("EMAIL_RETRY_BASE_DELAY_MS", "200")
        .env("EMAIL_RETRY_BACKOFF_FACTOR", "2")
        .envs(env)
        .process()
}

fn post_notify(p: &ServiceProcess, subject: &str) -> Option<String> {
    let body = json!({"to": "a@example.org", "subject": subject, "body": "b"}).to_string();
    let (status, resp) = http(p.addr, "POST", "/api/notify/", Some(&body));
    (status == 202).then(|| {
        serde_json::from_str::<Value>(&resp).unwrap()["uuid"]
            .as_str()
            .unwrap()
            .to_owned()
    })
}

async fn statuses(target: &Target) -> Vec<(String, String)> {
    target
        .db()
        .await
        .query("SELECT uuid::text, status FROM notifications", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

/// Posts 6 notifications to a service whose SMTP server is slow, sends
/// `signal` while a send is in flight, and checks the drain: exit 0, the
/// sends in flight finished, the rest still queued, none lost or stuck in
/// `sending`. Returns the sink, where the service kept its state, its
/// environment and the uuids posted.
async fn drain_with_sends_in_flight(signal: &str) -> (SmtpSink, Target, Vec<String>) {
    let sink = SmtpSink::start(Mode::Slow(Duration::from_millis(1500))).await;
    let target = Target::fresh();
    let mut p = service(
        &sink,
        &target,
        &[("MAILER_WORKERS", "2"), ("SHUTDOWN_TIMEOUT", "10")],
    );
    let uuids: Vec<String> = (0..6)
        .map(|i| post_notify(&p, &format!("t{i}")).unwrap())
        .collect();
    poll_until(Duration::from_secs(10), "a send in flight", || async {
        statuses(&target).await.iter().any(|(_, s)| s == "sending")
    })
    .await;
    p.signal(signal);
    assert_eq!(p.wait_exit(Duration::from_secs(20)), Some(0), "SIG{signal}");
    let logs = p.stdout_lines().join("\n");
    assert!(logs.contains("shutdown complete"), "{logs}");
    let after = statuses(&target).await;
    assert_eq!(after.len(), 6);
    assert!(
        after.iter().all(|(_, s)| s == "sent" || s == "queued"),
        "SIG{signal}: {after:?}"
    );
    assert!(
        after.iter().any(|(_, s)| s == "sent"),
        "SIG{signal}: {after:?}"
    );
    (sink, target, uuids)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_with_sends_in_flight_exits_0_and_nothing_is_lost_after_restart() {
    let (sink, target, uuids) = drain_with_sends_in_flight("TERM").await;
    sink.set_mode(Mode::Accept);
    let p2 = service(&sink, &target, &[]);
    poll_until(
        Duration::from_secs(30),
        "all sent after restart",
        || async { statuses(&target).await.iter().all(|(_, s)| s == "sent") },
    )
    .await;
    let counts = sink.by_message_id();
    assert_eq!(counts.len(), 6);
    assert!(counts.values().all(|&n| n == 1), "{counts:?}");
    for u in &uuids {
        assert!(counts.keys().any(|k| k.contains(u.as_str())));
    }
    drop(p2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_second_signal_exits_at_once() {
    let sink = SmtpSink::start(Mode::Hang).await;
    let target = Target::fresh();
    let mut p = service(
        &sink,
        &target,
        &[("EMAIL_TIMEOUT", "60"), ("SHUTDOWN_TIMEOUT", "60")],
    );
    post_notify(&p, "hang").unwrap();
    poll_until(Duration::from_secs(10), "a send in flight", || async {
        statuses(&target).await.iter().any(|(_, s)| s == "sending")
    })
    .await;
    p.signal("TERM");
    std::thread::sleep(Duration::from_millis(300));
    let second = Instant::now();
    p.signal("INT");
    assert_eq!(p.wait_exit(Duration::from_secs(5)), Some(130));
    assert!(second.elapsed() < Duration::from_secs(3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_during_a_burst_loses_no_accepted_message() {
    let sink = SmtpSink::start(Mode::Slow(Duration::from_millis(30))).await;
    let target = Target::fresh();
    // A short SMTP timeout makes the lease (2 × timeout + 20 s) shorter.
    let start = || service(&sink, &target, &[("EMAIL_TIMEOUT", "1")]);

    let mut p = start();
    let addr = p.addr;
    // Accept from a thread while the main thread kills the process.
    let poster = std::thread::spawn(move || {
        let mut accepted = Vec::new();
        for i in 0..400 {
            let body =
                json!({"to": "a@example.org", "subject": format!("k{i}"), "body": "b"}).to_string();
            let (status, resp) = http(addr, "POST", "/api/notify/", Some(&body));
            match status {
                202 => accepted.push(
                    serde_json::from_str::<Value>(&resp).unwrap()["uuid"]
                        .as_str()
                        .unwrap()
                        .to_owned(),
                ),
                _ => break,
            }
        }
        accepted
    });
    poll_until(Duration::from_secs(60), "some deliveries", || async {
        sink.received().len() >= 30
    })
    .await;
    p.kill9();
    let accepted = poster.join().unwrap();
    assert!(accepted.len() >= 30, "accepted {}", accepted.len());

    let p2 = start();
    // Bound: the lease of the sends cut by the kill (3 × EMAIL_TIMEOUT +
    // 60 s = 63 s), the reclaim grace (10 s) and the reconcile interval,
    // with room for a busy machine.
    poll_until(
        Duration::from_secs(150),
        "every accepted message to finish",
        || async {
            let s = statuses(&target).await;
            s.iter().all(|(_, st)| st == "sent" || st == "failed")
        },
    )
    .await;
    let s = statuses(&target).await;
    let known: HashSet<&str> = s.iter().map(|(u, _)| u.as_str()).collect();
    for u in &accepted {
        assert!(known.contains(u.as_str()), "accepted {u} is missing");
    }
    assert!(s.iter().all(|(_, st)| st == "sent"), "{s:?}");
    let counts = sink.by_message_id();
    let duplicates: usize = counts.values().map(|&n| n.saturating_sub(1)).sum();
    eprintln!(
        "kill -9: {} accepted, {} delivered, {duplicates} duplicate(s)",
        accepted.len(),
        counts.len()
    );
    assert_eq!(counts.len(), s.len());
    // Only a send in flight at the kill may repeat: at most one per mailer.
    assert!(duplicates <= 4, "{duplicates} duplicates");
    // Every lease taken back from the killed process is an attempt, and
    // every attempt logs its line.
    let crashes: i64 = common::scalar(
        &target.db().await,
        "SELECT count(*) FROM delivery_attempts WHERE outcome = 'crash'",
    )
    .await;
    let logged = p2
        .stdout_lines()
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["message"] == "delivery attempt" && v["outcome"] == "crash")
        .count();
    assert_eq!(
        logged as i64, crashes,
        "each reclaimed attempt logs one line"
    );
    drop(p2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn logs_are_json_lines_with_request_and_attempt_fields_and_no_secrets() {
    let sink = SmtpSink::start(Mode::Accept).await;
    let target = Target::fresh();
    // Trust authentication ignores the password, so it can be a marker.
    let db_url = target
        .database_url()
        .replacen("postgres@", "postgres:db-pass-marker@", 1);
    let p = service(
        &sink,
        &target,
        &[
            ("DATABASE_URL", &db_url),
            ("EMAIL_HOST_PASSWORD", "smtp-pass-marker"),
            ("API_TOKEN", "token-marker"),
        ],
    );
    {
        use std::io::{Read, Write};
        let body =
            json!({"to": "a@example.org", "subject": "s", "body": "body-text-marker"}).to_string();
        let mut s = std::net::TcpStream::connect(p.addr).unwrap();
        write!(
            s,
            "POST /api/notify HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer token-marker\r\nX-Request-Id: req-marker-1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        assert!(out.starts_with("HTTP/1.1 202"), "{out}");
        assert!(
            out.to_ascii_lowercase()
                .contains("x-request-id: req-marker-1")
        );
    }
    poll_until(Duration::from_secs(20), "the delivery log line", || async {
        p.stdout_lines()
            .iter()
            .any(|l| l.contains("delivery attempt"))
    })
    .await;
    let lines = p.stdout_lines();
    let events: Vec<Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    for e in &events {
        for field in ["timestamp", "level", "target", "message"] {
            assert!(e.get(field).is_some(), "{field} missing in {e}");
        }
    }
    let request = events
        .iter()
        .find(|e| e["message"] == "request" && e["request_id"] == "req-marker-1")
        .expect("the request line");
    assert_eq!(request["method"], "POST");
    assert_eq!(request["path"], "/api/notify");
    assert_eq!(request["status_code"], 202);
    assert!(request["duration_ms"].is_number());
    let attempt = events
        .iter()
        .find(|e| e["message"] == "delivery attempt")
        .unwrap();
    for field in ["uuid", "kind", "attempt", "outcome", "duration_ms"] {
        assert!(attempt.get(field).is_some(), "{field} missing in {attempt}");
    }
    let all = format!("{}\n{}", lines.join("\n"), p.stderr_lines().join("\n"));
    for secret in [
        "db-pass-marker",
        "smtp-pass-marker",
        "token-marker",
        "body-text-marker",
    ] {
        assert!(!all.contains(secret), "{secret} leaked into the logs");
    }
}

#[cfg(feature = "fault-injection")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_panic_is_logged_as_one_json_line_and_the_service_goes_on() {
    let p = TestApp::builder()
        .env("EMAIL_RETRY_BASE_DELAY_MS", "100")
        .process();
    let body = format!("crash {}", email_service::faults::MAILER_PANIC);
    let payload = json!({"to": "a@example.org", "subject": "s", "body": body}).to_string();
    let (status, _) = http(p.addr, "POST", "/api/notify/", Some(&payload));
    assert_eq!(status, 202);
    poll_until(Duration::from_secs(20), "the retry to be sent", || async {
        statuses(&p.target).await.iter().all(|(_, s)| s == "sent")
    })
    .await;
    let panic_line = p
        .stdout_lines()
        .into_iter()
        .find(|l| l.contains("\"target\":\"panic\""))
        .expect("a panic line on stdout");
    let v: Value = serde_json::from_str(&panic_line).unwrap();
    assert_eq!(v["level"], "ERROR");
    assert!(v["panic"].as_str().unwrap().contains("injected fault"));
    assert!(
        !p.stderr_lines().iter().any(|l| l.contains("panicked at")),
        "the default hook must not print: {:?}",
        p.stderr_lines()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_the_database_down_at_start_livez_answers_and_healthz_says_why() {
    let closed = free_port();
    let db_url = format!("postgres://postgres@127.0.0.1:{closed}/nowhere");
    let p = TestApp::builder()
        .env("DATABASE_URL", &db_url)
        .process_unready();
    assert_eq!(http(p.addr, "GET", "/livez", None).0, 200);
    let (status, body) = http(p.addr, "GET", "/healthz", None);
    assert_eq!(status, 503);
    let h: Value = serde_json::from_str(&body).unwrap();
    assert!(
        h["checks"]["database"]
            .as_str()
            .unwrap()
            .starts_with("error"),
        "{h}"
    );
    let post = json!({"to": "a@example.org", "subject": "s", "body": "b"}).to_string();
    let started = Instant::now();
    let (status, body) = http(p.addr, "POST", "/api/notify/", Some(&post));
    assert_eq!(status, 503, "{body}");
    assert!(started.elapsed() < Duration::from_secs(4));
    // The body is a fixed sentence and the request id; the reason is in
    // the log line, under that id.
    let answer: Value = serde_json::from_str(&body).unwrap();
    let request_id = answer["request_id"]
        .as_str()
        .unwrap_or_else(|| panic!("a 503 names its request id: {body}"))
        .to_owned();
    for leak in ["refused", "schema", "postgres", "5432", "nowhere"] {
        assert!(
            !body.to_lowercase().contains(leak),
            "the 503 body shows the database's error ({leak}): {body}"
        );
    }
    poll_until(
        Duration::from_secs(10),
        "the 503's reason logged under its request id",
        || async {
            p.stdout_lines()
                .iter()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .any(|v| {
                    v["message"] == "answering 503"
                        && v["request_id"] == request_id.as_str()
                        && v["reason"].as_str().is_some_and(|r| !r.is_empty())
                })
        },
    )
    .await;
    poll_until(Duration::from_secs(10), "a retry log line", || async {
        p.stdout_lines()
            .iter()
            .any(|l| l.contains("database not ready; retrying"))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigint_drains_and_exits_0_like_sigterm() {
    drain_with_sends_in_flight("INT").await;
}

/// Lines of the process's stdout as JSON objects.
fn events(p: &ServiceProcess) -> Vec<Value> {
    p.stdout_lines()
        .iter()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_clean_first_start_logs_no_warning() {
    let sink = SmtpSink::start(Mode::Accept).await;
    let target = Target::fresh();
    // With a token, the one documented start-up warning does not apply.
    let p = service(&sink, &target, &[("API_TOKEN", "clean-start-token")]);
    let body = json!({"to": "a@example.org", "subject": "s", "body": "b"}).to_string();
    let req = format!(
        "POST /api/notify/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer clean-start-token\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let answer = common::raw_exchange(p.addr, req.as_bytes()).await;
    assert_eq!(answer.status, 202);
    poll_until(Duration::from_secs(20), "the mail to arrive", || async {
        sink.received().len() == 1
    })
    .await;
    let warnings: Vec<Value> = events(&p)
        .into_iter()
        .filter(|e| e["level"] == "WARN" || e["level"] == "ERROR")
        .collect();
    assert!(warnings.is_empty(), "a clean start warned: {warnings:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_unreachable_at_start_is_named_once_and_its_recovery_logged() {
    let port = free_port();
    let redis_url = format!("redis://127.0.0.1:{port}/");
    let p = TestApp::builder()
        .env("REDIS_URL", &redis_url)
        .env("API_TOKEN", "t")
        .process();
    let named = |e: &Value| {
        e["level"] == "WARN"
            && e["message"].as_str().unwrap_or("").contains("Redis")
            && e["redis"] == format!("127.0.0.1:{port}")
    };
    poll_until(
        Duration::from_secs(10),
        "a warning naming Redis and its address",
        || async { events(&p).iter().any(named) },
    )
    .await;
    // The reader retries every half second; three seconds later it has
    // still said so once.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let redis_warnings = events(&p)
        .iter()
        .filter(|e| e["level"] == "WARN" && e.to_string().contains("Redis"))
        .count();
    assert_eq!(redis_warnings, 1, "{:#?}", events(&p));
    let dir = tempfile_dir();
    let mut redis = std::process::Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .arg("--dir")
        .arg(&dir)
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("start redis-server");
    poll_until(
        Duration::from_secs(15),
        "a line saying Redis is back",
        || async {
            events(&p).iter().any(|e| {
                e["level"] == "INFO"
                    && e["message"].as_str().unwrap_or("").contains("Redis")
                    && e["redis"] == format!("127.0.0.1:{port}")
            })
        },
    )
    .await;
    let _ = redis.kill();
    let _ = redis.wait();
    let _ = std::fs::remove_dir_all(dir);
}

fn tempfile_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("redis-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
