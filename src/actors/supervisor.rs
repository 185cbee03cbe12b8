//! The `Supervisor`: root of the actor tree.
//!
//! It spawns and links every child, keeps what is needed to rebuild each one
//! (the listener, the pool, the shared context), and overrides
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
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use serde::Serialize;
use tokio::net::TcpListener;

use super::ingress::{HttpIngress, IngressArgs, IngressMsg};
use super::persistence::{Persistence, PersistenceArgs, PersistenceMsg};
use crate::http::AppContext;
use crate::store::Pool;

pub struct Supervisor;

/// The children, by role. Each role has at most one live actor at a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Child {
    HttpIngress,
    Persistence,
}

pub enum SupervisorMsg {
    Report(RpcReplyPort<SupervisorReport>),
    /// Drain and stop the children; answers whether the drain finished in time.
    Shutdown(Duration, RpcReplyPort<bool>),
    /// A restart whose backoff has elapsed.
    Respawn(Child),
}

pub struct SupervisorArgs {
    pub listener: TcpListener,
    pub ctx: Arc<AppContext>,
    pub pool: Pool,
    pub pg_config: tokio_postgres::Config,
}

pub struct SupervisorState {
    listener: Option<Arc<TcpListener>>,
    ctx: Arc<AppContext>,
    pool: Pool,
    pg_config: tokio_postgres::Config,
    schema_ready: Arc<AtomicBool>,
    ingress: Option<ActorRef<IngressMsg>>,
    persistence: Option<ActorRef<PersistenceMsg>>,
    health: BTreeMap<Child, ChildHealth>,
    shutting_down: bool,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct ChildHealth {
    pub alive: bool,
    pub restarts: u32,
    #[serde(skip)]
    streak: u32,
    #[serde(skip)]
    last_failure: Option<Instant>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SupervisorReport {
    pub children: BTreeMap<Child, ChildHealth>,
}

/// A failure this long after the previous one starts a new backoff streak.
const STREAK_RESET: Duration = Duration::from_secs(60);

fn backoff(streak: u32) -> Duration {
    (Duration::from_millis(100) * 2u32.pow(streak.min(6))).min(Duration::from_secs(5))
}

impl SupervisorState {
    fn child_of(&self, cell: &ActorCell) -> Option<Child> {
        let id = cell.get_id();
        if self.ingress.as_ref().is_some_and(|a| a.get_id() == id) {
            Some(Child::HttpIngress)
        } else if self.persistence.as_ref().is_some_and(|a| a.get_id() == id) {
            Some(Child::Persistence)
        } else {
            None
        }
    }

    async fn spawn(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        child: Child,
    ) -> Result<(), ActorProcessingErr> {
        match child {
            Child::HttpIngress => {
                let Some(listener) = self.listener.clone() else {
                    return Ok(());
                };
                let args = IngressArgs {
                    listener,
                    ctx: self.ctx.clone(),
                };
                let (actor, _) =
                    Actor::spawn_linked(None, HttpIngress, args, myself.get_cell()).await?;
                self.ingress = Some(actor);
            }
            Child::Persistence => {
                let args = PersistenceArgs {
                    pool: self.pool.clone(),
                    pg_config: self.pg_config.clone(),
                    schema_ready: self.schema_ready.clone(),
                };
                let (actor, _) =
                    Actor::spawn_linked(None, Persistence, args, myself.get_cell()).await?;
                self.ctx.peers.set_persistence(actor.clone());
                self.persistence = Some(actor);
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
        args.ctx.peers.set_supervisor(myself.clone());
        let mut state = SupervisorState {
            listener: Some(Arc::new(args.listener)),
            ctx: args.ctx,
            pool: args.pool,
            pg_config: args.pg_config,
            schema_ready: Arc::new(AtomicBool::new(false)),
            ingress: None,
            persistence: None,
            health: BTreeMap::new(),
            shutting_down: false,
        };
        // Dependencies first: the ingress needs persistence to answer.
        state.spawn(&myself, Child::Persistence).await?;
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
                    children: state.health.clone(),
                });
            }
            SupervisorMsg::Respawn(child) => {
                if state.shutting_down {
                    return Ok(());
                }
                if let Err(e) = state.spawn(&myself, child).await {
                    tracing::error!(?child, error = %e, "restart failed; trying again");
                    schedule_restart(&myself, state, child);
                } else {
                    tracing::info!(?child, "child restarted");
                }
            }
            SupervisorMsg::Shutdown(deadline, reply) => {
                state.shutting_down = true;
                // Closing our handle on the listener (the accept loop drops
                // its own when it stops) makes the kernel refuse new
                // connections.
                state.listener = None;
                let mut drained = true;
                if let Some(ingress) = state.ingress.take() {
                    let wait_ms = deadline.as_millis() as u64 + 1000;
                    drained = ractor::call_t!(ingress, IngressMsg::Drain, wait_ms, deadline)
                        .unwrap_or(false);
                    ingress
                        .stop_and_wait(None, Some(Duration::from_secs(2)))
                        .await
                        .ok();
                }
                if let Some(persistence) = state.persistence.take() {
                    persistence
                        .stop_and_wait(None, Some(Duration::from_secs(2)))
                        .await
                        .ok();
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
        match child {
            Child::HttpIngress => state.ingress = None,
            Child::Persistence => state.persistence = None,
        }
        if let Some(h) = state.health.get_mut(&child) {
            h.alive = false;
        }
        if state.shutting_down {
            return Ok(());
        }
        tracing::error!(?child, %reason, "child actor exited; restarting");
        schedule_restart(&myself, state, child);
        Ok(())
    }
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
