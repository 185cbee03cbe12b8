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

use tokio::sync::Notify;

use crate::domain::delivery::{AttemptResult, ClaimRef, MailJob};

#[derive(Default)]
pub struct ClaimLedger {
    inner: Mutex<Inner>,
    /// Woken whenever an outcome is recorded, for [`ClaimLedger::recorded_by_now`].
    recorded: Notify,
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
        self.recorded.notify_waiters();
    }

    /// Done once the outcome of `claim` is no longer owed: at once if it
    /// never was. A mailer completes its next mail only after this, so a
    /// crash can repeat at most one send per mailer.
    pub async fn recorded_by_now(&self, claim: &ClaimRef) {
        loop {
            // Registered before the check, so a `recorded` between the two
            // is not missed.
            let woken = self.recorded.notified();
            let mut woken = std::pin::pin!(woken);
            woken.as_mut().enable();
            if !self.lock().unrecorded.contains_key(claim) {
                return;
            }
            woken.await;
        }
    }

    /// Everything owed: for a dispatcher that starts after another. The
    /// claims are emptied (the caller gives them back); the outcomes stay
    /// owed until the caller records them, so a mailer waiting for one of
    /// them keeps waiting.
    pub fn take(&self) -> Left {
        let mut inner = self.lock();
        Left {
            unstarted: inner.unstarted.drain().collect(),
            unrecorded: inner.unrecorded.values().cloned().collect(),
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
        assert!(again.unstarted.is_empty());
        assert_eq!(
            again.unrecorded.len(),
            1,
            "an outcome stays owed until it is recorded"
        );
        ledger.recorded(&a.claim_ref());
        assert!(ledger.take().unrecorded.is_empty());
    }

    #[tokio::test]
    async fn waiting_for_an_outcome_ends_when_it_is_recorded_and_not_before() {
        let ledger = std::sync::Arc::new(ClaimLedger::default());
        let (a, b) = (job(1), job(2));
        // Never owed: nothing to wait for.
        ledger.recorded_by_now(&a.claim_ref()).await;
        ledger.owe(&a, &sent());
        ledger.owe(&b, &sent());
        let waiter = tokio::spawn({
            let ledger = ledger.clone();
            async move { ledger.recorded_by_now(&a.claim_ref()).await }
        });
        // Another outcome recorded, and a successor taking what is owed:
        // neither ends the wait.
        ledger.recorded(&b.claim_ref());
        let _ = ledger.take();
        for _ in 0..50 {
            tokio::task::yield_now().await;
        }
        assert!(
            !waiter.is_finished(),
            "ended before its outcome was recorded"
        );
        ledger.recorded(&job(1).claim_ref());
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("ends once recorded")
            .unwrap();
    }
}
