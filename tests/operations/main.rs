//! What an operator relies on: token auth, the contact rate limit, metrics,
//! a truthful /healthz (including a Redis that dies and comes back), and the
//! drain on shutdown.

#[path = "../support/mod.rs"]
mod support;

mod access;
mod health;
