//! The Redis side of dispatch. Only the `Dispatcher` actor uses it.
//!
//! # Keys (all under `REDIS_KEY_PREFIX`)
//!
//! - `{prefix}:ready`, a stream of due jobs, one entry per wake-up, with a
//!   single field `job = "<kind>:<id>"` (e.g. `notify:42`). Read through the
//!   consumer group `mailers`, one consumer per dispatcher instance, so two
//!   instances sharing a prefix split the work. An entry is acknowledged and
//!   deleted once its attempt is recorded in PostgreSQL, which keeps the
//!   stream as short as the work in progress.
//! - `{prefix}:retries`, a sorted set of scheduled retries: member
//!   `"<kind>:<id>"`, score = due time in Unix milliseconds. A Lua script moves
//!   due members to the stream atomically, so with two instances each retry
//!   is promoted once.
//!
//! # What Redis is not
//!
//! Redis holds wake-ups, not truth. An entry may be lost (Redis restarted
//! empty) or duplicated (re-fed by the reconciler): PostgreSQL's conditional
//! claim decides who sends, and the reconciler re-feeds from PostgreSQL what
//! Redis forgot. So nothing here needs Redis persistence to be correct.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::streams::StreamReadReply;

use crate::domain::MessageKind;

pub const GROUP: &str = "mailers";

/// The stream is a work list, not an archive: a cap far above any backlog,
/// approximate so trimming stays O(1).
const STREAM_MAX_LEN: usize = 1_000_000;

/// Moves due retries to the ready stream in one atomic step.
const PROMOTE_DUE: &str = r#"
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
for _, member in ipairs(due) do
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', 'job', member)
  redis.call('ZREM', KEYS[1], member)
end
return #due
"#;

/// How long the oldest entry not yet handed to any consumer has waited, in
/// milliseconds on Redis's clock; 0 when every entry has been handed out
/// (or there is no stream or group).
const BACKLOG_AGE: &str = r#"
local ok, groups = pcall(redis.call, 'XINFO', 'GROUPS', KEYS[1])
if not ok then return 0 end
local last = nil
for _, g in ipairs(groups) do
  local name, id = nil, nil
  for i = 1, #g, 2 do
    if g[i] == 'name' then name = g[i + 1] end
    if g[i] == 'last-delivered-id' then id = g[i + 1] end
  end
  if name == ARGV[1] then last = id end
end
if last == nil then return 0 end
local next = redis.call('XRANGE', KEYS[1], '(' .. last, '+', 'COUNT', 1)
if #next == 0 then return 0 end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local pushed = tonumber(string.match(next[1][1], '^(%d+)'))
return math.max(0, now - pushed)
"#;

/// One stream entry: a wake-up for one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub stream_id: String,
    /// `None` for an entry we cannot read (then it is just acknowledged).
    pub job: Option<(MessageKind, i64)>,
}

pub fn member(kind: MessageKind, id: i64) -> String {
    format!("{}:{id}", kind.as_str())
}

fn parse_member(raw: &str) -> Option<(MessageKind, i64)> {
    let (kind, id) = raw.split_once(':')?;
    Some((MessageKind::parse(kind)?, id.parse().ok()?))
}

#[derive(Clone)]
pub struct Queue {
    /// Short commands. Its response timeout is short so that a hung Redis
    /// shows quickly.
    conn: ConnectionManager,
    /// Blocking reads only: a `BLOCK` on the shared connection would stall
    /// every other command behind it, and its response timeout must exceed
    /// the block time.
    reader: ConnectionManager,
    /// `host:port` (or the socket path), for log lines: never the password.
    address: String,
    ready_key: String,
    retries_key: String,
    script: redis::Script,
    backlog_age: redis::Script,
}

pub const READ_BLOCK: Duration = Duration::from_millis(1000);
const COMMAND_TIMEOUT: Duration = Duration::from_millis(1500);

impl Queue {
    /// Never connects here: the managers connect on first use and reconnect
    /// by themselves, so a Redis that is down at start only delays delivery.
    pub fn new(url: &str, prefix: &str) -> Result<Self, String> {
        let client = redis::Client::open(url).map_err(|e| e.to_string())?;
        let address = client.get_connection_info().addr().to_string();
        let config = |response: Duration| {
            ConnectionManagerConfig::new()
                .set_connection_timeout(Some(Duration::from_secs(1)))
                .set_response_timeout(Some(response))
                .set_number_of_retries(2)
                .set_max_delay(Duration::from_secs(1))
        };
        let conn = ConnectionManager::new_lazy_with_config(client.clone(), config(COMMAND_TIMEOUT))
            .map_err(|e| e.to_string())?;
        let reader = ConnectionManager::new_lazy_with_config(
            client,
            config(READ_BLOCK + Duration::from_secs(2)),
        )
        .map_err(|e| e.to_string())?;
        Ok(Self {
            address,
            conn,
            reader,
            ready_key: format!("{prefix}:ready"),
            retries_key: format!("{prefix}:retries"),
            script: redis::Script::new(PROMOTE_DUE),
            backlog_age: redis::Script::new(BACKLOG_AGE),
        })
    }

    /// Where Redis is, as log lines name it: `host:port`, no credentials.
    pub fn address(&self) -> &str {
        &self.address
    }

    pub async fn ping(&self) -> redis::RedisResult<()> {
        let mut c = self.conn.clone();
        redis::cmd("PING")
            .query_async::<String>(&mut c)
            .await
            .map(|_| ())
    }

