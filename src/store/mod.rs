//! All SQL of the service. Only the `Persistence` actor calls into this module
//! (and the `Webhooks` actor, for the outbox's delivery side, `webhooks`);
//! the functions here take a pool and do one unit of work each, and every
//! other file of the crate reaches it through the names re-exported here.
//!
//! What the store guarantees, and which file keeps each promise:
//!
//! - a `202` stands for a committed, deliverable message, and a retried
//!   request with the same key or uuid gets the first answer back, byte for
//!   byte (`accept`);
//! - a database that is down, hung or unreachable makes a request fail
//!   quickly as unavailable (`503`) instead of hanging it, and the service
//!   starts without one (`pool`, `error`);
//! - a connection whose work was cut off mid-statement never serves another
//!   request (`conn`);
//! - of several dispatchers exactly one claims a due message, and only the
//!   holder of a claim records its outcome (`delivery`);
//! - work a stopped sender left is taken back, never from a live one, and
//!   work Redis forgot is found again (`recovery`);
//! - an operator's cancel or resend changes a message only from the
//!   statuses it may, and has one winner against a claim (`control`); a
//!   bulk one does so in short batches (`bulk`); each change is recorded
//!   with it (`events`), and an `Idempotency-Key` answers a repeat as the
//!   first time on every endpoint that takes one (`keys`);
//! - a status event is recorded in the transaction of the outcome that
//!   causes it, and is claimed for delivery by one instance at a time,
//!   under a lease (`webhooks`);
//! - the schema is created and migrated once, even by instances starting
//!   together (`migrate`).

mod accept;
mod bulk;
mod conn;
mod control;
pub mod delivery;
mod error;
mod events;
mod filter;
mod keys;
pub mod migrate;
mod pool;
mod purge;
mod read;
pub mod recovery;
pub mod webhooks;

pub use accept::{AcceptOutcome, AcceptRequest, accept, accept_batch, purge_expired_keys};
pub use bulk::{BatchOutcome, BulkBatch, BulkKey, bulk_batch, bulk_finish, bulk_lookup};
pub use conn::{Pool, checkout};
pub use control::{ActionOutcome, ActionRequest, act};
pub use error::StoreError;
pub use events::{EventView, Origin};
pub use keys::KeyClaim;
pub use pool::{CHECKOUT_TIMEOUT, STATEMENT_TIMEOUT, bookkeeping_config, pg_config, ping, pool};
pub use read::{
    AttemptView, COUNT_CAP, ListQuery, MessageRef, MessageView, Page, Paging, get, list,
};
