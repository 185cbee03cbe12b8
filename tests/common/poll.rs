//! Waiting for a condition with one contract: try every 50 ms, return what
//! the check found, and fail the test (naming what was awaited and the last
//! state seen) once the time is up.

use std::fmt::Display;
use std::future::Future;
use std::time::{Duration, Instant};

const POLL_EVERY: Duration = Duration::from_millis(50);

/// What a check of [`poll_until`] may return: `true`, `Some(v)` or `Ok(v)`
/// when the wait is over; with `Err(e)`, `e` tells the last state seen.
pub trait Check {
    type Value;
    fn done(self) -> Result<Self::Value, String>;
}

impl Check for bool {
    type Value = ();
    fn done(self) -> Result<(), String> {
        if self { Ok(()) } else { Err(String::new()) }
    }
}

impl<T> Check for Option<T> {
    type Value = T;
    fn done(self) -> Result<T, String> {
        self.ok_or_else(String::new)
    }
}

impl<T, E: Display> Check for Result<T, E> {
    type Value = T;
    fn done(self) -> Result<T, String> {
        self.map_err(|e| e.to_string())
    }
}

/// Runs `check` until it is done and returns its value; panics after
/// `within`, naming `what` was awaited.
pub async fn poll_until<C, F, Fut>(within: Duration, what: &str, mut check: F) -> C::Value
where
    C: Check,
    F: FnMut() -> Fut,
    Fut: Future<Output = C>,
{
    let deadline = Instant::now() + within;
    loop {
        let last = match check().await.done() {
            Ok(value) => return value,
            Err(last) => last,
        };
        if Instant::now() >= deadline {
            let last = if last.is_empty() {
                String::new()
            } else {
                format!("; last: {last}")
            };
            panic!("timed out after {within:?} waiting for {what}{last}");
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
}