    /// Creates the consumer group (and the stream); an existing group is fine.
    pub async fn ensure_group(&self) -> redis::RedisResult<()> {
        let mut c = self.conn.clone();
        let r: redis::RedisResult<()> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&self.ready_key)
            .arg(GROUP)
            .arg("0")
            .arg("MKSTREAM")
            .query_async(&mut c)
            .await;
        match r {
            Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
            other => other,
        }
    }

    /// Adds wake-ups for due messages, pipelined.
    pub async fn push(&self, jobs: &[(MessageKind, i64)]) -> redis::RedisResult<()> {
        if jobs.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for &(kind, id) in jobs {
            pipe.cmd("XADD")
                .arg(&self.ready_key)
                .arg("MAXLEN")
                .arg("~")
                .arg(STREAM_MAX_LEN)
                .arg("*")
                .arg("job")
                .arg(member(kind, id))
                .ignore();
        }
        let mut c = self.conn.clone();
        pipe.query_async::<()>(&mut c).await
    }

    /// Up to `count` new entries for `consumer`, waiting at most
    /// [`READ_BLOCK`] for the first; or, with `pending_after`, the entries
    /// already delivered to `consumer` and not acknowledged, after that id
    /// (no waiting).
    pub async fn read(
        &self,
        consumer: &str,
        count: usize,
        pending_after: Option<&str>,
    ) -> redis::RedisResult<Vec<Entry>> {
        let mut c = self.reader.clone();
        let reply: Option<StreamReadReply> = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(GROUP)
            .arg(consumer)
            .arg("COUNT")
            .arg(count)
            .arg("BLOCK")
            .arg(READ_BLOCK.as_millis() as u64)
            .arg("STREAMS")
            .arg(&self.ready_key)
            .arg(pending_after.unwrap_or(">"))
            .query_async(&mut c)
            .await?;
        Ok(reply
            .into_iter()
            .flat_map(|r| r.keys)
            .flat_map(|k| k.ids)
            .map(|id| Entry {
                job: id.get::<String>("job").as_deref().and_then(parse_member),
                stream_id: id.id,
            })
            .collect())
    }

    /// Acknowledges and deletes finished entries.
    pub async fn ack(&self, stream_ids: &[String]) -> redis::RedisResult<()> {
        if stream_ids.is_empty() {
            return Ok(());
        }
        let mut c = self.conn.clone();
        redis::pipe()
            .cmd("XACK")
            .arg(&self.ready_key)
            .arg(GROUP)
            .arg(stream_ids)
            .ignore()
            .cmd("XDEL")
            .arg(&self.ready_key)
            .arg(stream_ids)
            .ignore()
            .query_async::<()>(&mut c)
            .await
    }

    /// Schedules retries: `(kind, id, due time in Unix ms)`.
    pub async fn schedule(&self, retries: &[(MessageKind, i64, i64)]) -> redis::RedisResult<()> {
        if retries.is_empty() {
            return Ok(());
        }
        let mut cmd = redis::cmd("ZADD");
        cmd.arg(&self.retries_key);
        for &(kind, id, due_ms) in retries {
            cmd.arg(due_ms).arg(member(kind, id));
        }
        let mut c = self.conn.clone();
        cmd.query_async::<()>(&mut c).await
    }

    /// Moves retries due by `now_ms` to the ready stream; returns how many.
    pub async fn promote_due(&self, now_ms: i64, limit: usize) -> redis::RedisResult<usize> {
        let mut c = self.conn.clone();
        self.script
            .key(&self.retries_key)
            .key(&self.ready_key)
            .arg(now_ms)
            .arg(limit)
            .arg(STREAM_MAX_LEN)
            .invoke_async(&mut c)
            .await
    }

    /// Entries in the stream (unread or in progress) and scheduled retries.
    pub async fn depth(&self) -> redis::RedisResult<(u64, u64)> {
        let mut c = self.conn.clone();
        redis::pipe()
            .cmd("XLEN")
            .arg(&self.ready_key)
            .cmd("ZCARD")
            .arg(&self.retries_key)
            .query_async(&mut c)
            .await
    }

    /// How long the oldest wake-up that no consumer has read yet has been
    /// waiting: the delay a backlog adds to every message behind it.
    pub async fn backlog_age(&self) -> redis::RedisResult<Duration> {
        let mut c = self.conn.clone();
        let ms: u64 = self
            .backlog_age
            .key(&self.ready_key)
            .arg(GROUP)
            .invoke_async(&mut c)
            .await?;
        Ok(Duration::from_millis(ms))
    }

    /// Drops entries that a dead consumer (a killed process) left pending for
    /// longer than `min_idle`. Their messages are not lost: PostgreSQL still
    /// has them `queued` or `sending` under a lease, and the reconciler
    /// re-feeds them.
    pub async fn reap_stale(
        &self,
        consumer: &str,
        min_idle: Duration,
    ) -> redis::RedisResult<usize> {
        let mut c = self.conn.clone();
        let (_, ids, _): (String, Vec<String>, redis::Value) = redis::cmd("XAUTOCLAIM")
            .arg(&self.ready_key)
            .arg(GROUP)
            .arg(consumer)
            .arg(min_idle.as_millis() as u64)
            .arg("0-0")
            .arg("COUNT")
            .arg(500)
            .arg("JUSTID")
            .query_async(&mut c)
            .await?;
        self.ack(&ids).await?;
        Ok(ids.len())
    }
}

/// Whether an error means the stream or group is gone (Redis restarted
/// empty, or someone flushed it): recreate the group and carry on.
pub fn is_missing_group(e: &redis::RedisError) -> bool {
    e.code() == Some("NOGROUP")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_round_trip() {
        assert_eq!(member(MessageKind::Notify, 42), "notify:42");
        assert_eq!(parse_member("contact:7"), Some((MessageKind::Contact, 7)));
        assert_eq!(parse_member("bogus:7"), None);
        assert_eq!(parse_member("notify:x"), None);
    }
}
