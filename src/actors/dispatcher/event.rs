//! What the dispatcher's own tasks report back, and the data they carry.
//!
//! Every Redis and PostgreSQL step of the dispatcher runs in a spawned task
//! that ends by sending one of these to the dispatcher, so `handle` never
//! waits on I/O and state queries are answered at once.

use std::time::Instant;

use crate::domain::MessageKind;
use crate::domain::delivery::{AttemptResult, ClaimRef, MailJob, Settled};
use crate::queue::Entry;

pub enum Event {
    /// What a read of the ready stream returned.
    Read(Result<Vec<Entry>, redis::RedisError>),
    /// The pause after a failed read is over.
    ReadResumed,
    /// The answer to a claim of these entries' messages under this lease
    /// token.
    Claimed(Vec<Entry>, uuid::Uuid, Result<Vec<MailJob>, String>),
    /// A release of claims is over (done, or left to the leases), with the
    /// messages it put back that are to be woken now.
    Released(Vec<(MessageKind, i64)>),
    /// A batch of outcomes was written.
    Recorded(Recorded),
    /// Writing a batch failed; it is written again after a pause.
    RecordFailed(Vec<PendingOutcome>),
    RetryRecord,
    /// The batch of wake-ups went out (or failed; the reconciler covers it).
    Flushed,
    Tick,
    /// The background duties of a tick are done; the stream's depth if it
    /// was read.
    TickDone(Option<(u64, u64)>),
    DrainDeadline,
}

/// A written batch of outcomes.
pub struct Recorded {
    /// The stream entries to acknowledge.
    pub entries: Vec<String>,
    /// Where each message whose outcome was written stands now.
    pub settled: Vec<Settled>,
    /// The mailers that may take their next job.
    pub mailers: Vec<usize>,
    /// The claims whose outcomes are no longer owed.
    pub claims: Vec<ClaimRef>,
}

/// An outcome waiting to be written.
pub struct PendingOutcome {
    /// The stream entry to acknowledge once it is written.
    pub entry: Option<String>,
    pub job: MailJob,
    pub result: AttemptResult,
    /// The mailer waiting for the write before its next send.
    pub mailer: Option<usize>,
    pub since: Instant,
}
