//! The mail a message becomes: one draft, from the message's content and
//! the configuration, that both the send path ([`build`]) and the
//! operator's detail view ([`built`]) read, so the headers an operator sees
//! are the ones the mail carries. Header injection is impossible: the
//! addresses were parsed on the way in, the subject cannot hold CR/LF, and
//! the contact sender's name is flattened to one line before it is used in
//! a header. lettre encodes non-ASCII header text.

use lettre::Message;
use lettre::message::header::Headers;
use lettre::message::{Mailbox, MessageBuilder, MultiPart, SinglePart};
use serde::Serialize;
use uuid::Uuid;

use crate::config::Config;
use crate::domain::delivery::{Content, MailJob};

/// The domain of `DEFAULT_FROM_EMAIL`, for the `Message-ID`.
pub(super) fn from_domain(from: &Mailbox) -> String {
    from.email.domain().to_owned()
}

/// `<uuid@domain>`: stable across attempts.
pub fn message_id(uuid: Uuid, from: &Mailbox) -> String {
    format!("<{uuid}@{}>", from_domain(from))
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
    let draft = Draft::new(job.uuid, &job.content, config)?;
    let body = Body::join(draft.parts());
    draft.assemble(body)
}

/// The mail a message becomes, as the operator's detail view shows it: the
/// headers of the very [`Message`] a send builds, in the order it writes
/// them, with their values as text (before RFC 2047 encoding), the content
/// type of each MIME part, and the parts' text.
///
/// Two things differ on each attempt and are left out: the `Date` header
/// (set when the attempt builds the mail) and the multipart `boundary`
/// parameter (random per build).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct BuiltMail {
    /// The header block, as the mail writes it.
    pub headers: Vec<HeaderLine>,
    /// The headers of each part of a multipart mail (`Content-Type`,
    /// `Content-Transfer-Encoding`), the text part first; empty for a
    /// one-part mail, whose header block holds them.
    pub parts: Vec<Vec<HeaderLine>>,
    pub text: String,
    pub html: Option<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct HeaderLine {
    pub name: String,
    pub value: String,
}

/// The header that differs on every attempt, left out of [`BuiltMail`].
pub const PER_ATTEMPT_HEADER: &str = "Date";

/// [`BuiltMail`] of the message `uuid` with this content, built by the code
/// that builds each attempt's mail.
pub fn built(uuid: Uuid, content: &Content, config: &Config) -> Result<BuiltMail, String> {
    let draft = Draft::new(uuid, content, config)?;
    let text = draft.text.clone();
    let html = draft.html.clone();
    let parts = draft.parts();
    let mut part_headers: Vec<_> = parts.iter().map(|p| header_lines(p.headers())).collect();
    let body = Body::join(parts);
    // The body's own headers follow the message's in the header block.
    let body_headers = match &body {
        Body::Single(part) => {
            part_headers.clear();
            header_lines(part.headers())
        }
        Body::Alternative(multi) => header_lines(multi.headers()),
    };
    let message = draft.assemble(body)?;
    let mut headers = header_lines(message.headers());
    headers.extend(body_headers);
    Ok(BuiltMail {
        headers,
        parts: part_headers,
        text,
        html,
    })
}

/// The headers as written, each value unencoded, but the
/// [`PER_ATTEMPT_HEADER`] and a multipart `boundary`.
fn header_lines(headers: &Headers) -> Vec<HeaderLine> {
    // `Headers` lists its names only through its wire form; each value is
    // then read back unencoded.
    let wire = headers.to_string();
    wire.lines()
        .filter(|l| !l.starts_with([' ', '\t']))
        .filter_map(|l| l.split_once(':').map(|(n, _)| n))
        .filter(|name| !name.eq_ignore_ascii_case(PER_ATTEMPT_HEADER))
        .filter_map(|name| {
            let value = headers.get_raw(name)?;
            Some(HeaderLine {
                name: name.to_owned(),
                value: if name.eq_ignore_ascii_case("Content-Type") {
                    without_boundary(value)
                } else {
                    value.to_owned()
                },
            })
        })
        .collect()
}

/// A content type without its `boundary` parameter.
fn without_boundary(value: &str) -> String {
    value
        .split(';')
        .map(str::trim)
        .filter(|p| !p.to_ascii_lowercase().starts_with("boundary="))
        .collect::<Vec<_>>()
        .join("; ")
}

/// A mail before its parts are put together: the headers, and the text and
/// HTML the parts will carry.
struct Draft {
    builder: MessageBuilder,
    text: String,
    html: Option<String>,
}

