//! Helpers for `scripts/bench`: an SMTP sink that can be counted from the
//! outside, a measure of that sink's own capacity, and an HTTP client that
//! posts notifications and waits for them to arrive at the sink.
//!
//! Everything talks to 127.0.0.1 only, and every loop is bounded in count
//! and time.
//!
//! ```text
//! bench_tools sink --port P --control C [--data-delay-ms N]
//! bench_tools smtp-capacity --port P [--count 20000] [--conns 4] [--seconds 30]
//!                          [--client lettre-nodelay|lettre-pool|raw]
//! bench_tools post --url URL [--count 5000] [--conns 32] [--tag T]
//! bench_tools e2e --url URL --control C [--count 5000] [--conns 32] [--timeout 300]
//! bench_tools sink-stats --control C [--count-only]
//! bench_tools backlog --database-url U --redis-url R --prefix P [--count 100000]
//! bench_tools watch --control C --until N [--timeout 600] [--interval-ms 100]
//! ```
//!
//! The control port of `sink` answers one JSON line per connection and
//! closes. A client that sends `count\n` first gets the cheap
//! `{"received": N}` (every end of DATA so far); one that sends `stats\n`,
//! or nothing within 100 ms, gets
//! `{"received": N, "unique_message_ids": U, "duplicates": D}`.

#[path = "../tests/common/smtp_sink.rs"]
#[allow(dead_code)]
mod smtp_sink;

#[path = "bench_support/backlog.rs"]
mod backlog;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use lettre::message::header::ContentType;
use lettre::transport::smtp::PoolConfig;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Mutex;

use email_service::config::{Secret, SmtpConfig};
use email_service::smtp;
use smtp_sink::{Mode, SmtpSink};

const USAGE: &str = "usage:
  bench_tools sink --port P --control C [--data-delay-ms N]
  bench_tools smtp-capacity --port P [--count 20000] [--conns 4] [--seconds 30]
                         [--client lettre-nodelay|lettre-pool|raw]
  bench_tools post --url URL [--count 5000] [--conns 32] [--tag T]
  bench_tools e2e --url URL --control C [--count 5000] [--conns 32] [--timeout 300]
  bench_tools sink-stats --control C [--count-only]
  bench_tools backlog --database-url U --redis-url R --prefix P [--count 100000]
  bench_tools watch --control C --until N [--timeout 600] [--interval-ms 100]";

/// `--key value` pairs and bare `--flag`s, parsed by hand.
struct Args {
    values: HashMap<String, String>,
    flags: Vec<String>,
}

impl Args {
    fn parse(raw: &[String]) -> Result<Self, String> {
        let mut values = HashMap::new();
        let mut flags = Vec::new();
        let mut i = 0;
        while i < raw.len() {
            let key = raw[i]
                .strip_prefix("--")
                .ok_or_else(|| format!("unexpected argument {:?}", raw[i]))?;
            match raw.get(i + 1) {
                Some(v) if !v.starts_with("--") => {
                    values.insert(key.to_owned(), v.clone());
                    i += 2;
                }
                _ => {
                    flags.push(key.to_owned());
                    i += 1;
                }
            }
        }
        Ok(Self { values, flags })
    }

    fn get<T: FromStr>(&self, key: &str, default: Option<T>) -> Result<T, String> {
        match self.values.get(key) {
            Some(v) => v
                .parse()
                .map_err(|_| format!("--{key}: cannot parse {v:?}")),
            None => default.ok_or_else(|| format!("--{key} is required")),
        }
    }

