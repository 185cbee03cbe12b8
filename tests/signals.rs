//! The real binary: it logs one JSON object per request line on stdout
//! (without message bodies) and drains and exits 0 on SIGTERM or SIGINT.

#[allow(dead_code)]
#[path = "api/helpers.rs"]
mod helpers;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;

use helpers::{RawResponse, drop_database, poll_until, raw_exchange, with_database};

struct Service {
    child: Option<Child>,
    /// Readers of stdout and stderr, so that the pipes never fill up.
    output: Option<(JoinHandle<String>, JoinHandle<String>)>,
    addr: SocketAddr,
    admin_url: String,
    database: String,
    work_dir: std::path::PathBuf,
}

impl Service {
    async fn start() -> Self {
        let admin_url = std::env::var("TEST_DATABASE_URL").expect("TEST_DATABASE_URL is not set");
        let redis_url = std::env::var("TEST_REDIS_URL").expect("TEST_REDIS_URL is not set");
        let database = format!("test_{}", uuid::Uuid::new_v4().simple());
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let work_dir = std::env::temp_dir().join(format!(
            "email-service-process-{}",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&work_dir).expect("work dir");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_email-service"));
        cmd.env_clear()
            .current_dir(&work_dir)
            .env("HOST", "127.0.0.1")
            .env("PORT", port.to_string())
            .env("DATABASE_URL", with_database(&admin_url, &database))
            .env("REDIS_URL", redis_url)
            .env("REDIS_KEY_PREFIX", format!("test-{database}"))
            .env("EMAIL_BACKEND", "file")
            .env("EMAIL_FILE_PATH", work_dir.join("sent"))
            .env("LOG_FORMAT", "json")
            .env("RUST_LOG", "info")
            .env("SHUTDOWN_TIMEOUT", "5")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Ok(path) = std::env::var("PATH") {
            cmd.env("PATH", path);
        }
        let mut child = cmd.spawn().expect("start the binary");
        let stdout = child.stdout.take().expect("stdout");
        let stderr = child.stderr.take().expect("stderr");
        let service = Self {
            child: Some(child),
            output: Some((read_all(stdout), read_all(stderr))),
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            admin_url,
            database,
            work_dir,
        };
        let ready = poll_until(Duration::from_secs(30), || async {
            let conn = tokio::net::TcpStream::connect(service.addr).await.ok()?;
            drop(conn);
            let resp = service.get("/api/notify/").await;
            (resp.status == 200).then_some(())
        })
        .await;
        assert!(ready.is_some(), "the binary did not become ready");
        service
    }

    async fn get(&self, path: &str) -> RawResponse {
        let req = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
        raw_exchange(self.addr, req.as_bytes()).await
    }

    async fn post(&self, path: &str, request_id: &str, body: &Value) -> RawResponse {
        let body = body.to_string();
        let req = format!(
            "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
             X-Request-Id: {request_id}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        raw_exchange(self.addr, req.as_bytes()).await
    }

    fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().expect("running").id();
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .status()
            .expect("kill");
        assert!(status.success());
    }

    /// Waits for the process to exit; returns its code, stdout and stderr.
    fn wait(mut self, deadline: Duration) -> (Option<i32>, String, String) {
        let mut child = self.child.take().expect("running");
        let started = Instant::now();
        while child.try_wait().expect("try_wait").is_none() {
            if started.elapsed() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the service did not exit within {deadline:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let code = child.wait().expect("wait").code();
        let (stdout, stderr) = self.output.take().expect("output readers");
        (
            code,
            stdout.join().unwrap_or_default(),
            stderr.join().unwrap_or_default(),
        )
    }
}

fn read_all(mut pipe: impl std::io::Read + Send + 'static) -> JoinHandle<String> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

impl Drop for Service {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.work_dir);
        let (admin, name) = (self.admin_url.clone(), self.database.clone());
        let _ = std::thread::spawn(move || {
            if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                rt.block_on(drop_database(&admin, &name));
            }
        })
        .join();
    }
}

async fn drains_and_exits_zero_on(signal: &str) {
    let service = Service::start().await;
    let secret = "do-not-log-this-body-text";
    let body = serde_json::json!({"to": "bob@example.com", "subject": "Logs", "body": secret});
    let resp = service.post("/api/notify/", "trace-me-123", &body).await;
    assert_eq!(resp.status, 202, "{}", String::from_utf8_lossy(&resp.body));

    service.signal(signal);
    let (code, stdout, stderr) = service.wait(Duration::from_secs(15));
    assert_eq!(
        code,
        Some(0),
        "exit code after SIG{signal}; stderr: {stderr}"
    );

    // One JSON object per line, fields at the top level.
    let events: Vec<Value> = stdout
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str::<Value>(l)
                .unwrap_or_else(|e| panic!("a log line that is not JSON ({e}): {l}"))
        })
        .collect();
    for e in &events {
        for field in ["timestamp", "level", "target"] {
            assert!(e.get(field).is_some(), "log event without {field}: {e}");
        }
    }
    let request = events
        .iter()
        .find(|e| e["request_id"] == "trace-me-123")
        .unwrap_or_else(|| panic!("no log event for request trace-me-123 in:\n{stdout}"));
    assert_eq!(request["method"], "POST", "{request}");
    assert_eq!(request["path"], "/api/notify/", "{request}");
    assert_eq!(request["status_code"], 202, "{request}");
    assert!(request["duration_ms"].is_number(), "{request}");
    assert!(
        !stdout.contains(secret) && !stderr.contains(secret),
        "a message body was logged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_and_exits_with_code_0_after_logging_requests_as_json() {
    drains_and_exits_zero_on("TERM").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_drains_and_exits_with_code_0() {
    drains_and_exits_zero_on("INT").await;
}
