//! What delivery owes the database, kept outside the dispatcher so that a
//! dispatcher that crashed does not take it along: claims it holds but has
//! not handed to a mailer, and outcomes of sends that are not yet recorded
//! (a mailer enters its outcome here before it reports it, so an outcome is
//! owed even while its report is in a dying dispatcher's mailbox).
//!
//! The supervisor owns the ledger and hands the same one to every
//! dispatcher and mailer it starts. A new dispatcher settles what its predecessor left:
//! it writes the outcomes (a mail that was sent is recorded as sent, not
//! sent again when its lease runs out) and gives the unstarted claims back
//! to the queue at once. Without it, both would wait out their leases, and
//! every unrecorded send would go out twice.

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, MutexGuard};

use crate::domain::delivery::{AttemptResult, ClaimRef, MailJob};

#[derive(Default)]
pub struct ClaimLedger {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// Claimed (or being claimed), not handed to a mailer.
    unstarted: HashSet<ClaimRef>,
    /// Sent or failed, not yet committed.
    unrecorded: HashMap<ClaimRef, (MailJob, AttemptResult)>,
}

/// What a dispatcher left behind.
pub struct Left {
    pub unstarted: Vec<ClaimRef>,
    pub unrecorded: Vec<(MailJob, AttemptResult)>,
}

impl ClaimLedger {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // The data is a set of plain values, whole after any panic.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Claims under way or made, before any mailer has them.
    pub fn hold(&self, claims: impl IntoIterator<Item = ClaimRef>) {
        self.lock().unstarted.extend(claims);
    }

    /// A claim that was handed to a mailer, released, or never made.
    pub fn settle(&self, claim: &ClaimRef) {
        self.lock().unstarted.remove(claim);
    }

    /// A finished attempt whose outcome is on its way to the database.
    pub fn owe(&self, job: &MailJob, result: &AttemptResult) {
        let mut inner = self.lock();
        inner.unstarted.remove(&job.claim_ref());
        inner
            .unrecorded
            .insert(job.claim_ref(), (job.clone(), result.clone()));
    }

    /// The outcome of this claim is committed (or its lease was lost).
    pub fn recorded(&self, claim: &ClaimRef) {
        self.lock().unrecorded.remove(claim);
    }

    /// Everything owed, emptied: for a dispatcher that starts after another.
    pub fn take(&self) -> Left {
        let mut inner = self.lock();
        Left {
            unstarted: inner.unstarted.drain().collect(),
            unrecorded: inner.unrecorded.drain().map(|(_, v)| v).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::delivery::Outcome;

    fn job(id: i64) -> MailJob {
        MailJob::sample(id)
    }

    fn sent() -> AttemptResult {
        AttemptResult {
            outcome: Outcome::Sent,
            smtp_code: Some(250),
            smtp_reply: None,
            error: None,
            duration_ms: 1,
        }
    }

    #[test]
    fn a_claim_is_owed_until_handed_out_and_an_outcome_until_recorded() {
        let ledger = ClaimLedger::default();
        let (a, b, c) = (job(1), job(2), job(3));
        ledger.hold([a.claim_ref(), b.claim_ref(), c.claim_ref()]);
        ledger.settle(&a.claim_ref()); // handed to a mailer
        ledger.owe(&a, &sent()); // its send finished
        ledger.owe(&b, &sent()); // finished without being held (a restart)
        ledger.recorded(&b.claim_ref());
        let left = ledger.take();
        assert_eq!(left.unstarted, vec![c.claim_ref()]);
        assert_eq!(left.unrecorded.len(), 1);
        assert_eq!(left.unrecorded[0].0.id, 1);
        let again = ledger.take();
        assert!(again.unstarted.is_empty() && again.unrecorded.is_empty());
    }
}
