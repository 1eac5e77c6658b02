//! Pure pieces of discovery: the CGNAT range, the "behind NAT" rule, endpoint formatting,
//! the mapping comparison and the human hint. No I/O here, so every rule is unit-tested.

use std::net::{IpAddr, SocketAddr};

/// Hint shown when carrier-grade NAT is on the path.
pub const CGNAT_HINT: &str = "Your ISP uses carrier-grade NAT: a port forward on your router will not make the public endpoint reachable; use a relay";

/// True for an address in the shared address space 100.64.0.0/10 (RFC 6598), which ISPs use
/// between their carrier-grade NAT and the customer's router. IPv4-mapped IPv6 counts too.
pub fn is_cgnat(ip: IpAddr) -> bool {
    let v4 = match ip {
        IpAddr::V4(v4) => v4,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4,
            None => return false,
        },
    };
    let [a, b, ..] = v4.octets();
    a == 100 && (b & 0b1100_0000) == 64
}

/// The host is behind NAT when STUN saw a public IP that is none of this machine's own
/// addresses. Unknown public IP → `false` (we do not guess).
pub fn is_behind_nat(public_ip: Option<IpAddr>, own_addrs: &[IpAddr]) -> bool {
    match public_ip {
        Some(p) => !own_addrs.iter().any(|a| same_ip(*a, p)),
        None => false,
    }
}

/// Compares two addresses, treating an IPv4-mapped IPv6 address as its IPv4 form.
fn same_ip(a: IpAddr, b: IpAddr) -> bool {
    a.to_canonical() == b.to_canonical()
}

/// `ws://IP:PORT`, with an IPv6 address in brackets.
pub fn ws_endpoint(ip: IpAddr, port: u16) -> String {
    format!("ws://{}", SocketAddr::new(ip.to_canonical(), port))
}

/// The public endpoint: `--public-url` verbatim when given; otherwise `ws://PUBLIC:PORT` with
/// `--public-port` (default: the listen port) when STUN found a public IP; otherwise `None`.
pub fn public_endpoint(
    public_url: Option<&str>,
    public_ip: Option<IpAddr>,
    public_port: Option<u16>,
    listen_port: u16,
) -> Option<String> {
    if let Some(u) = public_url.map(str::trim).filter(|u| !u.is_empty()) {
        return Some(u.to_string());
    }
    public_ip.map(|ip| ws_endpoint(ip, public_port.unwrap_or(listen_port)))
}

/// Whether the NAT maps this socket differently per destination (endpoint-dependent
/// mapping): `Some(true)` when two answers of the same address family differ, `Some(false)`
/// when at least two agree and none differ, `None` with fewer than two answers per family.
/// The answers must come from ONE local socket per family, or the comparison means nothing.
pub fn mapping_varies(mapped: &[SocketAddr]) -> Option<bool> {
    let mut verdict = None;
    for want_v4 in [true, false] {
        let fam: Vec<SocketAddr> = mapped
            .iter()
            .map(|m| SocketAddr::new(m.ip().to_canonical(), m.port()))
            .filter(|m| m.is_ipv4() == want_v4)
            .collect();
        if fam.len() >= 2 {
            let varies = fam.iter().any(|m| *m != fam[0]);
            verdict = Some(verdict.unwrap_or(false) || varies);
        }
    }
    verdict
}

/// Everything the hint depends on.
#[derive(Debug, Clone, Default)]
pub struct HintInput {
    pub cgnat: bool,
    pub public_cgnat: bool,
    /// The first router on the path to the STUN server with a 100.64.0.0/10 address, and
    /// its TTL (see `path_probe`).
    pub cgnat_hop: Option<(u8, IpAddr)>,
    pub behind_nat: bool,
    pub mapping_varies: Option<bool>,
    pub local_ip: Option<IpAddr>,
    pub listen_port: u16,
    pub public_port: Option<u16>,
    pub public_url_set: bool,
    pub stun_enabled: bool,
    pub public_ip_known: bool,
}