impl Draft {
    fn new(uuid: Uuid, content: &Content, config: &Config) -> Result<Self, String> {
        let from: Mailbox = config
            .default_from_email
            .parse()
            .map_err(|e| format!("DEFAULT_FROM_EMAIL: {e}"))?;
        let builder = Message::builder()
            .message_id(Some(message_id(uuid, &from)))
            .date_now()
            .from(from);
        Ok(match content {
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
                Self {
                    builder: builder
                        .to(to)
                        .reply_to(sender)
                        .subject(format!("Contact form: {sender_name} <{email}>")),
                    text: format!(
                        "New message from the contact form.\n\nName: {sender_name}\nEmail: {email}\n\n{message}\n"
                    ),
                    html: None,
                }
            }
            Content::Notify {
                to,
                subject,
                body,
                html,
                ..
            } => {
                let to: Mailbox = to.parse().map_err(|e| format!("recipient address: {e}"))?;
                Self {
                    builder: builder.to(to).subject(one_line(subject)),
                    text: body.clone(),
                    html: html.clone(),
                }
            }
        })
    }

    /// The text part, then the HTML part if there is one.
    fn parts(&self) -> Vec<SinglePart> {
        let mut parts = vec![SinglePart::plain(self.text.clone())];
        if let Some(html) = &self.html {
            parts.push(SinglePart::html(html.clone()));
        }
        parts
    }

    fn assemble(self, body: Body) -> Result<Message, String> {
        match body {
            Body::Single(part) => self.builder.singlepart(part),
            Body::Alternative(multi) => self.builder.multipart(multi),
        }
        .map_err(|e| format!("building the mail: {e}"))
    }
}

enum Body {
    Single(SinglePart),
    Alternative(MultiPart),
}

impl Body {
    /// One part is the whole body; two are multipart/alternative.
    fn join(parts: Vec<SinglePart>) -> Self {
        let mut parts = parts.into_iter();
        let first = parts.next().expect("a mail has a text part");
        match parts.next() {
            Some(html) => {
                Self::Alternative(MultiPart::alternative().singlepart(first).singlepart(html))
            }
            None => Self::Single(first),
        }
    }
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

    /// A notification with a non-ASCII subject and an HTML part.
    fn multipart_notification() -> MailJob {
        job(Content::Notify {
            to: "user@example.org".into(),
            subject: "Héllo".into(),
            body: "plain text".into(),
            html: Some("<p>html</p>".into()),
            metadata: None,
        })
    }

    #[test]
    fn notification_headers_and_stable_message_id() {
        let j = multipart_notification();
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
    fn the_built_view_shows_the_sent_headers_and_parts_but_no_date() {
        let j = multipart_notification();
        let view = built(j.uuid, &j.content, &config()).unwrap();
        let sent = String::from_utf8(build(&j, &config()).unwrap().formatted()).unwrap();
        let get = |name: &str| {
            view.headers
                .iter()
                .find(|h| h.name == name)
                .map(|h| h.value.as_str())
        };
        assert_eq!(
            get("Message-ID"),
            Some("<00000000-0000-0000-0000-000000000000@example.com>")
        );
        assert!(sent.contains(&format!("Message-ID: {}", get("Message-ID").unwrap())));
        assert_eq!(get("From"), Some("Blog <noreply@example.com>"));
        assert_eq!(get("To"), Some("user@example.org"));
        // Unencoded, as the operator reads it; the wire form is RFC 2047.
        assert_eq!(get("Subject"), Some("Héllo"));
        assert_eq!(get("Content-Type"), Some("multipart/alternative"));
        assert_eq!(get("Date"), None);
        let types: Vec<_> = view
            .parts
            .iter()
            .map(|p| {
                p.iter()
                    .find(|h| h.name == "Content-Type")
                    .unwrap()
                    .value
                    .as_str()
            })
            .collect();
        assert_eq!(
            types,
            ["text/plain; charset=utf-8", "text/html; charset=utf-8"]
        );
        assert_eq!(view.text, "plain text");
        assert_eq!(view.html.as_deref(), Some("<p>html</p>"));
        // Every header the sent mail has is shown, but the Date.
        for line in sent.split("\r\n\r\n").next().unwrap().lines() {
            if let Some((name, _)) = line.split_once(':').filter(|_| !line.starts_with(' ')) {
                assert!(name == "Date" || get(name).is_some(), "{name} missing");
            }
        }
        assert!(!view.headers.iter().any(|h| h.value.contains("boundary")));
    }

    #[test]
    fn the_built_view_of_a_contact_message_has_its_reply_to_and_text() {
        let j = job(Content::Contact {
            name: "Eve".into(),
            email: "eve@example.org".into(),
            message: "Hi there".into(),
        });
        let view = built(j.uuid, &j.content, &config()).unwrap();
        let names: Vec<_> = view.headers.iter().map(|h| h.name.as_str()).collect();
        for name in ["From", "To", "Reply-To", "Subject", "Message-ID"] {
            assert!(names.contains(&name), "{name} in {names:?}");
        }
        assert!(view.parts.is_empty());
        assert!(view.headers.contains(&HeaderLine {
            name: "Content-Type".into(),
            value: "text/plain; charset=utf-8".into()
        }));
        assert!(
            view.text
                .contains("Name: Eve\nEmail: eve@example.org\n\nHi there")
        );
        assert_eq!(view.html, None);
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
