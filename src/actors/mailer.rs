//! A `Mailer` actor: sends one job at a time through the configured backend
//! and reports the outcome to the dispatcher.
//!
//! The send runs in a task bounded by `EMAIL_TIMEOUT`, so the mailer answers
//! its state query (`idle` / `sending`) while a slow server dawdles. A panic
//! inside that task is re-raised as this actor's own failure, so the
//! supervisor sees `ActorFailed` and restarts the mailer, and the dispatcher,
//! which holds the job, records it as a `crash` attempt and schedules a retry.
//! A refused or failed send is a normal outcome, not a failure of the actor.
//!
//! Counters live in [`MailerStats`], owned by the supervisor per mailer slot,
//! so they survive restarts.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use ractor::{Actor, ActorProcessingErr, ActorRef};

use super::ledger::ClaimLedger;
use super::protocol::{DispatcherMsg, MailerMsg, MailerReport, log_attempt};
use super::registry::Registry;
use crate::config::Config;
use crate::domain::delivery::{AttemptResult, ClaimRef, MailJob, Outcome};
use crate::mail::{self, Backend};
use crate::smtp;
use crate::util::AbortOnDrop;

pub struct Mailer;

/// Per-slot counters, kept across restarts of the mailer in that slot.
#[derive(Debug, Default)]
pub struct MailerStats {
    pub sent: AtomicU64,
    pub failed: AtomicU64,
    pub restarts: AtomicU64,
}

pub struct MailerArgs {
    pub index: usize,
    pub backend: Backend,
    pub config: Arc<Config>,
    pub registry: Arc<Registry>,
    pub stats: Arc<MailerStats>,
    /// Where an outcome is owed before it is reported.
    pub ledger: Arc<ClaimLedger>,
}

pub struct MailerState {
    index: usize,
    backend: Backend,
    config: Arc<Config>,
    registry: Arc<Registry>,
    stats: Arc<MailerStats>,
    ledger: Arc<ClaimLedger>,
    sending: Option<(uuid::Uuid, Instant)>,
    /// Jobs handed over while a send was running. The dispatcher gives one
    /// job at a time, but a freshly restarted dispatcher does not know which
    /// mailers are busy; queueing here keeps "one send at a time" anyway.
    queued: VecDeque<(MailJob, Vec<ClaimRef>)>,
    /// This mailer's SMTP connection; lent to the send task while it runs.
    session: Option<smtp::Session>,
    _task: Option<AbortOnDrop>,
}

impl Actor for Mailer {
    type Msg = MailerMsg;
    type State = MailerState;
    type Arguments = MailerArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(MailerState {
            index: args.index,
            backend: args.backend,
            config: args.config,
            registry: args.registry,
            stats: args.stats,
            ledger: args.ledger,
            sending: None,
            queued: VecDeque::new(),
            session: Some(smtp::Session::default()),
            _task: None,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            MailerMsg::Deliver(job, after) => {
                #[cfg(feature = "fault-injection")]
                crate::faults::stall(&job).await;
                if state.sending.is_some() {
                    state.queued.push_back((*job, after));
                } else {
                    state.start(&myself, *job, after);
                }
            }
            MailerMsg::SendDone(job, result, session) => {
                state.sending = None;
                state._task = None;
                state.session = Some(*session);
                let counter = match result.outcome {
                    Outcome::Sent => &state.stats.sent,
                    _ => &state.stats.failed,
                };
                counter.fetch_add(1, Ordering::Relaxed);
                log_attempt(&job, &result);
                // Owed before it is reported: a dispatcher that dies with
                // the report in its mailbox leaves it to its successor.
                state.ledger.owe(&job, &result);
                let uuid = job.uuid;
                let done = job.claim_ref();
                let reported = state.registry.dispatcher().is_some_and(|d| {
                    d.cast(DispatcherMsg::JobFinished {
                        mailer: state.index,
                        job,
                        result,
                    })
                    .is_ok()
                });
                if !reported {
                    tracing::warn!(%uuid, "no dispatcher to report to; the next one records the outcome");
                }
                if let Some((next, mut after)) = state.queued.pop_front() {
                    // The send just done is recorded before the next mail
                    // is completed, like those the dispatcher named.
                    after.push(done);
                    state.start(&myself, next, after);
                }
            }
            MailerMsg::SendPanicked(panic) => {
                return Err(format!("send task panicked: {panic}").into());
            }
            MailerMsg::Report(reply) => {
                let _ = reply.send(MailerReport {
                    state: if state.sending.is_some() {
                        "sending"
                    } else {
                        "idle"
                    },
                    sending: state.sending.map(|s| s.0),
                    sent: state.stats.sent.load(Ordering::Relaxed),
                    failed: state.stats.failed.load(Ordering::Relaxed),
                    restarts: state.stats.restarts.load(Ordering::Relaxed),
                });
            }
        }
        Ok(())
    }
}

