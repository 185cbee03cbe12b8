//! The actor tree. Each file holds one actor in the same shape: the actor
//! type, its `Msg` enum (queries carry an `RpcReplyPort`), its `Args` and its
//! `State`. Every actor answers a `Report` query with what it knows of itself.
//!
//! ```text
//! Supervisor
//! ├── Persistence   (PostgreSQL, the source of truth)
//! ├── Dispatcher    (Redis stream + retry schedule; hands jobs to mailers)
//! ├── Mailer × N    (one send at a time each)
//! └── HttpIngress   (accept loop, one task per connection)
//! ```

pub mod dispatcher;
pub mod ingress;
pub mod mailer;
pub mod persistence;
pub mod supervisor;
