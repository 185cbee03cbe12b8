//! Fault injection for the test suite, compiled only with the
//! `fault-injection` feature (never in a release build). A marker in a
//! message's text makes an actor crash or stall at a chosen point of that
//! message's path, which is how the tests prove that a crash of any actor
//! becomes a restart, loses nothing and sends nothing twice, and that
//! `/healthz` notices mailers that stop answering.

use std::time::Duration;

use crate::domain::NewMessage;
use crate::domain::delivery::{Content, MailJob};

/// The mailer panics in its `handle` on the first attempt.
pub const MAILER_PANIC: &str = "[[fault:mailer-panic]]";
/// The send task panics on the first attempt.
pub const SEND_TASK_PANIC: &str = "[[fault:send-task-panic]]";
/// The send task panics on the first attempt once the send is done, so the
/// mailer dies at the end of a send (with whatever is queued behind it).
pub const SEND_TASK_PANIC_AFTER_SEND: &str = "[[fault:send-task-panic-after-send]]";
/// The dispatcher panics on receiving the first attempt's outcome from the
/// mailer, before it is written.
pub const DISPATCHER_PANIC: &str = "[[fault:dispatcher-panic]]";
/// Persistence panics on receiving the accept, before storing anything.
pub const PERSISTENCE_PANIC: &str = "[[fault:persistence-panic]]";
/// The mailer stops answering (its `handle` blocks) for [`STALL`] on the
/// first attempt.
pub const MAILER_STALL: &str = "[[fault:mailer-stall]]";
/// How long a stalled mailer does not answer.
pub const STALL: Duration = Duration::from_secs(8);

fn text_contains(job: &MailJob, marker: &str) -> bool {
    match &job.content {
        Content::Contact { message, .. } => message.contains(marker),
        Content::Notify { body, subject, .. } => body.contains(marker) || subject.contains(marker),
    }
}

pub fn before_send(job: &MailJob) {
    if job.attempt == 1 && text_contains(job, MAILER_PANIC) {
        panic!("injected fault: mailer panic on {}", job.uuid);
    }
}

pub fn in_send_task(job: &MailJob) {
    if job.attempt == 1 && text_contains(job, SEND_TASK_PANIC) {
        panic!("injected fault: send task panic on {}", job.uuid);
    }
}

pub fn after_send(job: &MailJob) {
    if job.attempt == 1 && text_contains(job, SEND_TASK_PANIC_AFTER_SEND) {
        panic!("injected fault: send task panic after sending {}", job.uuid);
    }
}

pub fn on_outcome(job: &MailJob) {
    if job.attempt == 1 && text_contains(job, DISPATCHER_PANIC) {
        panic!(
            "injected fault: dispatcher panic on the outcome of {}",
            job.uuid
        );
    }
}

pub fn on_accept(message: &NewMessage) {
    let text = match message {
        NewMessage::Contact(c) => &c.message,
        NewMessage::Notify(n) => &n.body,
    };
    if text.contains(PERSISTENCE_PANIC) {
        panic!("injected fault: persistence panic on an accept");
    }
}

/// Blocks the calling actor's `handle`: it answers nothing meanwhile.
pub async fn stall(job: &MailJob) {
    if job.attempt == 1 && text_contains(job, MAILER_STALL) {
        tokio::time::sleep(STALL).await;
    }
}
