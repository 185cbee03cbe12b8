//! The accept loop: one task per connection, HTTP/1.1 with keep-alive, a
//! header-read timeout against slowloris, and a bound on open connections
//! (past it, new connections wait in the kernel's backlog rather than costing
//! memory here).
//!
//! Draining: on request the loop stops accepting, lets go of its listener,
//! asks every open connection to finish its in-flight request and close, and
//! reports whether they all did before the deadline.

use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc, oneshot};

use super::AppContext;

/// Open connections at most; each costs a task and its buffers.
pub const MAX_CONNECTIONS: usize = 4096;

/// A client must send a complete request head within this time.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// A request to stop accepting and drain, answered with whether every
/// connection closed in time.
pub struct DrainRequest {
    pub deadline: Duration,
    pub done: oneshot::Sender<bool>,
}

pub async fn accept_loop(
    listener: Arc<TcpListener>,
    ctx: Arc<AppContext>,
    connections: Arc<Semaphore>,
    mut drain: mpsc::Receiver<DrainRequest>,
) {
    let graceful = GracefulShutdown::new();
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .keep_alive(true);

    let request = loop {
        let permit = tokio::select! {
            req = drain.recv() => break req,
            permit = connections.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => break None,
            },
        };
        let (stream, peer) = tokio::select! {
            req = drain.recv() => break req,
            accepted = listener.accept() => match accepted {
                Ok(s) => s,
                Err(e) => {
                    // Usually EMFILE or a connection reset before accept:
                    // back off a little instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let ctx = ctx.clone();
        let service = service_fn(move |req| super::handle(req, ctx.clone(), peer));
        let conn = builder.serve_connection(TokioIo::new(stream), service);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, %peer, "connection ended with an error");
            }
            drop(permit);
        });
    };

    drop(listener);
    let Some(DrainRequest { deadline, done }) = request else {
        return;
    };
    let open = graceful.count();
    let finished = tokio::select! {
        _ = graceful.shutdown() => true,
        _ = tokio::time::sleep(deadline) => false,
    };
    if !finished {
        tracing::warn!(
            open_at_start = open,
            "HTTP connections still open at the shutdown deadline"
        );
    }
    let _ = done.send(finished);
}
