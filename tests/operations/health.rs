use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::common::{
    Mode, SmtpSink, TestApp, free_port, poll_until, scalar, spawn_app_with, spawn_app_with_sink,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_reports_every_actor_and_metrics_count_the_work() {
    let app = spawn_app_with(&[("MAILER_WORKERS", "3")]).await;
    let mail = json!({"to": "a@example.org", "subject": "s", "body": "b"});
    app.notify_and_wait(&mail, Duration::from_secs(20)).await;

    let r = app.healthz().await;
    assert_eq!(r.status, 200);
    let h = r.json();
    assert_eq!(h["status"], "healthy");
    assert_eq!(
        h["checks"],
        json!({"database": "ok", "redis": "ok", "mailers": "ok"})
    );
    let mailers = h["actors"]["mailers"].as_array().unwrap();
    assert_eq!(mailers.len(), 3);
    assert!(
        mailers
            .iter()
            .all(|m| m["state"] == "idle" && m["restarts"] == 0)
    );
    assert_eq!(
        mailers
            .iter()
            .map(|m| m["sent"].as_u64().unwrap())
            .sum::<u64>(),
        1
    );
    assert!(
        h["actors"]["persistence"]["pool_connections"]
            .as_u64()
            .unwrap()
            >= 1
    );
    assert!(h["actors"]["dispatcher"]["in_flight"].is_number());
    assert!(h["actors"]["supervisor"]["children"]["dispatcher"]["alive"] == true);

    let m = String::from_utf8(app.get("/metrics").await.body.to_vec()).unwrap();
    assert!(
        m.contains("email_service_messages_accepted_total{kind=\"notify\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("email_service_delivery_attempts_total{kind=\"notify\",outcome=\"sent\"} 1"),
        "{m}"
    );
    assert!(m.contains("email_service_http_requests_total{route=\"/api/notify/\",method=\"POST\",status=\"202\"} 1"), "{m}");
    assert!(m.contains("email_service_http_request_duration_seconds_bucket"));
    assert!(m.contains("email_service_db_pool_connections"));
    assert!(m.contains("email_service_ready_queue_depth"));
    assert!(m.ends_with("# EOF\n"));
    assert_eq!(app.get("/livez").await.status, 200);
    app.shutdown().await;
}

/// Posts five notifications (subjects `{tag}0` to `{tag}4`); returns their
/// uuids.
async fn post_five(app: &TestApp, tag: &str) -> Vec<String> {
    let mut uuids = Vec::new();
    for i in 0..5 {
        let subject = format!("{tag}{i}");
        uuids.push(
            app.notify(&json!({"to": "a@example.org", "subject": subject, "body": "b"}))
                .await,
        );
    }
    uuids
}

/// Each message is sent within 15 s: mail flows at the normal pace.
async fn assert_all_sent(app: &TestApp, uuids: &[String]) {
    for uuid in uuids {
        let v = app
            .wait_final("notify", uuid, Duration::from_secs(15))
            .await;
        assert_eq!(v["status"], "sent", "{v}");
    }
}

/// A private Redis that the test can kill and restart on the same port.
struct PrivateRedis {
    port: u16,
    child: Option<Child>,
}

impl PrivateRedis {
    fn start(port: u16) -> Self {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server on PATH");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "redis did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Self {
            port,
            child: Some(child),
        }
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_dying_turns_health_to_503_in_time_and_a_restart_recovers_everything() {
    let port = free_port();
    let mut redis = PrivateRedis::start(port);
    let sink = SmtpSink::start(Mode::Accept).await;
    let redis_url = format!("redis://127.0.0.1:{port}/");
    let app = spawn_app_with_sink(&sink, &[("REDIS_URL", &redis_url)]).await;
    assert_eq!(app.healthz().await.status, 200);

    redis.kill();
    let killed = Instant::now();
    poll_until(
        Duration::from_secs(5),
        "healthz 503 after Redis died",
        || async { app.healthz().await.status == 503 },
    )
    .await;
    eprintln!("503 after {:?}", killed.elapsed());
    let h = app.healthz().await.json();
    assert!(
        h["checks"]["redis"].as_str().unwrap().starts_with("error"),
        "{h}"
    );
    assert_eq!(h["checks"]["database"], "ok");

    // Accepting still works: PostgreSQL is the truth.
    let mut uuids = post_five(&app, "w").await;
    // An outage of a few seconds: long enough for reads to fail and time
    // out on the client side, which once wedged the read loop.
    tokio::time::sleep(Duration::from_secs(4)).await;
    // Redis comes back empty; nothing needs a restart of the service.
    let _redis = PrivateRedis::start(redis.port);
    poll_until(Duration::from_secs(10), "healthz 200 again", || async {
        app.healthz().await.status == 200
    })
    .await;
    // Mail accepted after the outage flows at the normal pace again (a
    // broken read loop once left it queued until a restart).
    uuids.extend(post_five(&app, "a").await);
    assert_all_sent(&app, &uuids).await;
    assert_eq!(sink.by_message_id().len(), 10);
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_answers_within_two_seconds_while_redis_hangs() {
    let port = free_port();
    let redis = PrivateRedis::start(port);
    let redis_url = format!("redis://127.0.0.1:{port}/");
    let app = spawn_app_with(&[("REDIS_URL", &redis_url)]).await;
    assert_eq!(app.healthz().await.status, 200);
    let pid = redis.child.as_ref().unwrap().id().to_string();
    Command::new("kill").args(["-STOP", &pid]).status().unwrap();
    let result = async {
        poll_until(
            Duration::from_secs(5),
            "healthz 503 while Redis hangs",
            || async {
                let started = Instant::now();
                let r = app.healthz().await;
                assert!(
                    started.elapsed() < Duration::from_secs(2),
                    "healthz took {:?}",
                    started.elapsed()
                );
                r.status == 503
            },
        )
        .await;
    };
    result.await;
    // Long enough for the blocking read to time out on the client side.
    tokio::time::sleep(Duration::from_secs(4)).await;
    Command::new("kill").args(["-CONT", &pid]).status().unwrap();
    poll_until(
        Duration::from_secs(10),
        "healthz 200 after SIGCONT",
        || async { app.healthz().await.status == 200 },
    )
    .await;
    // Reads that timed out while Redis hung must not wedge the read loop:
    // new mail is delivered at the normal pace.
    let uuids = post_five(&app, "h").await;
    assert_all_sent(&app, &uuids).await;
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_waits_for_a_send_in_flight_and_records_it() {
    let sink = SmtpSink::start(Mode::Slow(Duration::from_millis(1500))).await;
    let app = spawn_app_with_sink(&sink, &[("SHUTDOWN_TIMEOUT", "10")]).await;
    let uuid = app
        .notify(&json!({"to": "a@example.org", "subject": "s", "body": "b"}))
        .await;
    poll_until(Duration::from_secs(10), "the send to start", || async {
        app.detail("notify", &uuid).await["status"] == "sending"
    })
    .await;
    let target = app.target.clone();
    app.shutdown().await;
    // The drain let the send finish and recorded it before stopping.
    assert_eq!(sink.received().len(), 1);
    let status: String = scalar(&target.db().await, "SELECT status FROM notifications").await;
    assert_eq!(status, "sent");
}
