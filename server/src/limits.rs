//! Per-source-IP connection caps, shared by the host's mesh WebSocket and the relay.
//!
//! A permit is taken when a socket is accepted and released when it is dropped, so the
//! count is always the number of live sockets from that address and cannot leak.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};

/// Counts live connections per source IP and refuses past `max`.
#[derive(Debug)]
pub struct PerIpLimiter {
    max: usize,
    counts: Mutex<HashMap<IpAddr, usize>>,
}

/// One live connection from `ip`; released on drop.
#[derive(Debug)]
pub struct IpPermit {
    limiter: Arc<PerIpLimiter>,
    ip: IpAddr,
}

impl PerIpLimiter {
    /// A limiter allowing `max` concurrent connections per IP.
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

    fn counts(&self) -> MutexGuard<'_, HashMap<IpAddr, usize>> {
        // The map holds plain counters; a panic elsewhere cannot leave it inconsistent.
        self.counts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes a slot for `ip`, or `None` when it already has `max` live connections.
    pub fn try_acquire(self: &Arc<Self>, ip: IpAddr) -> Option<IpPermit> {
        let mut counts = self.counts();
        let n = counts.entry(ip).or_insert(0);
        if *n >= self.max {
            if *n == 0 {
                counts.remove(&ip);
            }
            return None;
        }
        *n += 1;
        Some(IpPermit {
            limiter: self.clone(),
            ip,
        })
    }

    /// Live connections from `ip`.
    pub fn live(&self, ip: IpAddr) -> usize {
        self.counts().get(&ip).copied().unwrap_or(0)
    }
}

impl Drop for IpPermit {
    fn drop(&mut self) {
        let mut counts = self.limiter.counts();
        if let Some(n) = counts.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(l.live(ip), 1);
        assert!(l.try_acquire(ip).is_some());
    }

    #[test]
    fn zero_cap_refuses_without_leaving_entries() {
        let l = PerIpLimiter::new(0);
        let ip: IpAddr = "::1".parse().unwrap();
        assert!(l.try_acquire(ip).is_none());
        assert!(l.counts().is_empty());
    }
}
