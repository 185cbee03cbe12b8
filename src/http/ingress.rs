//! The `HttpIngress` actor: owns the accept loop on the shared listener.
//!
//! The loop runs as a task tied to the actor's state, so if the actor dies
//! the loop is aborted, and the supervisor's restart starts a new loop on the
//! same listener: connections already open keep being served by their own
//! tasks. The actor answers a state query (open connections) and a drain
//! request used by the shutdown sequence.
//!
//! It is the one actor of the HTTP layer: the supervisor starts it through
//! [`spawn`], handed over by `lib.rs`, and never imports this module.

use std::sync::Arc;

use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, SpawnErr};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc, oneshot};

use super::AppContext;
use super::server::{self, DrainRequest, MAX_CONNECTIONS};
use crate::actors::protocol::{IngressMsg, IngressReport};
use crate::util::AbortOnDrop;

pub struct HttpIngress;

pub struct IngressArgs {
    pub listener: Arc<TcpListener>,
    pub ctx: Arc<AppContext>,
}

pub struct IngressState {
    connections: Arc<Semaphore>,
    drain: mpsc::Sender<DrainRequest>,
    _accept_loop: AbortOnDrop,
}

impl Actor for HttpIngress {
    type Msg = IngressMsg;
    type State = IngressState;
    type Arguments = IngressArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        let connections = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        let (drain, drain_rx) = mpsc::channel(1);
        let accept_loop = tokio::spawn(server::accept_loop(
            args.listener,
            args.ctx,
            connections.clone(),
            drain_rx,
        ));
        Ok(IngressState {
            connections,
            drain,
            _accept_loop: AbortOnDrop(accept_loop),
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            IngressMsg::Report(reply) => {
                let _ = reply.send(IngressReport {
                    open_connections: MAX_CONNECTIONS - state.connections.available_permits(),
                    max_connections: MAX_CONNECTIONS,
                });
            }
            IngressMsg::Drain(deadline, reply) => {
                let (done, done_rx) = oneshot::channel();
                let sent = state.drain.send(DrainRequest { deadline, done }).await;
                // Answer from a task so that state queries stay answerable
                // while connections drain.
                tokio::spawn(async move {
                    let finished = match sent {
                        Ok(()) => done_rx.await.unwrap_or(false),
                        Err(_) => true,
                    };
                    let _ = reply.send(finished);
                });
            }
        }
        Ok(())
    }
}

/// Starts an ingress on `listener`, linked to `supervisor`.
pub async fn spawn(
    listener: Arc<TcpListener>,
    ctx: Arc<AppContext>,
    supervisor: ActorCell,
) -> Result<ActorRef<IngressMsg>, SpawnErr> {
    let args = IngressArgs { listener, ctx };
    let (actor, _) = Actor::spawn_linked(None, HttpIngress, args, supervisor).await?;
    Ok(actor)
}
