//! The `Supervisor`: root of the actor tree.
//!
//! It spawns and links every child, keeps what is needed to rebuild each one
//! (the pools, the queue, the mail backend, a way to start the HTTP
//! ingress), and overrides
//! `handle_supervisor_evt` so that a child that fails or stops on its own is
//! restarted after a short backoff instead of taking the tree down (ractor's
//! default). Restarts are counted per child and reported to `/healthz`.
//!
//! Shutdown is a sequence, not a cascade: ractor kills children without their
//! `post_stop` when a parent stops, so `Shutdown` first drains the ingress
//! (no new connections; in-flight requests finish), then stops the children
//! in dependency order, and only then does the caller stop the supervisor.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, SpawnErr, SupervisionEvent};

use super::dispatcher::{Dispatcher, DispatcherArgs};
use super::ledger::ClaimLedger;
use super::mailer::{Mailer, MailerArgs, MailerStats};
use super::persistence::{Persistence, PersistenceArgs, PersistenceMsg};
use super::protocol::{
    Child, ChildHealth, DispatcherMsg, IngressMsg, MailerMsg, SupervisorMsg, SupervisorReport,
};
use super::registry::Registry;
use super::webhooks::{Webhooks, WebhooksArgs, WebhooksMsg};
use crate::config::Config;
use crate::mail::Backend;
use crate::metrics::{ChildLabels, Metrics};
use crate::queue::Queue;
use crate::store::Pool;
use crate::store::webhooks::Outbox;

pub struct Supervisor;

/// How the supervisor starts (and restarts) the HTTP ingress. The ingress
/// lives in the HTTP layer above the actors, so the layer that builds the
/// service hands the supervisor this instead of the supervisor importing it.
/// Dropping it lets go of the listener.
pub type SpawnIngress = Box<
    dyn Fn(ActorCell) -> BoxFuture<'static, Result<ActorRef<IngressMsg>, SpawnErr>> + Send + Sync,
>;

pub struct SupervisorArgs {
    pub spawn_ingress: SpawnIngress,
    pub config: Arc<Config>,
    pub metrics: Arc<Metrics>,
    pub registry: Arc<Registry>,
    pub pool: Pool,
    pub bookkeeping: Pool,
    /// The webhook outbox's own connections.
    pub webhook_pool: Pool,
    pub pg_config: tokio_postgres::Config,
    pub queue: Queue,
    pub backend: Backend,
}

pub struct SupervisorState {
    spawn_ingress: Option<SpawnIngress>,
    config: Arc<Config>,
    metrics: Arc<Metrics>,
    registry: Arc<Registry>,
    pool: Pool,
    bookkeeping: Pool,
    webhook_pool: Pool,
    pg_config: tokio_postgres::Config,
    queue: Queue,
    backend: Backend,
    /// Where status events go; persistence records them with outcomes.
    outbox: Arc<Outbox>,
    schema_ready: Arc<AtomicBool>,
    mailer_stats: Vec<Arc<MailerStats>>,
    /// What delivery owes the database, kept across dispatcher restarts.
    claim_ledger: Arc<ClaimLedger>,
    ingress: Option<ActorRef<IngressMsg>>,
    persistence: Option<ActorRef<PersistenceMsg>>,
    dispatcher: Option<ActorRef<DispatcherMsg>>,
    mailers: Vec<Option<ActorRef<MailerMsg>>>,
    webhooks: Option<ActorRef<WebhooksMsg>>,
    health: BTreeMap<Child, ChildHealth>,
    shutting_down: bool,
}

/// A failure this long after the previous one starts a new backoff streak.
const STREAK_RESET: Duration = Duration::from_secs(60);

fn backoff(streak: u32) -> Duration {
    (Duration::from_millis(100) * 2u32.pow(streak.min(6))).min(Duration::from_secs(5))
}

impl SupervisorState {
    fn child_of(&self, cell: &ActorCell) -> Option<Child> {
        let id = cell.get_id();
        let is = |a: Option<ActorCell>| a.is_some_and(|a| a.get_id() == id);
        if is(self.ingress.as_ref().map(|a| a.get_cell())) {
            Some(Child::HttpIngress)
        } else if is(self.persistence.as_ref().map(|a| a.get_cell())) {
            Some(Child::Persistence)
        } else if is(self.dispatcher.as_ref().map(|a| a.get_cell())) {
            Some(Child::Dispatcher)
        } else if is(self.webhooks.as_ref().map(|a| a.get_cell())) {
            Some(Child::Webhooks)
        } else {
            self.mailers
                .iter()
                .position(|m| is(m.as_ref().map(|a| a.get_cell())))
                .map(Child::Mailer)
        }
    }

