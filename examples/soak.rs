//! The soak test behind `scripts/soak`: the real `email-service` binary as a
//! child process, a steady mixed load, one fault of each kind on a schedule,
//! and at the end one summary of what the product promises (SPEC's
//! invariants): nothing accepted is lost, everything finishes, no duplicate
//! beyond a send cut by a `kill -9`, no 5xx, memory and descriptors flat.
//!
//! `scripts/soak` provisions PostgreSQL and Redis and passes them in:
//!
//! ```text
//! soak --service-bin PATH --database-url URL --redis-url URL
//!      --redis-port P --redis-dir DIR
//!      --pg-data DIR --pg-bin DIR --pg-log FILE --pg-opts OPTS [--pg-as-postgres]
//!      --out-dir DIR [--minutes N] [--rate R] [--workers W]
//! ```
//!
//! Everything talks to 127.0.0.1 only. Every loop ends by itself: the load
//! at `--minutes`, the drain within 5 minutes after it, every wait on a
//! dependency within a minute.
//!
//! Exit code: 0 when every invariant held, 1 when one failed, 2 when the run
//! itself could not be carried out.

#[path = "../tests/common/smtp_sink.rs"]
#[allow(dead_code)]
mod smtp_sink;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use smtp_sink::{Mode, SmtpSink};
use uuid::Uuid;

/// One request may take this long before it counts as a hang.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the drain may wait for every accepted message to be final.
const DRAIN_LIMIT: Duration = Duration::from_secs(300);
/// Delay of each answer to the end of DATA while SMTP is "slow": well under
/// `EMAIL_TIMEOUT` (2 s), so a slow send is never also a timed-out one.
const SLOW_SMTP: Duration = Duration::from_millis(700);
/// Settings of the service under test (the retry schedule is 1, 2, 4, 8, 16 s).
const EMAIL_TIMEOUT_S: u64 = 2;
const SHUTDOWN_TIMEOUT_S: u64 = 10;

// ---------------------------------------------------------------- logging

static START: OnceLock<Instant> = OnceLock::new();

fn rel() -> f64 {
    START.get().map_or(0.0, |s| s.elapsed().as_secs_f64())
}

fn stamp() -> String {
    format!(
        "{} +{:.1}s",
        chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S%.3fZ"),
        rel()
    )
}

macro_rules! say {
    ($($t:tt)*) => {{
        println!("[{}] {}", stamp(), format!($($t)*));
        let _ = std::io::stdout().flush();
    }};
}

// ---------------------------------------------------------------- options

struct Opts {
    service_bin: PathBuf,
    database_url: String,
    redis_url: String,
    redis_port: u16,
    redis_dir: PathBuf,
    pg_data: PathBuf,
    pg_bin: PathBuf,
    pg_log: PathBuf,
    pg_opts: String,
    pg_as_postgres: bool,
    out_dir: PathBuf,
    duration: Duration,
    rate: f64,
    workers: usize,
}

fn parse_opts() -> Result<Opts, String> {
    let mut map: HashMap<String, String> = HashMap::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let key = arg
            .strip_prefix("--")
            .ok_or_else(|| format!("unexpected argument {arg:?}"))?
            .to_owned();
        if key == "pg-as-postgres" {
            map.insert(key, "1".into());
            continue;
        }
        let value = args
            .next()
            .ok_or_else(|| format!("--{key} needs a value"))?;
        map.insert(key, value);
    }
    let mut take = |k: &str| map.remove(k).ok_or_else(|| format!("--{k} is required"));
    let opts = Opts {
        service_bin: take("service-bin")?.into(),
        database_url: take("database-url")?,
        redis_url: take("redis-url")?,
        redis_port: take("redis-port")?
            .parse()
            .map_err(|_| "--redis-port: not a port")?,
        redis_dir: take("redis-dir")?.into(),
        pg_data: take("pg-data")?.into(),
        pg_bin: take("pg-bin")?.into(),
        pg_log: take("pg-log")?.into(),
        pg_opts: take("pg-opts")?,
        pg_as_postgres: take("pg-as-postgres").is_ok(),
        out_dir: take("out-dir")?.into(),
        duration: {
            let minutes: f64 = take("minutes")
                .unwrap_or_else(|_| "10".into())
                .parse()
                .map_err(|_| "--minutes: not a number")?;
            if !(0.5..=24.0 * 60.0).contains(&minutes) {
                return Err("--minutes must be between 0.5 and 1440".into());
            }
            Duration::from_secs_f64(minutes * 60.0)
        },
        rate: take("rate")
            .unwrap_or_else(|_| "40".into())
            .parse()
            .map_err(|_| "--rate: not a number")?,
        workers: take("workers")
            .unwrap_or_else(|_| "4".into())
            .parse()
            .map_err(|_| "--workers: not a number")?,
    };
    if let Some(k) = map.keys().next() {
        return Err(format!("unknown option --{k}"));
    }
    if !(1.0..=500.0).contains(&opts.rate) || opts.workers == 0 {
        return Err("--rate must be 1..500 and --workers at least 1".into());
    }
    Ok(opts)
}

// ---------------------------------------------------------------- small tools

/// xorshift64*: enough randomness to mix a load, no dependency needed.
struct Rng(u64);

impl Rng {
    fn new() -> Self {
        Rng((Uuid::new_v4().as_u128() as u64) | 1)
    }
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Kind {
    Notify,
    Contact,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Notify => "notify",
            Kind::Contact => "contact",
        }
    }
    fn path(self) -> &'static str {
        match self {
            Kind::Notify => "/api/notify/",
            Kind::Contact => "/api/contact/",
        }
    }
}

fn median(mut v: Vec<u64>) -> Option<u64> {
    if v.is_empty() {
        return None;
    }
    v.sort_unstable();
    Some(v[v.len() / 2])
}

fn snippet(b: &[u8]) -> String {
    let s = String::from_utf8_lossy(b);
    s.chars().take(200).collect()
}

fn uuid_of(body: &[u8]) -> Option<Uuid> {
    let v: Value = serde_json::from_slice(body).ok()?;
    v["uuid"].as_str()?.parse().ok()
}

/// Runs a command to completion (blocking): `runuser -u postgres --` in
/// front when asked, in `/` so a private working directory does not matter.
fn run_cmd(prog: &Path, args: &[&str], as_postgres: bool) -> Result<String, String> {
    let mut cmd = if as_postgres {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(prog);
        c
    } else {
        Command::new(prog)
    };
    let out = cmd
        .args(args)
        .current_dir("/")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{}: {e}", prog.display()))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() {
        Ok(text.trim().to_owned())
    } else {
        Err(format!(
            "{} {args:?}: {}: {}",
            prog.display(),
            out.status,
            text.trim()
        ))
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f)
        .await
        .expect("blocking task panicked")
}

fn signal(pid: u32, sig: &str) -> Result<String, String> {
    run_cmd(
        Path::new("kill"),
        &[&format!("-{sig}"), &pid.to_string()],
        false,
    )
}

fn process_alive(pid: u32) -> bool {
    // A zombie still has a /proc entry; its state is Z.
    std::fs::read_to_string(format!("/proc/{pid}/status")).is_ok_and(|s| {
        !s.lines()
            .any(|l| l.starts_with("State:") && l.contains("Z"))
    })
}

fn read_rss_kb(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn count_fds(pid: u32) -> Option<u64> {
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64)
}

fn free_port() -> Result<u16, String> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    Ok(l.local_addr().map_err(|e| e.to_string())?.port())
}

// ---------------------------------------------------------------- HTTP

#[derive(Clone)]
struct Http(Client<HttpConnector, Full<Bytes>>);

struct Resp {
    status: u16,
    replayed: bool,
    body: Bytes,
    elapsed: Duration,
}

enum CallErr {
    Timeout,
    Transport(String),
}

impl Http {
    fn new() -> Self {
        let mut c = HttpConnector::new();
        c.set_connect_timeout(Some(Duration::from_secs(2)));
        c.set_nodelay(true);
        Http(
            Client::builder(TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(10))
                .build(c),
        )
    }

