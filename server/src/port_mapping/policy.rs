//! The port-mapping lifecycle as a sans-IO state machine on virtual time.
//!
//! The async shell ([`super::PortMapper`]) owns the sockets and the clock; it asks
//! [`Lifecycle::poll`] what to do at time `now_ms` (any monotonic origin), executes the
//! returned [`Step`], reports the outcome with [`Lifecycle::mapped`] or
//! [`Lifecycle::failed`], and sleeps until [`Lifecycle::deadline_ms`]. Tests drive the same
//! code with made-up times and no network.
//!
//! ## The rules
//!
//! - Nothing held and the retry time reached → [`Step::Map`] (the shell tries the protocols
//!   in order and keeps the first that maps).
//! - A mapping is renewed at **half its granted lifetime** ([`Step::Renew`]); a permanent one
//!   (lifetime 0, IGDs that only do permanent leases) is re-asserted every
//!   [`PERMANENT_RECHECK_MS`] so a router reboot does not lose it for good.
//! - A failed map waits a [`Backoff`] delay (30 s doubling to 30 min, jittered) before the
//!   next try: a network with no mapping gateway costs one probe per half hour, not a flood.
//!   After the first failure the status is `unavailable` ("give up cleanly"), but the
//!   retries go on: a router may get UPnP switched on, or the laptop may move.
//! - A failed renewal keeps the mapping (it is still valid until it expires) and retries with
//!   the backoff, never later than its expiry; once expired it is dropped and mapped afresh.
//! - When the route (local address or gateway) differs from the one the mapping was made on,
//!   the mapping is stale → [`Step::Remap`] (the shell removes the old one, best effort,
//!   and maps again) — this is "re-map when the network changes".
//! - No default route → [`Step::Wait`]: nothing to ask; checked again with the route poll.

use atmosphere_shared::backoff::Backoff;
use std::net::IpAddr;
use std::time::Duration;

/// First delay after a failed map or renewal.
pub const RETRY_FIRST: Duration = Duration::from_secs(30);
/// Longest delay between retries.
pub const RETRY_MAX: Duration = Duration::from_secs(30 * 60);
/// How often a permanent (lifetime 0) mapping is asserted again.
pub const PERMANENT_RECHECK_MS: u64 = 60 * 60 * 1000;
/// Renewals never come closer together than this, whatever lifetime the gateway grants.
pub const MIN_RENEW_MS: u64 = 1000;

/// Where the host sits: its address toward the gateway and the gateway itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    pub local_ip: IpAddr,
    pub gateway: IpAddr,
}

/// What the shell should do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Nothing to do until [`Lifecycle::deadline_ms`] (or a route change).
    Wait,
    /// Try to create a mapping on `route`.
    Map(Route),
    /// Renew the mapping held.
    Renew,
    /// The network changed: remove the mapping held (best effort), then map on `route`.
    Remap(Route),
}

/// A mapping the shell holds, as the policy sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Held {
    route: Route,
    /// Granted lifetime in ms; 0 = permanent.
    lifetime_ms: u64,
    /// When it was granted or last renewed.
    since_ms: u64,
}

impl Held {
    fn renew_at(&self) -> u64 {
        if self.lifetime_ms == 0 {
            self.since_ms + PERMANENT_RECHECK_MS
        } else {
            self.since_ms + (self.lifetime_ms / 2).max(MIN_RENEW_MS)
        }
    }

    fn expires_at(&self) -> Option<u64> {
        (self.lifetime_ms != 0).then_some(self.since_ms + self.lifetime_ms)
    }
}

/// The lifecycle state; see the module documentation.
#[derive(Debug, Clone)]
pub struct Lifecycle {
    held: Option<Held>,
    /// When the next map or renewal try is due.
    next_ms: u64,
    backoff: Backoff,
    /// A step was handed out and its outcome is not reported yet.
    in_flight: Option<Step>,
}

