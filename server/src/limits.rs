//! Per-source limits of the host and the relay.
//!
//! - [`PerIpLimiter`]: live connections per source, for the host's mesh WebSocket and the
//!   relay. A permit is taken when a socket is accepted and released when it is dropped, so
//!   the count is always the number of live sockets from that source and cannot leak.
//!   Sources are bucketed by [`rate_bucket`] (IPv6 by /64), like the failure limiter: one
//!   IPv6 subscriber cannot multiply its cap by using more of its own addresses.
//! - [`JoinRateLimiter`]: failed credential attempts (bad token, unknown device) per source
//!   within a sliding window; past the limit a source's joins are refused `rate_limited`
//!   until its old failures age out. Sources are bucketed by [`rate_bucket`] (IPv6 by /64).

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::time::Instant;

/// Counts live connections per source ([`rate_bucket`]) and refuses past `max`.
#[derive(Debug)]
pub struct PerIpLimiter {
    max: usize,
    counts: Mutex<HashMap<String, usize>>,
}

/// One live connection from a source; released on drop.
#[derive(Debug)]
pub struct IpPermit {
    limiter: Arc<PerIpLimiter>,
    source: String,
}

impl PerIpLimiter {
    /// A limiter allowing `max` concurrent connections per source.
    pub fn new(max: usize) -> Arc<PerIpLimiter> {
        Arc::new(PerIpLimiter {
            max,
            counts: Mutex::new(HashMap::new()),
        })
    }

    /// The cap in force.
    pub fn max(&self) -> usize {
        self.max
    }

    fn counts(&self) -> MutexGuard<'_, HashMap<String, usize>> {
        // The map holds plain counters; a panic elsewhere cannot leave it inconsistent.
        self.counts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes a slot for the source of `ip`, or `None` when that source already has `max`
    /// live connections.
    pub fn try_acquire(self: &Arc<Self>, ip: IpAddr) -> Option<IpPermit> {
        let source = rate_bucket(ip);
        let mut counts = self.counts();
        let n = counts.get(&source).copied().unwrap_or(0);
        if n >= self.max {
            return None;
        }
        counts.insert(source.clone(), n + 1);
        Some(IpPermit {
            limiter: self.clone(),
            source,
        })
    }
}

impl Drop for IpPermit {
    fn drop(&mut self) {
        let mut counts = self.limiter.counts();
        if let Some(n) = counts.get_mut(&self.source) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.source);
            }
        }
    }
}

/// The rate-limit bucket of an address. One IPv6 subscriber usually holds a whole /64, so
/// per-address buckets would let it guess tokens from 2^64 "different" sources. An
/// IPv4-mapped IPv6 address is its IPv4 address.
pub fn rate_bucket(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => {
                let s = v6.segments();
                format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
            }
        },
    }
}

/// Sources tracked before stale ones are swept out.
const RATE_SWEEP_ABOVE: usize = 4096;
/// Sweeps happen at most this often, so a flood of distinct sources costs one full scan
/// per interval rather than one per failed join.
const RATE_SWEEP_EVERY: Duration = Duration::from_secs(1);

/// Per-source sliding window of failed credential attempts: a source with `limit` failures
/// within `window` is blocked until the oldest of them is `window` old.
///
/// Memory stays bounded under a distributed attack: above [`RATE_SWEEP_ABOVE`] sources, a
/// failure (at most once per [`RATE_SWEEP_EVERY`]) forgets every source without a failure
/// in the window.
#[derive(Debug)]
pub struct JoinRateLimiter {
    limit: usize,
    window: Duration,
    log: Mutex<FailureLog>,
}

/// The failures per source and when stale sources were last swept out.
#[derive(Debug, Default)]
struct FailureLog {
    failures: HashMap<String, VecDeque<Instant>>,
    last_sweep: Option<Instant>,
}

impl JoinRateLimiter {
    /// Blocks a source after `limit` failures within `window`.
    pub fn new(limit: usize, window: Duration) -> JoinRateLimiter {
        JoinRateLimiter {
            limit,
            window,
            log: Mutex::new(FailureLog::default()),
        }
    }

    fn log(&self) -> MutexGuard<'_, FailureLog> {
        // Plain timestamps; a panic elsewhere cannot leave them inconsistent.
        self.log.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn prune(q: &mut VecDeque<Instant>, now: Instant, window: Duration) {
        while q.front().is_some_and(|t| now.duration_since(*t) >= window) {
            q.pop_front();
        }
    }

    /// Whether source `key` has used up its failures at `now`.
    pub fn is_blocked(&self, key: &str, now: Instant) -> bool {
        match self.log().failures.get_mut(key) {
            Some(q) => {
                Self::prune(q, now, self.window);
                q.len() >= self.limit
            }
            None => false,
        }
    }

