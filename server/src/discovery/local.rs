//! Local addresses without sending a packet.
//!
//! The advertised local IP is the source address the kernel would pick for the default
//! route: `connect()` on a UDP socket only selects a route and a source address, it sends
//! nothing. The destination is a documentation address (RFC 5737 / RFC 3849), so even a
//! buggy caller could never reach a real machine with it. Every interface address comes from
//! `getifaddrs` (the `if-addrs` crate).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};

/// TEST-NET-1 (RFC 5737), discard port: the kernel routes it like any internet address.
const ROUTE_PROBE_V4: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)), 9);
/// The IPv6 documentation prefix (RFC 3849), discard port.
const ROUTE_PROBE_V6: SocketAddr = SocketAddr::new(
    IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1)),
    9,
);

/// What the machine knows about its own addresses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LocalInfo {
    /// The address to advertise in the `local` endpoint (override, default route, or the
    /// first usable interface address), `None` when the machine has no usable address.
    pub advertised: Option<IpAddr>,
    /// Non-loopback, non-link-local-IPv6 interface addresses (what a LAN peer could dial).
    pub addrs: Vec<IpAddr>,
    /// Every address of this machine, loopback included (for the "behind NAT" comparison).
    pub all: Vec<IpAddr>,
}

/// Source address of the default route for one family, if there is such a route.
pub fn default_route_ip(v6: bool) -> Option<IpAddr> {
    let (bind, probe): (SocketAddr, SocketAddr) = if v6 {
        ((Ipv6Addr::UNSPECIFIED, 0).into(), ROUTE_PROBE_V6)
    } else {
        ((Ipv4Addr::UNSPECIFIED, 0).into(), ROUTE_PROBE_V4)
    };
    let sock = UdpSocket::bind(bind).ok()?;
    // No default route (e.g. an isolated namespace) → ENETUNREACH here; that is an answer.
    sock.connect(probe).ok()?;
    let ip = sock.local_addr().ok()?.ip();
    (!ip.is_unspecified()).then_some(ip)
}

/// Every interface address (loopback included); empty when the OS refuses to tell.
pub fn interface_addrs() -> Vec<IpAddr> {
    match if_addrs::get_if_addrs() {
        Ok(ifs) => {
            let mut out: Vec<IpAddr> = Vec::new();
            for i in ifs {
                let ip = i.ip();
                if !out.contains(&ip) {
                    out.push(ip);
                }
            }
            out
        }
        Err(e) => {
            tracing::warn!("cannot list interface addresses: {e}");
            Vec::new()
        }
    }
}

/// An address a peer on the LAN could dial: not loopback, not unspecified, and not IPv6
/// link-local (that needs a zone id no URL carries).
pub fn is_dialable(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => !v4.is_loopback() && !v4.is_unspecified(),
        IpAddr::V6(v6) => {
            !v6.is_loopback() && !v6.is_unspecified() && (v6.segments()[0] & 0xffc0) != 0xfe80
        }
    }
}

/// Picks the advertised address: the override, else the IPv4 default route, else the IPv6
/// default route, else the first dialable interface address (IPv4 first), else `None`.
pub fn choose_advertised(
    override_ip: Option<IpAddr>,
    route_v4: Option<IpAddr>,
    route_v6: Option<IpAddr>,
    addrs: &[IpAddr],
) -> Option<IpAddr> {
    override_ip
        .or(route_v4)
        .or(route_v6)
        .or_else(|| addrs.iter().find(|a| a.is_ipv4()).copied())
        .or_else(|| addrs.first().copied())
}

/// Gathers [`LocalInfo`]; `override_ip` is `--local-ip`. Never fails, never sends a packet.
pub fn discover(override_ip: Option<IpAddr>) -> LocalInfo {
    let all = interface_addrs();
    let mut addrs: Vec<IpAddr> = all.iter().filter(|a| is_dialable(a)).copied().collect();
    // IPv4 first: it is what most phones can reach on a home LAN.
    addrs.sort_by_key(|a| a.is_ipv6());
    let advertised = choose_advertised(
        override_ip,
        default_route_ip(false),
        default_route_ip(true),
        &addrs,
    );
    LocalInfo {
        advertised,
        addrs,
        all,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn choose_order() {
        let addrs = [ip("2001:db8::7"), ip("10.0.0.5")];
        assert_eq!(
            choose_advertised(Some(ip("127.0.0.1")), Some(ip("10.0.0.5")), None, &addrs),
            Some(ip("127.0.0.1")),
            "--local-ip wins"
        );
        assert_eq!(
            choose_advertised(None, Some(ip("10.0.0.5")), None, &addrs),
            Some(ip("10.0.0.5"))
        );
        assert_eq!(
            choose_advertised(None, None, Some(ip("2001:db8::7")), &addrs),
            Some(ip("2001:db8::7"))
        );
        assert_eq!(
            choose_advertised(None, None, None, &addrs),
            Some(ip("10.0.0.5")),
            "IPv4 first"
        );
        assert_eq!(choose_advertised(None, None, None, &[]), None);
    }

    #[test]
    fn dialable() {
        assert!(is_dialable(&ip("192.168.1.2")));
        assert!(is_dialable(&ip("2001:db8::1")));
        assert!(!is_dialable(&ip("127.0.0.1")));
        assert!(!is_dialable(&ip("::1")));
        assert!(!is_dialable(&ip("fe80::1")));
        assert!(!is_dialable(&ip("0.0.0.0")));
    }

    #[test]
    fn discover_never_panics_and_lists_loopback_in_all() {
        let info = discover(None);
        assert!(info.all.iter().any(|a| a.is_loopback()), "{info:?}");
        assert!(info.addrs.iter().all(is_dialable));
        let forced = discover(Some(ip("127.0.0.1")));
        assert_eq!(forced.advertised, Some(ip("127.0.0.1")));
    }
}
