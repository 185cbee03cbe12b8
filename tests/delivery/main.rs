//! Delivery against the real PostgreSQL and Redis and a test-controlled SMTP
//! sink: one delivery per message, retries on the schedule, permanent
//! failures, exhausted retries, mailer crashes, lost Redis state, two
//! instances, each backend, and SMTP over STARTTLS, implicit TLS and AUTH.

#[path = "../common/mod.rs"]
mod common;

mod backends;
mod bulk;
mod control;
mod crashes;
mod failures;
mod gate;
mod leases;
mod normal;
mod plans;
mod recovery;
mod schedule;
mod tls;
/// Only this suite needs the TLS sink (it costs a certificate per test).
#[path = "../common/tls_sink.rs"]
mod tls_sink;
