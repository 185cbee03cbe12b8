//! What the actors say to each other: the messages and reports of the
//! supervisor, the dispatcher, the mailers and the HTTP ingress.
//!
//! These types live apart from the actors that handle them so that the
//! layers point one way. The mailer reports to the dispatcher and the
//! dispatcher hands jobs to mailers, yet neither file imports the other:
//! both import this one. The [`Registry`](super::registry::Registry), which
//! holds every actor's current address, is typed by these messages, and the
//! actors import the registry, never each other. `Persistence` keeps its
//! own message type beside it: it talks to no other actor.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use ractor::RpcReplyPort;
use serde::Serialize;

use super::dispatcher::event::Event;
use crate::domain::MessageKind;
use crate::domain::delivery::{AttemptResult, ClaimRef, MailJob};
use crate::smtp;

// ===== Mailer =====

pub enum MailerMsg {
    /// A job, and the claims whose outcomes must be committed before this
    /// job's mail is completed (the mailer's previous sends, still being
    /// recorded).
    Deliver(Box<MailJob>, Vec<ClaimRef>),
    Report(RpcReplyPort<MailerReport>),
    /// From the send task, with the SMTP session back for the next send.
    SendDone(Box<MailJob>, Box<AttemptResult>, Box<smtp::Session>),
    /// The send task panicked: this mailer must fail.
    SendPanicked(String),
}

#[derive(Debug, Clone, Serialize)]
pub struct MailerReport {
    pub state: &'static str,
    pub sending: Option<uuid::Uuid>,
    pub sent: u64,
    pub failed: u64,
    pub restarts: u64,
}

// ===== Dispatcher =====

pub enum DispatcherMsg {
    /// A message was just committed as due: wake a mailer for it.
    Enqueue(MessageKind, i64),
    /// Many messages were just committed as due (a bulk resend's batch):
    /// their wake-ups go to Redis in one pipelined round trip.
    EnqueueMany(MessageKind, Vec<i64>),
    /// A message was just committed with a `send_at` ahead: put it in the
    /// Redis schedule for that time (Unix ms), as a retry would be.
    Schedule(MessageKind, i64, i64),
    MailerUp(usize),
    /// The supervisor saw mailer `index` fail; its job, if any, crashed.
    MailerDown(usize, String),
    /// A mailer finished its attempt.
    /// Carries the job itself, so that an outcome reaching a dispatcher
    /// that did not hand the job out (it was restarted meanwhile) is still
    /// recorded.
    JobFinished {
        mailer: usize,
        job: Box<MailJob>,
        result: Box<AttemptResult>,
    },
    Ping(RpcReplyPort<Result<(), String>>),
    Report(RpcReplyPort<DispatcherReport>),
    /// Stop taking work; answer once in-flight jobs are recorded or at the
    /// deadline (with whether everything finished).
    Drain(Duration, RpcReplyPort<bool>),
    /// A report from one of the dispatcher's own tasks.
    Own(Event),
}

#[derive(Debug, Clone, Serialize)]
pub struct DispatcherReport {
    /// Entries in the ready stream (unread or in progress), at the last tick.
    pub queue_depth: Option<u64>,
    pub scheduled_retries: Option<u64>,
    pub in_flight: usize,
    pub idle_mailers: usize,
    pub redis_error: Option<String>,
    pub draining: bool,
}

/// The contract's per-attempt log line, written once per attempt by
/// whoever learns its outcome: the mailer for a send, the dispatcher for a
/// crash or a reclaimed lease.
pub fn log_attempt(job: &MailJob, result: &AttemptResult) {
    log_attempt_of(job.uuid, job.kind, job.attempt, result);
}

/// The same line for an attempt known by its parts: a lease the reconciler
/// took back from a sender that stopped mid-send.
pub fn log_attempt_of(uuid: uuid::Uuid, kind: MessageKind, attempt: i32, result: &AttemptResult) {
    tracing::info!(
        target: "email_service::delivery",
        uuid = %uuid,
        kind = kind.as_str(),
        attempt,
        outcome = result.outcome.as_str(),
        duration_ms = result.duration_ms,
        smtp_code = result.smtp_code,
        error = result.error.as_deref(),
        "delivery attempt"
    );
}

// ===== HTTP ingress =====

pub enum IngressMsg {
    Report(RpcReplyPort<IngressReport>),
    /// Stop accepting and wait (up to the deadline) for open connections to
    /// finish; answers whether they all did.
    Drain(Duration, RpcReplyPort<bool>),
}

#[derive(Debug, Clone, Serialize)]
pub struct IngressReport {
    pub open_connections: usize,
    pub max_connections: usize,
}

// ===== Supervisor =====

/// The children, by role. Each role has at most one live actor at a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Child {
    Persistence,
    Dispatcher,
    Mailer(usize),
    Webhooks,
    HttpIngress,
}

impl Child {
    pub fn name(self) -> String {
        match self {
            Self::Persistence => "persistence".into(),
            Self::Dispatcher => "dispatcher".into(),
            Self::Mailer(i) => format!("mailer-{i}"),
            Self::Webhooks => "webhooks".into(),
            Self::HttpIngress => "http_ingress".into(),
        }
    }
}

pub enum SupervisorMsg {
    Report(RpcReplyPort<SupervisorReport>),
    /// Drain and stop the children; answers whether the drain finished in time.
    Shutdown(Duration, RpcReplyPort<bool>),
    /// A restart whose backoff has elapsed.
    Respawn(Child),
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct ChildHealth {
    pub alive: bool,
    pub restarts: u32,
    #[serde(skip)]
    pub(super) streak: u32,
    #[serde(skip)]
    pub(super) last_failure: Option<Instant>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SupervisorReport {
    /// By child name (`persistence`, `dispatcher`, `mailer-0`, …).
    pub children: BTreeMap<String, ChildHealth>,
}
