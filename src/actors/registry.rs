//! The address book: where each actor lives right now.
//!
//! The supervisor owns it and is the only writer: it records an actor when
//! it spawns one and forgets it when that actor exits, so a reader always
//! reaches the live instance or learns that there is none (the actor is
//! restarting). Everything outside the actor tree (the HTTP handlers,
//! `/healthz`) reaches the actors only through it.
//!
//! One registry per running service rather than ractor's process-wide
//! named registry: the tests run several instances in one process.

use std::sync::RwLock;

use ractor::ActorRef;

use super::persistence::PersistenceMsg;
use super::protocol::{DispatcherMsg, IngressMsg, MailerMsg, SupervisorMsg};
use super::webhooks::WebhooksMsg;

#[derive(Default)]
pub struct Registry {
    supervisor: RwLock<Option<ActorRef<SupervisorMsg>>>,
    persistence: RwLock<Option<ActorRef<PersistenceMsg>>>,
    dispatcher: RwLock<Option<ActorRef<DispatcherMsg>>>,
    mailers: RwLock<Vec<Option<ActorRef<MailerMsg>>>>,
    ingress: RwLock<Option<ActorRef<IngressMsg>>>,
    webhooks: RwLock<Option<ActorRef<WebhooksMsg>>>,
}

/// Reads a lock that a panicking writer may have poisoned: the data (an
/// actor address) is always whole, so poisoning carries no meaning here.
fn read<T: Clone>(lock: &RwLock<T>) -> T {
    lock.read().unwrap_or_else(|e| e.into_inner()).clone()
}

fn write<T>(lock: &RwLock<T>, value: T) {
    *lock.write().unwrap_or_else(|e| e.into_inner()) = value;
}

impl Registry {
    pub fn supervisor(&self) -> Option<ActorRef<SupervisorMsg>> {
        read(&self.supervisor)
    }

    pub fn persistence(&self) -> Option<ActorRef<PersistenceMsg>> {
        read(&self.persistence)
    }

    pub fn dispatcher(&self) -> Option<ActorRef<DispatcherMsg>> {
        read(&self.dispatcher)
    }

    pub fn mailer(&self, index: usize) -> Option<ActorRef<MailerMsg>> {
        read(&self.mailers).get(index).cloned().flatten()
    }

    /// Every mailer slot, `None` where that mailer is restarting.
    pub fn mailers(&self) -> Vec<Option<ActorRef<MailerMsg>>> {
        read(&self.mailers)
    }

    pub fn ingress(&self) -> Option<ActorRef<IngressMsg>> {
        read(&self.ingress)
    }

    pub fn webhooks(&self) -> Option<ActorRef<WebhooksMsg>> {
        read(&self.webhooks)
    }

    pub(super) fn set_webhooks(&self, actor: Option<ActorRef<WebhooksMsg>>) {
        write(&self.webhooks, actor);
    }

    pub(super) fn set_supervisor(&self, actor: ActorRef<SupervisorMsg>) {
        write(&self.supervisor, Some(actor));
    }

    pub(super) fn set_persistence(&self, actor: Option<ActorRef<PersistenceMsg>>) {
        write(&self.persistence, actor);
    }

    pub(super) fn set_dispatcher(&self, actor: Option<ActorRef<DispatcherMsg>>) {
        write(&self.dispatcher, actor);
    }

    pub(super) fn set_ingress(&self, actor: Option<ActorRef<IngressMsg>>) {
        write(&self.ingress, actor);
    }

    pub(super) fn set_mailer(&self, index: usize, actor: Option<ActorRef<MailerMsg>>) {
        let mut mailers = self.mailers.write().unwrap_or_else(|e| e.into_inner());
        if mailers.len() <= index {
            mailers.resize(index + 1, None);
        }
        mailers[index] = actor;
    }
}
