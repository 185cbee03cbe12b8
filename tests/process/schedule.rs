//! A scheduled send across `kill -9`: the message accepted with a `send_at`
//! ahead is sent once, at its time and not before, by the process started
//! after the kill (its wake-up waited in Redis' schedule).

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use super::common::process::http;
use super::common::{Mode, SmtpSink, Target, poll_until, redis_url};
use super::service;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_scheduled_send_survives_kill_9_and_is_sent_once_not_before_its_time() {
    let sink = SmtpSink::start(Mode::Accept).await;
    let target = Target::fresh();
    let mut p = service(&sink, &target, &[]);
    let at: DateTime<Utc> = Utc::now() + chrono::TimeDelta::seconds(4);
    let mut uuids = Vec::new();
    for i in 0..3 {
        let body = json!({"to": "a@example.org", "subject": format!("later {i}"), "body": "b",
                          "send_at": at.to_rfc3339()})
        .to_string();
        let (status, resp) = http(p.addr, "POST", "/api/notify/", Some(&body));
        assert_eq!(status, 202, "{resp}");
        let v: Value = serde_json::from_str(&resp).unwrap();
        uuids.push(v["uuid"].as_str().unwrap().to_owned());
    }
    // The 202 comes before the schedule reaches Redis (a lost schedule is
    // the reconciler's to find, later): kill once all of them are there.
    let client = redis::Client::open(redis_url()).unwrap();
    let conn = client.get_multiplexed_async_connection().await.unwrap();
    let retries_key = format!("{}:retries", target.prefix);
    poll_until(Duration::from_secs(5), "the schedules in Redis", || async {
        let n: usize = redis::cmd("ZCARD")
            .arg(&retries_key)
            .query_async(&mut conn.clone())
            .await
            .unwrap();
        n == uuids.len()
    })
    .await;
    p.kill9();
    assert!(
        Utc::now() < at,
        "the kill came after send_at: the test proves nothing"
    );

    let _p2 = service(&sink, &target, &[]);
    // On a loaded machine the restart itself may end after send_at; what
    // is bounded is the wait from when the new process could send.
    let due = at.max(Utc::now());
    poll_until(Duration::from_secs(30), "the scheduled sends", || async {
        sink.received().len() >= uuids.len()
    })
    .await;
    // Room for a duplicate to arrive, if there were one.
    poll_until(
        Duration::from_secs(15),
        "three seconds past send_at",
        || async { Utc::now() > at + chrono::TimeDelta::seconds(3) },
    )
    .await;
    let received = sink.received();
    assert_eq!(received.len(), uuids.len(), "sent once each: {received:?}");
    for uuid in &uuids {
        let mail = received
            .iter()
            .find(|m| {
                m.message_id
                    .as_deref()
                    .is_some_and(|id| id.contains(uuid.as_str()))
            })
            .unwrap_or_else(|| panic!("{uuid} was not sent"));
        assert!(mail.at >= at, "{uuid} was sent at {} before {at}", mail.at);
        // Within the contract's bound: its wake-up waited in Redis'
        // schedule, or, if the kill came before the wake-up reached Redis,
        // the reconciler finds it overdue; either way well under 10 s.
        let late = mail.at - due;
        assert!(
            late < chrono::TimeDelta::seconds(10),
            "{uuid} was sent {late} after it was due ({due}; send_at {at})"
        );
    }
}