    /// Forgets a child that exited, everywhere it was known.
    fn forget(&mut self, child: Child) {
        match child {
            Child::HttpIngress => {
                self.ingress = None;
                self.registry.set_ingress(None);
            }
            Child::Persistence => {
                self.persistence = None;
                self.registry.set_persistence(None);
            }
            Child::Dispatcher => {
                self.dispatcher = None;
                self.registry.set_dispatcher(None);
            }
            Child::Mailer(i) => {
                self.mailers[i] = None;
                self.registry.set_mailer(i, None);
            }
            Child::Webhooks => {
                self.webhooks = None;
                self.registry.set_webhooks(None);
            }
        }
        if let Some(h) = self.health.get_mut(&child) {
            h.alive = false;
        }
    }

    async fn spawn(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        child: Child,
    ) -> Result<(), ActorProcessingErr> {
        match child {
            Child::HttpIngress => {
                let Some(spawn) = &self.spawn_ingress else {
                    return Ok(());
                };
                let actor = spawn(myself.get_cell()).await?;
                self.registry.set_ingress(Some(actor.clone()));
                self.ingress = Some(actor);
            }
            Child::Persistence => {
                let args = PersistenceArgs {
                    pool: self.pool.clone(),
                    bookkeeping: self.bookkeeping.clone(),
                    pg_config: self.pg_config.clone(),
                    schema_ready: self.schema_ready.clone(),
                    retry: self.config.retry.clone(),
                    outbox: self.outbox.clone(),
                };
                let (actor, _) =
                    Actor::spawn_linked(None, Persistence, args, myself.get_cell()).await?;
                self.registry.set_persistence(Some(actor.clone()));
                self.persistence = Some(actor);
            }
            Child::Dispatcher => {
                let args = DispatcherArgs {
                    metrics: self.metrics.clone(),
                    config: self.config.clone(),
                    registry: self.registry.clone(),
                    queue: self.queue.clone(),
                    mailers: self.mailers.len(),
                    ledger: self.claim_ledger.clone(),
                    schema_ready: self.schema_ready.clone(),
                };
                let (actor, _) =
                    Actor::spawn_linked(None, Dispatcher, args, myself.get_cell()).await?;
                self.registry.set_dispatcher(Some(actor.clone()));
                self.dispatcher = Some(actor);
            }
            Child::Mailer(i) => {
                let args = MailerArgs {
                    index: i,
                    backend: self.backend.clone(),
                    config: self.config.clone(),
                    registry: self.registry.clone(),
                    stats: self.mailer_stats[i].clone(),
                    ledger: self.claim_ledger.clone(),
                };
                let (actor, _) = Actor::spawn_linked(None, Mailer, args, myself.get_cell()).await?;
                self.registry.set_mailer(i, Some(actor.clone()));
                self.mailers[i] = Some(actor);
                if let Some(d) = &self.dispatcher {
                    let _ = d.cast(DispatcherMsg::MailerUp(i));
                }
            }
            Child::Webhooks => {
                let args = WebhooksArgs {
                    config: self.config.clone(),
                    metrics: self.metrics.clone(),
                    pool: self.webhook_pool.clone(),
                    schema_ready: self.schema_ready.clone(),
                };
                let (actor, _) =
                    Actor::spawn_linked(None, Webhooks, args, myself.get_cell()).await?;
                self.registry.set_webhooks(Some(actor.clone()));
                self.webhooks = Some(actor);
            }
        }
        self.health.entry(child).or_default().alive = true;
        Ok(())
    }
}

