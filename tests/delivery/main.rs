//! Delivery against the real PostgreSQL and Redis and a test-controlled SMTP
//! sink: one delivery per message, retries on the schedule, permanent
//! failures, exhausted retries, mailer crashes, lost Redis state, two
//! instances, and each backend.

#[path = "../common/mod.rs"]
mod common;

mod backends;
mod control;
mod crashes;
mod failures;
mod leases;
mod normal;
mod plans;
mod recovery;
