//! The dispatcher's bookkeeping of its mailers and the arithmetic of leases:
//! plain data and functions, no I/O, so the policy is tested on its own.
//!
//! A mailer slot is idle when its mailer is up and holds no job. Its next
//! job goes out with the claims of its sends whose outcomes are not yet
//! committed, and the mailer completes that mail (the final dot) only once
//! they are: were the process to die, at most one send per mailer could be
//! repeated, never a run of them, while the next mail's envelope overlaps
//! the last one's commit. A claimed job is never started when its lease
//! could run out before its outcome is recorded.

use std::time::Duration;

use tokio::time::Instant;

use crate::config::Config;
use crate::domain::delivery::{ClaimRef, MailJob};

/// Jobs claimed ahead for each mailer, beyond the one it is sending.
pub const PREFETCH_PER_MAILER: usize = 2;

/// A claimed job and the stream entry that woke it (none when the job
/// reached us without one, e.g. after a restart of the dispatcher).
pub struct InFlight {
    pub entry: Option<String>,
    pub job: MailJob,
    pub started: Instant,
    /// When its claim (and so its lease) was answered.
    pub claimed: Instant,
}

impl InFlight {
    pub fn new(entry: Option<String>, job: MailJob) -> Self {
        let now = Instant::now();
        Self {
            entry,
            job,
            started: now,
            claimed: now,
        }
    }
}

#[derive(Default)]
pub struct MailerSlot {
    pub up: bool,
    pub job: Option<InFlight>,
    /// A job handed to the mailer to start as soon as `job` is done, so
    /// that no round trip through the dispatcher separates two sends.
    pub next: Option<InFlight>,
    /// The mailer's sends that are done but whose outcomes are not yet
    /// committed. Its next job goes out with them, and the mailer completes
    /// that job's mail only once they are committed.
    pub unrecorded: Vec<ClaimRef>,
}

impl MailerSlot {
    pub fn idle(&self) -> bool {
        self.up && self.job.is_none()
    }

    /// Sending, with nothing queued behind: it may take its next job now.
    pub fn can_queue(&self) -> bool {
        self.up && self.job.is_some() && self.next.is_none()
    }

    /// Jobs the mailer holds: the one it sends and the one queued behind.
    pub fn held(&self) -> usize {
        usize::from(self.job.is_some()) + usize::from(self.next.is_some())
    }
}

/// How many jobs a new read may fetch, or `None` when no read should start.
///
/// Each live mailer may have one job in hand and [`PREFETCH_PER_MAILER`]
/// claimed behind it, so a mailer finishing a send finds its next job
/// without a round trip to Redis and PostgreSQL. While jobs are on their way
/// (being claimed, or claimed and waiting), a read waits until it can fetch
/// one job per live mailer: a claim costs a transaction whatever its size,
/// so many claims of one job each would take the database time the accepts
/// and outcomes need. With nothing on its way, whatever is free is read.
pub fn read_capacity(slots: &[MailerSlot], claiming: usize, waiting: usize) -> Option<usize> {
    let up = slots.iter().filter(|s| s.up).count();
    let busy: usize = slots.iter().map(MailerSlot::held).sum();
    let free = (up * (1 + PREFETCH_PER_MAILER)).saturating_sub(busy + claiming + waiting);
    let on_the_way = claiming + waiting;
    if free == 0 || (on_the_way > 0 && free < up) {
        None
    } else {
        Some(free)
    }
}

/// How long a claim is held before another dispatcher may take it back: the
/// whole SMTP attempt plus recording its outcome must fit well inside.
/// A job claimed ahead waits behind at most [`PREFETCH_PER_MAILER`] sends of
/// its mailer, then takes one send itself.
/// The last minute is for recording the outcome, even through a database
/// hiccup: a lease that runs out after a send but before its record would
/// let the message be sent again.
pub fn lease_duration(config: &Config) -> Duration {
    config.smtp.timeout * (PREFETCH_PER_MAILER as u32 + 1) + Duration::from_secs(60)
}

