//! The backlog-drain scenario's two halves: `backlog` commits messages
//! while no service runs, through the service's own accept statement
//! (`store::accept_batch`) and its own wake-ups (`Queue::push`), exactly
//! what an instance leaves behind when it accepted them and stopped before
//! delivering; `watch` records the sink's count over time until it reaches
//! a number, for the drain's rate and its picture.

use std::time::{Duration, Instant};

use serde_json::json;

use email_service::domain::{EmailAddress, Fingerprint, MessageKind, NewMessage, NewNotification};
use email_service::queue::Queue;
use email_service::store::{self, AcceptOutcome};

use crate::{Args, ask_sink, round3};

/// Rows per accept batch: the size the service's group commit reaches
/// under load is far smaller; this only makes the setup quick.
const BATCH: usize = 1000;

/// `backlog --database-url U --redis-url R --prefix P [--count 100000]`:
/// commits `count` notifications and their wake-ups, 1,000 at a time.
pub async fn backlog(args: &Args) -> Result<(), String> {
    let url: String = args.get("database-url", None)?;
    let redis_url: String = args.get("redis-url", None)?;
    let prefix: String = args.get("prefix", None)?;
    let count: usize = args.get("count", Some(100_000))?;
    let config = store::pg_config(&url).map_err(|e| format!("--database-url: {e}"))?;
    let pool = store::pool(config, 2);
    let queue = Queue::new(&redis_url, &prefix)?;
    queue
        .ensure_group()
        .await
        .map_err(|e| format!("redis: {e}"))?;
    let run = uuid::Uuid::new_v4().simple().to_string();
    let started = Instant::now();
    let mut committed = 0;
    while committed < count {
        let n = BATCH.min(count - committed);
        let mut items = Vec::with_capacity(n);
        for i in committed..committed + n {
            let to = EmailAddress::parse(&format!("drain{i}@example.com"))
                .map_err(|e| format!("address: {e}"))?;
            let message = NewMessage::Notify(NewNotification {
                uuid: None,
                to,
                subject: format!("backlog {run} #{i}"),
                body: format!("Backlog notification {i} of bench run {run}.\n"),
                html: None,
                metadata: None,
                send_at: None,
            });
            let fingerprint = Fingerprint::of(&message);
            items.push((message, fingerprint));
        }
        let outcomes = store::accept_batch(&pool, &items)
            .await
            .map_err(|e| format!("accept batch: {e}"))?;
        let jobs: Vec<(MessageKind, i64)> = outcomes
            .iter()
            .filter_map(|o| match o {
                AcceptOutcome::Accepted { id, .. } => Some((MessageKind::Notify, *id)),
                _ => None,
            })
            .collect();
        if jobs.len() != n {
            return Err(format!("{} of {n} accepts were not new", n - jobs.len()));
        }
        queue
            .push(&jobs)
            .await
            .map_err(|e| format!("redis push: {e}"))?;
        committed += n;
    }
    println!(
        "{}",
        json!({"committed": committed, "elapsed_s": round3(started.elapsed().as_secs_f64())})
    );
    Ok(())
}

/// `watch --control C --until N [--timeout 600] [--interval-ms 100]`: the
/// sink's count (every end of DATA) every interval until it reaches `N`,
/// as `[seconds since start, count]` pairs.
pub async fn watch(args: &Args) -> Result<(), String> {
    let control: u16 = args.get("control", None)?;
    let until: usize = args.get("until", None)?;
    let timeout = Duration::from_secs_f64(args.get("timeout", Some(600.0))?);
    let interval = Duration::from_millis(args.get("interval-ms", Some(100))?);
    let started = Instant::now();
    let mut series = Vec::new();
    let reached = loop {
        let at = started.elapsed();
        let n = ask_sink(control, true).await?.received;
        series.push(json!([round3(at.as_secs_f64()), n]));
        if n >= until {
            break true;
        }
        if at >= timeout {
            break false;
        }
        tokio::time::sleep(interval).await;
    };
    println!(
        "{}",
        json!({"until": until, "reached": reached, "series": series})
    );
    Ok(())
}
