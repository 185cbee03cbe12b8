//! Turning a claimed message into a mail, and handing it to a backend.
//!
//! Every mail has `From: DEFAULT_FROM_EMAIL`, a `Message-ID` derived from the
//! message uuid (the same on every attempt, so receivers can de-duplicate a
//! send repeated after a crash), a `Date` and a UTF-8 text part; an `html`
//! body makes it multipart/alternative. How a message becomes that mail is
//! `draft.rs`.
//!
//! Backends: `console` logs the formatted mail as one event; `file` writes
//! `<uuid>-<attempt>.eml` atomically (temp file + rename); `smtp` sends over
//! the mailer's own kept-open connection (see [`crate::smtp`] for why not
//! lettre's pooled transport). SMTP errors are classified
//! as the contract says: 5xx (and a refused envelope) are permanent,
//! everything else is transient.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use lettre::Message;
use lettre::message::Mailbox;

use crate::config::{Config, EmailBackend};
use crate::domain::delivery::{AttemptResult, MailJob, Outcome};
use crate::smtp;

mod draft;

use draft::from_domain;
pub use draft::{BuiltMail, HeaderLine, PER_ATTEMPT_HEADER, build, built, message_id};

/// Where mail goes. Cheap to clone; an SMTP connection belongs to each
/// mailer's [`smtp::Session`], not to the backend.
#[derive(Clone)]
pub enum Backend {
    Console,
    File(PathBuf),
    Smtp(Arc<smtp::Settings>),
}

impl Backend {
    pub fn from_config(config: &Config) -> Result<Self, String> {
        Ok(match config.email_backend {
            EmailBackend::Console => Self::Console,
            EmailBackend::File => Self::File(config.email_file_path.clone()),
            EmailBackend::Smtp => {
                let from: Mailbox = config
                    .default_from_email
                    .parse()
                    .map_err(|e| format!("DEFAULT_FROM_EMAIL: {e}"))?;
                Self::Smtp(Arc::new(smtp::Settings::new(
                    &config.smtp,
                    &from_domain(&from),
                )?))
            }
        })
    }

    /// Sends one mail and says what happened. Never panics on a bad reply.
    /// The mail is not handed over before `gate` is done: over SMTP the
    /// envelope goes first and the content waits for it (see
    /// [`smtp::Session::send`]); the other backends wait before anything.
    pub async fn send(
        &self,
        job: &MailJob,
        message: Message,
        session: &mut smtp::Session,
        gate: impl Future<Output = ()>,
    ) -> AttemptResult {
        let started = Instant::now();
        let result = match self {
            Self::Console => {
                gate.await;
                let formatted = String::from_utf8_lossy(&message.formatted()).into_owned();
                tracing::info!(
                    target: "email_service::mail",
                    uuid = %job.uuid,
                    kind = job.kind.as_str(),
                    attempt = job.attempt,
                    mail = %formatted,
                    "console backend: mail"
                );
                Ok(None)
            }
            Self::File(dir) => {
                gate.await;
                write_eml(dir, job, &message).await.map(|_| None)
            }
            Self::Smtp(settings) => {
                match session
                    .send(settings, message.envelope(), &message.formatted(), gate)
                    .await
                {
                    Ok(resp) => Ok(Some((
                        resp.code().to_string().parse::<i32>().ok(),
                        resp.message().collect::<Vec<_>>().join(" "),
                    ))),
                    Err(smtp::SendError::Smtp(e)) => Err(classify(&e)),
                    // A refused connection or a failed TLS handshake (a
                    // certificate that does not verify) may heal: retried.
                    Err(e @ (smtp::SendError::Connect(..) | smtp::SendError::Tls(..))) => {
                        Err(AttemptResult {
                            outcome: Outcome::Transient,
                            smtp_code: None,
                            smtp_reply: None,
                            error: Some(error_chain(&e)),
                            duration_ms: 0,
                        })
                    }
                }
            }
        };
        let duration_ms = started.elapsed().as_millis() as i64;
        match result {
            Ok(reply) => AttemptResult {
                outcome: Outcome::Sent,
                smtp_code: reply.as_ref().and_then(|r| r.0),
                smtp_reply: reply.map(|r| r.1),
                error: None,
                duration_ms,
            },
            Err(mut failed) => {
                failed.duration_ms = duration_ms;
                failed
            }
        }
    }
}

fn classify(e: &lettre::transport::smtp::Error) -> AttemptResult {
    let code = e.status().and_then(|c| c.to_string().parse::<i32>().ok());
    let outcome = if e.is_permanent() || e.is_client() {
        Outcome::Permanent
    } else {
        Outcome::Transient
    };
    let text = error_chain(e);
    AttemptResult {
        outcome,
        smtp_code: code,
        smtp_reply: code.map(|_| text.clone()),
        error: Some(text),
        duration_ms: 0,
    }
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let part = s.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = s.source();
    }
    text
}

async fn write_eml(dir: &PathBuf, job: &MailJob, message: &Message) -> Result<(), AttemptResult> {
    let fail = |e: std::io::Error| AttemptResult {
        outcome: Outcome::Transient,
        smtp_code: None,
        smtp_reply: None,
        error: Some(format!("file backend: {e}")),
        duration_ms: 0,
    };
    tokio::fs::create_dir_all(dir).await.map_err(fail)?;
    let name = format!("{}-{}.eml", job.uuid, job.attempt);
    let tmp = dir.join(format!(".{name}.tmp"));
    tokio::fs::write(&tmp, message.formatted())
        .await
        .map_err(fail)?;
    tokio::fs::rename(&tmp, dir.join(name)).await.map_err(fail)
}
