//! The real `email-service` binary as a child process, for what one process
//! cannot test about itself: signals, `kill -9`, log lines on stdout, exit
//! codes. Started by [`AppBuilder::process`](super::AppBuilder::process).

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::db::Target;

/// The binary with no environment but `PATH` (so that only what a test sets
/// counts), its output piped.
pub fn command() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_email-service"));
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

pub struct ServiceProcess {
    child: Child,
    pub addr: SocketAddr,
    lines: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<Vec<String>>>,
    /// Where it keeps its state. `Drop` kills the process before this goes
    /// (with the database, when this is its last holder).
    pub target: Target,
}

impl ServiceProcess {
    /// Starts the binary with `env`, listening on a free port, and waits for
    /// its "listening" log line.
    pub(super) fn start(env: &[(String, String)], target: Target) -> Self {
        let mut cmd = command();
        cmd.env("HOST", "127.0.0.1")
            .env("PORT", "0")
            .env("LOG_FORMAT", "json")
            .current_dir(std::env::temp_dir())
            .envs(env.iter().map(|(k, v)| (k, v)));
        let mut child = cmd.spawn().expect("start email-service");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        collect(child.stdout.take().unwrap(), lines.clone());
        collect(child.stderr.take().unwrap(), stderr.clone());
        let deadline = Instant::now() + Duration::from_secs(20);
        let addr = loop {
            let found = lines.lock().unwrap().iter().find_map(|l| {
                let v: Value = serde_json::from_str(l).ok()?;
                (v["message"] == "email-service listening")
                    .then(|| v["addr"].as_str()?.parse().ok())
                    .flatten()
            });
            if let Some(addr) = found {
                break addr;
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "email-service exited with {status}: {:?} {:?}",
                    lines.lock().unwrap(),
                    stderr.lock().unwrap()
                );
            }
            assert!(Instant::now() < deadline, "no listening line");
            std::thread::sleep(Duration::from_millis(20));
        };
        Self {
            child,
            addr,
            lines,
            stderr,
            target,
        }
    }

    /// Waits until `/healthz` reports the schema in place (Redis or the
    /// mailers may still be warming up).
    pub(super) fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (status, body) = http(self.addr, "GET", "/healthz", None);
            if body.contains("\"schema_ready\":true") {
                return;
            }
            assert!(Instant::now() < deadline, "not ready: {status} {body}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn stdout_lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    pub fn stderr_lines(&self) -> Vec<String> {
        self.stderr.lock().unwrap().clone()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits for the process to exit; returns its exit code.
    pub fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            assert!(Instant::now() < deadline, "did not exit within {within:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn collect(stream: impl std::io::Read + Send + 'static, into: Arc<Mutex<Vec<String>>>) {
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            match line {
                Ok(l) => into.lock().unwrap().push(l),
                Err(_) => break,
            }
        }
    });
}

/// A tiny blocking HTTP/1.1 client for tests that drive a child process from
/// plain threads: returns (status, body).
pub fn http(addr: SocketAddr, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let body = body.unwrap_or("");
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap_or_default();
    let status = out
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out
        .split_once("\r\n\r\n")
        .map(|b| b.1)
        .unwrap_or("")
        .to_owned();
    (status, body)
}