/// What a send still needs after it starts, with margin: the attempt
/// itself, the claim's own latency (the lease started in the database
/// before we heard of it), and time to record the outcome.
pub fn send_window(config: &Config, persistence_call: Duration) -> Duration {
    config.smtp.timeout + persistence_call * 2
}

/// Whether a job claimed at `claimed` may still be handed to a mailer: its
/// send and record must end before its lease does, or the reconciler could
/// give the message to another sender meanwhile. A job queued behind a
/// send waits for it too: its window includes one more send.
pub fn still_sendable(claimed: Instant, window: Duration, lease: Duration) -> bool {
    claimed.elapsed() + window <= lease
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job() -> MailJob {
        MailJob::sample(1)
    }

    fn slots(up: usize, busy: usize) -> Vec<MailerSlot> {
        (0..up)
            .map(|i| MailerSlot {
                up: true,
                job: (i < busy).then(|| InFlight::new(None, job())),
                next: None,
                unrecorded: Vec::new(),
            })
            .collect()
    }

    #[test]
    fn an_idle_slot_is_up_and_empty() {
        let mut slot = MailerSlot::default();
        assert!(!slot.idle(), "a mailer not yet up is not idle");
        slot.up = true;
        assert!(slot.idle());
        // Its next job may go out: the mailer holds its mail back until
        // these outcomes are committed.
        slot.unrecorded.push(job().claim_ref());
        assert!(slot.idle());
        slot.job = Some(InFlight::new(None, job()));
        assert!(!slot.idle());
        assert!(slot.can_queue(), "one job may wait behind the one it sends");
        slot.next = Some(InFlight::new(None, job()));
        assert!(!slot.can_queue());
        assert_eq!(slot.held(), 2);
    }

    #[test]
    fn a_job_queued_in_a_mailer_counts_as_held() {
        let mut s = slots(4, 4);
        s[0].next = Some(InFlight::new(None, job()));
        // 12 - (4 sending + 1 queued) = 7.
        assert_eq!(read_capacity(&s, 0, 0), Some(7));
    }

    #[test]
    fn with_nothing_on_the_way_a_read_takes_what_is_free() {
        // 4 mailers × (1 + 2 prefetched) = 12, 1 busy.
        assert_eq!(read_capacity(&slots(4, 1), 0, 0), Some(11));
        assert_eq!(read_capacity(&slots(2, 2), 0, 0), Some(4));
    }

    #[test]
    fn with_jobs_on_the_way_a_read_waits_for_one_per_mailer() {
        assert_eq!(read_capacity(&slots(4, 4), 0, 5), None, "3 free < 4 up");
        assert_eq!(read_capacity(&slots(4, 4), 4, 0), Some(4));
        assert_eq!(read_capacity(&slots(4, 0), 9, 0), None);
        assert_eq!(
            read_capacity(&slots(4, 0), 0, 8),
            Some(4),
            "exactly one per mailer"
        );
    }

    #[test]
    fn no_mailer_up_means_no_read() {
        assert_eq!(read_capacity(&slots(0, 0), 0, 0), None);
        assert_eq!(read_capacity(&[MailerSlot::default()], 0, 0), None);
    }

    #[test]
    fn the_lease_covers_the_prefetched_sends_and_a_minute() {
        let mut vars = std::collections::HashMap::new();
        vars.insert("EMAIL_TIMEOUT".to_owned(), "10".to_owned());
        let config = Config::from_map(&vars).expect("valid");
        assert_eq!(lease_duration(&config), Duration::from_secs(90));
        assert_eq!(
            send_window(&config, Duration::from_secs(5)),
            Duration::from_secs(20)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_job_that_waited_too_long_is_not_sent() {
        let lease = Duration::from_secs(90);
        let window = Duration::from_secs(20);
        let claimed = Instant::now();
        assert!(still_sendable(claimed, window, lease));
        tokio::time::advance(Duration::from_secs(70)).await;
        assert!(
            still_sendable(claimed, window, lease),
            "exactly at the edge"
        );
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(!still_sendable(claimed, window, lease));
    }
}
