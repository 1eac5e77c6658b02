//! Carrier-grade NAT on the path: a tiny traceroute toward the STUN server that answered.
//!
//! A host at 192.168.1.10 behind a home router whose WAN address is 100.64.x.x (the ISP's
//! carrier-grade NAT) sees only ordinary addresses itself, and STUN reports the carrier
//! NAT's public address: nothing local says "a port forward on your router cannot work".
//! The routers on the way out do: the ISP side of the home router answers a TTL-limited
//! datagram with an ICMP time-exceeded from its 100.64.0.0/10 address.
//!
//! So after STUN, for TTL 1..=[`MAX_HOPS`] one small UDP datagram (a STUN Binding request,
//! so the server that finally gets one just answers it) goes to **the configured STUN
//! server that answered, and to nothing else**. Each TTL has its own connected socket with
//! `IP_RECVERR`, so the kernel queues the ICMP error on that socket's error queue together
//! with the router's address (`SO_EE_OFFENDER`): the reply is tied to its TTL by the socket
//! it arrives on, even when a router quotes only 8 bytes of the datagram. All TTLs go out
//! at once, each waits [`HOP_WAIT`], silent ones are re-sent up to [`ATTEMPTS`] times, and
//! the whole probe ends within [`PROBE_DEADLINE`]. It runs on a blocking thread
//! (`spawn_blocking`) with `poll(2)`, never on the async workers.
//!
//! The socket part is Linux only (`nix` wraps the error queue without `unsafe` here); other
//! systems get a trace that says "unsupported". IPv6 targets are skipped: 100.64.0.0/10 is
//! an IPv4 range. Everything that decides something (which server, which TTL ended the
//! path, which hop is carrier-grade NAT) is pure and unit-tested.

use super::nat;
use super::stun::ProbeOutcome;
use atmosphere_shared::api::{PathHop, PathTrace};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// TTLs probed: the carrier-grade NAT sits right behind the home router (hop 2 or 3).
pub const MAX_HOPS: u8 = 4;
/// How long one round of probes waits for its answers before silent TTLs are re-sent.
pub const HOP_WAIT: Duration = Duration::from_millis(300);
/// Sends per TTL (1 + retransmits): a router may drop one probe or rate-limit its ICMP.
pub const ATTEMPTS: u32 = 3;
/// Hard limit for the whole probe.
pub const PROBE_DEADLINE: Duration = Duration::from_millis(1500);

/// Timing of one path probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PathOptions {
    /// Highest TTL probed (1..=16 is accepted; more is clamped).
    pub max_hops: u8,
    /// Wait per round of sends.
    pub hop_wait: Duration,
    /// Sends per TTL.
    pub attempts: u32,
    /// Overall deadline.
    pub deadline: Duration,
}

impl Default for PathOptions {
    fn default() -> Self {
        PathOptions {
            max_hops: MAX_HOPS,
            hop_wait: HOP_WAIT,
            attempts: ATTEMPTS,
            deadline: PROBE_DEADLINE,
        }
    }
}

/// What came back for the probe of one TTL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    /// A router dropped the datagram when its TTL ran out and said so (ICMP time exceeded).
    TimeExceeded(IpAddr),
    /// ICMP destination unreachable from this address (the server itself when the port is
    /// closed, or a router that has no route / filters): the path ends there either way.
    Unreachable(IpAddr),
    /// The server itself answered the datagram.
    Answer,
}

/// One TTL of a finished trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hop {
    pub ttl: u8,
    /// Who answered; `None` when nothing did.
    pub addr: Option<IpAddr>,
    /// This is the STUN server itself.
    pub destination: bool,
}

/// A finished (or skipped) path probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trace {
    /// The STUN server probed.
    pub target: SocketAddr,
    /// TTL 1 up to the one that reached the server (or `max_hops`).
    pub hops: Vec<Hop>,
    /// Why the trace is missing or incomplete.
    pub error: Option<String>,
}

impl Trace {
    /// A trace that did not run, with the reason.
    pub fn failed(target: SocketAddr, error: impl Into<String>) -> Trace {
        Trace {
            target,
            hops: Vec::new(),
            error: Some(error.into()),
        }
    }

    /// The first router (not the server itself) with a 100.64.0.0/10 address, with its TTL.
    pub fn cgnat_hop(&self) -> Option<(u8, IpAddr)> {
        self.hops
            .iter()
            .filter(|h| !h.destination)
            .find_map(|h| h.addr.filter(|a| nat::is_cgnat(*a)).map(|a| (h.ttl, a)))
    }