/// The human hint for the UI: why the public path may not work and what to do about it.
pub fn hint(i: &HintInput) -> Option<String> {
    let mut parts: Vec<String> = Vec::new();
    if i.cgnat {
        parts.push(CGNAT_HINT.to_string());
        if i.public_cgnat {
            parts.push(
                "The address STUN reported is itself in 100.64.0.0/10, so it is not reachable from the internet"
                    .to_string(),
            );
        } else if let Some((ttl, ip)) = i.cgnat_hop {
            parts.push(format!(
                "Hop {ttl} on the way to the STUN server ({ip}) has a carrier-grade NAT address (100.64.0.0/10), so your router's internet side is inside the ISP's NAT"
            ));
        }
    } else if i.behind_nat && !i.public_url_set {
        let port = i.public_port.unwrap_or(i.listen_port);
        let target = match i.local_ip {
            Some(ip) => SocketAddr::new(ip, i.listen_port).to_string(),
            None => format!("this machine's port {}", i.listen_port),
        };
        parts.push(format!(
            "This host is behind NAT: forward TCP port {port} on your router to {target} to make the public endpoint reachable, or use a relay"
        ));
        if i.mapping_varies == Some(true) {
            parts.push(
                "Your NAT maps each destination to a different port (endpoint-dependent mapping), so only a port forward or a relay works from outside"
                    .to_string(),
            );
        }
    }
    if i.stun_enabled && !i.public_ip_known && !i.public_url_set {
        parts.push(
            "No STUN server answered, so the public IP is unknown: set --public-url or use a relay"
                .to_string(),
        );
    }
    if parts.is_empty() {
        None
    } else {
        Some(parts.join(". "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn cgnat_range_edges() {
        assert!(is_cgnat(ip("100.64.0.0")));
        assert!(is_cgnat(ip("100.100.1.2")));
        assert!(is_cgnat(ip("100.127.255.255")));
        assert!(!is_cgnat(ip("100.63.255.255")));
        assert!(!is_cgnat(ip("100.128.0.0")));
        assert!(!is_cgnat(ip("192.168.86.237")));
        assert!(!is_cgnat(ip("10.0.0.1")));
        assert!(is_cgnat(ip("::ffff:100.64.1.1")));
        assert!(!is_cgnat(ip("2001:db8::1")));
    }

    #[test]
    fn behind_nat_rule() {
        let own = [ip("192.168.86.237"), ip("127.0.0.1"), ip("fe80::1")];
        assert!(is_behind_nat(Some(ip("73.45.123.89")), &own));
        assert!(!is_behind_nat(Some(ip("192.168.86.237")), &own));
        assert!(!is_behind_nat(Some(ip("::ffff:192.168.86.237")), &own));
        assert!(
            !is_behind_nat(None, &own),
            "unknown public IP is not a NAT claim"
        );
        assert!(is_behind_nat(Some(ip("127.0.0.1")), &[]));
    }

    #[test]
    fn endpoints_format() {
        assert_eq!(
            ws_endpoint(ip("192.168.86.237"), 11451),
            "ws://192.168.86.237:11451"
        );
        assert_eq!(
            ws_endpoint(ip("2001:db8::5"), 11451),
            "ws://[2001:db8::5]:11451"
        );
        assert_eq!(ws_endpoint(ip("::ffff:10.1.2.3"), 80), "ws://10.1.2.3:80");
        assert_eq!(
            public_endpoint(None, Some(ip("73.45.123.89")), None, 11451).as_deref(),
            Some("ws://73.45.123.89:11451")
        );
        assert_eq!(
            public_endpoint(None, Some(ip("73.45.123.89")), Some(443), 11451).as_deref(),
            Some("ws://73.45.123.89:443")
        );
        assert_eq!(
            public_endpoint(Some("wss://home.example.com"), None, None, 11451).as_deref(),
            Some("wss://home.example.com"),
            "--public-url wins even without STUN"
        );
        assert_eq!(
            public_endpoint(None, None, Some(443), 11451),
            None,
            "never invented"
        );
        assert_eq!(public_endpoint(Some("  "), None, None, 1), None);
    }

    #[test]
    fn mapping_comparison() {
        let a: SocketAddr = "73.45.123.89:40000".parse().unwrap();
        let b: SocketAddr = "73.45.123.89:40001".parse().unwrap();
        let v6: SocketAddr = "[2001:db8::1]:5".parse().unwrap();
        assert_eq!(mapping_varies(&[a]), None);
        assert_eq!(
            mapping_varies(&[a, v6]),
            None,
            "different families are not compared"
        );
        assert_eq!(mapping_varies(&[a, a]), Some(false));
        assert_eq!(mapping_varies(&[a, a, b]), Some(true));
        assert_eq!(mapping_varies(&[a, v6, v6]), Some(false));
    }

    #[test]
    fn hints() {
        let base = HintInput {
            listen_port: 11451,
            local_ip: Some(ip("192.168.86.237")),
            stun_enabled: true,
            public_ip_known: true,
            ..Default::default()
        };
        assert_eq!(hint(&base), None);
        let cg = hint(&HintInput {
            cgnat: true,
            behind_nat: true,
            ..base.clone()
        })
        .unwrap();
        assert!(cg.contains("carrier-grade NAT"), "{cg}");
        assert!(!cg.contains("forward TCP port"), "{cg}");
        let hop = hint(&HintInput {
            cgnat: true,
            behind_nat: true,
            cgnat_hop: Some((2, ip("100.64.0.1"))),
            ..base.clone()
        })
        .unwrap();
        assert!(hop.contains("use a relay"), "{hop}");
        assert!(hop.contains("Hop 2") && hop.contains("100.64.0.1"), "{hop}");
        assert!(!hop.contains("forward TCP port"), "{hop}");
        let nat = hint(&HintInput {
            behind_nat: true,
            public_port: Some(8443),
            ..base.clone()
        })
        .unwrap();
        assert!(nat.contains("forward TCP port 8443"), "{nat}");
        assert!(nat.contains("192.168.86.237:11451"), "{nat}");
        let sym = hint(&HintInput {
            behind_nat: true,
            mapping_varies: Some(true),
            ..base.clone()
        })
        .unwrap();
        assert!(sym.contains("endpoint-dependent"), "{sym}");
        let none = hint(&HintInput {
            public_ip_known: false,
            ..base.clone()
        })
        .unwrap();
        assert!(none.contains("No STUN server answered"), "{none}");
        assert_eq!(
            hint(&HintInput {
                public_ip_known: false,
                stun_enabled: false,
                ..base
            }),
            None
        );
    }
}
