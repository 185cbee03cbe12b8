//! Claims and leases at the store, without a running service (no
//! dispatcher or reconciler of its own to race the test): a live holder
//! records its outcome even after its lease expired, a late outcome after a
//! reclaim changes nothing, a release is fenced by its token, and batches
//! past the size where a generic join would change strategy stay in order.

use std::time::Duration;

use email_service::config::RetryPolicy;
use email_service::domain::MessageKind;
use email_service::domain::delivery::{AttemptResult, MailJob, Outcome};
use email_service::store::webhooks::Outbox;
use email_service::store::{self, Pool, delivery, recovery};

use crate::common::{Target, scalar};

/// A migrated database of its own, with a pool, and no service on it.
async fn store_on(target: &Target) -> (Pool, tokio_postgres::Client) {
    let config = store::pg_config(&target.database_url()).expect("valid url");
    store::migrate::ensure_database(&config)
        .await
        .expect("create the test database");
    store::migrate::run(&config).await.expect("migrate");
    (store::pool(config, 4), target.db().await)
}

/// `n` queued notifications, due now; their ids in order.
async fn queued(db: &tokio_postgres::Client, n: i64) -> Vec<i64> {
    db.query(
        "INSERT INTO notifications (uuid, recipient, subject, body, request_hash, next_attempt_at)
         SELECT gen_random_uuid(), 'to@example.com', 's' || g, 'b', '\\x00', now()
         FROM generate_series(1, $1::bigint) g RETURNING id",
        &[&n],
    )
    .await
    .expect("insert")
    .iter()
    .map(|r| r.get(0))
    .collect()
}

fn policy() -> RetryPolicy {
    RetryPolicy {
        max_retries: 3,
        base_delay: Duration::from_secs(60),
        backoff_factor: 2.0,
    }
}

fn sent() -> AttemptResult {
    AttemptResult {
        outcome: Outcome::Sent,
        smtp_code: Some(250),
        smtp_reply: Some("250 ok".into()),
        error: None,
        duration_ms: 5,
    }
}

async fn claim(pool: &Pool, ids: &[i64]) -> Vec<MailJob> {
    let jobs: Vec<_> = ids.iter().map(|id| (MessageKind::Notify, *id)).collect();
    delivery::claim(pool, &jobs, uuid::Uuid::new_v4(), Duration::from_secs(60))
        .await
        .expect("claim")
}

/// `(status, retry_count, outcomes of its attempts in order)`.
async fn state_of(db: &tokio_postgres::Client, id: i64) -> (String, i32, Vec<Option<String>>) {
    let row = db
        .query_one(
            "SELECT status, retry_count FROM notifications WHERE id = $1",
            &[&id],
        )
        .await
        .expect("row");
    let attempts = db
        .query(
            "SELECT outcome FROM delivery_attempts WHERE kind = 'notify' AND message_id = $1
             ORDER BY number",
            &[&id],
        )
        .await
        .expect("attempts")
        .iter()
        .map(|r| r.get(0))
        .collect();
    (row.get(0), row.get(1), attempts)
}