    async fn call(
        &self,
        addr: SocketAddr,
        method: &str,
        path: &str,
        headers: &[(String, String)],
        body: Option<Bytes>,
        timeout: Duration,
    ) -> Result<Resp, CallErr> {
        let t0 = Instant::now();
        let mut b = Request::builder()
            .method(method)
            .uri(format!("http://{addr}{path}"));
        if body.is_some() {
            b = b.header("content-type", "application/json");
        }
        for (k, v) in headers {
            b = b.header(k.as_str(), v.as_str());
        }
        let req = b
            .body(Full::new(body.unwrap_or_default()))
            .map_err(|e| CallErr::Transport(e.to_string()))?;
        let fut = async {
            let resp = self.0.request(req).await.map_err(|e| format!("{e:?}"))?;
            let status = resp.status().as_u16();
            let replayed = resp
                .headers()
                .get("idempotent-replayed")
                .is_some_and(|v| v == "true");
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| format!("reading the body: {e:?}"))?
                .to_bytes();
            Ok::<_, String>((status, replayed, body))
        };
        match tokio::time::timeout(timeout, fut).await {
            Err(_) => Err(CallErr::Timeout),
            Ok(Err(e)) => Err(CallErr::Transport(e)),
            Ok(Ok((status, replayed, body))) => Ok(Resp {
                status,
                replayed,
                body,
                elapsed: t0.elapsed(),
            }),
        }
    }
}

// ---------------------------------------------------------------- state

struct ServiceChild {
    child: Child,
    pid: u32,
    lifetime: u32,
}

#[derive(Default)]
struct Stats {
    requests: u64,
    by_status: BTreeMap<u16, u64>,
    by_label_status: BTreeMap<(String, u16), u64>,
    by_op_status: BTreeMap<(&'static str, u16), u64>,
    max_ms_by_label: BTreeMap<String, u64>,
    accepted: HashMap<Uuid, Kind>,
    replays_ok: u64,
    conflicts_ok: u64,
    /// A repeat with the same key and body that was not answered as a replay
    /// of the first answer (invariant 3).
    replay_mismatch: Vec<String>,
    /// 503 while PostgreSQL was deliberately stopped, by fault label.
    expected_503: BTreeMap<String, u64>,
    unexpected_5xx: Vec<String>,
    unexpected_status: Vec<String>,
    unexpected_status_count: u64,
    /// Answers slower than 5 s (SPEC: a 503 comes within 5 s).
    slow_answers: Vec<String>,
    conn_err_expected: u64,
    conn_err_unexpected: Vec<String>,
    timeouts: Vec<String>,
}

struct Sample {
    t: f64,
    lifetime: u32,
    rss_kb: u64,
    fds: u64,
    during_load: bool,
}

/// One run of the service process, from its start to its kill or stop
/// (seconds since the start of the soak).
#[derive(Clone)]
struct Lifetime {
    n: u32,
    pid: u32,
    from: f64,
    to: Option<f64>,
}

struct FaultRecord {
    name: &'static str,
    begin: String,
    end: String,
    begin_rel: f64,
    end_rel: f64,
    note: String,
    error: Option<String>,
}

#[derive(Clone)]
struct Keyed {
    kind: Kind,
    headers: Vec<(String, String)>,
    body: Bytes,
    uuid: Uuid,
    by_header: bool,
}

struct Soak {
    opts: Opts,
    sink: SmtpSink,
    port: u16,
    env: Vec<(String, String)>,
    http: Mutex<Http>,
    child: Mutex<Option<ServiceChild>>,
    up: AtomicBool,
    pid: AtomicU32,
    lifetime: AtomicU32,
    kill_epoch: AtomicU64,
    kills: AtomicU32,
    pg_outage: AtomicBool,
    label: Mutex<String>,
    stats: Mutex<Stats>,
    accepted_list: Mutex<Vec<(Uuid, Kind)>>,
    load_end: Instant,
    faults: Mutex<Vec<FaultRecord>>,
    samples: Mutex<Vec<Sample>>,
    sampling: AtomicBool,
    lifetimes: Mutex<Vec<Lifetime>>,
}

impl Soak {
    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    fn label(&self) -> String {
        self.label.lock().unwrap().clone()
    }

    fn set_label(&self, l: &str) {
        *self.label.lock().unwrap() = l.to_owned();
    }

    // ------------------------------------------------------------ service

    fn spawn_child(&self, lifetime: u32) -> Result<ServiceChild, String> {
        let mut cmd = Command::new(&self.opts.service_bin);
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOST", "127.0.0.1")
            .env("PORT", self.port.to_string())
            .current_dir(&self.opts.out_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("starting {}: {e}", self.opts.service_bin.display()))?;
        let pid = child.id();
        // For scripts/soak's trap, should this process die before its child.
        std::fs::write(self.opts.out_dir.join("service.pid"), format!("{pid}\n"))
            .map_err(|e| format!("writing service.pid: {e}"))?;
        for (stream, name) in [
            (
                child
                    .stdout
                    .take()
                    .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
                "stdout",
            ),
            (
                child
                    .stderr
                    .take()
                    .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
                "stderr",
            ),
        ] {
            let Some(stream) = stream else { continue };
            let path = self
                .opts
                .out_dir
                .join(format!("service-{lifetime}.{name}.log"));
            let mut file =
                std::fs::File::create(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines() {
                    let Ok(line) = line else { break };
                    let _ = writeln!(file, "{line}");
                }
            });
        }
        Ok(ServiceChild {
            child,
            pid,
            lifetime,
        })
    }

    /// Starts a new lifetime of the service and waits until it serves.
    async fn start_service(&self) -> Result<Duration, String> {
        let n = self.lifetime.load(Ordering::SeqCst) + 1;
        let child = self.spawn_child(n)?;
        let pid = child.pid;
        *self.child.lock().unwrap() = Some(child);
        *self.http.lock().unwrap() = Http::new();
        self.lifetime.store(n, Ordering::SeqCst);
        self.pid.store(pid, Ordering::SeqCst);
        self.lifetimes.lock().unwrap().push(Lifetime {
            n,
            pid,
            from: rel(),
            to: None,
        });
        let ready = self.wait_ready(Duration::from_secs(60)).await?;
        self.up.store(true, Ordering::SeqCst);
        say!(
            "service lifetime {n}: pid {pid}, serving after {:.1} s",
            ready.as_secs_f64()
        );
        Ok(ready)
    }