impl Lifecycle {
    /// A lifecycle that wants to map at once.
    pub fn new(now_ms: u64) -> Lifecycle {
        Lifecycle {
            held: None,
            next_ms: now_ms,
            backoff: Backoff::new(RETRY_FIRST, RETRY_MAX),
            in_flight: None,
        }
    }

    /// Whether a mapping is held.
    pub fn is_mapped(&self) -> bool {
        self.held.is_some()
    }

    /// What to do at `now_ms` on `route` (`None`: no default route).
    pub fn poll(&mut self, now_ms: u64, route: Option<Route>) -> Step {
        if self.in_flight.is_some() {
            return Step::Wait;
        }
        // An expired mapping is gone whether or not renewals failed.
        if let Some(h) = self.held {
            if h.expires_at().is_some_and(|e| now_ms >= e) {
                self.held = None;
                self.next_ms = now_ms;
            }
        }
        let Some(route) = route else {
            return Step::Wait;
        };
        let step = match self.held {
            Some(h) if h.route != route => Step::Remap(route),
            Some(_) if now_ms >= self.next_ms => Step::Renew,
            None if now_ms >= self.next_ms => Step::Map(route),
            _ => Step::Wait,
        };
        if step != Step::Wait {
            self.in_flight = Some(step);
        }
        step
    }

    /// The step handed out succeeded: a mapping with `lifetime_ms` (0 = permanent) is held
    /// on `route` since `now_ms`.
    pub fn mapped(&mut self, now_ms: u64, route: Route, lifetime_ms: u64) {
        self.in_flight = None;
        let held = Held {
            route,
            lifetime_ms,
            since_ms: now_ms,
        };
        self.next_ms = held.renew_at();
        self.held = Some(held);
        self.backoff.reset();
    }

    /// The step handed out failed at `now_ms`; `random_unit` in `[0, 1)` jitters the retry.
    /// A failed map or remap leaves nothing held; a failed renewal keeps the mapping until
    /// it expires.
    pub fn failed(&mut self, now_ms: u64, random_unit: f64) {
        let step = self.in_flight.take();
        let delay = self.backoff.next_delay(random_unit).as_millis() as u64;
        let mut next = now_ms + delay;
        match step {
            Some(Step::Renew) => {
                if let Some(e) = self.held.and_then(|h| h.expires_at()) {
                    next = next.min(e);
                }
            }
            _ => self.held = None,
        }
        self.next_ms = next;
    }

    /// The shell removed the mapping (shutdown): nothing is held any more.
    pub fn removed(&mut self) {
        self.held = None;
        self.in_flight = None;
    }

