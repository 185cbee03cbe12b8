//! The actor tree. Each actor has the same shape: the actor type, its
//! `Args` and its `State`, and a `Msg` enum (queries carry an
//! `RpcReplyPort`). Every actor answers a `Report` query with what it knows
//! of itself.
//!
//! The messages the actors exchange live in [`protocol`], and where each
//! actor currently lives in [`registry`], kept by the supervisor: actors
//! reach each other, and the HTTP layer reaches them, only through those
//! two, so no actor imports another's file (persistence and webhooks, which
//! talk to no actor, keep their message types beside them). The `HttpIngress` actor
//! belongs to the HTTP layer (`http::ingress`); the supervisor starts it
//! through a function handed over at start.
//!
//! ```text
//! Supervisor
//! ├── Persistence   (PostgreSQL, the source of truth)
//! ├── Dispatcher    (Redis stream + retry schedule; hands jobs to mailers)
//! ├── Mailer × N    (one send at a time each)
//! ├── Webhooks      (status events from the outbox to their receivers)
//! └── HttpIngress   (accept loop, one task per connection; in http/)
//! ```

pub mod dispatcher;
pub mod ledger;
pub mod mailer;
pub mod persistence;
pub mod protocol;
pub mod registry;
pub mod supervisor;
pub mod webhooks;
mod work;