    fn flag(&self, key: &str) -> bool {
        self.flags.iter().any(|f| f == key)
    }
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let Some((command, rest)) = argv.split_first() else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    let args = match Args::parse(rest) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("bench_tools: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let result = runtime.block_on(async {
        match command.as_str() {
            "sink" => sink(&args).await,
            "smtp-capacity" => smtp_capacity(&args).await,
            "post" => post_command(&args).await,
            "e2e" => e2e(&args).await,
            "sink-stats" => sink_stats_command(&args).await,
            "backlog" => backlog::backlog(&args).await,
            "watch" => backlog::watch(&args).await,
            other => Err(format!("unknown command {other:?}\n{USAGE}")),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench_tools {command}: {e}");
            ExitCode::from(1)
        }
    }
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

// ---------------------------------------------------------------- sink

/// Counts from the sink; `unique` is only known after a full count.
#[derive(Clone, Copy, Debug, Default)]
struct Counts {
    received: usize,
    unique: usize,
}

impl Counts {
    fn json(&self) -> Value {
        json!({
            "received": self.received,
            "unique_message_ids": self.unique,
            "duplicates": self.received - self.unique,
        })
    }
}

/// A full count copies every stored mail, so it is cached until another
/// mail arrives: a client polling an idle sink costs nothing.
struct Counter {
    sink: SmtpSink,
    cache: Mutex<Option<Counts>>,
}

impl Counter {
    fn received(&self) -> usize {
        // In `Mode::Accept` and `Mode::Slow` every end of DATA is stored
        // (a slow one once answered).
        self.sink.attempts()
    }

