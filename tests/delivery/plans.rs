//! The delivery bookkeeping connections (`store::bookkeeping_config`): they
//! plan each claim and outcome statement once and keep that plan for their
//! life, so the plan made while a table is young must stay a primary-key
//! lookup when the table holds a backlog (a sequential scan, or a walk of
//! the partial index of queued rows, would make every claim read the whole
//! backlog); and their commits are as durable as an accept's.

use email_service::domain::MessageKind;
use email_service::store::{self, delivery};

use crate::common::{scalar, spawn_app};

/// A connection configured exactly as the service's bookkeeping pool.
async fn bookkeeping_client(database_url: &str) -> tokio_postgres::Client {
    let config = store::bookkeeping_config(store::pg_config(database_url).expect("valid url"));
    let (client, conn) = config
        .connect(tokio_postgres::NoTls)
        .await
        .expect("connect to the test database");
    tokio::spawn(conn);
    client
}

/// Panics with `why` unless the session sees `setting` at `expected`.
async fn assert_setting(client: &tokio_postgres::Client, setting: &str, expected: &str, why: &str) {
    let value: String = scalar(client, &format!("SHOW {setting}")).await;
    assert_eq!(value, expected, "{why}");
}

/// The statements under test: (prepared name, table, sql, arguments).
fn statements() -> Vec<(String, &'static str, &'static str, &'static str)> {
    let mut out = Vec::new();
    for (kind, table) in [
        (MessageKind::Notify, "notifications"),
        (MessageKind::Contact, "contact_messages"),
    ] {
        out.push((
            format!("claim_{table}"),
            table,
            delivery::claim_sql(kind),
            "'{1,2,3}', 'token', 60",
        ));
        out.push((
            format!("outcome_{table}"),
            table,
            delivery::finish_sql(kind),
            "'{1,2}', '{token,token}', '{sent,queued}', '{0,1}', '{NULL,60}', \
             '{NULL,busy}', '{1,1}', '{sent,transient}', '{250,451}', '{ok,busy}', '{5,6}'",
        ));
    }
    out
}

/// The plan the session uses for its prepared statement `name`, as
/// `EXPLAIN EXECUTE` shows it: with `force_generic_plan`, the one made at
/// its first use and kept.
async fn plan_of(client: &tokio_postgres::Client, name: &str, args: &str) -> String {
    let rows = client
        .simple_query(&format!("EXPLAIN EXECUTE {name}({args})"))
        .await
        .expect("explain");
    rows.iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
            _ => None,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

async fn assert_primary_key_plans(client: &tokio_postgres::Client, when: &str) {
    for (name, table, _, args) in statements() {
        let plan = plan_of(client, &name, args).await;
        assert!(
            plan.contains(&format!("Index Scan using {table}_pkey on {table}"))
                || plan.contains(&format!("Bitmap Index Scan on {table}_pkey")),
            "{name}, {when}: not a primary-key lookup:\n{plan}"
        );
        assert!(
            !plan.contains(&format!("Seq Scan on {table}")) && !plan.contains("_due"),
            "{name}, {when}: reads more than one row:\n{plan}"
        );
        // A batch joined to its rows by hashing (or sorting) the table
        // would read all of it for a handful of outcomes.
        assert!(
            !plan.contains("Hash Join") && !plan.contains("Merge Join"),
            "{name}, {when}: joins by reading the whole table:\n{plan}"
        );
        assert!(
            !plan.contains("Seq Scan on delivery_attempts"),
            "{name}, {when}: reads every attempt:\n{plan}"
        );
        // An attempt is found by its whole key: an index condition on the
        // kind alone reads every attempt of that kind.
        let lines: Vec<&str> = plan.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            if line.contains("Scan") && line.contains("on delivery_attempts") {
                let cond = lines.get(i + 1).copied().unwrap_or_default();
                assert!(
                    cond.contains("Index Cond") && cond.contains("message_id ="),
                    "{name}, {when}: does not look its attempt up by message:\n{plan}"
                );
            }
        }
    }
}

#[tokio::test]
async fn claims_and_outcomes_stay_primary_key_lookups_as_the_backlog_grows() {
    let app = spawn_app().await;
    // One connection for the whole test, as a pooled one lives: its plans
    // are made on the young tables and kept.
    let client = bookkeeping_client(&app.database_url).await;
    assert_setting(
        &client,
        "plan_cache_mode",
        "force_generic_plan",
        "plans are not kept",
    )
    .await;
    for (name, _, sql, _) in statements() {
        client
            .batch_execute(&format!("PREPARE {name} AS {sql}"))
            .await
            .expect("prepare");
    }
    assert_primary_key_plans(&client, "on empty tables").await;

    // A backlog that arrived faster than statistics follow: due later, so
    // the service leaves it alone, and never analyzed.
    let db = app.db().await;
    for table_sql in [
        "INSERT INTO notifications (uuid, recipient, subject, body, request_hash, next_attempt_at)
         SELECT gen_random_uuid(), 'to@example.com', 's', 'b', '\\x00', now() + interval '1 day'
         FROM generate_series(1, 50000)",
        "INSERT INTO contact_messages (uuid, name, email, message, request_hash, next_attempt_at)
         SELECT gen_random_uuid(), 'n', 'a@example.com', 'm', '\\x00', now() + interval '1 day'
         FROM generate_series(1, 50000)",
        // And as many old attempts, which no outcome may read through.
        "INSERT INTO delivery_attempts (kind, message_id, number, started_at)
         SELECT 'notify', id, 1, now() FROM notifications",
        "INSERT INTO delivery_attempts (kind, message_id, number, started_at)
         SELECT 'contact', id, 1, now() FROM contact_messages",
    ] {
        db.batch_execute(table_sql).await.expect("fill the backlog");
    }
    // The same statements on the same connection: the plans kept from the
    // empty tables, now serving a 50,000-row backlog.
    assert_primary_key_plans(
        &client,
        "kept from empty tables, with 50,000 queued rows and attempts",
    )
    .await;
    app.shutdown().await;
}

/// A claim or an outcome that PostgreSQL could forget in a crash would let
/// a mail recorded as sent go out again: bookkeeping commits must wait for
/// the WAL flush, like accepts.
#[tokio::test]
async fn bookkeeping_commits_are_synchronous() {
    let app = spawn_app().await;
    let client = bookkeeping_client(&app.database_url).await;
    let why = "bookkeeping connections commit asynchronously";
    assert_setting(&client, "synchronous_commit", "on", why).await;
    app.shutdown().await;
}
