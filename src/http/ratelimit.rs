//! Per-client rate limit for the public contact form.
//!
//! A keyed GCRA limiter from `governor`: each client gets `limit` requests
//! at once and one more every `60 s / limit` (so never more than `limit` in
//! a burst, and `limit` per minute sustained). A client is its IPv4 address,
//! or the /64 prefix of its IPv6 address: one host usually holds a whole
//! /64, so counting each of its 2^64 addresses apart would let it walk past
//! the limit. An IPv4 address seen through a dual-stack socket
//! (`::ffff:a.b.c.d`) counts as that IPv4 address.
//!
//! There is no fixed cap on the number of clients tracked, hence nothing
//! that turns the limit off once a flood has filled a table: the table is
//! pruned instead ([`PRUNE_EVERY`]) of every client whose budget is whole
//! again, which takes at most a minute after its last request. Memory is
//! therefore bounded by the distinct clients seen in the last two minutes
//! (a few tens of bytes each), not by how many ever came.
//!
//! The client is the TCP peer address. Behind a reverse proxy, every
//! request shares the proxy's address: put the limit in the proxy instead,
//! or leave `CONTACT_RATE_LIMIT` at 0.

use std::net::{IpAddr, Ipv6Addr};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use governor::clock::{Clock, MonotonicClock, Reference};
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::HashMapStateStore;
use governor::{Quota, RateLimiter as Gcra};

/// The period the limit is stated for (`RateLimit-Policy: w=60`).
const WINDOW: Duration = Duration::from_secs(60);
/// How often clients whose budget is whole again are forgotten.
const PRUNE_EVERY: Duration = WINDOW;

/// Who is counted: an IPv4 address or an IPv6 /64 prefix.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub struct ClientKey(IpAddr);

impl ClientKey {
    pub fn of(ip: IpAddr) -> Self {
        match ip.to_canonical() {
            IpAddr::V4(v4) => Self(IpAddr::V4(v4)),
            IpAddr::V6(v6) => {
                let s = v6.segments();
                Self(IpAddr::V6(Ipv6Addr::new(
                    s[0], s[1], s[2], s[3], 0, 0, 0, 0,
                )))
            }
        }
    }
}

type Keyed<C> = Gcra<ClientKey, HashMapStateStore<ClientKey>, C, StateInformationMiddleware>;

/// The contact limiter. The clock is a parameter so that tests can drive
/// time (`governor::clock::FakeRelativeClock`); the service uses the
/// monotonic clock.
pub struct RateLimiter<C: Clock = MonotonicClock> {
    limit: u32,
    /// `None` when the limit is 0 (off).
    keyed: Option<Keyed<C>>,
    start: C::Instant,
    /// When the table was last pruned, in nanoseconds after `start`.
    pruned_at: AtomicU64,
}

/// The verdict for one request, with what the headers need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    pub limit: u32,
    pub remaining: u32,
    /// Seconds until the whole budget is back (allowed), or until the next
    /// request may pass (refused: the `Retry-After`).
    pub reset: u64,
}

impl RateLimiter {
    /// `limit` requests per minute per client; 0 turns the limiter off.
    pub fn new(limit: u32) -> Self {
        Self::with_clock(limit, MonotonicClock)
    }
}

impl<C: Clock + Clone> RateLimiter<C> {
    pub fn with_clock(limit: u32, clock: C) -> Self {
        let start = clock.now();
        let keyed = NonZeroU32::new(limit).map(|n| {
            Keyed::new(
                Quota::per_minute(n),
                HashMapStateStore::default(),
                clock.clone(),
            )
        });
        Self {
            limit,
            keyed,
            start,
            pruned_at: AtomicU64::new(0),
        }
    }
}

impl<C: Clock> RateLimiter<C> {
    pub fn enabled(&self) -> bool {
        self.keyed.is_some()
    }

    /// Counts one request from `ip`. Never call it while disabled: a
    /// disabled limiter lets everything through and says so with a limit
    /// of 0.
    pub fn check(&self, ip: IpAddr) -> Decision {
        let Some(keyed) = &self.keyed else {
            return Decision {
                allowed: true,
                limit: 0,
                remaining: 0,
                reset: 0,
            };
        };
        self.prune_if_due(keyed);
        match keyed.check_key(&ClientKey::of(ip)) {
            Ok(state) => {
                let remaining = state.remaining_burst_capacity();
                let used = self.limit.saturating_sub(remaining);
                let refill = state.quota().replenish_interval() * used;
                Decision {
                    allowed: true,
                    limit: self.limit,
                    remaining,
                    reset: ceil_secs(refill.min(WINDOW)),
                }
            }
            Err(not_until) => {
                let wait = not_until.wait_time_from(keyed.clock().now());
                Decision {
                    allowed: false,
                    limit: self.limit,
                    remaining: 0,
                    reset: ceil_secs(wait).max(1),
                }
            }
        }
    }

    /// Clients tracked now.
    pub fn tracked(&self) -> usize {
        self.keyed.as_ref().map_or(0, Keyed::len)
    }

