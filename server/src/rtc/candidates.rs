//! ICE host candidates and the local address each datagram arrived on.
//!
//! str0m matches a STUN check to a local candidate by the datagram's *destination*
//! address, which a socket bound to the unspecified address (`0.0.0.0`) does not report.
//! The kernel answers from the source address of the route back to the sender, so that is
//! the address the peer sees us on and the one we report: [`LocalAddrs::toward`] asks the
//! kernel once per remote IP (`connect()` on a UDP socket selects a route and sends
//! nothing) and caches the answer. A socket bound to a specific IP simply reports that IP.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};

use str0m::Candidate;

use super::RtcError;
use crate::discovery::local;

/// Remote IPs whose route is remembered; past this the cache starts over (a flood of
/// spoofed sources costs a syscall each, never memory).
const ROUTE_CACHE: usize = 1024;

/// The candidate IPs for a socket bound on `bind`: that IP when it is specific (loopback
/// included, which is how tests keep everything on loopback), else every LAN-dialable
/// interface address of the same family (never loopback, never IPv6 link-local).
pub fn default_candidate_ips(bind: IpAddr) -> Vec<IpAddr> {
    if !bind.is_unspecified() {
        return vec![bind];
    }
    local::discover(None)
        .addrs
        .into_iter()
        .filter(|ip| ip.is_ipv4() == bind.is_ipv4())
        .collect()
}

/// One str0m host candidate per IP, on `port`; IPs str0m refuses are skipped.
pub fn host_candidates(ips: &[IpAddr], port: u16) -> Result<Vec<Candidate>, RtcError> {
    let out: Vec<Candidate> = ips
        .iter()
        .filter_map(|ip| Candidate::host(SocketAddr::new(*ip, port), "udp").ok())
        .collect();
    if out.is_empty() {
        return Err(RtcError::NoCandidates);
    }
    Ok(out)
}

/// The server-reflexive candidate for a mapped address seen by a STUN server, with `base`
/// (the local address its requests left from) as its base.
pub fn reflexive_candidate(mapped: SocketAddr, base: SocketAddr) -> Option<Candidate> {
    Candidate::server_reflexive(mapped, base, "udp").ok()
}

/// The local address datagrams from a remote arrive on (see the module doc).
#[derive(Debug)]
pub struct LocalAddrs {
    bound: SocketAddr,
    routes: HashMap<IpAddr, IpAddr>,
}

impl LocalAddrs {
    /// For a socket whose `local_addr()` is `bound`.
    pub fn new(bound: SocketAddr) -> LocalAddrs {
        LocalAddrs {
            bound,
            routes: HashMap::new(),
        }
    }

    /// The local address a datagram from `remote` arrived on (and replies leave from).
    pub fn toward(&mut self, remote: SocketAddr) -> SocketAddr {
        if !self.bound.ip().is_unspecified() {
            return self.bound;
        }
        let ip = match self.routes.get(&remote.ip()) {
            Some(ip) => *ip,
            None => {
                let ip = route_source_ip(remote).unwrap_or(self.bound.ip());
                if self.routes.len() >= ROUTE_CACHE {
                    self.routes.clear();
                }
                self.routes.insert(remote.ip(), ip);
                ip
            }
        };
        SocketAddr::new(ip, self.bound.port())
    }
}

/// The source IP of the route to `remote` (no packet is sent), `None` without a route.
fn route_source_ip(remote: SocketAddr) -> Option<IpAddr> {
    let any: IpAddr = if remote.is_ipv4() {
        Ipv4Addr::UNSPECIFIED.into()
    } else {
        Ipv6Addr::UNSPECIFIED.into()
    };
    let sock = UdpSocket::bind(SocketAddr::new(any, 0)).ok()?;
    sock.connect(remote).ok()?;
    let ip = sock.local_addr().ok()?.ip();
    (!ip.is_unspecified()).then_some(ip)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_specific_bind_is_the_only_candidate_and_the_only_local_address() {
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        assert_eq!(default_candidate_ips(lo), vec![lo]);
        let mut l = LocalAddrs::new(sa("127.0.0.1:5000"));
        assert_eq!(l.toward(sa("127.0.0.1:6000")), sa("127.0.0.1:5000"));
    }

    #[test]
    fn the_unspecified_bind_offers_no_loopback() {
        let ips = default_candidate_ips("0.0.0.0".parse().unwrap());
        assert!(
            ips.iter().all(|ip| ip.is_ipv4() && !ip.is_loopback()),
            "{ips:?}"
        );
    }

    #[test]
    fn the_unspecified_bind_reports_the_route_source() {
        // Loopback routes from loopback: no packet leaves, nothing is dialed.
        let mut l = LocalAddrs::new(sa("0.0.0.0:5000"));
        assert_eq!(l.toward(sa("127.0.0.1:6000")), sa("127.0.0.1:5000"));
        assert_eq!(l.routes.len(), 1, "cached");
    }

    #[test]
    fn no_candidates_is_an_error() {
        assert!(matches!(
            host_candidates(&[], 5000),
            Err(RtcError::NoCandidates)
        ));
        assert_eq!(
            host_candidates(&["127.0.0.1".parse().unwrap()], 5000)
                .unwrap()
                .len(),
            1
        );
    }
}