    /// Records a failure of source `key` at `now`; returns true when this very failure
    /// reached the limit (the source is blocked from now on), so the caller can say so
    /// once.
    pub fn record_failure(&self, key: &str, now: Instant) -> bool {
        let window = self.window;
        let mut log = self.log();
        let sweep_due = log
            .last_sweep
            .is_none_or(|t| now.duration_since(t) >= RATE_SWEEP_EVERY);
        if log.failures.len() > RATE_SWEEP_ABOVE && sweep_due {
            log.last_sweep = Some(now);
            log.failures.retain(|_, q| {
                Self::prune(q, now, window);
                !q.is_empty()
            });
        }
        let q = log.failures.entry(key.to_string()).or_default();
        Self::prune(q, now, window);
        q.push_back(now);
        q.len() == self.limit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_rate_limiter_blocks_after_limit_and_forgets_after_window() {
        let w = Duration::from_secs(60);
        let rl = JoinRateLimiter::new(3, w);
        let t0 = Instant::now();
        for i in 1..=3 {
            assert_eq!(rl.record_failure("a", t0), i == 3, "failure {i}");
        }
        assert!(rl.is_blocked("a", t0));
        assert!(!rl.is_blocked("b", t0));
        assert!(!rl.is_blocked("a", t0 + w));
    }

    #[test]
    fn join_rate_limiter_sweeps_stale_sources_at_most_once_a_second() {
        let w = Duration::from_secs(60);
        let rl = JoinRateLimiter::new(10, w);
        let sources = || rl.log().failures.len();
        let t0 = Instant::now();
        for i in 0..=RATE_SWEEP_ABOVE {
            rl.record_failure(&format!("old{i}"), t0);
        }
        // A window later the old sources are stale: the next failure sweeps them out.
        let t1 = t0 + w;
        rl.record_failure("new0", t1);
        assert_eq!(sources(), 1, "stale sources were not swept");
        // Refill past the threshold within the same second: no second scan yet.
        for i in 0..=RATE_SWEEP_ABOVE {
            rl.record_failure(&format!("burst{i}"), t1 - w);
        }
        let before = sources();
        rl.record_failure("new1", t1 + Duration::from_millis(500));
        assert_eq!(sources(), before + 1, "swept twice within a second");
        rl.record_failure("new2", t1 + RATE_SWEEP_EVERY);
        assert_eq!(sources(), 3, "the next due sweep keeps only live sources");
    }

    #[test]
    fn one_ipv6_subscriber_is_one_bucket_however_many_addresses_it_uses() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(
            rate_bucket(ip("2001:db8:0:1::7")),
            rate_bucket(ip("2001:db8:0:1:ffff::9"))
        );
        assert_eq!(rate_bucket(ip("2001:db8:0:1::7")), "2001:db8:0:1::/64");
        assert_ne!(
            rate_bucket(ip("2001:db8:0:1::7")),
            rate_bucket(ip("2001:db8:0:2::7"))
        );
        assert_eq!(rate_bucket(ip("192.0.2.7")), "192.0.2.7");
        assert_eq!(rate_bucket(ip("::ffff:192.0.2.7")), "192.0.2.7");
    }

    #[test]
    fn slots_are_limited_per_ip_and_released_on_drop() {
        let l = PerIpLimiter::new(2);
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let other: IpAddr = "127.0.0.2".parse().unwrap();
        let a = l.try_acquire(ip).unwrap();
        let _b = l.try_acquire(ip).unwrap();
        assert!(l.try_acquire(ip).is_none());
        assert!(l.try_acquire(other).is_some(), "limits are per address");
        drop(a);
        assert_eq!(l.counts().get("127.0.0.1"), Some(&1));
        assert!(l.try_acquire(ip).is_some());
    }

    #[test]
    fn one_ipv6_subscriber_shares_one_connection_cap() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let l = PerIpLimiter::new(2);
        let _a = l.try_acquire(ip("2001:db8:0:1::7")).unwrap();
        let _b = l.try_acquire(ip("2001:db8:0:1:ffff::9")).unwrap();
        assert!(
            l.try_acquire(ip("2001:db8:0:1::abcd")).is_none(),
            "another address of the same /64 got past the cap"
        );
        assert!(
            l.try_acquire(ip("2001:db8:0:2::7")).is_some(),
            "a different /64 is a different source"
        );
        let _c = l.try_acquire(ip("192.0.2.7")).unwrap();
        let _d = l.try_acquire(ip("192.0.2.7")).unwrap();
        assert!(
            l.try_acquire(ip("::ffff:192.0.2.7")).is_none(),
            "mapped IPv4 is its IPv4"
        );
        assert!(
            l.try_acquire(ip("192.0.2.8")).is_some(),
            "IPv4 stays per address"
        );
    }

    #[test]
    fn zero_cap_refuses_without_leaving_entries() {
        let l = PerIpLimiter::new(0);
        let ip: IpAddr = "::1".parse().unwrap();
        assert!(l.try_acquire(ip).is_none());
        assert!(l.counts().is_empty());
    }
}
