//! Per-client-IP rate limit for the public contact form.
//!
//! A fixed one-minute window per IP: simple, exact about the configured
//! "requests per minute", and cheap. The whole table is dropped when the
//! minute changes, and it never holds more than [`MAX_TRACKED`] addresses, so
//! memory stays bounded however many distinct clients (or spoofed sources)
//! arrive; past that bound, new addresses are let through untracked rather
//! than refused, because refusing would let one flood block everyone.
//!
//! The client IP is the TCP peer address. Behind a reverse proxy, every
//! request shares the proxy's address: put the limit in the proxy instead,
//! or leave `CONTACT_RATE_LIMIT` at 0.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

pub const MAX_TRACKED: usize = 100_000;
const WINDOW_SECS: u64 = 60;

pub struct RateLimiter {
    limit: u32,
    table: Mutex<Window>,
}

#[derive(Default)]
struct Window {
    minute: u64,
    counts: HashMap<IpAddr, u32>,
}

/// The verdict for one request, with what the headers need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    pub limit: u32,
    pub remaining: u32,
    /// Seconds until the window resets.
    pub reset: u64,
}

impl RateLimiter {
    /// `limit` requests per minute per IP; 0 turns the limiter off.
    pub fn new(limit: u32) -> Self {
        Self {
            limit,
            table: Mutex::new(Window::default()),
        }
    }

    pub fn enabled(&self) -> bool {
        self.limit > 0
    }

    pub fn check(&self, ip: IpAddr) -> Decision {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        self.check_at(ip, now)
    }

    fn check_at(&self, ip: IpAddr, now_secs: u64) -> Decision {
        let minute = now_secs / WINDOW_SECS;
        let reset = WINDOW_SECS - now_secs % WINDOW_SECS;
        // The lock is held for a hash-map update only, never across an await.
        let mut w = self.table.lock().unwrap_or_else(|e| e.into_inner());
        if w.minute != minute {
            w.minute = minute;
            w.counts.clear();
        }
        let tracked = w.counts.len();
        let count = match w.counts.get_mut(&ip) {
            Some(c) => {
                *c = c.saturating_add(1);
                *c
            }
            None if tracked >= MAX_TRACKED => 1,
            None => {
                w.counts.insert(ip, 1);
                1
            }
        };
        Decision {
            allowed: count <= self.limit,
            limit: self.limit,
            remaining: self.limit.saturating_sub(count),
            reset,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_per_ip_and_resets_each_minute() {
        let rl = RateLimiter::new(2);
        let a: IpAddr = [10, 0, 0, 1].into();
        let b: IpAddr = [10, 0, 0, 2].into();
        let t = 6_000_000;
        assert!(rl.check_at(a, t).allowed);
        assert!(rl.check_at(a, t + 1).allowed);
        let third = rl.check_at(a, t + 2);
        assert!(!third.allowed);
        assert_eq!(third.remaining, 0);
        assert_eq!(third.reset, 58);
        assert!(rl.check_at(b, t + 3).allowed);
        assert!(rl.check_at(a, t + 60).allowed, "a new minute starts afresh");
    }

    #[test]
    fn memory_is_bounded_under_many_addresses() {
        let rl = RateLimiter::new(1);
        for i in 0..(MAX_TRACKED as u32 + 5000) {
            rl.check_at(IpAddr::from(i.to_be_bytes()), 120);
        }
        assert_eq!(rl.table.lock().unwrap().counts.len(), MAX_TRACKED);
    }
}