    async fn full(&self) -> Counts {
        let mut cache = self.cache.lock().await;
        let now = self.received();
        if let Some(c) = *cache
            && c.received == now
        {
            return c;
        }
        let by_id = self.sink.by_message_id();
        let counts = Counts {
            received: by_id.values().sum(),
            unique: by_id.len(),
        };
        *cache = Some(counts);
        counts
    }
}

async fn sink(args: &Args) -> Result<(), String> {
    let port: u16 = args.get("port", None)?;
    let control_port: u16 = args.get("control", None)?;
    // A relay's answer to the end of DATA takes tens of milliseconds (it
    // stores the mail, maybe queues it on): the sink can wait as long, per
    // connection, so that throughput depends on how many sends are in
    // flight.
    let delay_ms: u64 = args.get("data-delay-ms", Some(0))?;
    let mode = if delay_ms == 0 {
        Mode::Accept
    } else {
        Mode::Slow(Duration::from_millis(delay_ms))
    };
    // The sink binds port 0; move it to the requested port (it re-binds
    // `addr` on `up`).
    let mut smtp = SmtpSink::start(mode).await;
    smtp.down();
    smtp.addr = loopback(port);
    smtp.up().await;
    let control = TcpListener::bind(loopback(control_port))
        .await
        .map_err(|e| format!("control port {control_port}: {e}"))?;
    let counter = Arc::new(Counter {
        sink: smtp,
        cache: Mutex::new(None),
    });
    println!(
        "{}",
        json!({"sink": format!("127.0.0.1:{port}"), "control": format!("127.0.0.1:{control_port}"), "data_delay_ms": delay_ms})
    );

    let serve = {
        let counter = counter.clone();
        async move {
            loop {
                let Ok((stream, _)) = control.accept().await else {
                    continue;
                };
                tokio::spawn(control_session(stream, counter.clone()));
            }
        }
    };
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).map_err(|e| e.to_string())?;
    tokio::select! {
        _ = serve => {}
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    eprintln!("sink: stopping; {}", counter.full().await.json());
    Ok(())
}

async fn control_session(stream: TcpStream, counter: Arc<Counter>) {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    let mut line = String::new();
    // An optional command; a silent client (nc, /dev/tcp with no write) gets
    // the full count after 100 ms.
    let _ = tokio::time::timeout(Duration::from_millis(100), reader.read_line(&mut line)).await;
    let answer = if line.trim() == "count" {
        json!({"received": counter.received()})
    } else {
        counter.full().await.json()
    };
    let _ = write.write_all(format!("{answer}\n").as_bytes()).await;
    let _ = write.shutdown().await;
}

/// Asks the sink's control port; `count_only` is the cheap question.
async fn ask_sink(control: u16, count_only: bool) -> Result<Counts, String> {
    let mut stream = TcpStream::connect(loopback(control))
        .await
        .map_err(|e| format!("sink control 127.0.0.1:{control}: {e}"))?;
    let question: &[u8] = if count_only { b"count\n" } else { b"stats\n" };
    stream
        .write_all(question)
        .await
        .map_err(|e| e.to_string())?;
    let mut line = String::new();
    tokio::time::timeout(
        Duration::from_secs(30),
        BufReader::new(stream).read_line(&mut line),
    )
    .await
    .map_err(|_| "sink control: no answer in 30 s".to_owned())?
    .map_err(|e| e.to_string())?;
    let v: Value =
        serde_json::from_str(&line).map_err(|e| format!("sink control: {e}: {line:?}"))?;
    let field = |k: &str| v.get(k).and_then(Value::as_u64).map(|n| n as usize);
    let received = field("received").ok_or("sink control: no received")?;
    Ok(Counts {
        received,
        unique: field("unique_message_ids").unwrap_or(0),
    })
}

async fn sink_stats_command(args: &Args) -> Result<(), String> {
    let control: u16 = args.get("control", None)?;
    let count_only = args.flag("count-only");
    let c = ask_sink(control, count_only).await?;
    if count_only {
        println!("{}", json!({"received": c.received}));
    } else {
        println!("{}", c.json());
    }
    Ok(())
}

// ------------------------------------------------------- smtp-capacity

/// Which SMTP client `smtp-capacity` uses.
#[derive(Clone, Copy, PartialEq)]
enum SmtpClient {
    /// The service's own client, `email_service::smtp::Session` (lettre's
    /// SMTP client on one kept-open TCP_NODELAY connection per sender), so
    /// the figure is the sink's capacity for the service.
    LettreNodelay,
    /// lettre's pooled `AsyncSmtpTransport` (Nagle on): how the service
    /// talked before it had its own connections; stalls on delayed ACKs.
    LettrePool,
    /// A minimal hand-written client with TCP_NODELAY that writes each
    /// command, and the body with its final dot, in one write: the sink's
    /// own capacity with the least client work.
    Raw,
}

impl SmtpClient {
    fn parse(s: &str) -> Result<Self, String> {
        match s {
            "lettre-nodelay" => Ok(Self::LettreNodelay),
            "lettre-pool" => Ok(Self::LettrePool),
            "raw" => Ok(Self::Raw),
            _ => Err(format!(
                "--client {s:?}: lettre-nodelay, lettre-pool or raw"
            )),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::LettreNodelay => "lettre-nodelay",
            Self::LettrePool => "lettre-pool",
            Self::Raw => "raw",
        }
    }
}

/// One sender's connection, for the clients that keep their own: the
/// service's own SMTP session (`email_service::smtp`), or the raw client.
enum Conn {
    None,
    Service(Box<smtp::Session>),
    Raw(RawSmtp),
}

/// How many small mails per second the sink takes over `conns` connections,
/// sent for at most `count` mails or `seconds`, whichever comes first.
async fn smtp_capacity(args: &Args) -> Result<(), String> {
    let port: u16 = args.get("port", None)?;
    let count: usize = args.get("count", Some(20_000))?;
    let conns: usize = args.get("conns", Some(4))?;
    let seconds: f64 = args.get("seconds", Some(30.0))?;
    let client = SmtpClient::parse(&args.get::<String>("client", Some("lettre-nodelay".into()))?)?;
    if conns == 0 || count == 0 {
        return Err("--count and --conns must be positive".into());
    }
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let next = Arc::new(AtomicUsize::new(0));
    let sent = Arc::new(AtomicUsize::new(0));
    let errors = Arc::new(AtomicUsize::new(0));
    let first_error: Arc<std::sync::Mutex<Option<String>>> = Arc::default();
    let run = uuid::Uuid::new_v4().simple().to_string();
    let transport = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous("127.0.0.1")
        .port(port)
        .timeout(Some(Duration::from_secs(10)))
        .pool_config(
            PoolConfig::new()
                .max_size(conns as u32)
                .idle_timeout(Duration::from_secs(30)),
        )
        .build();
    // The service's client exactly as a mailer uses it.
    let settings = Arc::new(
        smtp::Settings::new(
            &SmtpConfig {
                host: "127.0.0.1".into(),
                port,
                use_tls: false,
                use_ssl: false,
                user: String::new(),
                password: Secret::new(""),
                timeout: Duration::from_secs(10),
                tls_ca_file: None,
                tls_extra_roots: Vec::new(),
            },
            "bench.localhost",
        )
        .expect("plain SMTP settings"),
    );
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..conns {
        let transport = transport.clone();
        let settings = settings.clone();
        let next = next.clone();
        let sent = sent.clone();
        let errors = errors.clone();
        let first_error = first_error.clone();
        let run = run.clone();
        tasks.spawn(async move {
            let mut conn = Conn::None;
            while Instant::now() < deadline {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count {
                    break;
                }
                let message = Message::builder()
                    .message_id(Some(format!("<{}@bench.localhost>", uuid::Uuid::new_v4())))
                    .date_now()
                    .from("noreply@localhost".parse().unwrap())
                    .to(format!("capacity{i}@example.com").parse().unwrap())
                    .subject(format!("capacity {run} {i}"))
                    .header(ContentType::TEXT_PLAIN)
                    .body(format!("Capacity probe {i} of run {run}.\n"))
                    .expect("message");
                let result = match client {
                    SmtpClient::LettrePool => transport
                        .send(message)
                        .await
                        .map(|_| ())
                        .map_err(|e| e.to_string()),
                    SmtpClient::LettreNodelay => service_send(&mut conn, &settings, &message).await,
                    SmtpClient::Raw => raw_send(&mut conn, port, &message).await,
                };
                match result {
                    Ok(()) => {
                        sent.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        conn = Conn::None;
                        first_error.lock().unwrap().get_or_insert(e);
                    }
                }
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    let elapsed = started.elapsed().as_secs_f64();
    let sent = sent.load(Ordering::Relaxed);
    let errors = errors.load(Ordering::Relaxed);
    let first_error = first_error.lock().unwrap().clone();
    println!(
        "{}",
        json!({
            "sink_capacity_per_s": round1(sent as f64 / elapsed),
            "client": client.name(),
            "sent": sent,
            "errors": errors,
            "conns": conns,
            "elapsed_s": round3(elapsed),
            "first_error": first_error,
        })
    );
    if errors > 0 {
        return Err(format!("{errors} sends failed"));
    }
    Ok(())
}

/// A connection of the raw client, greeted and past EHLO.
struct RawSmtp {
    reader: BufReader<tokio::net::tcp::OwnedReadHalf>,
    writer: tokio::net::tcp::OwnedWriteHalf,
}

impl RawSmtp {
    async fn connect(port: u16) -> Result<Self, String> {
        let stream = TcpStream::connect(loopback(port))
            .await
            .map_err(|e| format!("connect: {e}"))?;
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        let (read, writer) = stream.into_split();
        let mut conn = Self {
            reader: BufReader::new(read),
            writer,
        };
        conn.expect(b"", '2').await?;
        conn.expect(b"EHLO bench.localhost\r\n", '2').await?;
        Ok(conn)
    }

    /// Writes `command` (if any) in one write and reads one reply, whose
    /// code must start with `class`. Multi-line replies end at `NNN `.
    async fn expect(&mut self, command: &[u8], class: char) -> Result<(), String> {
        if !command.is_empty() {
            self.writer
                .write_all(command)
                .await
                .map_err(|e| e.to_string())?;
        }
        let mut line = String::new();
        loop {
            line.clear();
            let n = tokio::time::timeout(Duration::from_secs(10), self.reader.read_line(&mut line))
                .await
                .map_err(|_| "no reply in 10 s".to_owned())?
                .map_err(|e| e.to_string())?;
            if n == 0 {
                return Err("connection closed".into());
            }
            if line.len() < 4 || line.as_bytes()[3] != b'-' {
                break;
            }
        }
        if line.starts_with(class) {
            Ok(())
        } else {
            Err(format!("unexpected reply {:?}", line.trim_end()))
        }
    }
}

async fn service_send(
    conn: &mut Conn,
    settings: &smtp::Settings,
    message: &Message,
) -> Result<(), String> {
    if !matches!(conn, Conn::Service(_)) {
        *conn = Conn::Service(Box::default());
    }
    let Conn::Service(session) = conn else {
        unreachable!("set above")
    };
    session
        .send(settings, message.envelope(), &message.formatted(), async {})
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

async fn raw_send(conn: &mut Conn, port: u16, message: &Message) -> Result<(), String> {
    if !matches!(conn, Conn::Raw(_)) {
        *conn = Conn::Raw(RawSmtp::connect(port).await?);
    }
    let Conn::Raw(c) = conn else {
        unreachable!("connected above")
    };
    let envelope = message.envelope();
    let from = envelope.from().map(|a| a.to_string()).unwrap_or_default();
    c.expect(format!("MAIL FROM:<{from}>\r\n").as_bytes(), '2')
        .await?;
    for to in envelope.to() {
        c.expect(format!("RCPT TO:<{to}>\r\n").as_bytes(), '2')
            .await?;
    }
    c.expect(b"DATA\r\n", '3').await?;
    // Dot-stuffing: our probe bodies never start a line with '.', but a
    // line that does would be doubled here as the protocol wants.
    let formatted = String::from_utf8_lossy(&message.formatted()).into_owned();
    let mut data = String::with_capacity(formatted.len() + 8);
    for line in formatted.split_inclusive('\n') {
        if line.starts_with('.') {
            data.push('.');
        }
        data.push_str(line);
    }
    if !data.ends_with("\r\n") {
        data.push_str("\r\n");
    }
    data.push_str(".\r\n");
    c.expect(data.as_bytes(), '2').await
}

// ---------------------------------------------------------------- post

struct PostReport {
    posted: usize,
    accepted: usize,
    non_2xx: usize,
    errors: usize,
    elapsed: Duration,
    /// Latencies of all answered requests, sorted, in microseconds.
    latencies_us: Vec<u64>,
    first_failure: Option<String>,
}

impl PostReport {
    fn percentile_ms(&self, p: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return 0.0;
        }
        let rank = ((p / 100.0) * self.latencies_us.len() as f64).ceil() as usize;
        let idx = rank.clamp(1, self.latencies_us.len()) - 1;
        round3(self.latencies_us[idx] as f64 / 1000.0)
    }

    fn json(&self) -> Value {
        json!({
            "posted": self.posted,
            "accepted": self.accepted,
            "non_2xx": self.non_2xx,
            "errors": self.errors,
            "elapsed_s": round3(self.elapsed.as_secs_f64()),
            "requests_per_s": round1(self.posted as f64 / self.elapsed.as_secs_f64()),
            "p50_ms": self.percentile_ms(50.0),
            "p99_ms": self.percentile_ms(99.0),
            "first_failure": self.first_failure,
        })
    }
}

/// POSTs `count` distinct notifications to `url` over at most `conns`
/// keep-alive connections.
async fn post(url: &str, count: usize, conns: usize, tag: &str) -> Result<PostReport, String> {
    if conns == 0 {
        return Err("--conns must be positive".into());
    }
    let uri: hyper::Uri = url.parse().map_err(|e| format!("--url {url:?}: {e}"))?;
    match uri.host() {
        Some("127.0.0.1" | "localhost") => {}
        _ => return Err(format!("--url {url:?}: only 127.0.0.1 is a target")),
    }
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: Client<HttpConnector, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(conns)
        .build(connector);
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..conns {
        let client = client.clone();
        let next = next.clone();
        let uri = uri.clone();
        let tag = tag.to_owned();
        tasks.spawn(async move {
            let mut accepted = 0usize;
            let mut non_2xx = 0usize;
            let mut errors = 0usize;
            let mut latencies = Vec::new();
            let mut first_failure = None;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count {
                    break;
                }
                let body = json!({
                    "to": format!("e2e{i}@example.com"),
                    "subject": format!("bench {tag} #{i}"),
                    "body": format!("Notification {i} of bench run {tag}.\nNothing to see here.\n"),
                });
                let req = Request::builder()
                    .method(Method::POST)
                    .uri(uri.clone())
                    .header("content-type", "application/json")
                    .body(Full::new(Bytes::from(body.to_string())))
                    .expect("request");
                let t = Instant::now();
                let result = tokio::time::timeout(Duration::from_secs(30), async {
                    let resp = client.request(req).await.map_err(|e| e.to_string())?;
                    let status = resp.status();
                    let body = resp
                        .into_body()
                        .collect()
                        .await
                        .map_err(|e| e.to_string())?
                        .to_bytes();
                    Ok::<_, String>((status, body))
                })
                .await;
                match result {
                    Ok(Ok((status, body))) => {
                        latencies.push(t.elapsed().as_micros() as u64);
                        if status.is_success() {
                            accepted += 1;
                        } else {
                            non_2xx += 1;
                            first_failure.get_or_insert_with(|| {
                                format!("{status}: {}", String::from_utf8_lossy(&body))
                            });
                        }
                    }
                    Ok(Err(e)) => {
                        errors += 1;
                        first_failure.get_or_insert(e);
                    }
                    Err(_) => {
                        errors += 1;
                        first_failure.get_or_insert_with(|| "timeout after 30 s".into());
                    }
                }
            }
            (accepted, non_2xx, errors, latencies, first_failure)
        });
    }
    let mut report = PostReport {
        posted: count,
        accepted: 0,
        non_2xx: 0,
        errors: 0,
        elapsed: Duration::ZERO,
        latencies_us: Vec::with_capacity(count),
        first_failure: None,
    };
    while let Some(joined) = tasks.join_next().await {
        let (a, n, e, l, f) = joined.map_err(|e| format!("sender task: {e}"))?;
        report.accepted += a;
        report.non_2xx += n;
        report.errors += e;
        report.latencies_us.extend(l);
        if report.first_failure.is_none() {
            report.first_failure = f;
        }
    }
    report.elapsed = started.elapsed();
    report.latencies_us.sort_unstable();
    Ok(report)
}

fn default_tag() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..12].to_owned()
}

async fn post_command(args: &Args) -> Result<(), String> {
    let url: String = args.get("url", None)?;
    let count: usize = args.get("count", Some(5_000))?;
    let conns: usize = args.get("conns", Some(32))?;
    let tag: String = args.get("tag", Some(default_tag()))?;
    let report = post(&url, count, conns, &tag).await?;
    println!("{}", report.json());
    Ok(())
}

// ----------------------------------------------------------------- e2e

/// Posts `count` notifications and measures the time from the first POST
/// until the sink holds all of the accepted ones (polled every 50 ms).
async fn e2e(args: &Args) -> Result<(), String> {
    let url: String = args.get("url", None)?;
    let control: u16 = args.get("control", None)?;
    let count: usize = args.get("count", Some(5_000))?;
    let conns: usize = args.get("conns", Some(32))?;
    let timeout_s: f64 = args.get("timeout", Some(300.0))?;
    let timeout = Duration::from_secs_f64(timeout_s);

    let before = ask_sink(control, false).await?;
    let tag = default_tag();
    let started = Instant::now();
    let report = post(&url, count, conns, &tag).await?;
    let posted_at = started.elapsed();
    let expected = report.accepted;

    // Cheap counts until enough mails arrived, then a full count to see
    // whether they are all distinct.
    let mut complete_at = None;
    let mut last = before;
    while started.elapsed() < timeout {
        let c = ask_sink(control, true).await?;
        if c.received - before.received >= expected {
            let full = ask_sink(control, false).await?;
            last = full;
            if full.unique - before.unique >= expected {
                complete_at = Some(started.elapsed());
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Late duplicates: wait until the sink has been quiet for 1 s (at most
    // 10 s more).
    let settle_until = Instant::now() + Duration::from_secs(10);
    let mut quiet_since = Instant::now();
    let mut seen = ask_sink(control, true).await?.received;
    while Instant::now() < settle_until && quiet_since.elapsed() < Duration::from_secs(1) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = ask_sink(control, true).await?.received;
        if now != seen {
            seen = now;
            quiet_since = Instant::now();
        }
    }
    let after = ask_sink(control, false).await?;
    if complete_at.is_none() {
        last = after;
    }
    let new_unique = after.unique - before.unique;
    let new_received = after.received - before.received;
    let elapsed = complete_at.unwrap_or_else(|| started.elapsed());
    let delivered_in_time = last.unique - before.unique;
    println!(
        "{}",
        json!({
            "posted": count,
            "accepted": report.accepted,
            "non_2xx": report.non_2xx,
            "errors": report.errors,
            "post_elapsed_s": round3(posted_at.as_secs_f64()),
            "post_p99_ms": report.percentile_ms(99.0),
            "complete": complete_at.is_some(),
            "elapsed_s": round3(elapsed.as_secs_f64()),
            "deliveries_per_s": round1(delivered_in_time.min(expected) as f64 / elapsed.as_secs_f64()),
            "lost": expected.saturating_sub(new_unique),
            "duplicates": new_received - new_unique,
            "first_failure": report.first_failure,
        })
    );
    Ok(())
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}