    /// Forgets clients whose budget is whole again, once per
    /// [`PRUNE_EVERY`]; one request at a time does it.
    fn prune_if_due(&self, keyed: &Keyed<C>) {
        let now = u64::from(keyed.clock().now().duration_since(self.start));
        let last = self.pruned_at.load(Ordering::Relaxed);
        let every = u64::try_from(PRUNE_EVERY.as_nanos()).unwrap_or(u64::MAX);
        if now.saturating_sub(last) >= every
            && self
                .pruned_at
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            keyed.retain_recent();
            keyed.shrink_to_fit();
        }
    }
}

fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

#[cfg(test)]
mod tests {
    use governor::clock::FakeRelativeClock;

    use super::*;

    fn limiter(limit: u32) -> (RateLimiter<FakeRelativeClock>, FakeRelativeClock) {
        let clock = FakeRelativeClock::default();
        (RateLimiter::with_clock(limit, clock.clone()), clock)
    }

    #[test]
    fn counts_per_client_and_refills_over_the_minute() {
        let (rl, clock) = limiter(2);
        let a: IpAddr = [10, 0, 0, 1].into();
        let b: IpAddr = [10, 0, 0, 2].into();
        let first = rl.check(a);
        assert_eq!(
            first,
            Decision {
                allowed: true,
                limit: 2,
                remaining: 1,
                reset: 30
            }
        );
        let second = rl.check(a);
        assert!(second.allowed);
        assert_eq!((second.remaining, second.reset), (0, 60));
        clock.advance(Duration::from_secs(10));
        let third = rl.check(a);
        assert_eq!(
            third,
            Decision {
                allowed: false,
                limit: 2,
                remaining: 0,
                reset: 20
            },
            "refused until one request's share of the minute has passed"
        );
        assert!(rl.check(b).allowed, "another client has its own budget");
        clock.advance(Duration::from_secs(20));
        assert!(rl.check(a).allowed, "one more after 30 s");
        assert!(!rl.check(a).allowed);
        clock.advance(Duration::from_secs(60));
        assert!(rl.check(a).allowed, "a quiet minute restores the budget");
        assert!(rl.check(a).allowed);
        assert!(!rl.check(a).allowed);
    }

    #[test]
    fn a_refusal_always_says_to_wait_at_least_a_second() {
        let (rl, clock) = limiter(1);
        let a: IpAddr = [10, 0, 0, 1].into();
        assert!(rl.check(a).allowed);
        clock.advance(Duration::from_millis(59_999));
        let d = rl.check(a);
        assert!(!d.allowed);
        assert_eq!(d.reset, 1);
    }

    #[test]
    fn addresses_in_one_ipv6_64_share_a_budget() {
        let (rl, _clock) = limiter(1);
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(rl.check(ip("2001:db8:1:2::1")).allowed);
        assert!(!rl.check(ip("2001:db8:1:2::2")).allowed);
        assert!(!rl.check(ip("2001:db8:1:2:ffff:ffff:ffff:ffff")).allowed);
        assert!(rl.check(ip("2001:db8:1:3::1")).allowed, "another /64");
        // IPv4 through a dual-stack socket is still per IPv4 address, not
        // one /64 for every IPv4 client.
        assert!(rl.check(ip("::ffff:192.0.2.1")).allowed);
        assert!(!rl.check(ip("192.0.2.1")).allowed, "the same client");
        assert!(rl.check(ip("::ffff:192.0.2.2")).allowed);
    }

    #[test]
    fn many_clients_do_not_turn_the_limit_off() {
        let (rl, _clock) = limiter(1);
        // More clients than any fixed table would hold.
        for i in 0..150_000u32 {
            assert!(
                rl.check(IpAddr::from((0x0a00_0000 + i).to_be_bytes()))
                    .allowed
            );
        }
        let late: IpAddr = [192, 0, 2, 7].into();
        assert!(rl.check(late).allowed);
        assert!(!rl.check(late).allowed, "a client arriving last is limited");
        let early: IpAddr = [10, 0, 0, 0].into();
        assert!(
            !rl.check(early).allowed,
            "the first client is still counted"
        );
    }

    #[test]
    fn memory_is_bounded_by_recent_clients() {
        let (rl, clock) = limiter(3);
        for i in 0..50_000u32 {
            rl.check(IpAddr::from(i.to_be_bytes()));
        }
        assert_eq!(rl.tracked(), 50_000);
        // A client that spends its budget just before the prune...
        clock.advance(Duration::from_secs(50));
        let a: IpAddr = [192, 0, 2, 1].into();
        for _ in 0..3 {
            assert!(rl.check(a).allowed);
        }
        clock.advance(Duration::from_secs(11));
        // ...and the 50,000 idle for a minute, at the first request after
        // the prune is due.
        let c: IpAddr = [192, 0, 2, 3].into();
        assert!(rl.check(c).allowed);
        assert_eq!(rl.tracked(), 2, "only a and c are left");
        assert!(!rl.check(a).allowed, "a is still limited after the prune");
    }
}
