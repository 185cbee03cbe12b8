//! Fault injection for the test suite, compiled only with the
//! `fault-injection` feature (never in a release build). A marker in a
//! message's text makes its first delivery attempt crash the mailer, which is
//! how the tests prove that a crash becomes a restart and a scheduled retry.

use crate::domain::delivery::{Content, MailJob};

/// The mailer panics in its `handle` on the first attempt.
pub const MAILER_PANIC: &str = "[[fault:mailer-panic]]";
/// The send task panics on the first attempt.
pub const SEND_TASK_PANIC: &str = "[[fault:send-task-panic]]";

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
