//! The binary refuses a bad configuration with exit code 1 and one line on
//! stderr naming the variable and its value, without a panic.

#[path = "common/mod.rs"]
mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

/// An empty working directory (so that no `.env` is read), removed on drop.
struct EmptyDir(PathBuf);

impl EmptyDir {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!(
            "email-service-config-test-{}",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        Self(dir)
    }
}

impl Drop for EmptyDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct Outcome {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs the binary with only `PATH` and `vars`; kills it if it is still
/// running after 10 s (it would be, had it accepted the configuration).
fn run_with(vars: &[(&str, &str)]) -> Outcome {
    let dir = EmptyDir::new();
    let mut cmd = common::process::command();
    cmd.current_dir(&dir.0).envs(vars.iter().copied());
    let mut child = cmd.spawn().expect("start the email-service binary");
    let started = Instant::now();
    loop {
        if child.try_wait().expect("wait").is_some() {
            break;
        }
        if started.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            let out = child.wait_with_output().expect("output");
            panic!(
                "{vars:?}: the service did not stop within 10 s; stderr: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("output");
    Outcome {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn assert_refused(variable: &str, value: &str) {
    let out = run_with(&[(variable, value)]);
    let context = format!(
        "{variable}={value:?}: exit {:?}\nstderr: {}\nstdout: {}",
        out.code, out.stderr, out.stdout
    );
    assert_eq!(out.code, Some(1), "{context}");
    let lines: Vec<&str> = out.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "exactly one line on stderr; {context}");
    let line = lines[0];
    assert!(
        line.contains(variable),
        "the line names {variable}; {context}"
    );
    assert!(line.contains(value), "the line shows the value; {context}");
    assert!(
        line.contains(&format!("{variable}={value:?}")),
        "the line shows the variable with the value given; {context}"
    );
    for text in [&out.stderr, &out.stdout] {
        assert!(!text.contains("panicked"), "no panic; {context}");
        assert!(!text.contains("RUST_BACKTRACE"), "no panic; {context}");
    }
}

#[test]
fn a_port_that_is_not_a_number_stops_the_start_with_one_line_naming_port() {
    assert_refused("PORT", "abc");
}

#[test]
fn a_port_out_of_range_stops_the_start() {
    assert_refused("PORT", "70000");
}

#[test]
fn an_unknown_email_backend_stops_the_start_with_one_line_naming_it() {
    assert_refused("EMAIL_BACKEND", "pigeon");
}

#[test]
fn zero_mailer_workers_stops_the_start_with_one_line_naming_mailer_workers() {
    assert_refused("MAILER_WORKERS", "0");
}

#[test]
fn a_tls_flag_that_is_not_a_boolean_stops_the_start_with_one_line_naming_it() {
    assert_refused("EMAIL_USE_TLS", "maybe");
}

#[test]
fn other_invalid_values_each_stop_the_start_with_one_line() {
    for (variable, value) in [
        ("LOG_FORMAT", "xml"),
        ("EMAIL_MAX_RETRIES", "-1"),
        ("EMAIL_RETRY_BASE_DELAY_MS", "soon"),
        ("DEFAULT_FROM_EMAIL", "not an address"),
        ("IDEMPOTENCY_TTL_HOURS", "0"),
        ("HOST", "example"),
        ("CONTACT_RATE_LIMIT", "lots"),
        ("CORS_ALLOWED_ORIGINS", "https://blog.example.com/contact"),
        ("CORS_ALLOWED_ORIGIN_REGEXES", "https://(unclosed"),
        ("CORS_ALLOW_ALL_ORIGINS", "sometimes"),
    ] {
        assert_refused(variable, value);
    }
}

#[test]
fn an_invalid_rust_log_stops_the_start_with_one_line_naming_it() {
    // Not silently `info`: a filter that does not parse is refused.
    for value in ["email_service=loud", "info,[{", "tokio=trace=debug"] {
        assert_refused("RUST_LOG", value);
    }
}

#[test]
fn a_valid_rust_log_is_accepted() {
    // The same run as above, with a filter that parses: the start goes on
    // past the configuration (it is then refused for another variable).
    let out = run_with(&[("RUST_LOG", "warn,email_service=debug"), ("PORT", "abc")]);
    assert_eq!(out.code, Some(1));
    assert!(out.stderr.contains("PORT="), "{}", out.stderr);
    assert!(!out.stderr.contains("RUST_LOG"), "{}", out.stderr);
}

#[test]
fn webhook_settings_that_cannot_work_each_stop_the_start_with_one_line() {
    for (variable, value) in [
        ("WEBHOOK_URLS", "ftp://hooks.example.org/in"),
        ("WEBHOOK_EVENTS", "message.opened"),
        ("WEBHOOK_TIMEOUT", "0"),
        ("WEBHOOK_RETRY_SCHEDULE", "5,soon"),
    ] {
        assert_refused(variable, value);
    }
}

#[test]
fn webhook_urls_without_a_valid_secret_stop_the_start_naming_webhook_secret_but_not_showing_it() {
    let url = ("WEBHOOK_URLS", "https://hooks.example.org/in");
    for secret in [None, Some("hunter2-plain"), Some("whsec_hunter2!!")] {
        let mut vars = vec![url];
        vars.extend(secret.map(|s| ("WEBHOOK_SECRET", s)));
        let out = run_with(&vars);
        let context = format!("{secret:?}: exit {:?}\nstderr: {}", out.code, out.stderr);
        assert_eq!(out.code, Some(1), "{context}");
        let lines: Vec<&str> = out.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "exactly one line on stderr; {context}");
        assert!(lines[0].contains("WEBHOOK_SECRET"), "{context}");
        assert!(
            !out.stderr.contains("hunter2"),
            "the secret is never shown; {context}"
        );
        assert!(
            !out.stdout.contains("hunter2"),
            "the secret is never shown; {context}"
        );
    }
}
