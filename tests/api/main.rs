//! The HTTP API against a real PostgreSQL (one fresh database per test) and
//! Redis (one key prefix per test). Needs `TEST_DATABASE_URL` and
//! `TEST_REDIS_URL`; see `helpers.rs`.

mod blocked;
mod helpers;
mod idempotency;
mod protocol;
mod read;
mod validation;
