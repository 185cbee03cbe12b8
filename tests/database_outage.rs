//! PostgreSQL going away, or hanging, while the service runs: requests that
//! need it answer `503` quickly (never hang), `/healthz` says so, and both
//! recover on their own when the database is back, with nothing accepted lost.
//!
//! Each test runs its own PostgreSQL cluster (`initdb` from `PG_BIN`, as the
//! `postgres` user when running as root) on a free port, removed on drop.

#[path = "common/mod.rs"]
mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Mutex;
use tokio::task::JoinHandle;

use common::{TestApp, TestResponse, free_port, poll_until, spawn_app_with};

/// The tests of this file measure answer times: run them one at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::const_new(());

/// The `503` of a down or hung database must come within this.
const UNAVAILABLE_WITHIN: Duration = Duration::from_millis(3500);
/// `/healthz` answers within 2 s even when a dependency hangs (SPEC).
const HEALTH_WITHIN: Duration = Duration::from_secs(2);
const RECOVERY_DEADLINE: Duration = Duration::from_secs(30);
/// After recovering, how long every request must keep succeeding.
const STAYS_HEALTHY_FOR: Duration = Duration::from_secs(6);

/// A private PostgreSQL cluster, stopped and deleted on drop.
struct PgCluster {
    bin: PathBuf,
    root: PathBuf,
    data: PathBuf,
    port: u16,
    as_postgres_user: bool,
}

impl PgCluster {
    fn start_new() -> Self {
        let cluster = Self::create();
        cluster.start();
        cluster
    }

    /// A cluster initialized on disk, not running yet.
    fn create() -> Self {
        let bin = PathBuf::from(std::env::var("PG_BIN").unwrap_or_else(|_| {
            panic!(
                "PG_BIN is not set: the outage tests run a private PostgreSQL and need the \
                 folder of initdb and pg_ctl (e.g. /usr/lib/postgresql/15/bin); scripts/test sets it"
            )
        }));
        let uid = Command::new("id").arg("-u").output().expect("run id -u");
        let as_postgres_user = String::from_utf8_lossy(&uid.stdout).trim() == "0";
        let root = std::env::temp_dir().join(format!(
            "email-service-pg-{}",
            uuid::Uuid::new_v4().simple()
        ));
        let data = root.join("data");
        std::fs::create_dir_all(&root).expect("create the cluster folder");
        let port = free_port();
        let cluster = Self {
            bin,
            root,
            data,
            port,
            as_postgres_user,
        };
        if as_postgres_user {
            let out = Command::new("chown")
                .args(["-R", "postgres"])
                .arg(&cluster.root)
                .output()
                .expect("chown");
            assert!(out.status.success(), "chown: {out:?}");
        }
        let data = cluster.data.to_string_lossy().into_owned();
        let out = cluster.pg(
            "initdb",
            &[
                "-D",
                &data,
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ],
        );
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        cluster
    }

