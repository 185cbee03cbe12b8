//! email-service: accepts mail requests over HTTP, stores each one durably in
//! PostgreSQL before answering `202`, and delivers it in the background.
//!
//! Layout, from the bottom layer up (a module imports only from below it):
//! - [`config`], [`domain`], [`metrics`]: every setting, parsed and
//!   validated once; validated requests (built only through `parse`) and
//!   the delivery domain; the counters.
//! - [`store`] (all SQL, called only by the persistence and webhooks
//!   actors), [`queue`]
//!   (Redis), [`mail`] and [`smtp`] (building and sending mail).
//! - [`actors`]: the supervised tree (supervisor, persistence, dispatcher,
//!   mailers, webhooks), their messages and the registry of their addresses.
//! - [`http`]: routing, handlers and error bodies on raw hyper, and the
//!   `HttpIngress` actor that runs the accept loop.
//! - [`telemetry`]: JSON logs and the panic hook.
//!
//! [`run`] builds the whole application on a bound listener and runs it until
//! a shutdown future resolves, so tests start it on port 0 and stop it.

#![forbid(unsafe_code)]

pub mod actors;
pub mod config;
pub mod domain;
#[cfg(feature = "fault-injection")]
pub mod faults;
pub mod http;
pub mod mail;
pub mod metrics;
pub mod queue;
pub mod smtp;
pub mod store;
pub mod telemetry;
mod util;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use ractor::Actor;
use tokio::net::TcpListener;

use actors::protocol::SupervisorMsg;
use actors::registry::Registry;
use actors::supervisor::{SpawnIngress, Supervisor, SupervisorArgs};
use config::Config;
use http::AppContext;
use metrics::Metrics;

/// Connections in the PostgreSQL pool for requests (accepts, reads).
pub const DB_POOL_SIZE: u32 = 16;
/// Connections for delivery bookkeeping (claims, outcomes, the
/// reconciler): its own pool, so that neither path can take all the
/// connections the other needs.
pub const DB_BOOKKEEPING_POOL_SIZE: u32 = 8;
/// Connections of the webhook outbox (claims, results, the event list):
/// its own, so that a backlog of events never takes one from mail.
pub const DB_WEBHOOK_POOL_SIZE: u32 = 4;

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("configuration: {0}")]
    Config(String),
    #[error("could not start the actor tree: {0}")]
    Spawn(String),
    #[error("the supervisor stopped unexpectedly")]
    SupervisorDied,
}

/// Runs the service on `listener` until `shutdown` resolves, then drains:
/// no new connections, in-flight requests finish (up to `SHUTDOWN_TIMEOUT`),
/// the actors stop in dependency order. Queued messages stay queued in
/// PostgreSQL for the next start.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RunError> {
    let pg_config = store::pg_config(config.database_url.expose())
        .map_err(|e| RunError::Config(e.to_string()))?;
    let pool = store::pool(pg_config.clone(), DB_POOL_SIZE);
    let bookkeeping = store::pool(
        store::bookkeeping_config(pg_config.clone()),
        DB_BOOKKEEPING_POOL_SIZE,
    );
    let webhook_pool = store::pool(pg_config.clone(), DB_WEBHOOK_POOL_SIZE);
    let queue = queue::Queue::new(config.redis_url.expose(), &config.redis_key_prefix)
        .map_err(|e| RunError::Config(format!("REDIS_URL: {e}")))?;
    let backend = mail::Backend::from_config(&config).map_err(RunError::Config)?;
    if config.api_tokens.is_empty() {
        tracing::warn!(
            "API_TOKEN is not set: the internal endpoints are open to anyone who can reach this port"
        );
    }
    let shutdown_timeout = config.shutdown_timeout;
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, backend = ?config.email_backend, "email-service listening");
    }
    let config = Arc::new(config);
    let registry = Arc::new(Registry::default());
    let metrics = Arc::new(Metrics::new());
    let ctx = Arc::new(AppContext::new(
        config.clone(),
        registry.clone(),
        metrics.clone(),
    ));
    let listener = Arc::new(listener);
    let spawn_ingress: SpawnIngress = Box::new(move |supervisor| {
        Box::pin(http::ingress::spawn(
            listener.clone(),
            ctx.clone(),
            supervisor,
        ))
    });
    let args = SupervisorArgs {
        spawn_ingress,
        config,
        metrics,
        registry,
        pool,
        bookkeeping,
        webhook_pool,
        pg_config,
        queue,
        backend,
    };
    let (supervisor, handle) = Actor::spawn(None, Supervisor, args)
        .await
        .map_err(|e| RunError::Spawn(e.to_string()))?;

    tokio::pin!(handle);
    tokio::select! {
        _ = shutdown => {}
        _ = &mut handle => return Err(RunError::SupervisorDied),
    }

    tracing::info!(
        timeout_s = shutdown_timeout.as_secs(),
        "shutting down: draining"
    );
    let wait_ms = (shutdown_timeout + Duration::from_secs(5)).as_millis() as u64;
    let drained = ractor::call_t!(
        supervisor,
        SupervisorMsg::Shutdown,
        wait_ms,
        shutdown_timeout
    )
    .unwrap_or(false);
    supervisor.stop(None);
    let _ = handle.await;
    tracing::info!(drained, "shutdown complete");
    Ok(())
}
