//! An SMTP server for the tests, on 127.0.0.1, speaking enough real SMTP for
//! lettre (EHLO, MAIL, RCPT, DATA, RSET, NOOP, QUIT) and controlled by the
//! test: accept, answer `451` to the first N messages, reject with `550`,
//! answer slowly, hang after the data, or be down (port closed) and come back
//! on the same port.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

#[derive(Debug, Clone, PartialEq)]
pub enum Mode {
    Accept,
    /// `451` at the end of DATA for the next `n` messages, then accept.
    TempFail(usize),
    /// `550` at the end of DATA, always.
    Reject,
    /// Wait this long before answering the end of DATA, then accept.
    Slow(Duration),
    /// Never answer the end of DATA.
    Hang,
}

#[derive(Debug, Clone)]
pub struct Received {
    pub message_id: Option<String>,
    pub rcpt: Vec<String>,
    pub raw: String,
    /// When the end of its DATA was accepted.
    pub at: chrono::DateTime<chrono::Utc>,
}

#[derive(Default)]
struct State {
    mode: Option<Mode>,
    received: Vec<Received>,
    /// Every end-of-DATA seen, whatever the answer.
    attempts: usize,
    /// Every `MAIL FROM`: transactions opened, completed or not.
    envelopes: usize,
}

pub struct SmtpSink {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    server: Mutex<Option<JoinHandle<()>>>,
}

impl SmtpSink {
    pub async fn start(mode: Mode) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind sink");
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State {
            mode: Some(mode),
            ..State::default()
        }));
        let server = tokio::spawn(serve(listener, state.clone()));
        Self {
            addr,
            state,
            server: Mutex::new(Some(server)),
        }
    }

    pub fn set_mode(&self, mode: Mode) {
        self.state.lock().unwrap().mode = Some(mode);
    }

    /// Closes the port: connections are refused until [`up`](Self::up).
    pub fn down(&self) {
        if let Some(server) = self.server.lock().unwrap().take() {
            server.abort();
        }
    }

    /// Listens again on the same port.
    pub async fn up(&self) {
        let listener = rebind(self.addr).await;
        let server = tokio::spawn(serve(listener, self.state.clone()));
        *self.server.lock().unwrap() = Some(server);
    }

    pub fn received(&self) -> Vec<Received> {
        self.state.lock().unwrap().received.clone()
    }

    pub fn attempts(&self) -> usize {
        self.state.lock().unwrap().attempts
    }

    /// Mail transactions opened (`MAIL FROM`), whether or not their
    /// content followed.
    pub fn envelopes(&self) -> usize {
        self.state.lock().unwrap().envelopes
    }

    /// Deliveries per `Message-ID`.
    pub fn by_message_id(&self) -> HashMap<String, usize> {
        let mut counts = HashMap::new();
        for r in self.received() {
            *counts.entry(r.message_id.unwrap_or_default()).or_insert(0) += 1;
        }
        counts
    }
}

/// Listens again on `addr`, which a test server let go of a moment ago (to
/// be "down"): retried for a little while, as the port may not be free again
/// at once. The webhook sink uses it too.
pub async fn rebind(addr: std::net::SocketAddr) -> tokio::net::TcpListener {
    let mut tries = 0;
    loop {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => return l,
            Err(_) if tries < 50 => {
                tries += 1;
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            Err(e) => panic!("could not listen on {addr} again: {e}"),
        }
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        self.down();
    }
}

async fn serve(listener: TcpListener, state: Arc<Mutex<State>>) {
    serve_each(listener, |stream| session(stream, state.clone())).await;
}

async fn session(stream: TcpStream, state: Arc<Mutex<State>>) {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read);
    if write.write_all(b"220 sink ESMTP test\r\n").await.is_err() {
        return;
    }
    let mut rcpt = Vec::new();
    let mut line = String::new();
    loop {
        line.clear();
        match lines.read_line(&mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let upper = line.trim_end().to_ascii_uppercase();
        let reply: &[u8] = if upper.starts_with("EHLO") {
            b"250-sink\r\n250-8BITMIME\r\n250 SMTPUTF8\r\n"
        } else if upper.starts_with("HELO") {
            b"250 sink\r\n"
        } else if upper.starts_with("MAIL FROM") {
            rcpt.clear();
            state.lock().unwrap().envelopes += 1;
            b"250 2.1.0 Ok\r\n"
        } else if upper.starts_with("RCPT TO") {
            rcpt.push(line.trim_end()[8..].trim().to_owned());
            b"250 2.1.5 Ok\r\n"
        } else if upper == "DATA" {
            if write
                .write_all(b"354 End data with <CR><LF>.<CR><LF>\r\n")
                .await
                .is_err()
            {
                return;
            }
            let mut raw = String::new();
            loop {
                line.clear();
                match lines.read_line(&mut line).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
                if line == ".\r\n" || line == ".\n" {
                    break;
                }
                raw.push_str(line.strip_prefix('.').unwrap_or(&line));
            }
            let mode = {
                let mut s = state.lock().unwrap();
                s.attempts += 1;
                let mode = s.mode.clone().unwrap_or(Mode::Accept);
                if let Mode::TempFail(n) = mode {
                    s.mode = Some(if n > 1 {
                        Mode::TempFail(n - 1)
                    } else {
                        Mode::Accept
                    });
                }
                mode
            };
            match mode {
                Mode::TempFail(_) => b"451 4.3.0 Try again later\r\n",
                Mode::Reject => b"550 5.1.1 Mailbox unavailable\r\n",
                Mode::Hang => std::future::pending().await,
                Mode::Slow(d) => {
                    // Slept by the OS timer, to within a fraction of a
                    // millisecond: tokio's timer ends a sleep on its next
                    // millisecond tick, so a 20 ms relay would answer in
                    // 20 to 21 ms and the bench's relay figures would
                    // measure the tick.
                    let _ = tokio::task::spawn_blocking(move || std::thread::sleep(d)).await;
                    accept(&state, &raw, &rcpt);
                    b"250 2.0.0 Ok: queued\r\n"
                }
                Mode::Accept => {
                    accept(&state, &raw, &rcpt);
                    b"250 2.0.0 Ok: queued\r\n"
                }
            }
        } else if upper.starts_with("RSET") || upper.starts_with("NOOP") {
            b"250 2.0.0 Ok\r\n"
        } else if upper.starts_with("QUIT") {
            let _ = write.write_all(b"221 2.0.0 Bye\r\n").await;
            return;
        } else {
            b"502 5.5.2 Command not recognized\r\n"
        };
        if write.write_all(reply).await.is_err() {
            return;
        }
    }
}

fn accept(state: &Mutex<State>, raw: &str, rcpt: &[String]) {
    let message_id = raw
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("message-id:"))
        .map(|l| l[11..].trim().to_owned());
    state.lock().unwrap().received.push(Received {
        message_id,
        rcpt: rcpt.to_vec(),
        raw: raw.to_owned(),
        at: chrono::Utc::now(),
    });
}

/// Serves each connection `listener` accepts with `session`, in a task the
/// returned future owns: aborting the server (a sink going "down") also cuts
/// the open connections, as a stopped server would.
pub async fn serve_each<F, Fut>(listener: tokio::net::TcpListener, mut session: F)
where
    F: FnMut(tokio::net::TcpStream) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        connections.spawn(session(stream));
        while connections.try_join_next().is_some() {}
    }
}