    /// Runs a PostgreSQL tool, as the `postgres` user when we are root.
    fn pg(&self, tool: &str, args: &[&str]) -> Output {
        let path = self.bin.join(tool);
        let mut cmd = if self.as_postgres_user {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&path);
            c
        } else {
            Command::new(&path)
        };
        cmd.args(args)
            .current_dir(&self.root)
            .output()
            .unwrap_or_else(|e| panic!("running {}: {e}", path.display()))
    }

    fn start(&self) {
        let data = self.data.to_string_lossy().into_owned();
        let options = format!(
            "-p {} -k {data} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=60",
            self.port
        );
        let log = self
            .root
            .join("postgres.log")
            .to_string_lossy()
            .into_owned();
        let out = self.pg(
            "pg_ctl",
            &[
                "-D", &data, "-o", &options, "-l", &log, "-w", "-t", "60", "start",
            ],
        );
        assert!(
            out.status.success(),
            "pg_ctl start failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(self.root.join("postgres.log")).unwrap_or_default()
        );
    }

    fn stop_immediate(&self) -> Output {
        let data = self.data.to_string_lossy().into_owned();
        self.pg("pg_ctl", &["-D", &data, "-m", "immediate", "-w", "stop"])
    }

    fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// The postmaster and every process it started.
    fn pids(&self) -> Vec<String> {
        let Ok(pidfile) = std::fs::read_to_string(self.data.join("postmaster.pid")) else {
            return Vec::new();
        };
        let Some(postmaster) = pidfile.lines().next().map(str::trim).map(str::to_owned) else {
            return Vec::new();
        };
        let children = Command::new("pgrep")
            .args(["-P", &postmaster])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        let mut pids = vec![postmaster];
        pids.extend(children.split_whitespace().map(str::to_owned));
        pids
    }

    fn signal_all(&self, signal: &str) {
        let pids = self.pids();
        if pids.is_empty() {
            return;
        }
        let _ = Command::new("kill")
            .arg(format!("-{signal}"))
            .args(&pids)
            .output();
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        self.signal_all("CONT");
        let _ = self.stop_immediate();
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

fn notify(n: u32) -> Value {
    json!({"to": "bob@example.com", "subject": format!("Outage {n}"), "body": "b"})
}

/// Panics unless `resp` is a `503` with a JSON `detail` that came in time.
fn assert_unavailable(resp: &TestResponse, took: Duration, within: Duration, context: &str) {
    assert_eq!(
        resp.status,
        503,
        "{context}: expected 503, got {} {}",
        resp.status,
        resp.text()
    );
    assert!(
        resp.json()["detail"]
            .as_str()
            .is_some_and(|d| !d.is_empty()),
        "{context}: a JSON detail: {}",
        resp.text()
    );
    assert!(
        took < within,
        "{context}: answered after {took:?}, must be under {within:?}"
    );
}

async fn timed<F: Future<Output = TestResponse>>(f: F) -> (TestResponse, Duration) {
    let started = Instant::now();
    let resp = f.await;
    (resp, started.elapsed())
}

/// Asserts that every request needing the database fails fast and that
/// `/healthz` reports it.
async fn assert_database_unavailable(app: &TestApp, what: &str) {
    for n in 0..3 {
        let (resp, took) = timed(app.post_json("/api/notify/", &notify(100 + n))).await;
        assert_unavailable(
            &resp,
            took,
            UNAVAILABLE_WITHIN,
            &format!("{what}: POST #{n}"),
        );
    }
    let (resp, took) = timed(app.get("/api/notify/")).await;
    assert_unavailable(
        &resp,
        took,
        UNAVAILABLE_WITHIN,
        &format!("{what}: GET list"),
    );
    let (resp, took) = timed(app.get("/api/contact/1/")).await;
    assert_unavailable(
        &resp,
        took,
        UNAVAILABLE_WITHIN,
        &format!("{what}: GET detail"),
    );

    let (health, took) = timed(app.get("/healthz")).await;
    assert_eq!(health.status, 503, "{what}: /healthz {}", health.text());
    assert!(
        took < HEALTH_WITHIN,
        "{what}: /healthz took {took:?}, must be under {HEALTH_WITHIN:?}"
    );
    let body = health.json();
    assert_eq!(body["status"], "unhealthy", "{body}");
    assert!(
        body["checks"]["database"]
            .as_str()
            .is_some_and(|c| c.starts_with("error")),
        "{what}: the database check reads as an error: {body}"
    );
    let live = app.get("/livez").await;
    assert_eq!(live.status, 200, "{what}: /livez does not depend on it");
}

/// Waits until a POST is accepted and `/healthz` is healthy again.
async fn assert_recovers(app: &TestApp, what: &str) {
    let accepted = format!("{what}: a POST to be accepted after the database came back");
    poll_until(RECOVERY_DEADLINE, &accepted, || async {
        app.post_json("/api/notify/", &notify(999)).await.status == 202
    })
    .await;
    let healthy = format!("{what}: /healthz to return to 200");
    poll_until(RECOVERY_DEADLINE, &healthy, || async {
        app.get("/healthz").await.status == 200
    })
    .await;

    // Recovered for good, not just once in a while: every request of the
    // next seconds (longer than any request still in flight at recovery
    // could take) succeeds.
    let mut failures = Vec::new();
    let started = Instant::now();
    let mut n = 0;
    while started.elapsed() < STAYS_HEALTHY_FOR {
        n += 1;
        let (resp, took) = timed(app.post_json("/api/notify/", &notify(1000 + n))).await;
        if resp.status != 202 {
            failures.push(format!(
                "POST #{n} at +{:?}: {} after {took:?}: {}",
                started.elapsed(),
                resp.status,
                resp.text()
            ));
        }
        let health = app.get("/healthz").await;
        if health.status != 200 {
            failures.push(format!("/healthz #{n}: {}", health.text()));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        failures.is_empty(),
        "{what}: after recovering, {} of {} requests in {STAYS_HEALTHY_FOR:?} still failed:\n{}",
        failures.len(),
        2 * n,
        failures.join("\n")
    );
}

/// Starts the service on `url` and has it accept two messages; returns it
/// and their uuids.
async fn app_with_two_accepted(url: &str) -> (TestApp, Vec<String>) {
    let app = spawn_app_with(&[("DATABASE_URL", url)]).await;
    let accepted = accept_two(&app).await;
    (app, accepted)
}

/// Waits for `app` to recover, checks that what it accepted before is
/// still there, and stops it.
async fn assert_recovered_with(app: TestApp, accepted: &[String], what: &str) {
    assert_recovers(&app, what).await;
    assert_still_there(&app, accepted).await;
    app.shutdown().await;
}

/// Posts two messages and returns their uuids.
async fn accept_two(app: &TestApp) -> Vec<String> {
    let mut uuids = Vec::new();
    for n in 0..2 {
        let resp = app.post_json("/api/notify/", &notify(n)).await;
        assert_eq!(resp.status, 202, "{}", resp.text());
        uuids.push(resp.json()["uuid"].as_str().unwrap().to_owned());
    }
    uuids
}

/// How long a message accepted before the outage may take to end `sent`
/// after recovery: a send whose outcome could not be recorded is retried
/// once its lease expires and the retry is due.
const DELIVERED_WITHIN: Duration = Duration::from_secs(60);

/// Every message accepted before the outage is still there and, the
/// database back, ends `sent` (the console backend cannot fail): none is
/// left `queued` or `sending`, none `failed`.
async fn assert_still_there(app: &TestApp, uuids: &[String]) {
    for uuid in uuids {
        let resp = app.get(&format!("/api/notify/{uuid}/")).await;
        assert_eq!(
            resp.status,
            200,
            "accepted message {uuid} is still there: {}",
            resp.text()
        );
        let v = app.wait_final("notify", uuid, DELIVERED_WITHIN).await;
        assert_eq!(v["status"], "sent", "message {uuid} after the outage: {v}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_postgresql_stops_requests_answer_503_fast_and_recover_after_it_restarts() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let cluster = PgCluster::start_new();
    let (app, accepted) = app_with_two_accepted(&cluster.url("email_outage")).await;

    let out = cluster.stop_immediate();
    assert!(out.status.success(), "pg_ctl stop: {out:?}");
    assert_database_unavailable(&app, "PostgreSQL stopped").await;

    cluster.start();
    assert_recovered_with(app, &accepted, "PostgreSQL restarted").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_postgresql_hangs_requests_answer_503_fast_and_recover_when_it_resumes() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let cluster = PgCluster::start_new();
    let (app, accepted) = app_with_two_accepted(&cluster.url("email_hang")).await;

    let pids = cluster.pids();
    assert!(pids.len() > 1, "postmaster and its children: {pids:?}");
    cluster.signal_all("STOP");
    assert_database_unavailable(&app, "PostgreSQL hung (SIGSTOP)").await;

    cluster.signal_all("CONT");
    assert_recovered_with(app, &accepted, "PostgreSQL resumed").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_starts_while_postgresql_is_down_and_becomes_ready_when_it_comes_up() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let cluster = PgCluster::create();
    let url = cluster.url("email_late");
    let mut app = TestApp::builder()
        .env("DATABASE_URL", &url)
        .start_unready()
        .await;

    // Up and answering, without its database.
    poll_until(
        Duration::from_secs(10),
        "/livez to answer while PostgreSQL is down",
        || async {
            let resp = app
                .try_send(hyper::Method::GET, "/livez", &[], Default::default())
                .await;
            resp.is_ok_and(|r| r.status == 200)
        },
    )
    .await;
    assert_database_unavailable(&app, "PostgreSQL not started yet").await;

    cluster.start();
    app.wait_until_ready().await;
    let resp = app.post_json("/api/notify/", &notify(1)).await;
    assert_eq!(resp.status, 202, "{}", resp.text());
    assert_recovers(&app, "PostgreSQL started late").await;
    app.shutdown().await;
}

/// A TCP proxy in front of PostgreSQL that can black-hole traffic the way a
/// dead network path or a failed-over host does: bytes are swallowed, nothing
/// is answered, and no connection is closed. Connections caught by a black
/// hole stay dead for good; after [`BlackholeProxy::heal`] new connections
/// work again.
struct BlackholeProxy {
    addr: SocketAddr,
    state: Arc<ProxyState>,
    task: JoinHandle<()>,
}

#[derive(Default)]
struct ProxyState {
    blackhole: AtomicBool,
    next_id: AtomicU64,
    /// Connections with a smaller id are dead for good.
    dead_below: AtomicU64,
}

impl ProxyState {
    fn is_dead(&self, id: u64) -> bool {
        self.blackhole.load(Ordering::SeqCst) || id < self.dead_below.load(Ordering::SeqCst)
    }
}

impl BlackholeProxy {
    async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let state = Arc::new(ProxyState::default());
        let shared = state.clone();
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                let id = shared.next_id.fetch_add(1, Ordering::SeqCst);
                let state = shared.clone();
                connections.spawn(async move {
                    if state.is_dead(id) {
                        // Accept, then never answer.
                        let _held = client;
                        return std::future::pending::<()>().await;
                    }
                    let Ok(server) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    let (client_r, client_w) = client.into_split();
                    let (server_r, server_w) = server.into_split();
                    tokio::join!(
                        pump(client_r, server_w, id, state.clone()),
                        pump(server_r, client_w, id, state.clone()),
                    );
                });
            }
        });
        Self { addr, state, task }
    }

    /// Every connection, open or new, goes silent.
    fn blackhole(&self) {
        self.state.blackhole.store(true, Ordering::SeqCst);
        let next = self.state.next_id.load(Ordering::SeqCst);
        self.state.dead_below.store(next, Ordering::SeqCst);
    }

    /// New connections work again; the silent ones stay silent.
    fn heal(&self) {
        let next = self.state.next_id.load(Ordering::SeqCst);
        self.state.dead_below.store(next, Ordering::SeqCst);
        self.state.blackhole.store(false, Ordering::SeqCst);
    }
}