    /// Ready once `/healthz` shows the schema in place (before that the API
    /// answers 503 by design).
    async fn wait_ready(&self, within: Duration) -> Result<Duration, String> {
        let t0 = Instant::now();
        loop {
            {
                let mut guard = self.child.lock().unwrap();
                if let Some(c) = guard.as_mut()
                    && let Ok(Some(status)) = c.child.try_wait()
                {
                    return Err(format!(
                        "the service exited during its start with {status} (see {}/service-{}.*.log)",
                        self.opts.out_dir.display(),
                        c.lifetime
                    ));
                }
            }
            if let Ok(h) = self.healthz(Duration::from_secs(3)).await
                && h.1["actors"]["persistence"]["schema_ready"] == true
            {
                return Ok(t0.elapsed());
            }
            if t0.elapsed() > within {
                return Err(format!("the service was not ready within {within:?}"));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// (status, body, elapsed) of `/healthz`.
    async fn healthz(&self, timeout: Duration) -> Result<(u16, Value, Duration), String> {
        let http = self.http.lock().unwrap().clone();
        match http
            .call(self.addr(), "GET", "/healthz", &[], None, timeout)
            .await
        {
            Ok(r) => Ok((
                r.status,
                serde_json::from_slice(&r.body).unwrap_or(Value::Null),
                r.elapsed,
            )),
            Err(CallErr::Timeout) => Err(format!("no answer within {timeout:?}")),
            Err(CallErr::Transport(e)) => Err(e),
        }
    }

    /// Polls `/healthz` until `checks.<check>` reads "ok"; returns how long.
    async fn wait_check_ok(&self, check: &str, within: Duration) -> Result<f64, String> {
        let t0 = Instant::now();
        loop {
            if let Ok((_, h, _)) = self.healthz(Duration::from_secs(3)).await
                && h["checks"][check] == "ok"
            {
                return Ok(t0.elapsed().as_secs_f64());
            }
            if t0.elapsed() > within {
                return Err(format!(
                    "/healthz did not show {check} ok within {within:?}"
                ));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    fn end_lifetime(&self, pid: u32) {
        for l in self.lifetimes.lock().unwrap().iter_mut() {
            if l.pid == pid && l.to.is_none() {
                l.to = Some(rel());
            }
        }
    }

    /// SIGKILL; returns the pid that was killed.
    fn kill9(&self) -> Option<u32> {
        self.up.store(false, Ordering::SeqCst);
        self.kill_epoch.fetch_add(1, Ordering::SeqCst);
        self.pid.store(0, Ordering::SeqCst);
        let mut c = self.child.lock().unwrap().take()?;
        let _ = c.child.kill();
        let _ = c.child.wait();
        self.end_lifetime(c.pid);
        Some(c.pid)
    }

    /// SIGTERM and wait for the drain; returns the exit code.
    async fn stop_service(&self) -> String {
        self.up.store(false, Ordering::SeqCst);
        let Some(mut c) = self.child.lock().unwrap().take() else {
            return "not running".into();
        };
        let _ = signal(c.pid, "TERM");
        let deadline = Instant::now() + Duration::from_secs(SHUTDOWN_TIMEOUT_S + 10);
        let result = loop {
            match c.child.try_wait() {
                Ok(Some(status)) => break format!("{status}"),
                Ok(None) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                _ => {
                    let _ = c.child.kill();
                    let _ = c.child.wait();
                    break "did not exit after SIGTERM; killed".into();
                }
            }
        };
        self.pid.store(0, Ordering::SeqCst);
        self.end_lifetime(c.pid);
        result
    }

    // ------------------------------------------------------------ load

    /// Sends one request; after a connection error caused by a deliberate
    /// kill, waits for the service and sends the same request again.
    async fn send(
        &self,
        op: &'static str,
        method: &'static str,
        path: &str,
        headers: &[(String, String)],
        body: Option<Bytes>,
        expected: &[u16],
    ) -> Option<Resp> {
        let hard_end = self.load_end + Duration::from_secs(90);
        for _ in 0..5 {
            while !self.up.load(Ordering::SeqCst) {
                if Instant::now() > hard_end {
                    return None;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let label = self.label();
            let pg_before = self.pg_outage.load(Ordering::SeqCst);
            let epoch = self.kill_epoch.load(Ordering::SeqCst);
            let http = self.http.lock().unwrap().clone();
            let result = http
                .call(
                    self.addr(),
                    method,
                    path,
                    headers,
                    body.clone(),
                    REQUEST_TIMEOUT,
                )
                .await;
            let deliberate =
                self.kill_epoch.load(Ordering::SeqCst) != epoch || !self.up.load(Ordering::SeqCst);
            match result {
                Ok(r) => {
                    let pg = pg_before || self.pg_outage.load(Ordering::SeqCst);
                    self.classify(op, method, path, &label, pg, expected, &r);
                    return Some(r);
                }
                Err(_) if deliberate => {
                    self.stats.lock().unwrap().conn_err_expected += 1;
                    continue;
                }
                Err(CallErr::Timeout) => {
                    self.stats.lock().unwrap().timeouts.push(format!(
                        "{} [{label}] {method} {path}: no answer within {REQUEST_TIMEOUT:?}",
                        stamp()
                    ));
                    return None;
                }
                Err(CallErr::Transport(e)) => {
                    self.stats
                        .lock()
                        .unwrap()
                        .conn_err_unexpected
                        .push(format!("{} [{label}] {method} {path}: {e}", stamp()));
                    return None;
                }
            }
        }
        None
    }

    #[allow(clippy::too_many_arguments)]
    fn classify(
        &self,
        op: &'static str,
        method: &str,
        path: &str,
        label: &str,
        pg_outage: bool,
        expected: &[u16],
        r: &Resp,
    ) {
        let st = r.status;
        let ms = r.elapsed.as_millis() as u64;
        let mut s = self.stats.lock().unwrap();
        s.requests += 1;
        *s.by_status.entry(st).or_default() += 1;
        *s.by_label_status.entry((label.to_owned(), st)).or_default() += 1;
        *s.by_op_status.entry((op, st)).or_default() += 1;
        let m = s.max_ms_by_label.entry(label.to_owned()).or_default();
        *m = (*m).max(ms);
        if ms > 5000 {
            s.slow_answers.push(format!(
                "{} [{label}] {method} {path} -> {st} after {ms} ms",
                stamp()
            ));
        }
        if st >= 500 {
            if st == 503 && pg_outage {
                *s.expected_503.entry(label.to_owned()).or_default() += 1;
            } else {
                s.unexpected_5xx.push(format!(
                    "{} [{label}] {method} {path} -> {st}: {}",
                    stamp(),
                    snippet(&r.body)
                ));
            }
        } else if !expected.contains(&st) {
            s.unexpected_status_count += 1;
            if s.unexpected_status.len() < 50 {
                s.unexpected_status.push(format!(
                    "{} [{label}] {op} {method} {path} -> {st}: {}",
                    stamp(),
                    snippet(&r.body)
                ));
            }
        }
    }

    fn record_accept(&self, uuid: Uuid, kind: Kind) {
        let new = self
            .stats
            .lock()
            .unwrap()
            .accepted
            .insert(uuid, kind)
            .is_none();
        if new {
            self.accepted_list.lock().unwrap().push((uuid, kind));
        }
    }

    async fn load_task(self: Arc<Self>, id: usize, period: Duration) {
        let mut rng = Rng::new();
        let mut keyed: Vec<Keyed> = Vec::new();
        let mut n: u64 = 0;
        let mut next = tokio::time::Instant::now();
        loop {
            next += period;
            let now = tokio::time::Instant::now();
            if next > now {
                tokio::time::sleep_until(next).await;
            } else {
                next = now;
            }
            if Instant::now() >= self.load_end {
                break;
            }
            n += 1;
            match rng.below(100) {
                0..52 => {
                    self.op_post(Kind::Notify, id, n, &mut rng, &mut keyed)
                        .await
                }
                52..62 => {
                    self.op_post(Kind::Contact, id, n, &mut rng, &mut keyed)
                        .await
                }
                62..68 => self.op_replay(&mut rng, &keyed).await,
                68..70 => self.op_conflict(&mut rng, &keyed).await,
                70..84 => self.op_list(&mut rng).await,
                84..98 => self.op_detail(&mut rng).await,
                _ => {
                    self.send("metrics", "GET", "/metrics", &[], None, &[200])
                        .await;
                }
            }
        }
    }

    async fn op_post(
        &self,
        kind: Kind,
        task: usize,
        n: u64,
        rng: &mut Rng,
        keyed: &mut Vec<Keyed>,
    ) {
        let mut body = match kind {
            Kind::Notify => {
                let mut b = json!({
                    "to": format!("soak{task}.{n}@example.com"),
                    "subject": format!("soak {task}-{n}"),
                    "body": format!("Soak message {task}-{n}.\nSecond line; nothing else."),
                });
                if rng.below(2) == 0 {
                    b["metadata"] = json!({"task": task, "n": n, "soak": true});
                }
                if rng.below(5) == 0 {
                    b["html"] = json!(format!("<p>Soak message <b>{task}-{n}</b></p>"));
                }
                b
            }
            Kind::Contact => json!({
                "name": format!("Soak Tester {task}-{n}"),
                "email": format!("tester{task}.{n}@example.com"),
                "message": format!("Hello from the soak, message {task}-{n}."),
            }),
        };
        // A third each: no key, an Idempotency-Key header, a body uuid.
        let variant = rng.below(3);
        let mut headers = Vec::new();
        match variant {
            1 => headers.push((
                "Idempotency-Key".to_owned(),
                format!("soak-{}", Uuid::new_v4()),
            )),
            2 => body["uuid"] = json!(Uuid::new_v4().to_string()),
            _ => {}
        }
        let bytes = Bytes::from(serde_json::to_vec(&body).unwrap());
        let Some(r) = self
            .send(
                "post",
                "POST",
                kind.path(),
                &headers,
                Some(bytes.clone()),
                &[202],
            )
            .await
        else {
            return;
        };
        if r.status != 202 {
            return;
        }
        let Some(uuid) = uuid_of(&r.body) else {
            let mut s = self.stats.lock().unwrap();
            s.unexpected_status_count += 1;
            s.unexpected_status.push(format!(
                "{} 202 without a uuid: {}",
                stamp(),
                snippet(&r.body)
            ));
            return;
        };
        self.record_accept(uuid, kind);
        if variant != 0 {
            keyed.push(Keyed {
                kind,
                headers,
                body: bytes,
                uuid,
                by_header: variant == 1,
            });
            if keyed.len() > 64 {
                keyed.remove(0);
            }
        }
    }

    /// The same key (or body uuid) and the same body again: the first
    /// answer, replayed, and nothing new stored.
    async fn op_replay(&self, rng: &mut Rng, keyed: &[Keyed]) {
        if keyed.is_empty() {
            return self.op_list(rng).await;
        }
        let k = &keyed[rng.below(keyed.len() as u64) as usize];
        let Some(r) = self
            .send(
                "replay",
                "POST",
                k.kind.path(),
                &k.headers,
                Some(k.body.clone()),
                &[202],
            )
            .await
        else {
            return;
        };
        if r.status != 202 {
            return;
        }
        let got = uuid_of(&r.body);
        let mut s = self.stats.lock().unwrap();
        if r.replayed && got == Some(k.uuid) {
            s.replays_ok += 1;
        } else {
            s.replay_mismatch.push(format!(
                "{} {} repeat of {} (header key: {}): replayed={} uuid={:?}",
                stamp(),
                k.kind.name(),
                k.uuid,
                k.by_header,
                r.replayed,
                got
            ));
            drop(s);
            if let Some(u) = got {
                self.record_accept(u, k.kind);
            }
        }
    }

    /// The same Idempotency-Key with another body: 422, nothing stored.
    async fn op_conflict(&self, rng: &mut Rng, keyed: &[Keyed]) {
        let with_header: Vec<&Keyed> = keyed.iter().filter(|k| k.by_header).collect();
        if with_header.is_empty() {
            return self.op_list(rng).await;
        }
        let k = with_header[rng.below(with_header.len() as u64) as usize];
        let mut body: Value = serde_json::from_slice(&k.body).unwrap();
        match k.kind {
            Kind::Notify => body["subject"] = json!("a different subject"),
            Kind::Contact => body["message"] = json!("a different message"),
        }
        let bytes = Bytes::from(serde_json::to_vec(&body).unwrap());
        if let Some(r) = self
            .send(
                "conflict",
                "POST",
                k.kind.path(),
                &k.headers,
                Some(bytes),
                &[422],
            )
            .await
            && r.status == 422
        {
            self.stats.lock().unwrap().conflicts_ok += 1;
        }
    }

    async fn op_list(&self, rng: &mut Rng) {
        let kind = if rng.below(4) == 0 {
            Kind::Contact
        } else {
            Kind::Notify
        };
        let size = [5, 20, 100, 500][rng.below(4) as usize];
        let mut path = format!("{}?page_size={size}", kind.path());
        let status = ["", "queued", "sending", "sent", "failed"][rng.below(5) as usize];
        if !status.is_empty() {
            path.push_str(&format!("&status={status}"));
        }
        if rng.below(3) == 0 {
            path.push_str("&page=1");
        }
        self.send("list", "GET", &path, &[], None, &[200]).await;
    }

    async fn op_detail(&self, rng: &mut Rng) {
        let pick = {
            let list = self.accepted_list.lock().unwrap();
            (!list.is_empty()).then(|| list[rng.below(list.len() as u64) as usize])
        };
        let Some((uuid, kind)) = pick else {
            return self.op_list(rng).await;
        };
        let path = format!("{}{uuid}/", kind.path());
        self.send("detail", "GET", &path, &[], None, &[200]).await;
    }

    // ------------------------------------------------------------ samples

    async fn sampler(self: Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        while self.sampling.load(Ordering::SeqCst) {
            tick.tick().await;
            let pid = self.pid.load(Ordering::SeqCst);
            let lifetime = self.lifetime.load(Ordering::SeqCst);
            if pid == 0 {
                continue;
            }
            if let (Some(rss_kb), Some(fds)) = (read_rss_kb(pid), count_fds(pid)) {
                self.samples.lock().unwrap().push(Sample {
                    t: rel(),
                    lifetime,
                    rss_kb,
                    fds,
                    during_load: Instant::now() < self.load_end,
                });
            }
        }
    }

    async fn progress(self: Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_secs(30));
        tick.tick().await;
        while Instant::now() < self.load_end {
            tick.tick().await;
            let (req, acc, bad) = {
                let s = self.stats.lock().unwrap();
                (s.requests, s.accepted.len(), s.unexpected_5xx.len())
            };
            let (rss, fds) = self
                .samples
                .lock()
                .unwrap()
                .last()
                .map_or((0, 0), |s| (s.rss_kb, s.fds));
            say!(
                "progress: {req} requests, {acc} accepted, {} at the sink, {bad} unexpected 5xx, RSS {} MiB, {fds} fds",
                self.sink.received().len(),
                rss / 1024
            );
        }
    }

    // ------------------------------------------------------------ faults

    fn redis_pid(&self) -> Result<u32, String> {
        let p = self.opts.redis_dir.join("redis.pid");
        std::fs::read_to_string(&p)
            .map_err(|e| format!("{}: {e}", p.display()))?
            .trim()
            .parse()
            .map_err(|_| format!("{}: not a pid", p.display()))
    }

    fn pg_ctl(&self, args: &[&str]) -> Result<String, String> {
        run_cmd(
            &self.opts.pg_bin.join("pg_ctl"),
            args,
            self.opts.pg_as_postgres,
        )
    }

    async fn fault_runner(self: Arc<Self>) {
        let d = self.opts.duration.as_secs_f64();
        let start = *START.get().unwrap();
        let plan: [(f64, &'static str, f64); 7] = [
            (0.08, "smtp_flaky", (d * 0.04).clamp(5.0, 15.0)),
            (0.14, "kill9", 2.0),
            (0.25, "redis_sigstop", 5.0),
            (0.35, "smtp_down", (d * 0.03).clamp(5.0, 10.0)),
            (0.45, "redis_restart_empty", 0.0),
            (0.55, "smtp_slow", (d * 0.05).clamp(5.0, 20.0)),
            (0.65, "pg_stop", 10.0),
        ];
        for (frac, name, secs) in plan {
            let at = start + Duration::from_secs_f64(d * frac);
            tokio::time::sleep_until(at.into()).await;
            if Instant::now() + Duration::from_secs_f64(secs + 10.0) > self.load_end {
                say!("fault {name}: SKIPPED (not enough time left in the run)");
                self.faults.lock().unwrap().push(FaultRecord {
                    name,
                    begin: stamp(),
                    end: stamp(),
                    begin_rel: rel(),
                    end_rel: rel(),
                    note: String::new(),
                    error: Some("skipped: not enough time left".into()),
                });
                continue;
            }
            let begin = stamp();
            let begin_rel = rel();
            self.set_label(name);
            say!("fault {name}: BEGIN");
            let result = self
                .clone()
                .inject(name, Duration::from_secs_f64(secs))
                .await;
            let (note, error) = match result {
                Ok(note) => (note, None),
                Err(e) => (String::new(), Some(e)),
            };
            say!(
                "fault {name}: END after {:.1} s: {}",
                rel() - begin_rel,
                error.as_deref().unwrap_or(&note)
            );
            self.faults.lock().unwrap().push(FaultRecord {
                name,
                begin,
                end: stamp(),
                begin_rel,
                end_rel: rel(),
                note,
                error,
            });
            // Requests in the next 5 s still count under this fault.
            let me = self.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(5)).await;
                let mut l = me.label.lock().unwrap();
                if *l == name {
                    *l = "steady".into();
                }
            });
        }
    }

    async fn inject(self: Arc<Self>, name: &str, secs: Duration) -> Result<String, String> {
        match name {
            "smtp_flaky" => {
                let (a0, r0) = (self.sink.attempts(), self.sink.received().len());
                self.sink.set_mode(Mode::TempFail(usize::MAX / 2));
                tokio::time::sleep(secs).await;
                self.sink.set_mode(Mode::Accept);
                let (a1, r1) = (self.sink.attempts(), self.sink.received().len());
                Ok(format!(
                    "sink answered 451 to {} deliveries for {:.0} s, then accepted again",
                    (a1 - a0) - (r1 - r0),
                    secs.as_secs_f64()
                ))
            }
            "kill9" => {
                // What the mailers were doing, just before.
                let sending: Vec<String> = match self.healthz(Duration::from_secs(2)).await {
                    Ok((_, h, _)) => h["actors"]["mailers"]
                        .as_array()
                        .map(|ms| {
                            ms.iter()
                                .filter_map(|m| m["sending"].as_str().map(str::to_owned))
                                .collect()
                        })
                        .unwrap_or_default(),
                    Err(_) => Vec::new(),
                };
                let lifetime = self.lifetime.load(Ordering::SeqCst);
                let pid = self.kill9().ok_or("no service to kill")?;
                self.kills.fetch_add(1, Ordering::SeqCst);
                say!("kill -9 pid {pid} (lifetime {lifetime}); mailers were sending {sending:?}");
                tokio::time::sleep(secs).await;
                let ready = self.start_service().await?;
                Ok(format!(
                    "SIGKILL pid {pid} (lifetime {lifetime}, mailers sending {sending:?} a moment before); restarted after {:.0} s as pid {}, serving {:.1} s later",
                    secs.as_secs_f64(),
                    self.pid.load(Ordering::SeqCst),
                    ready.as_secs_f64()
                ))
            }
            "redis_sigstop" => {
                let pid = self.redis_pid()?;
                blocking(move || signal(pid, "STOP")).await?;
                tokio::time::sleep(secs / 2).await;
                let probe = self.healthz(Duration::from_secs(5)).await;
                tokio::time::sleep(secs / 2).await;
                blocking(move || signal(pid, "CONT")).await?;
                let back = self.wait_check_ok("redis", Duration::from_secs(60)).await;
                Ok(format!(
                    "SIGSTOP redis pid {pid} for {:.0} s, then SIGCONT; /healthz while stopped: {}; redis ok again {}",
                    secs.as_secs_f64(),
                    describe_probe(&probe, "redis"),
                    back.map_or_else(|e| e, |s| format!("{s:.1} s after SIGCONT"))
                ))
            }
            "smtp_down" => {
                self.sink.down();
                tokio::time::sleep(secs).await;
                self.sink.up().await;
                Ok(format!(
                    "sink port closed for {:.0} s, then listening again",
                    secs.as_secs_f64()
                ))
            }
            "redis_restart_empty" => {
                let pid = self.redis_pid()?;
                let port = self.opts.redis_port;
                let dir = self.opts.redis_dir.clone();
                blocking(move || -> Result<(), String> {
                    signal(pid, "KILL")?;
                    let t0 = Instant::now();
                    while process_alive(pid) {
                        if t0.elapsed() > Duration::from_secs(10) {
                            return Err(format!("redis pid {pid} still alive 10 s after SIGKILL"));
                        }
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    let d = dir.display().to_string();
                    run_cmd(
                        Path::new("redis-server"),
                        &[
                            "--bind",
                            "127.0.0.1",
                            "--port",
                            &port.to_string(),
                            "--daemonize",
                            "yes",
                            "--dir",
                            &d,
                            "--pidfile",
                            &format!("{d}/redis.pid"),
                            "--logfile",
                            &format!("{d}/redis.log"),
                            "--save",
                            "",
                            "--appendonly",
                            "no",
                        ],
                        false,
                    )?;
                    let t0 = Instant::now();
                    loop {
                        let pong = run_cmd(
                            Path::new("redis-cli"),
                            &["-h", "127.0.0.1", "-p", &port.to_string(), "ping"],
                            false,
                        );
                        if pong.is_ok_and(|p| p == "PONG") {
                            return Ok(());
                        }
                        if t0.elapsed() > Duration::from_secs(20) {
                            return Err("restarted redis did not answer PING within 20 s".into());
                        }
                        std::thread::sleep(Duration::from_millis(100));
                    }
                })
                .await?;
                let keys = run_cmd(
                    Path::new("redis-cli"),
                    &["-h", "127.0.0.1", "-p", &port.to_string(), "dbsize"],
                    false,
                )
                .unwrap_or_default();
                let back = self.wait_check_ok("redis", Duration::from_secs(60)).await;
                Ok(format!(
                    "SIGKILL redis pid {pid}, restarted empty on port {port} as pid {} (dbsize right after: {keys}); /healthz redis ok {}",
                    self.redis_pid().unwrap_or(0),
                    back.map_or_else(|e| e, |s| format!("{s:.1} s later"))
                ))
            }
            "smtp_slow" => {
                self.sink.set_mode(Mode::Slow(SLOW_SMTP));
                tokio::time::sleep(secs).await;
                self.sink.set_mode(Mode::Accept);
                Ok(format!(
                    "sink answered the end of DATA after {} ms for {:.0} s",
                    SLOW_SMTP.as_millis(),
                    secs.as_secs_f64()
                ))
            }
            "pg_stop" => {
                self.pg_outage.store(true, Ordering::SeqCst);
                let result = self.clone().pg_outage_cycle(secs).await;
                self.pg_outage.store(false, Ordering::SeqCst);
                result
            }
            other => Err(format!("unknown fault {other}")),
        }
    }

    async fn pg_outage_cycle(self: Arc<Self>, secs: Duration) -> Result<String, String> {
        let data = self.opts.pg_data.display().to_string();
        let me = self.clone();
        let d = data.clone();
        blocking(move || me.pg_ctl(&["stop", "-D", &d, "-m", "immediate", "-w", "-t", "30"]))
            .await?;
        say!("PostgreSQL stopped (immediate)");
        tokio::time::sleep(secs / 2).await;
        let probe = self.healthz(Duration::from_secs(6)).await;
        tokio::time::sleep(secs / 2).await;
        let me = self.clone();
        let log = self.opts.pg_log.display().to_string();
        let opts = self.opts.pg_opts.clone();
        let d = data.clone();
        let mut started = Err(String::new());
        for _ in 0..3 {
            let (me, d, log, opts) = (me.clone(), d.clone(), log.clone(), opts.clone());
            started = blocking(move || {
                me.pg_ctl(&["start", "-w", "-t", "60", "-D", &d, "-l", &log, "-o", &opts])
            })
            .await;
            if started.is_ok() {
                break;
            }
            say!(
                "pg_ctl start failed, trying again: {}",
                started.as_ref().unwrap_err()
            );
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        started?;
        say!("PostgreSQL started again");
        let back = self
            .wait_check_ok("database", Duration::from_secs(60))
            .await;
        // Requests already under way when it came back still count as outage.
        tokio::time::sleep(Duration::from_secs(3)).await;
        Ok(format!(
            "pg_ctl stop -m immediate, started again after {:.0} s; /healthz while down: {}; database ok {}",
            secs.as_secs_f64(),
            describe_probe(&probe, "database"),
            back.map_or_else(|e| e, |s| format!("{s:.1} s after the start"))
        ))
    }
}

fn describe_probe(probe: &Result<(u16, Value, Duration), String>, check: &str) -> String {
    match probe {
        Ok((st, h, el)) => format!(
            "{st} in {} ms ({check}: {})",
            el.as_millis(),
            h["checks"][check].as_str().unwrap_or("?")
        ),
        Err(e) => format!("no answer: {e}"),
    }
}

// ---------------------------------------------------------------- database

async fn db_connect(url: &str) -> Result<tokio_postgres::Client, String> {
    let (client, conn) = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_postgres::connect(url, tokio_postgres::NoTls),
    )
    .await
    .map_err(|_| "connecting to PostgreSQL timed out".to_owned())?
    .map_err(|e| format!("connecting to PostgreSQL: {e}"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

struct Row {
    status: String,
    error: Option<String>,
}

async fn db_statuses(url: &str, uuids: &[Uuid]) -> Result<HashMap<Uuid, Row>, String> {
    let c = db_connect(url).await?;
    let rows = c
        .query(
            "SELECT uuid, status, error_message FROM notifications WHERE uuid = ANY($1)
             UNION ALL
             SELECT uuid, status, error_message FROM contact_messages WHERE uuid = ANY($1)",
            &[&uuids],
        )
        .await
        .map_err(|e| format!("querying statuses: {e}"))?;
    Ok(rows
        .into_iter()
        .map(|r| {
            (
                r.get::<_, Uuid>(0),
                Row {
                    status: r.get(1),
                    error: r.get(2),
                },
            )
        })
        .collect())
}

async fn db_attempts(url: &str, uuids: &[Uuid]) -> Result<BTreeMap<Uuid, Vec<String>>, String> {
    let c = db_connect(url).await?;
    let rows = c
        .query(
            "SELECT m.uuid, a.number, coalesce(a.outcome, '(open)'), coalesce(a.error, ''),
                    a.started_at::text, coalesce(a.smtp_code, 0)
               FROM notifications m
               JOIN delivery_attempts a ON a.kind = 'notify' AND a.message_id = m.id
              WHERE m.uuid = ANY($1)
             UNION ALL
             SELECT m.uuid, a.number, coalesce(a.outcome, '(open)'), coalesce(a.error, ''),
                    a.started_at::text, coalesce(a.smtp_code, 0)
               FROM contact_messages m
               JOIN delivery_attempts a ON a.kind = 'contact' AND a.message_id = m.id
              WHERE m.uuid = ANY($1)
             ORDER BY 1, 2",
            &[&uuids],
        )
        .await
        .map_err(|e| format!("querying attempts: {e}"))?;
    let mut out: BTreeMap<Uuid, Vec<String>> = BTreeMap::new();
    for r in rows {
        let outcome: String = r.get(2);
        let error: String = r.get(3);
        let code: i32 = r.get(5);
        out.entry(r.get(0)).or_default().push(format!(
            "#{} {} {}{}{}",
            r.get::<_, i32>(1),
            r.get::<_, String>(4),
            outcome,
            if code != 0 {
                format!(" {code}")
            } else {
                String::new()
            },
            if error.is_empty() {
                String::new()
            } else {
                format!(" ({error})")
            }
        ));
    }
    Ok(out)
}

async fn db_total(url: &str) -> Result<(i64, i64), String> {
    let c = db_connect(url).await?;
    let n: i64 = c
        .query_one("SELECT count(*) FROM notifications", &[])
        .await
        .map_err(|e| e.to_string())?
        .get(0);
    let m: i64 = c
        .query_one("SELECT count(*) FROM contact_messages", &[])
        .await
        .map_err(|e| e.to_string())?
        .get(0);
    Ok((n, m))
}

// ---------------------------------------------------------------- main

fn main() -> ExitCode {
    let opts = match parse_opts() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("soak: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("soak: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(run(opts)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("soak: the run could not be completed: {e}");
            ExitCode::from(2)
        }
    }
}

async fn run(opts: Opts) -> Result<bool, String> {
    START.get_or_init(Instant::now);
    let sink = SmtpSink::start(Mode::Accept).await;
    let port = free_port()?;
    let workers = opts.workers.to_string();
    let env: Vec<(String, String)> = [
        ("DATABASE_URL", opts.database_url.as_str()),
        ("REDIS_URL", opts.redis_url.as_str()),
        ("REDIS_KEY_PREFIX", "soak"),
        ("EMAIL_BACKEND", "smtp"),
        ("EMAIL_HOST", "127.0.0.1"),
        ("EMAIL_PORT", &sink.addr.port().to_string()),
        ("EMAIL_TIMEOUT", &EMAIL_TIMEOUT_S.to_string()),
        ("EMAIL_RETRY_BASE_DELAY_MS", "1000"),
        ("EMAIL_RETRY_BACKOFF_FACTOR", "2"),
        ("EMAIL_MAX_RETRIES", "5"),
        ("MAILER_WORKERS", &workers),
        ("DEFAULT_FROM_EMAIL", "soak@soak.test"),
        ("CONTACT_RECIPIENT", "inbox@soak.test"),
        ("SHUTDOWN_TIMEOUT", &SHUTDOWN_TIMEOUT_S.to_string()),
        ("LOG_FORMAT", "json"),
        ("RUST_LOG", "warn"),
    ]
    .iter()
    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
    .collect();
    let tasks = 4usize;
    let period = Duration::from_secs_f64(tasks as f64 / opts.rate);
    say!(
        "soak: {:.1} min, ~{} requests/s from {tasks} tasks, {} mailers, service on 127.0.0.1:{port}, SMTP sink on {}, logs in {}",
        opts.duration.as_secs_f64() / 60.0,
        opts.rate,
        opts.workers,
        sink.addr,
        opts.out_dir.display()
    );
    let soak = Arc::new(Soak {
        load_end: Instant::now() + opts.duration,
        opts,
        sink,
        port,
        env,
        http: Mutex::new(Http::new()),
        child: Mutex::new(None),
        up: AtomicBool::new(false),
        pid: AtomicU32::new(0),
        lifetime: AtomicU32::new(0),
        kill_epoch: AtomicU64::new(0),
        kills: AtomicU32::new(0),
        pg_outage: AtomicBool::new(false),
        label: Mutex::new("steady".into()),
        stats: Mutex::new(Stats::default()),
        accepted_list: Mutex::new(Vec::new()),
        faults: Mutex::new(Vec::new()),
        samples: Mutex::new(Vec::new()),
        sampling: AtomicBool::new(true),
        lifetimes: Mutex::new(Vec::new()),
    });
    let result = drive(soak.clone(), tasks, period).await;
    // Whatever happened, the child does not outlive the run.
    if soak.child.lock().unwrap().is_some() {
        soak.kill9();
    }
    result
}

async fn drive(soak: Arc<Soak>, tasks: usize, period: Duration) -> Result<bool, String> {
    soak.start_service().await?;
    let sampler = tokio::spawn(soak.clone().sampler());
    let progress = tokio::spawn(soak.clone().progress());
    let faults = tokio::spawn(soak.clone().fault_runner());
    let loads: Vec<_> = (0..tasks)
        .map(|i| tokio::spawn(soak.clone().load_task(i, period)))
        .collect();
    for l in loads {
        l.await.map_err(|e| format!("a load task failed: {e}"))?;
    }
    say!("load stopped");
    faults
        .await
        .map_err(|e| format!("the fault runner failed: {e}"))?;
    // The progress line ticks every 30 s; the drain must not wait for it.
    progress.abort();
    if !soak.up.load(Ordering::SeqCst) {
        return Err("the service is not up at the end of the load".into());
    }

    // ---- drain: every recorded uuid sent or failed
    let accepted: Vec<(Uuid, Kind)> = {
        let s = soak.stats.lock().unwrap();
        s.accepted.iter().map(|(u, k)| (*u, *k)).collect()
    };
    let uuids: Vec<Uuid> = accepted.iter().map(|a| a.0).collect();
    let drain_start = Instant::now();
    let mut last_report = Instant::now() - Duration::from_secs(60);
    let mut statuses: HashMap<Uuid, Row> = HashMap::new();
    loop {
        match db_statuses(&soak.opts.database_url, &uuids).await {
            Ok(m) => {
                statuses = m;
                let fin = statuses
                    .values()
                    .filter(|r| r.status == "sent" || r.status == "failed")
                    .count();
                if fin == uuids.len() {
                    say!(
                        "drain: all {} accepted messages final after {:.1} s",
                        fin,
                        drain_start.elapsed().as_secs_f64()
                    );
                    break;
                }
                if last_report.elapsed() >= Duration::from_secs(10) {
                    last_report = Instant::now();
                    let mut by: BTreeMap<&str, usize> = BTreeMap::new();
                    for r in statuses.values() {
                        *by.entry(r.status.as_str()).or_default() += 1;
                    }
                    say!(
                        "drain: {fin}/{} final; {:?}; {} not in the database",
                        uuids.len(),
                        by,
                        uuids.len() - statuses.len()
                    );
                }
            }
            Err(e) => say!("drain: {e}"),
        }
        if drain_start.elapsed() > DRAIN_LIMIT {
            say!("drain: gave up after {DRAIN_LIMIT:?}");
            break;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let drain_s = drain_start.elapsed().as_secs_f64();
    // Anything sent late (a second copy) would show here.
    tokio::time::sleep(Duration::from_secs(5)).await;
    if let Ok(m) = db_statuses(&soak.opts.database_url, &uuids).await {
        statuses = m;
    }
    let received = soak.sink.received();
    let sink_attempts = soak.sink.attempts();
    let exit = soak.stop_service().await;
    say!("service stopped with SIGTERM: {exit}");
    soak.sampling.store(false, Ordering::SeqCst);
    let _ = sampler.await;

    report(
        &soak,
        &accepted,
        &statuses,
        &received,
        sink_attempts,
        drain_s,
        &exit,
    )
    .await
}

// ---------------------------------------------------------------- summary

async fn report(
    soak: &Soak,
    accepted: &[(Uuid, Kind)],
    statuses: &HashMap<Uuid, Row>,
    received: &[smtp_sink::Received],
    sink_attempts: usize,
    drain_s: f64,
    exit: &str,
) -> Result<bool, String> {
    let url = &soak.opts.database_url;
    let stats = std::mem::take(&mut *soak.stats.lock().unwrap());
    let faults = std::mem::take(&mut *soak.faults.lock().unwrap());
    let samples = std::mem::take(&mut *soak.samples.lock().unwrap());
    let lifetimes = soak.lifetimes.lock().unwrap().clone();
    let kills = soak.kills.load(Ordering::SeqCst) as usize;
    let accepted_set: HashSet<Uuid> = accepted.iter().map(|a| a.0).collect();

    // ---- messages
    let mut sent = 0usize;
    let mut failed = 0usize;
    let mut lost: Vec<String> = Vec::new();
    let mut failed_reasons: BTreeMap<String, usize> = BTreeMap::new();
    for (u, k) in accepted {
        match statuses.get(u) {
            None => lost.push(format!("{u} ({}): not in the database", k.name())),
            Some(r) if r.status == "sent" => sent += 1,
            Some(r) if r.status == "failed" => {
                failed += 1;
                let reason: String = r
                    .error
                    .clone()
                    .unwrap_or_default()
                    .chars()
                    .take(120)
                    .collect();
                *failed_reasons.entry(reason).or_default() += 1;
            }
            Some(r) => lost.push(format!("{u} ({}): still {}", k.name(), r.status)),
        }
    }

    // ---- deliveries at the sink, by Message-ID
    let mut per_uuid: HashMap<Uuid, usize> = HashMap::new();
    let mut unparsable: Vec<String> = Vec::new();
    for r in received {
        let id = r.message_id.clone().unwrap_or_default();
        let u = id
            .trim()
            .trim_start_matches('<')
            .split('@')
            .next()
            .and_then(|s| s.parse::<Uuid>().ok());
        match u {
            Some(u) => *per_uuid.entry(u).or_default() += 1,
            None => unparsable.push(id),
        }
    }
    let duplicated: usize = per_uuid.values().map(|c| c - 1).sum();
    let dup_uuids: Vec<Uuid> = per_uuid
        .iter()
        .filter(|(_, c)| **c > 1)
        .map(|(u, _)| *u)
        .collect();
    let sent_not_delivered: Vec<String> = accepted
        .iter()
        .filter(|(u, _)| statuses.get(u).is_some_and(|r| r.status == "sent"))
        .filter(|(u, _)| !per_uuid.contains_key(u))
        .map(|(u, k)| format!("{u} ({})", k.name()))
        .collect();
    // Deliveries of messages whose 202 this client never saw (the answer
    // was cut by a kill, or was a 503 while the commit went through).
    let unknown: Vec<Uuid> = per_uuid
        .keys()
        .filter(|u| !accepted_set.contains(u))
        .copied()
        .collect();
    let unknown_in_db = if unknown.is_empty() {
        HashMap::new()
    } else {
        db_statuses(url, &unknown).await?
    };
    let mut deliveries_not_in_db: Vec<String> = unknown
        .iter()
        .filter(|u| !unknown_in_db.contains_key(u))
        .map(|u| u.to_string())
        .collect();
    deliveries_not_in_db.extend(unparsable.iter().map(|m| format!("Message-ID {m:?}")));

    // ---- duplicates: explained by a kill when a lease of the killed
    // process expired on that message (its send was cut mid-way).
    let attempts = if dup_uuids.is_empty() {
        BTreeMap::new()
    } else {
        db_attempts(url, &dup_uuids).await?
    };
    let allowed = kills * soak.opts.workers;
    let mut explained_raw = 0usize;
    let mut dup_detail: Vec<String> = Vec::new();
    for u in &dup_uuids {
        let copies = per_uuid[u];
        let a = attempts.get(u).cloned().unwrap_or_default();
        let by_kill = a.iter().any(|x| x.contains("lease expired"));
        if by_kill {
            explained_raw += copies - 1;
        }
        dup_detail.push(format!(
            "{u}: {copies} deliveries; {}; attempts: {}",
            if by_kill {
                "a lease of a killed process expired on it"
            } else {
                "NOT explained by a kill"
            },
            a.join(" | ")
        ));
    }
    let attributable = explained_raw.min(allowed);
    let unexplained = duplicated - attributable;

    // ---- RSS and fds over the longest lifetime, during the load
    let mut per_life: BTreeMap<u32, Vec<&Sample>> = BTreeMap::new();
    for s in &samples {
        per_life.entry(s.lifetime).or_default().push(s);
    }
    let peak_rss_kb = samples.iter().map(|s| s.rss_kb).max().unwrap_or(0);
    let peak_fds = samples.iter().map(|s| s.fds).max().unwrap_or(0);
    let longest = per_life
        .iter()
        .map(|(l, v)| {
            (
                *l,
                v.iter()
                    .filter(|s| s.during_load)
                    .copied()
                    .collect::<Vec<_>>(),
            )
        })
        .max_by_key(|(_, v)| v.len());
    let mut flat = json!({"measured": false});
    let mut rss_flat: Option<bool> = None;
    let mut fds_flat: Option<bool> = None;
    let mut flat_text = "not measured (no samples)".to_owned();
    if let Some((life, v)) = &longest
        && v.len() >= 20
    {
        let t0 = v[0].t;
        let span = v[v.len() - 1].t - t0;
        let window = (span / 4.0).min(60.0);
        let warm = (span / 4.0).min(60.0);
        let first: Vec<&&Sample> = v
            .iter()
            .filter(|s| s.t - t0 >= warm && s.t - t0 < warm + window)
            .collect();
        let last: Vec<&&Sample> = v.iter().filter(|s| s.t - t0 >= span - window).collect();
        let m = |xs: &[&&Sample], f: fn(&Sample) -> u64| median(xs.iter().map(|s| f(s)).collect());
        if let (Some(r1), Some(r2), Some(f1), Some(f2)) = (
            m(&first, |s| s.rss_kb),
            m(&last, |s| s.rss_kb),
            m(&first, |s| s.fds),
            m(&last, |s| s.fds),
        ) {
            let growth = (r2 as f64 - r1 as f64) / r1 as f64 * 100.0;
            rss_flat = Some(growth < 20.0);
            fds_flat = Some((f2 as i64 - f1 as i64) < 10);
            flat_text = format!(
                "lifetime {life}, {span:.0} s under load: RSS median {} -> {} KiB ({growth:+.1} %), fds median {f1} -> {f2} (first window +{warm:.0}..+{:.0} s after its start, last window its final {window:.0} s)",
                r1,
                r2,
                warm + window
            );
            flat = json!({
                "measured": true,
                "lifetime": life,
                "seconds_under_load": span.round(),
                "window_s": window.round(),
                "rss_kb_first_median": r1,
                "rss_kb_last_median": r2,
                "rss_growth_pct": (growth * 10.0).round() / 10.0,
                "fds_first_median": f1,
                "fds_last_median": f2,
                "rss_flat": growth < 20.0,
                "fds_flat": (f2 as i64 - f1 as i64) < 10,
            });
        }
    }
    let long_enough = longest
        .as_ref()
        .is_some_and(|(_, v)| v.len() >= 2 && v[v.len() - 1].t - v[0].t >= 300.0);

    let db_counts = db_total(url).await.unwrap_or((-1, -1));

    // ---- verdict
    let fivexx = stats.unexpected_5xx.len();
    let expected_503: u64 = stats.expected_503.values().sum();
    let mut failures: Vec<String> = Vec::new();
    if !lost.is_empty() {
        failures.push(format!(
            "lost {}: accepted (202) but missing or not final",
            lost.len()
        ));
    }
    if fivexx > 0 {
        failures.push(format!(
            "{fivexx} responses 5xx outside the deliberate PostgreSQL outage"
        ));
    }
    if unexplained > 0 {
        failures.push(format!(
            "{unexplained} duplicate deliveries not explained by the {kills} kill(s) (allowed {allowed})"
        ));
    }
    if !sent_not_delivered.is_empty() {
        failures.push(format!(
            "{} messages `sent` in the database never reached the sink",
            sent_not_delivered.len()
        ));
    }
    if !deliveries_not_in_db.is_empty() {
        failures.push(format!(
            "{} deliveries whose Message-ID matches no stored message",
            deliveries_not_in_db.len()
        ));
    }
    if !stats.replay_mismatch.is_empty() {
        failures.push(format!(
            "{} idempotent repeats not answered as a replay",
            stats.replay_mismatch.len()
        ));
    }
    for f in &faults {
        if let Some(e) = &f.error {
            failures.push(format!("fault {} was not carried out: {e}", f.name));
        }
    }
    if long_enough && (rss_flat == Some(false) || fds_flat == Some(false)) {
        failures.push(format!("RSS or fds not flat: {flat_text}"));
    }
    // A service that stops answering must not pass for one that lost
    // nothing: every request is answered, in time, with a status its
    // operation expects, and mail actually flows.
    if stats.unexpected_status_count > 0 {
        failures.push(format!(
            "{} answers with a status the operation does not expect",
            stats.unexpected_status_count
        ));
    }
    if !stats.timeouts.is_empty() {
        failures.push(format!("{} requests timed out", stats.timeouts.len()));
    }
    if !stats.conn_err_unexpected.is_empty() {
        failures.push(format!(
            "{} connection errors outside a kill",
            stats.conn_err_unexpected.len()
        ));
    }
    if !stats.slow_answers.is_empty() {
        failures.push(format!(
            "{} answers slower than 5 s",
            stats.slow_answers.len()
        ));
    }
    if accepted.is_empty() || sent == 0 {
        failures.push(format!(
            "no mail flowed: {} accepted, {sent} sent",
            accepted.len()
        ));
    }
    let pass = failures.is_empty();

    // ---- print
    let status_counts: BTreeMap<String, u64> = stats
        .by_status
        .iter()
        .map(|(k, v)| (k.to_string(), *v))
        .collect();
    let mut by_label: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
    for ((l, st), n) in &stats.by_label_status {
        by_label
            .entry(l.clone())
            .or_default()
            .insert(st.to_string(), *n);
    }
    let mut by_op: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
    for ((op, st), n) in &stats.by_op_status {
        by_op
            .entry((*op).to_owned())
            .or_default()
            .insert(st.to_string(), *n);
    }
    let life_json: Vec<Value> = lifetimes
        .iter()
        .map(|l| {
            let v = per_life.get(&l.n);
            json!({
                "lifetime": l.n, "pid": l.pid, "from_s": l.from.round(), "to_s": l.to.map(f64::round),
                "samples": v.map_or(0, |v| v.len()),
                "peak_rss_kb": v.and_then(|v| v.iter().map(|s| s.rss_kb).max()),
                "peak_fds": v.and_then(|v| v.iter().map(|s| s.fds).max()),
            })
        })
        .collect();
    let fault_json: Vec<Value> = faults
        .iter()
        .map(|f| {
            json!({"fault": f.name, "begin": f.begin, "end": f.end,
                   "begin_s": (f.begin_rel * 10.0).round() / 10.0,
                   "end_s": (f.end_rel * 10.0).round() / 10.0,
                   "note": f.note, "error": f.error})
        })
        .collect();
    let summary = json!({
        "date": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "minutes": soak.opts.duration.as_secs_f64() / 60.0,
        "pass": pass,
        "failures": failures,
        "requests": stats.requests,
        "status_counts": status_counts,
        "accepted": accepted.len(),
        "sent": sent,
        "failed": failed,
        "lost": lost.len(),
        "duplicated": duplicated,
        "duplicates_attributable_to_kills": attributable,
        "duplicates_allowed_by_kills": allowed,
        "duplicates_unexplained": unexplained,
        "kills": kills,
        "5xx": fivexx,
        "expected_503_during_pg_outage": expected_503,
        "replays_ok": stats.replays_ok,
        "conflicts_422": stats.conflicts_ok,
        "sink_deliveries": received.len(),
        "sink_end_of_data_total": sink_attempts,
        "deliveries_without_a_seen_202": unknown.len(),
        "sent_not_delivered": sent_not_delivered.len(),
        "db_rows": {"notifications": db_counts.0, "contact_messages": db_counts.1},
        "drain_s": (drain_s * 10.0).round() / 10.0,
        "peak_rss_kb": peak_rss_kb,
        "peak_fds": peak_fds,
        "rss_flat": rss_flat,
        "fds_flat": fds_flat,
        "flatness": flat,
        "anomalies": {
            "unexpected_status": stats.unexpected_status_count,
            "timeouts": stats.timeouts.len(),
            "unexpected_connection_errors": stats.conn_err_unexpected.len(),
            "answers_slower_than_5s": stats.slow_answers.len(),
            "connection_errors_during_kill": stats.conn_err_expected,
        },
        "service_exit_on_sigterm": exit,
        "lifetimes": life_json,
        "faults": fault_json,
    });

    let mut out = String::new();
    let mut line = |s: String| {
        out.push_str(&s);
        out.push('\n');
    };
    line("================================ SOAK SUMMARY ================================".into());
    line(format!(
        "verdict      {}",
        if pass {
            "PASS".to_owned()
        } else {
            format!("FAIL: {}", failures.join("; "))
        }
    ));
    line(format!(
        "load         {:.1} min, {} requests; status codes {:?}",
        soak.opts.duration.as_secs_f64() / 60.0,
        stats.requests,
        status_counts
    ));
    line(format!(
        "messages     accepted {}  sent {}  failed {}  lost {}  (drain {:.1} s)",
        accepted.len(),
        sent,
        failed,
        lost.len(),
        drain_s
    ));
    line(format!(
        "deliveries   {} at the sink; duplicated {} (attributable to {} kill(s): {}, allowed {}; unexplained {}); {} deliveries of messages whose 202 was never seen; {} sent-but-not-delivered",
        received.len(),
        duplicated,
        kills,
        attributable,
        allowed,
        unexplained,
        unknown.len(),
        sent_not_delivered.len()
    ));
    line(format!(
        "5xx          {fivexx} (deliberate PostgreSQL outage 503s, not counted: {expected_503} {:?})",
        stats.expected_503
    ));
    line(format!(
        "idempotency  {} replays answered as the first time, {} conflicting reuses got 422, {} mismatches",
        stats.replays_ok,
        stats.conflicts_ok,
        stats.replay_mismatch.len()
    ));
    line(format!(
        "memory       peak RSS {:.1} MiB, peak fds {}; RSS flat: {}, fds flat: {}{}",
        peak_rss_kb as f64 / 1024.0,
        peak_fds,
        rss_flat.map_or("n/a".into(), |b| if b {
            "yes".to_owned()
        } else {
            "NO".to_owned()
        }),
        fds_flat.map_or("n/a".into(), |b| if b {
            "yes".to_owned()
        } else {
            "NO".to_owned()
        }),
        if long_enough {
            ""
        } else {
            " (lifetime under 5 min: informative only)"
        }
    ));
    line(format!("             {flat_text}"));
    line(format!(
        "anomalies    {} unexpected 4xx, {} timeouts, {} unexpected connection errors, {} answers > 5 s; {} connection errors during the kill (retried)",
        stats.unexpected_status_count,
        stats.timeouts.len(),
        stats.conn_err_unexpected.len(),
        stats.slow_answers.len(),
        stats.conn_err_expected
    ));
    line(format!("shutdown     SIGTERM at the end: {exit}"));
    line("faults:".into());
    for f in &faults {
        line(format!(
            "  {:<20} {} .. {}  {}",
            f.name,
            f.begin,
            f.end.split(' ').next().unwrap_or(""),
            f.error
                .as_deref()
                .map_or(f.note.clone(), |e| format!("ERROR {e}"))
        ));
    }
    line(
        "status codes by fault window (label: 5 s after each fault still counts under it):".into(),
    );
    for (l, m) in &by_label {
        line(format!(
            "  {:<20} {:?}  max latency {} ms",
            l,
            m,
            stats.max_ms_by_label.get(l).copied().unwrap_or(0)
        ));
    }
    line(format!("status codes by operation: {by_op:?}"));
    if !failed_reasons.is_empty() {
        line("failed messages by reason:".into());
        for (r, n) in &failed_reasons {
            line(format!("  {n:>6}  {r}"));
        }
    }
    let list = |line: &mut dyn FnMut(String), title: &str, items: &[String]| {
        if !items.is_empty() {
            line(format!("{title} ({}):", items.len()));
            for i in items.iter().take(30) {
                line(format!("  {i}"));
            }
            if items.len() > 30 {
                line(format!("  ... and {} more", items.len() - 30));
            }
        }
    };
    list(&mut line, "LOST", &lost);
    list(&mut line, "UNEXPECTED 5xx", &stats.unexpected_5xx);
    list(&mut line, "duplicated deliveries", &dup_detail);
    list(&mut line, "SENT BUT NOT AT THE SINK", &sent_not_delivered);
    list(
        &mut line,
        "DELIVERIES MATCHING NO STORED MESSAGE",
        &deliveries_not_in_db,
    );
    list(&mut line, "REPLAY MISMATCHES", &stats.replay_mismatch);
    list(&mut line, "unexpected statuses", &stats.unexpected_status);
    list(&mut line, "timeouts", &stats.timeouts);
    list(
        &mut line,
        "unexpected connection errors",
        &stats.conn_err_unexpected,
    );
    list(&mut line, "answers slower than 5 s", &stats.slow_answers);
    line(format!("SOAK_SUMMARY_JSON {summary}"));
    print!("{out}");
    let _ = std::io::stdout().flush();

    let dir = &soak.opts.out_dir;
    let _ = std::fs::write(dir.join("summary.txt"), &out);
    let _ = std::fs::write(dir.join("summary.json"), format!("{summary}\n"));
    let mut csv = String::from("t_s,lifetime,rss_kb,fds,during_load\n");
    for s in &samples {
        csv.push_str(&format!(
            "{:.1},{},{},{},{}\n",
            s.t, s.lifetime, s.rss_kb, s.fds, s.during_load
        ));
    }
    let _ = std::fs::write(dir.join("samples.csv"), csv);
    Ok(pass)
}