    /// The API form.
    pub fn to_api(&self) -> PathTrace {
        PathTrace {
            target: self.target.to_string(),
            hops: self
                .hops
                .iter()
                .map(|h| PathHop {
                    ttl: h.ttl,
                    addr: h.addr.map(|a| a.to_canonical().to_string()),
                    destination: h.destination,
                })
                .collect(),
            error: self.error.clone(),
        }
    }
}

/// The server to trace: the first configured STUN server (input order) that answered.
/// Only a server that answered is ever probed, so the probe never goes anywhere STUN did
/// not already go.
pub fn choose_target(outcomes: &[ProbeOutcome]) -> Option<SocketAddr> {
    outcomes
        .iter()
        .find(|o| o.mapped.is_some() && o.target.is_some())
        .and_then(|o| o.target)
}

/// `SO_EE_ORIGIN_ICMP` (linux/errqueue.h): the error came from an ICMPv4 message.
pub const SO_EE_ORIGIN_ICMP: u8 = 2;
/// ICMPv4 type "destination unreachable".
const ICMP_DEST_UNREACH: u8 = 3;
/// ICMPv4 type "time exceeded".
const ICMP_TIME_EXCEEDED: u8 = 11;

/// Turns one error-queue entry (`sock_extended_err` origin and ICMP type, and the offender
/// address) into a [`Reply`]. Local errors (no ICMP origin, or no offender) say nothing
/// about the path and give `None`.
pub fn classify_icmp(origin: u8, icmp_type: u8, offender: Option<IpAddr>) -> Option<Reply> {
    if origin != SO_EE_ORIGIN_ICMP {
        return None;
    }
    let from = offender.filter(|a| !a.is_unspecified())?;
    match icmp_type {
        ICMP_TIME_EXCEEDED => Some(Reply::TimeExceeded(from)),
        ICMP_DEST_UNREACH => Some(Reply::Unreachable(from)),
        _ => None,
    }
}

/// The TTL at which the path ended (the server answered, or an unreachable came back):
/// probes with a higher TTL can only tell the same story again.
pub fn end_ttl(replies: &[(u8, Reply)]) -> Option<u8> {
    replies
        .iter()
        .filter(|(_, r)| !matches!(r, Reply::TimeExceeded(_)))
        .map(|(ttl, _)| *ttl)
        .min()
}

/// Builds the hop list from the replies (first reply per TTL wins): TTL 1 up to the end of
/// the path, or up to `max_hops` when the path did not end.
pub fn assemble(target: SocketAddr, max_hops: u8, replies: &[(u8, Reply)]) -> Vec<Hop> {
    let last = end_ttl(replies).unwrap_or(max_hops).min(max_hops);
    (1..=last)
        .map(|ttl| {
            let reply = replies.iter().find(|(t, _)| *t == ttl).map(|(_, r)| *r);
            let (addr, destination) = match reply {
                Some(Reply::Answer) => (Some(target.ip()), true),
                Some(Reply::Unreachable(a)) => (Some(a), same_ip(a, target.ip())),
                Some(Reply::TimeExceeded(a)) => (Some(a), false),
                None => (None, false),
            };
            Hop {
                ttl,
                addr,
                destination,
            }
        })
        .collect()
}

fn same_ip(a: IpAddr, b: IpAddr) -> bool {
    a.to_canonical() == b.to_canonical()
}

