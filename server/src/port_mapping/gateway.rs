//! The default route: which gateway PCP and NAT-PMP talk to, and the host's address toward it.
//!
//! PCP and NAT-PMP have no discovery: RFC 6886/6887 say the client sends to its default
//! gateway. On Linux the kernel's routing table is `/proc/net/route` (read with no packet
//! sent and no extra crate; `netdev` would do the same through netlink, but a 20-line parser
//! covers the one OS the host runs on in practice). The local address is the one the kernel
//! would use toward the gateway: connecting a UDP socket sends nothing. Other operating
//! systems get [`RouteError::Unsupported`], so PCP and NAT-PMP report that while UPnP (which
//! discovers its gateway by SSDP) still works.

use super::policy::Route;
use std::net::{IpAddr, Ipv4Addr, UdpSocket};

/// Why the default route is not known.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum RouteError {
    #[error("no IPv4 default route")]
    NoDefaultRoute,
    #[error("cannot read the routing table: {0}")]
    Read(String),
    #[error("cannot find the local address toward the gateway {0}: {1}")]
    LocalAddress(IpAddr, String),
    #[error("finding the default gateway is only implemented on Linux")]
    Unsupported,
}

/// The default route now (gateway and local address).
pub fn default_route() -> Result<Route, RouteError> {
    let gateway = default_gateway()?;
    let local_ip = local_ip_toward(gateway)?;
    Ok(Route { local_ip, gateway })
}

#[cfg(target_os = "linux")]
fn default_gateway() -> Result<IpAddr, RouteError> {
    let table =
        std::fs::read_to_string("/proc/net/route").map_err(|e| RouteError::Read(e.to_string()))?;
    parse_proc_net_route(&table).map(IpAddr::V4)
}

#[cfg(not(target_os = "linux"))]
fn default_gateway() -> Result<IpAddr, RouteError> {
    Err(RouteError::Unsupported)
}

/// The address the kernel picks toward `gateway` (a connected UDP socket sends nothing).
fn local_ip_toward(gateway: IpAddr) -> Result<IpAddr, RouteError> {
    let err = |e: std::io::Error| RouteError::LocalAddress(gateway, e.to_string());
    let sock = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).map_err(err)?;
    sock.connect((gateway, 5351)).map_err(err)?;
    Ok(sock.local_addr().map_err(err)?.ip())
}

/// The gateway of the default route (destination and mask 0, flag RTF_GATEWAY) with the
/// lowest metric in `/proc/net/route` text. Addresses there are little-endian hex.
pub fn parse_proc_net_route(table: &str) -> Result<Ipv4Addr, RouteError> {
    const RTF_UP: u32 = 0x1;
    const RTF_GATEWAY: u32 = 0x2;
    let hex = |s: &str| u32::from_str_radix(s, 16).ok();
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 8 {
                return None;
            }
            let (dest, gw, flags, metric, mask) = (
                hex(f[1])?,
                hex(f[2])?,
                hex(f[3])?,
                f[6].parse::<u32>().ok()?,
                hex(f[7])?,
            );
            let default = dest == 0 && mask == 0 && flags & (RTF_UP | RTF_GATEWAY) == 3;
            default.then_some((metric, Ipv4Addr::from(gw.to_le_bytes())))
        })
        .min_by_key(|(metric, _)| *metric)
        .map(|(_, gw)| gw)
        .ok_or(RouteError::NoDefaultRoute)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: &str =
        "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT";

    #[test]
    fn finds_the_default_gateway_with_the_lowest_metric() {
        let table = format!(
            "{HEADER}\n\
             eth0\t00000000\t014DA8C0\t0003\t0\t0\t100\t00000000\t0\t0\t0\n\
             eth0\t004DA8C0\t00000000\t0001\t0\t0\t100\t00FFFFFF\t0\t0\t0\n\
             wlan0\t00000000\t0101A8C0\t0003\t0\t0\t50\t00000000\t0\t0\t0\n"
        );
        assert_eq!(
            parse_proc_net_route(&table),
            Ok(Ipv4Addr::new(192, 168, 1, 1))
        );
    }

    #[test]
    fn no_default_route_is_a_clear_error() {
        let table =
            format!("{HEADER}\neth0\t004DA8C0\t00000000\t0001\t0\t0\t100\t00FFFFFF\t0\t0\t0\n");
        assert_eq!(
            parse_proc_net_route(&table),
            Err(RouteError::NoDefaultRoute)
        );
        // A default route that is down (flags without RTF_UP) does not count either.
        let down =
            format!("{HEADER}\neth0\t00000000\t014DA8C0\t0002\t0\t0\t100\t00000000\t0\t0\t0\n");
        assert_eq!(parse_proc_net_route(&down), Err(RouteError::NoDefaultRoute));
        assert_eq!(parse_proc_net_route(""), Err(RouteError::NoDefaultRoute));
    }
}