#[tokio::test]
async fn a_live_holder_records_its_outcome_after_its_lease_expired() {
    let target = Target::fresh();
    let (pool, db) = store_on(&target).await;
    let ids = queued(&db, 1).await;
    let job = claim(&pool, &ids).await.remove(0);
    // The database was away for longer than the lease: it has run out.
    db.execute(
        "UPDATE notifications SET lease_until = now() - interval '1 second'",
        &[],
    )
    .await
    .unwrap();
    let taken = recovery::reclaim_expired(&pool, &policy(), &Outbox::default())
        .await
        .unwrap();
    assert!(
        taken.is_empty(),
        "a lease seen expired for the first time is left to its holder for the grace"
    );
    let settled = delivery::finish_batch(&pool, &[(job, sent())], &policy(), &Outbox::default())
        .await
        .unwrap();
    assert_eq!(settled[0].as_ref().map(|s| s.status.as_str()), Some("sent"));
    assert_eq!(
        state_of(&db, ids[0]).await,
        ("sent".into(), 0, vec![Some("sent".into())]),
        "sent once, recorded as sent, no crash attempt"
    );
    // The holder's write also cleared the mark: nothing is left to reclaim.
    assert!(
        recovery::reclaim_expired(&pool, &policy(), &Outbox::default())
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn an_expired_lease_is_reclaimed_once_the_grace_has_passed() {
    let target = Target::fresh();
    let (pool, db) = store_on(&target).await;
    let ids = queued(&db, 1).await;
    claim(&pool, &ids).await;
    db.execute(
        "UPDATE notifications SET lease_until = now() - interval '1 second'",
        &[],
    )
    .await
    .unwrap();
    assert!(
        recovery::reclaim_expired(&pool, &policy(), &Outbox::default())
            .await
            .unwrap()
            .is_empty()
    );
    let grace_ends: bool = scalar(
        &db,
        &format!(
            "SELECT reclaim_after BETWEEN now() + interval '{} seconds' - interval '2 seconds'
                 AND now() + interval '{} seconds' FROM notifications",
            recovery::RECLAIM_GRACE.as_secs(),
            recovery::RECLAIM_GRACE.as_secs()
        ),
    )
    .await;
    assert!(
        grace_ends,
        "the grace is RECLAIM_GRACE from the first sighting"
    );
    db.execute(
        "UPDATE notifications SET reclaim_after = now() - interval '1 second'",
        &[],
    )
    .await
    .unwrap();
    let taken = recovery::reclaim_expired(&pool, &policy(), &Outbox::default())
        .await
        .unwrap();
    assert_eq!(taken.len(), 1);
    assert_eq!(taken[0].attempt, 1);
    assert_eq!(taken[0].settled.status, "queued");
    assert_eq!(
        state_of(&db, ids[0]).await,
        ("queued".into(), 1, vec![Some("crash".into())])
    );
}

#[tokio::test]
async fn a_late_outcome_after_a_reclaim_changes_nothing() {
    let target = Target::fresh();
    let (pool, db) = store_on(&target).await;
    let ids = queued(&db, 1).await;
    let job = claim(&pool, &ids).await.remove(0);
    db.execute(
        "UPDATE notifications SET lease_until = now() - interval '20 seconds',
                                  reclaim_after = now() - interval '1 second'",
        &[],
    )
    .await
    .unwrap();
    assert_eq!(
        recovery::reclaim_expired(&pool, &policy(), &Outbox::default())
            .await
            .unwrap()
            .len(),
        1
    );
    // Its retry is due, and another sender claims it.
    db.execute("UPDATE notifications SET next_attempt_at = now()", &[])
        .await
        .unwrap();
    let retry = claim(&pool, &ids).await;
    assert_eq!(retry.len(), 1);
    assert_eq!(retry[0].attempt, 2);
    let before = state_of(&db, ids[0]).await;
    assert_eq!(
        before,
        ("sending".into(), 1, vec![Some("crash".into()), None])
    );
    // The first holder's outcome arrives late: it must not touch the
    // message now held by the second, nor its attempts.
    let settled = delivery::finish_batch(&pool, &[(job, sent())], &policy(), &Outbox::default())
        .await
        .unwrap();
    assert_eq!(settled, vec![None], "the lease is gone: nothing is written");
    assert_eq!(state_of(&db, ids[0]).await, before);
    let sent_at: Option<chrono::DateTime<chrono::Utc>> = scalar(
        &db,
        &format!("SELECT sent_at FROM notifications WHERE id = {}", ids[0]),
    )
    .await;
    assert!(sent_at.is_none(), "the late outcome set no sent_at");
    // The second holder's own outcome is written.
    let settled = delivery::finish_batch(
        &pool,
        &[(retry[0].clone(), sent())],
        &policy(),
        &Outbox::default(),
    )
    .await
    .unwrap();
    assert_eq!(settled[0].as_ref().map(|s| s.status.as_str()), Some("sent"));
}

#[tokio::test]
async fn a_release_gives_back_only_its_own_claim_and_leaves_no_attempt() {
    let target = Target::fresh();
    let (pool, db) = store_on(&target).await;
    let ids = queued(&db, 1).await;
    let job = claim(&pool, &ids).await.remove(0);
    let mut stranger = job.claim_ref();
    stranger.lease_token = uuid::Uuid::new_v4();
    assert_eq!(
        recovery::release(&pool, &[stranger]).await.unwrap(),
        vec![false]
    );
    assert_eq!(
        state_of(&db, ids[0]).await,
        ("sending".into(), 0, vec![None])
    );
    assert_eq!(
        recovery::release(&pool, &[job.claim_ref()]).await.unwrap(),
        vec![true]
    );
    assert_eq!(
        state_of(&db, ids[0]).await,
        ("queued".into(), 0, vec![]),
        "no attempt happened, none is counted"
    );
    // Due at once, and claimed again as attempt 1.
    let again = claim(&pool, &ids).await;
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].attempt, 1);
    // A released claim cannot be released again, nor finished.
    assert_eq!(
        recovery::release(&pool, &[job.claim_ref()]).await.unwrap(),
        vec![false]
    );
    let late = delivery::finish_batch(&pool, &[(job, sent())], &policy(), &Outbox::default())
        .await
        .unwrap();
    assert_eq!(late, vec![None]);
}