impl MailerState {
    /// Starts `job`; its mail is completed only once the outcomes of
    /// `after` are committed.
    fn start(&mut self, myself: &ActorRef<MailerMsg>, job: MailJob, after: Vec<ClaimRef>) {
        #[cfg(feature = "fault-injection")]
        crate::faults::before_send(&job);
        self.sending = Some((job.uuid, Instant::now()));
        let session = self.session.take().unwrap_or_default();
        let ledger = self.ledger.clone();
        let gate = async move {
            for claim in &after {
                ledger.recorded_by_now(claim).await;
            }
        };
        self._task = Some(spawn_send(
            myself,
            self.backend.clone(),
            self.config.clone(),
            job,
            session,
            gate,
        ));
    }
}

/// Builds and sends the mail in a task; reports back as a message.
fn spawn_send(
    myself: &ActorRef<MailerMsg>,
    backend: Backend,
    config: Arc<Config>,
    job: MailJob,
    mut session: smtp::Session,
    gate: impl Future<Output = ()> + Send + 'static,
) -> AbortOnDrop {
    let timeout = config.smtp.timeout;
    let work = tokio::spawn(async move {
        #[cfg(feature = "fault-injection")]
        crate::faults::in_send_task(&job);
        let result = match mail::build(&job, &config) {
            Err(e) => AttemptResult {
                outcome: Outcome::Permanent,
                smtp_code: None,
                smtp_reply: None,
                error: Some(e),
                duration_ms: 0,
            },
            Ok(message) => {
                let started = Instant::now();
                let send = backend.send(&job, message, &mut session, gate);
                match tokio::time::timeout(timeout, send).await {
                    Ok(r) => r,
                    Err(_) => {
                        // The connection is mid-transaction: never reuse it.
                        session = smtp::Session::default();
                        AttemptResult {
                            outcome: Outcome::Transient,
                            smtp_code: None,
                            smtp_reply: None,
                            error: Some(format!("timed out after {} s", timeout.as_secs())),
                            duration_ms: started.elapsed().as_millis() as i64,
                        }
                    }
                }
            }
        };
        #[cfg(feature = "fault-injection")]
        crate::faults::after_send(&job);
        (job, result, session)
    });
    let me = myself.clone();
    AbortOnDrop(tokio::spawn(async move {
        // Owning the send through `AbortOnDrop` means a dead mailer's send
        // is cancelled with it, not left running beside the retry.
        let mut work = AbortOnDrop(work);
        match (&mut work.0).await {
            Ok((job, result, session)) => {
                let _ = me.cast(MailerMsg::SendDone(
                    Box::new(job),
                    Box::new(result),
                    Box::new(session),
                ));
            }
            Err(e) if e.is_panic() => {
                let payload = e.into_panic();
                let text = payload
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| payload.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                let _ = me.cast(MailerMsg::SendPanicked(text));
            }
            Err(_) => {}
        }
    }))
}