impl Actor for Supervisor {
    type Msg = SupervisorMsg;
    type State = SupervisorState;
    type Arguments = SupervisorArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        args.registry.set_supervisor(myself.clone());
        let workers = args.config.mailer_workers;
        let outbox = Arc::new(Outbox::new(&args.config));
        let mut state = SupervisorState {
            spawn_ingress: Some(args.spawn_ingress),
            config: args.config,
            metrics: args.metrics,
            registry: args.registry,
            pool: args.pool,
            bookkeeping: args.bookkeeping,
            webhook_pool: args.webhook_pool,
            pg_config: args.pg_config,
            queue: args.queue,
            backend: args.backend,
            outbox,
            schema_ready: Arc::new(AtomicBool::new(false)),
            mailer_stats: (0..workers).map(|_| Arc::default()).collect(),
            claim_ledger: Arc::default(),
            ingress: None,
            persistence: None,
            dispatcher: None,
            mailers: vec![None; workers],
            webhooks: None,
            health: BTreeMap::new(),
            shutting_down: false,
        };
        // Dependencies first: mailers report to the dispatcher, which asks
        // persistence; the ingress needs all of them to answer.
        state.spawn(&myself, Child::Persistence).await?;
        for i in 0..workers {
            state.spawn(&myself, Child::Mailer(i)).await?;
        }
        state.spawn(&myself, Child::Dispatcher).await?;
        state.spawn(&myself, Child::Webhooks).await?;
        state.spawn(&myself, Child::HttpIngress).await?;
        Ok(state)
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            SupervisorMsg::Report(reply) => {
                let _ = reply.send(SupervisorReport {
                    children: state
                        .health
                        .iter()
                        .map(|(c, h)| (c.name(), h.clone()))
                        .collect(),
                });
            }
            SupervisorMsg::Respawn(child) => {
                if state.shutting_down {
                    return Ok(());
                }
                if let Err(e) = state.spawn(&myself, child).await {
                    tracing::error!(child = %child.name(), error = %e, "restart failed; trying again");
                    schedule_restart(&myself, state, child);
                } else {
                    tracing::info!(child = %child.name(), "child restarted");
                    if child == Child::Dispatcher {
                        // A new dispatcher starts with every slot unknown.
                        for (i, m) in state.mailers.iter().enumerate() {
                            if m.is_some()
                                && let Some(d) = &state.dispatcher
                            {
                                let _ = d.cast(DispatcherMsg::MailerUp(i));
                            }
                        }
                    }
                }
            }
            SupervisorMsg::Shutdown(deadline, reply) => {
                state.shutting_down = true;
                // Closing our handle on the listener (the accept loop drops
                // its own when it stops) makes the kernel refuse new
                // connections.
                state.spawn_ingress = None;
                let mut drained = true;
                let started = Instant::now();
                let left = || deadline.saturating_sub(started.elapsed());
                let wait_ms = |d: Duration| d.as_millis() as u64 + 1000;
                // 1. No new requests; in-flight ones finish (they may still
                //    need persistence and the dispatcher).
                if let Some(ingress) = state.ingress.take() {
                    let d = left();
                    drained &=
                        ractor::call_t!(ingress, IngressMsg::Drain, wait_ms(d), d).unwrap_or(false);
                    stop(ingress.get_cell()).await;
                }
                // 2. No new jobs; sends in flight finish and are recorded.
                if let Some(dispatcher) = state.dispatcher.take() {
                    let d = left();
                    drained &= ractor::call_t!(dispatcher, DispatcherMsg::Drain, wait_ms(d), d)
                        .unwrap_or(false);
                    stop(dispatcher.get_cell()).await;
                }
                // 3. Mailers are idle now (or past the deadline), then the
                //    database goes last.
                for mailer in state.mailers.iter_mut().filter_map(Option::take) {
                    stop(mailer.get_cell()).await;
                }
                // An attempt cut off here is due again when its lease ends.
                if let Some(webhooks) = state.webhooks.take() {
                    stop(webhooks.get_cell()).await;
                }
                if let Some(persistence) = state.persistence.take() {
                    stop(persistence.get_cell()).await;
                }
                let _ = reply.send(drained);
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let (cell, reason) = match &event {
            SupervisionEvent::ActorFailed(cell, err) => (cell, format!("failed: {err}")),
            SupervisionEvent::ActorTerminated(cell, _, reason) => (
                cell,
                format!("stopped: {}", reason.as_deref().unwrap_or("no reason")),
            ),
            _ => return Ok(()),
        };
        let Some(child) = state.child_of(cell) else {
            return Ok(());
        };
        state.forget(child);
        if state.shutting_down {
            return Ok(());
        }
        tracing::error!(child = %child.name(), %reason, "child actor exited; restarting");
        if let Child::Mailer(i) = child {
            state.mailer_stats[i]
                .restarts
                .fetch_add(1, Ordering::Relaxed);
            // The dispatcher holds the job this mailer was sending: it
            // records a crash attempt and schedules the retry.
            if let Some(d) = &state.dispatcher {
                let _ = d.cast(DispatcherMsg::MailerDown(i, reason.clone()));
            }
        }
        schedule_restart(&myself, state, child);
        Ok(())
    }
}

/// Stops a child and waits a little for it; a child that does not stop in
/// time is killed by the supervisor's own stop afterwards.
async fn stop(cell: ActorCell) {
    let _ = cell.stop_and_wait(None, Some(Duration::from_secs(2))).await;
}

fn schedule_restart(myself: &ActorRef<SupervisorMsg>, state: &mut SupervisorState, child: Child) {
    let h = state.health.entry(child).or_default();
    let now = Instant::now();
    if h.last_failure
        .is_none_or(|t| now.duration_since(t) > STREAK_RESET)
    {
        h.streak = 0;
    }
    h.restarts += 1;
    h.last_failure = Some(now);
    state
        .metrics
        .actor_restarts
        .get_or_create(&ChildLabels {
            child: child.name(),
        })
        .inc();
    let delay = backoff(h.streak);
    h.streak += 1;
    myself.send_after(delay, move || SupervisorMsg::Respawn(child));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        assert_eq!(backoff(0), Duration::from_millis(100));
        assert_eq!(backoff(1), Duration::from_millis(200));
        assert_eq!(backoff(10), Duration::from_secs(5));
    }
}
