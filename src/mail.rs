//! Turning a claimed message into a mail, and handing it to a backend.
//!
//! Every mail has `From: DEFAULT_FROM_EMAIL`, a `Message-ID` derived from the
//! message uuid (the same on every attempt, so receivers can de-duplicate a
//! send repeated after a crash), a `Date` and a UTF-8 text part; an `html`
//! body makes it multipart/alternative. Header injection is impossible: the
//! addresses were parsed on the way in, the subject cannot hold CR/LF, and
//! the contact sender's name is flattened to one line before it is used in a
//! header. lettre encodes non-ASCII header text.
//!
//! Backends: `console` logs the formatted mail as one event; `file` writes
//! `<uuid>-<attempt>.eml` atomically (temp file + rename); `smtp` sends over
//! the mailer's own kept-open connection (see [`crate::smtp`] for why not
//! lettre's pooled transport). SMTP errors are classified
//! as the contract says: 5xx (and a refused envelope) are permanent,
//! everything else is transient.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use lettre::Message;
use lettre::message::header::ContentType;
use lettre::message::{Mailbox, MultiPart, SinglePart};

use crate::config::{Config, EmailBackend};
use crate::domain::delivery::{AttemptResult, Content, MailJob, Outcome};
use crate::smtp;

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
    pub async fn send(
        &self,
        job: &MailJob,
        message: Message,
        session: &mut smtp::Session,
    ) -> AttemptResult {
        let started = Instant::now();
        let result = match self {
            Self::Console => {
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
            Self::File(dir) => write_eml(dir, job, &message).await.map(|_| None),
            Self::Smtp(settings) => {
                match session
                    .send(settings, message.envelope(), &message.formatted())
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

/// The domain of `DEFAULT_FROM_EMAIL`, for the `Message-ID`.
fn from_domain(from: &Mailbox) -> String {
    from.email.domain().to_owned()
}

/// `<uuid@domain>`: stable across attempts.
pub fn message_id(job: &MailJob, from: &Mailbox) -> String {
    format!("<{}@{}>", job.uuid, from_domain(from))
}

/// One line, safe for a header: line breaks and other controls become spaces.
fn one_line(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect::<String>()
        .trim()
        .to_owned()
}

/// Builds the mail for `job`. Fails only on data that cannot be a mail (an
/// address that no longer parses), which is a permanent failure.
pub fn build(job: &MailJob, config: &Config) -> Result<Message, String> {
    let from: Mailbox = config
        .default_from_email
        .parse()
        .map_err(|e| format!("DEFAULT_FROM_EMAIL: {e}"))?;
    let builder = Message::builder()
        .message_id(Some(message_id(job, &from)))
        .date_now()
        .from(from);
    let message = match &job.content {
        Content::Contact {
            name,
            email,
            message,
        } => {
            let to: Mailbox = config
                .contact_recipient
                .parse()
                .map_err(|e| format!("CONTACT_RECIPIENT: {e}"))?;
            let sender_name = one_line(name);
            let sender = Mailbox::new(
                Some(sender_name.clone()),
                email.parse().map_err(|e| format!("sender address: {e}"))?,
            );
            let text = format!(
                "New message from the contact form.\n\nName: {sender_name}\nEmail: {email}\n\n{message}\n"
            );
            builder
                .to(to)
                .reply_to(sender)
                .subject(format!("Contact form: {sender_name} <{email}>"))
                .singlepart(SinglePart::plain(text))
        }
        Content::Notify {
            to,
            subject,
            body,
            html,
            ..
        } => {
            let to: Mailbox = to.parse().map_err(|e| format!("recipient address: {e}"))?;
            let builder = builder.to(to).subject(one_line(subject));
            match html {
                Some(html) => builder.multipart(MultiPart::alternative_plain_html(
                    body.clone(),
                    html.clone(),
                )),
                None => builder.singlepart(
                    SinglePart::builder()
                        .header(ContentType::TEXT_PLAIN)
                        .body(body.clone()),
                ),
            }
        }
    };
    message.map_err(|e| format!("building the mail: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn job(content: Content) -> MailJob {
        MailJob {
            kind: crate::domain::MessageKind::Notify,
            id: 1,
            uuid: uuid::Uuid::nil(),
            retry_count: 0,
            attempt: 1,
            lease_token: uuid::Uuid::nil(),
            content,
        }
    }

    fn config() -> Config {
        let mut vars = HashMap::new();
        vars.insert(
            "DEFAULT_FROM_EMAIL".into(),
            "Blog <noreply@example.com>".into(),
        );
        vars.insert("CONTACT_RECIPIENT".into(), "admin@example.com".into());
        Config::from_map(&vars).unwrap()
    }

    #[test]
    fn notification_headers_and_stable_message_id() {
        let j = job(Content::Notify {
            to: "user@example.org".into(),
            subject: "Héllo".into(),
            body: "plain text".into(),
            html: Some("<p>html</p>".into()),
            metadata: None,
        });
        let text = String::from_utf8(build(&j, &config()).unwrap().formatted()).unwrap();
        assert!(text.contains("Message-ID: <00000000-0000-0000-0000-000000000000@example.com>"));
        assert!(text.contains("From: Blog <noreply@example.com>"));
        assert!(text.contains("To: user@example.org"));
        assert!(text.contains("Date: "));
        assert!(text.contains("multipart/alternative"));
        assert!(text.contains("text/html"));
        let again = String::from_utf8(build(&j, &config()).unwrap().formatted()).unwrap();
        let id = |t: &str| {
            t.lines()
                .find(|l| l.starts_with("Message-ID"))
                .unwrap()
                .to_owned()
        };
        assert_eq!(id(&text), id(&again));
    }

    #[test]
    fn contact_mail_goes_to_the_recipient_with_reply_to_and_no_injection() {
        let j = job(Content::Contact {
            name: "Eve\r\nBcc: victim@example.net".into(),
            email: "eve@example.org".into(),
            message: "Hi there".into(),
        });
        let text = String::from_utf8(build(&j, &config()).unwrap().formatted()).unwrap();
        assert!(text.contains("To: admin@example.com"));
        assert!(text.contains("Reply-To: "));
        assert!(text.contains("eve@example.org"));
        assert!(!text.lines().any(|l| l.starts_with("Bcc:")));
        assert!(text.contains("Hi there"));
    }
}