/// Traces the path to `target` (a STUN server that answered). Never fails: problems are in
/// [`Trace::error`]. Returns within `opts.deadline` plus scheduling noise.
pub async fn trace(target: SocketAddr, opts: PathOptions) -> Trace {
    if target.is_ipv6() {
        return Trace::failed(
            target,
            "path probe skipped: the STUN server is IPv6 (carrier-grade NAT is IPv4)",
        );
    }
    #[cfg(target_os = "linux")]
    {
        match tokio::task::spawn_blocking(move || sys::trace_v4(target, opts)).await {
            Ok(t) => t,
            Err(e) => Trace::failed(target, format!("path probe task failed: {e}")),
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = opts;
        Trace::failed(target, "path probe unsupported on this operating system")
    }
}

/// The socket side (Linux): one connected UDP socket per TTL, `IP_RECVERR`, `poll(2)`.
#[cfg(target_os = "linux")]
mod sys {
    use super::{assemble, classify_icmp, end_ttl, PathOptions, Reply, Trace};
    use crate::discovery::stun;
    use nix::errno::Errno;
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use nix::sys::socket::{
        recv, recvmsg, setsockopt, sockopt, ControlMessageOwned, MsgFlags, SockaddrIn,
    };
    use std::io::IoSliceMut;
    use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
    use std::os::fd::{AsFd, AsRawFd};
    use std::time::{Duration, Instant};

    /// Highest TTL accepted (input limit; the product uses 4).
    const TTL_LIMIT: u8 = 16;
    /// Enough for a STUN answer; the error queue hands back the original 20-byte request.
    const BUF: usize = 1500;
    /// Entries read per socket per wake-up (an error queue is bounded, but be sure).
    const DRAIN_LIMIT: usize = 16;

    struct Probe {
        ttl: u8,
        sock: UdpSocket,
        replied: bool,
    }

    /// Opens the socket for one TTL: connected to the server (so only this flow's answers
    /// and ICMP errors land on it), with the TTL and the extended error queue set.
    fn open(target: SocketAddr, ttl: u8) -> std::io::Result<UdpSocket> {
        let sock = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
        sock.connect(target)?;
        sock.set_ttl(u32::from(ttl))?;
        setsockopt(&sock, sockopt::Ipv4RecvErr, &true)?;
        sock.set_nonblocking(true)?;
        Ok(sock)
    }

    /// Reads everything queued on one socket: ICMP errors first, then answers.
    fn drain(p: &Probe, buf: &mut [u8]) -> Option<Reply> {
        let fd = p.sock.as_raw_fd();
        let mut found = None;
        for _ in 0..DRAIN_LIMIT {
            let mut cmsg = nix::cmsg_space!(nix::libc::sock_extended_err, nix::libc::sockaddr_in);
            let mut iov = [IoSliceMut::new(buf)];
            let msg = match recvmsg::<SockaddrIn>(
                fd,
                &mut iov,
                Some(&mut cmsg),
                MsgFlags::MSG_ERRQUEUE | MsgFlags::MSG_DONTWAIT,
            ) {
                Ok(m) => m,
                Err(_) => break, // EAGAIN: the error queue is empty
            };
            let Ok(cmsgs) = msg.cmsgs() else { continue };
            for c in cmsgs {
                if let ControlMessageOwned::Ipv4RecvErr(ee, offender) = c {
                    // The offender is a sockaddr_in in network byte order; AF_UNSPEC
                    // (no address) for errors that did not come from the network.
                    let from = offender
                        .filter(|sa| i32::from(sa.sin_family) == nix::libc::AF_INET)
                        .map(|sa| IpAddr::V4(Ipv4Addr::from(u32::from_be(sa.sin_addr.s_addr))));
                    if let Some(r) = classify_icmp(ee.ee_origin, ee.ee_type, from) {
                        found.get_or_insert(r);
                    }
                }
            }
        }
        for _ in 0..DRAIN_LIMIT {
            match recv(fd, buf, MsgFlags::MSG_DONTWAIT) {
                // The socket is connected: any datagram is the server answering.
                Ok(_) => {
                    found.get_or_insert(Reply::Answer);
                }
                Err(Errno::EAGAIN) => break,
                // A pending ICMP error reported once as errno (already read from the queue).
                Err(_) => continue,
            }
        }
        found
    }

    /// The whole probe; see the module documentation.
    pub(super) fn trace_v4(target: SocketAddr, opts: PathOptions) -> Trace {
        let start = Instant::now();
        let deadline = start + opts.deadline;
        let max_hops = opts.max_hops.clamp(1, TTL_LIMIT);
        let mut probes = Vec::with_capacity(usize::from(max_hops));
        for ttl in 1..=max_hops {
            match open(target, ttl) {
                Ok(sock) => probes.push(Probe {
                    ttl,
                    sock,
                    replied: false,
                }),
                Err(e) => return Trace::failed(target, format!("cannot open a probe socket: {e}")),
            }
        }
        let mut replies: Vec<(u8, Reply)> = Vec::new();
        let mut error = None;
        let mut buf = vec![0u8; BUF];
        for _attempt in 0..opts.attempts.max(1) {
            if Instant::now() >= deadline {
                break;
            }
            let end = end_ttl(&replies).unwrap_or(max_hops);
            let mut sent = 0;
            for p in probes.iter().filter(|p| !p.replied && p.ttl <= end) {
                let request = match stun::binding_request(stun_rs::TransactionId::default()) {
                    Ok(r) => r,
                    Err(e) => return Trace::failed(target, e),
                };
                match p.sock.send(&request) {
                    Ok(_) => sent += 1,
                    Err(e) => {
                        error.get_or_insert_with(|| format!("cannot send a probe: {e}"));
                    }
                }
            }
            if sent == 0 {
                break;
            }
            let window_end = (Instant::now() + opts.hop_wait).min(deadline);
            loop {
                let end = end_ttl(&replies).unwrap_or(max_hops);
                if probes.iter().all(|p| p.replied || p.ttl > end) {
                    break;
                }
                let now = Instant::now();
                if now >= window_end {
                    break;
                }
                let wait = (window_end - now).max(Duration::from_millis(1));
                {
                    let mut fds: Vec<PollFd> = probes
                        .iter()
                        .filter(|p| !p.replied)
                        .map(|p| PollFd::new(p.sock.as_fd(), PollFlags::POLLIN))
                        .collect();
                    let timeout = PollTimeout::try_from(wait).unwrap_or(PollTimeout::MAX);
                    match poll(&mut fds, timeout) {
                        Ok(0) => continue,
                        Ok(_) | Err(Errno::EINTR) => {}
                        Err(e) => {
                            error.get_or_insert_with(|| format!("poll failed: {e}"));
                            break;
                        }
                    }
                }
                for p in probes.iter_mut().filter(|p| !p.replied) {
                    if let Some(r) = drain(p, &mut buf) {
                        p.replied = true;
                        replies.push((p.ttl, r));
                    }
                }
            }
        }
        let hops = assemble(target, max_hops, &replies);
        tracing::debug!(%target, ?hops, elapsed_ms = start.elapsed().as_millis() as u64, "path probe finished");
        Trace {
            target,
            hops,
            error,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn target() -> SocketAddr {
        "203.0.113.10:3478".parse().unwrap()
    }

    #[test]
    fn icmp_classification() {
        let r = ip("192.168.1.1");
        assert_eq!(
            classify_icmp(SO_EE_ORIGIN_ICMP, 11, Some(r)),
            Some(Reply::TimeExceeded(r))
        );
        assert_eq!(
            classify_icmp(SO_EE_ORIGIN_ICMP, 3, Some(r)),
            Some(Reply::Unreachable(r))
        );
        // Local errors (origin 1 = SO_EE_ORIGIN_LOCAL), no offender, other ICMP types.
        assert_eq!(classify_icmp(1, 11, Some(r)), None);
        assert_eq!(classify_icmp(SO_EE_ORIGIN_ICMP, 11, None), None);
        assert_eq!(
            classify_icmp(SO_EE_ORIGIN_ICMP, 11, Some(ip("0.0.0.0"))),
            None
        );
        assert_eq!(classify_icmp(SO_EE_ORIGIN_ICMP, 12, Some(r)), None);
    }

    #[test]
    fn carrier_nat_behind_the_home_router_is_found() {
        // The netns topology: home router, carrier NAT, then the STUN server.
        let replies = [
            (3, Reply::Answer),
            (1, Reply::TimeExceeded(ip("192.168.1.1"))),
            (2, Reply::TimeExceeded(ip("100.64.0.1"))),
            (4, Reply::Answer),
        ];
        let t = Trace {
            target: target(),
            hops: assemble(target(), 4, &replies),
            error: None,
        };
        assert_eq!(t.hops.len(), 3, "the path ends at the server: {t:?}");
        assert_eq!(t.hops[2].addr, Some(ip("203.0.113.10")));
        assert!(t.hops[2].destination);
        assert_eq!(t.cgnat_hop(), Some((2, ip("100.64.0.1"))));
        let api = t.to_api();
        assert_eq!(api.target, "203.0.113.10:3478");
        assert_eq!(api.hops[1].addr.as_deref(), Some("100.64.0.1"));
        assert!(!api.hops[0].destination);
    }

    #[test]
    fn ordinary_path_and_silent_hops() {
        let replies = [
            (1, Reply::TimeExceeded(ip("192.168.1.1"))),
            (3, Reply::TimeExceeded(ip("198.51.100.1"))),
        ];
        let hops = assemble(target(), 4, &replies);
        assert_eq!(hops.len(), 4, "no end seen: every TTL is listed");
        assert_eq!(hops[1].addr, None, "a silent router stays unknown");
        assert_eq!(hops[3].addr, None);
        let t = Trace {
            target: target(),
            hops,
            error: None,
        };
        assert_eq!(t.cgnat_hop(), None);
    }

    #[test]
    fn a_server_inside_the_shared_range_is_not_a_carrier_nat_hop() {
        // An ISP's own STUN server at 100.64.x.x is the end of the path, not a NAT on it.
        let srv: SocketAddr = "100.100.0.5:3478".parse().unwrap();
        let replies = [
            (1, Reply::TimeExceeded(ip("192.168.1.1"))),
            (2, Reply::Unreachable(ip("100.100.0.5"))),
        ];
        let t = Trace {
            target: srv,
            hops: assemble(srv, 4, &replies),
            error: None,
        };
        assert_eq!(t.hops.len(), 2);
        assert!(
            t.hops[1].destination,
            "port unreachable from the server ends the path"
        );
        assert_eq!(t.cgnat_hop(), None);
    }

    #[test]
    fn end_of_path() {
        assert_eq!(end_ttl(&[]), None);
        assert_eq!(
            end_ttl(&[
                (4, Reply::Answer),
                (2, Reply::Unreachable(ip("10.0.0.1"))),
                (1, Reply::TimeExceeded(ip("10.0.0.2")))
            ]),
            Some(2)
        );
        // A router that cannot route further ends the path without being the server.
        let hops = assemble(target(), 4, &[(2, Reply::Unreachable(ip("10.0.0.1")))]);
        assert_eq!(hops.len(), 2);
        assert!(!hops[1].destination);
    }

    #[test]
    fn target_is_the_first_configured_server_that_answered() {
        let out = |server: &str, target: &str, mapped: Option<&str>| ProbeOutcome {
            server: server.into(),
            target: Some(target.parse().unwrap()),
            mapped: mapped.map(|m| m.parse().unwrap()),
            rtt: None,
            error: None,
            answer_rank: None,
            requests: 1,
        };
        let outs = [
            out("stun:a:1", "127.0.0.2:1", None),
            out("stun:b:2", "127.0.0.3:2", Some("198.51.100.4:1")),
            out("stun:c:3", "127.0.0.4:3", Some("198.51.100.4:1")),
        ];
        assert_eq!(choose_target(&outs), Some("127.0.0.3:2".parse().unwrap()));
        assert_eq!(
            choose_target(&outs[..1]),
            None,
            "never a server that did not answer"
        );
        assert_eq!(choose_target(&[]), None);
    }

    #[tokio::test]
    async fn ipv6_target_is_skipped_without_a_packet() {
        let t = trace("[::1]:3478".parse().unwrap(), PathOptions::default()).await;
        assert!(t.hops.is_empty());
        assert!(t.error.unwrap().contains("IPv6"));
    }

    /// Loopback only: a server that answers is reached at TTL 1.
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn loopback_server_that_answers_is_the_first_hop() {
        let server = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = server.local_addr().unwrap();
        let echo = std::thread::spawn(move || {
            // Every TTL reaches a loopback server: answer them all, until it goes quiet.
            server
                .set_read_timeout(Some(Duration::from_millis(700)))
                .unwrap();
            let mut buf = [0u8; 64];
            while let Ok((n, from)) = server.recv_from(&mut buf) {
                let _ = server.send_to(&buf[..n], from);
            }
        });
        let t = trace(addr, PathOptions::default()).await;
        echo.join().unwrap();
        assert_eq!(t.error, None, "{t:?}");
        assert_eq!(t.hops.len(), 1, "{t:?}");
        assert!(t.hops[0].destination);
        assert_eq!(t.hops[0].addr, Some(addr.ip()));
        assert_eq!(t.cgnat_hop(), None);
    }

    /// Loopback only: a closed port answers with ICMP port unreachable, read from the
    /// socket error queue (the same path a router's time-exceeded takes).
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn loopback_closed_port_is_read_from_the_error_queue() {
        let addr = std::net::UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap(); // dropped: nobody listens there any more
        let started = std::time::Instant::now();
        let t = trace(addr, PathOptions::default()).await;
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(t.hops.len(), 1, "{t:?}");
        assert_eq!(t.hops[0].addr, Some(ip("127.0.0.1")), "{t:?}");
        assert!(t.hops[0].destination, "{t:?}");
    }
}