    /// When [`Lifecycle::poll`] next has something to do (route changes aside).
    pub fn deadline_ms(&self) -> u64 {
        match self.held.and_then(|h| h.expires_at()) {
            Some(e) => self.next_ms.min(e),
            None => self.next_ms,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: u64 = 3_600_000;

    fn route(last: u8) -> Route {
        Route {
            local_ip: IpAddr::from([192, 168, 1, last]),
            gateway: IpAddr::from([192, 168, 1, 1]),
        }
    }

    #[test]
    fn maps_at_once_then_renews_at_half_the_lifetime() {
        let r = route(10);
        let mut l = Lifecycle::new(0);
        assert_eq!(l.poll(0, Some(r)), Step::Map(r));
        // While the map runs, nothing else is handed out.
        assert_eq!(l.poll(10, Some(r)), Step::Wait);
        l.mapped(500, r, 2 * HOUR);
        assert!(l.is_mapped());
        assert_eq!(l.deadline_ms(), 500 + HOUR);
        assert_eq!(l.poll(500 + HOUR - 1, Some(r)), Step::Wait);
        assert_eq!(l.poll(500 + HOUR, Some(r)), Step::Renew);
        // The gateway granted less this time: the next renewal follows the new lifetime.
        l.mapped(500 + HOUR, r, 600_000);
        assert_eq!(l.deadline_ms(), 500 + HOUR + 300_000);
    }

    #[test]
    fn failed_maps_back_off_and_keep_trying() {
        let r = route(10);
        let mut l = Lifecycle::new(0);
        assert_eq!(l.poll(0, Some(r)), Step::Map(r));
        l.failed(3_000, 0.0);
        assert_eq!(l.deadline_ms(), 33_000, "first retry after 30 s");
        assert_eq!(l.poll(32_999, Some(r)), Step::Wait);
        assert_eq!(l.poll(33_000, Some(r)), Step::Map(r));
        l.failed(33_000, 0.0);
        assert_eq!(l.deadline_ms(), 93_000, "then 60 s");
        let mut now = 93_000;
        let mut last = 0;
        for _ in 0..20 {
            assert_eq!(l.poll(now, Some(r)), Step::Map(r));
            l.failed(now, 0.0);
            last = l.deadline_ms() - now;
            now = l.deadline_ms();
        }
        assert_eq!(last, RETRY_MAX.as_millis() as u64, "capped at 30 min");
        // A success resets the backoff.
        assert_eq!(l.poll(now, Some(r)), Step::Map(r));
        l.mapped(now, r, 2 * HOUR);
        assert_eq!(l.poll(now + HOUR, Some(r)), Step::Renew);
        l.failed(now + HOUR, 0.0);
        assert_eq!(l.deadline_ms(), now + HOUR + 30_000);
    }

    #[test]
    fn failed_renewal_keeps_the_mapping_until_it_expires() {
        let r = route(10);
        let mut l = Lifecycle::new(0);
        l.poll(0, Some(r));
        l.mapped(0, r, 40_000);
        assert_eq!(l.poll(20_000, Some(r)), Step::Renew);
        l.failed(20_000, 0.0);
        assert!(l.is_mapped());
        // The 30 s backoff would overshoot the expiry at 40 s: retry at the expiry instead.
        assert_eq!(l.deadline_ms(), 40_000);
        assert_eq!(l.poll(40_000, Some(r)), Step::Map(r), "expired: map afresh");
        assert!(!l.is_mapped());
    }

    #[test]
    fn a_route_change_remaps() {
        let (a, b) = (route(10), route(11));
        let mut l = Lifecycle::new(0);
        l.poll(0, Some(a));
        l.mapped(0, a, 2 * HOUR);
        assert_eq!(l.poll(1_000, Some(a)), Step::Wait);
        assert_eq!(l.poll(1_000, Some(b)), Step::Remap(b));
        l.mapped(1_200, b, 2 * HOUR);
        assert_eq!(l.poll(2_000, Some(b)), Step::Wait);
        // A new gateway with the same local address is a change too.
        let c = Route {
            gateway: IpAddr::from([10, 0, 0, 1]),
            ..b
        };
        assert_eq!(l.poll(3_000, Some(c)), Step::Remap(c));
        l.failed(3_000, 0.0);
        assert!(!l.is_mapped(), "a failed remap holds nothing");
    }

    #[test]
    fn no_route_means_wait() {
        let mut l = Lifecycle::new(0);
        assert_eq!(l.poll(0, None), Step::Wait);
        assert_eq!(l.poll(5_000, Some(route(10))), Step::Map(route(10)));
    }

    #[test]
    fn permanent_leases_are_reasserted_hourly() {
        let r = route(10);
        let mut l = Lifecycle::new(0);
        l.poll(0, Some(r));
        l.mapped(0, r, 0);
        assert_eq!(l.deadline_ms(), HOUR);
        assert_eq!(l.poll(HOUR - 1, Some(r)), Step::Wait);
        assert_eq!(l.poll(HOUR, Some(r)), Step::Renew);
        l.failed(HOUR, 0.0);
        assert!(
            l.is_mapped(),
            "a permanent mapping never expires on its own"
        );
    }

    #[test]
    fn tiny_lifetimes_do_not_spin() {
        let r = route(10);
        let mut l = Lifecycle::new(0);
        l.poll(0, Some(r));
        l.mapped(0, r, 1_000);
        assert_eq!(l.deadline_ms(), MIN_RENEW_MS.min(1_000));
    }
}