/// 100 statements in one pipelined transaction: past the 30 where
/// `join_all` switches strategy. Every claim and every outcome lands, each
/// on its own message.
#[tokio::test]
async fn a_batch_of_a_hundred_claims_and_outcomes_is_written_whole() {
    let target = Target::fresh();
    let (pool, db) = store_on(&target).await;
    let ids = queued(&db, 100).await;
    let jobs = claim(&pool, &ids).await;
    assert_eq!(jobs.len(), 100);
    let mut claimed: Vec<i64> = jobs.iter().map(|j| j.id).collect();
    claimed.sort();
    assert_eq!(claimed, ids);
    let done: Vec<_> = jobs.into_iter().map(|j| (j, sent())).collect();
    let settled = delivery::finish_batch(&pool, &done, &policy(), &Outbox::default())
        .await
        .unwrap();
    assert!(
        settled
            .iter()
            .all(|s| s.as_ref().is_some_and(|s| s.status == "sent"))
    );
    for (s, (job, _)) in settled.iter().zip(&done) {
        assert_eq!(
            s.as_ref().unwrap().id,
            job.id,
            "outcomes come back in order"
        );
    }
    let sent: i64 = scalar(
        &db,
        "SELECT count(*) FROM notifications WHERE status = 'sent' AND sent_at IS NOT NULL",
    )
    .await;
    assert_eq!(sent, 100);
}

/// Webhooks on: an outbox sending every type to two receivers.
fn outbox_on() -> Outbox {
    let vars = [
        ("WEBHOOK_URLS", "http://a.invalid/h,http://b.invalid/h"),
        (
            "WEBHOOK_SECRET",
            "whsec_bGVhc2VzLXRlc3Qtc2VjcmV0LTEyMzQ1Njc4OTA=",
        ),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    Outbox::new(&email_service::config::Config::from_map(&vars).unwrap())
}

/// The events of an outcome batch go in with it, set-based, for the
/// outcomes it wrote only: one whose lease was lost meanwhile has none.
#[tokio::test]
async fn an_outcome_batch_records_events_for_the_outcomes_it_wrote_only() {
    let target = Target::fresh();
    let (pool, db) = store_on(&target).await;
    let ids = queued(&db, 3).await;
    let jobs = claim(&pool, &ids).await;
    // The third one's lease was lost: a reclaim made it a retry meanwhile.
    db.execute(
        "UPDATE notifications SET status = 'queued', lease_owner = NULL, retry_count = 1
         WHERE id = $1",
        &[&ids[2]],
    )
    .await
    .unwrap();
    let transient = AttemptResult {
        outcome: Outcome::Transient,
        smtp_code: Some(451),
        smtp_reply: Some("451 later".into()),
        error: Some("451 later".into()),
        duration_ms: 5,
    };
    let done = vec![
        (jobs[0].clone(), sent()),
        (jobs[1].clone(), transient.clone()),
        (jobs[2].clone(), sent()),
    ];
    let settled = delivery::finish_batch(&pool, &done, &policy(), &outbox_on())
        .await
        .unwrap();
    assert!(settled[0].is_some() && settled[1].is_some() && settled[2].is_none());
    let rows: Vec<(i64, String, i64)> = db
        .query(
            "SELECT message_id, type, count(*) FROM webhook_events
             GROUP BY message_id, type ORDER BY message_id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(
        rows,
        vec![
            (ids[0], "message.sent".to_owned(), 2),
            (ids[1], "message.retrying".to_owned(), 2)
        ],
        "one row per receiver, none for the lost lease"
    );
    let code: i64 = scalar(
        &db,
        &format!(
            "SELECT (payload::jsonb #>> '{{data,smtp_code}}')::bigint FROM webhook_events
             WHERE message_id = {} LIMIT 1",
            ids[1]
        ),
    )
    .await;
    assert_eq!(code, 451);
}