impl Drop for BlackholeProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Copies `from` to `to` until EOF; once the connection is dead, swallows
/// everything and keeps both sockets open.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    id: u64,
    state: Arc<ProxyState>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if state.is_dead(id) {
            let _held = (from, to);
            std::future::pending::<()>().await;
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_network_black_hole_the_service_recovers_on_new_connections() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let cluster = PgCluster::start_new();
    let upstream: SocketAddr = format!("127.0.0.1:{}", cluster.port).parse().unwrap();
    let proxy = BlackholeProxy::start(upstream).await;
    let url = format!(
        "postgres://postgres@127.0.0.1:{}/email_blackhole",
        proxy.addr.port()
    );
    let (app, accepted) = app_with_two_accepted(&url).await;

    proxy.blackhole();
    assert_database_unavailable(&app, "network black hole").await;

    // The path is back for new connections; the old ones are dead for good,
    // as after a failover or a dropped NAT entry.
    proxy.heal();
    assert_recovered_with(app, &accepted, "network healed").await;
}

/// A commit sent to a PostgreSQL that then hangs is answered "may have been
/// stored", not "nothing was stored", with its request id; a plain accept
/// cut that way may really be stored (the server runs what it had received
/// once it resumes), and a keyed one retried with the same key ends as one
/// message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_503_for_a_commit_in_flight_says_it_may_be_stored_and_a_keyed_retry_is_safe() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let cluster = PgCluster::start_new();
    let (app, accepted) = app_with_two_accepted(&cluster.url("email_in_doubt")).await;
    cluster.signal_all("STOP");
    let plain = json!({"to": "bob@example.com", "subject": "in doubt, plain", "body": "b"});
    let keyed = json!({"to": "bob@example.com", "subject": "in doubt, keyed", "body": "b"});
    let key = [("Idempotency-Key", "in-doubt-key")];
    for (what, resp) in [
        ("plain", app.post_json("/api/notify/", &plain).await),
        (
            "keyed",
            app.post_json_with("/api/notify/", &key, &keyed).await,
        ),
    ] {
        assert_eq!(resp.status, 503, "{what}: {}", resp.text());
        let body = resp.json();
        let detail = body["detail"].as_str().unwrap_or_default();
        let in_doubt =
            detail.contains("may have been stored") && detail.contains("Idempotency-Key");
        // The plain accept goes out on the pooled connection the two
        // accepts before left idle, so its INSERT is on the wire when the
        // deadline cuts it. The keyed one needs a connection of its own,
        // and connecting to the stopped server fails before anything is
        // sent: that one truly stored nothing, and says so.
        if what == "plain" {
            assert!(
                in_doubt,
                "{what}: a commit in flight is not 'nothing stored': {body}"
            );
        } else {
            assert!(
                in_doubt || detail.contains("Nothing was stored"),
                "{what}: {body}"
            );
        }
        assert_eq!(
            body["request_id"].as_str(),
            resp.header("x-request-id"),
            "{what}: {body}"
        );
    }
    cluster.signal_all("CONT");
    assert_recovers(&app, "PostgreSQL resumed").await;
    let retry = poll_until(
        Duration::from_secs(15),
        "the keyed retry to be answered",
        || async {
            let r = app.post_json_with("/api/notify/", &key, &keyed).await;
            if r.status == 202 {
                Ok(r)
            } else {
                Err(r.text())
            }
        },
    )
    .await;
    assert_eq!(retry.status, 202);
    let keyed_rows: i64 = app
        .scalar("SELECT count(*) FROM notifications WHERE subject = 'in doubt, keyed'")
        .await;
    assert_eq!(keyed_rows, 1, "the keyed retry made no second message");
    let plain_rows: i64 = app
        .scalar("SELECT count(*) FROM notifications WHERE subject = 'in doubt, plain'")
        .await;
    assert!(plain_rows <= 1);
    eprintln!(
        "in doubt: the plain accept cut by the hang was stored: {}",
        plain_rows == 1
    );
    assert_recovered_with(app, &accepted, "PostgreSQL resumed").await;
}
