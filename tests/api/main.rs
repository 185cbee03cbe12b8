//! The HTTP API against a real PostgreSQL (one fresh database per test) and
//! Redis (one key prefix per test). Needs `TEST_DATABASE_URL` and
//! `TEST_REDIS_URL`; see `tests/common`.

#[path = "../common/mod.rs"]
mod common;

mod admin;
mod blocked;
mod control;
mod cors;
mod filters;
mod idempotency;
mod operator;
mod protocol;
mod read;
mod send_at;
mod validation;
