//! What an operator relies on: token auth, the contact rate limit, metrics,
//! a truthful /healthz (including a Redis that dies and comes back), and the
//! drain on shutdown, and the purge of expired idempotency keys.

#[path = "../common/mod.rs"]
mod common;

mod access;
mod health;
mod metrics;
mod purge;
