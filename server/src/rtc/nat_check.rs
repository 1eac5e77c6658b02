//! How a NAT treats the direct path's UDP socket, asked of the relay's STUN responder from
//! that very socket (RFC 5780 style, with the responder's two ports P and P′):
//!
//! 1. Binding to P → our **reflexive address** (the server-reflexive ICE candidate) and
//!    P′ from OTHER-ADDRESS (P+1 when the server does not say).
//! 2. Binding to P with CHANGE-REQUEST "change port": the answer leaves from P′, a port we
//!    never sent to. It arriving within [`FILTERING_WAIT`] means unsolicited inbound
//!    reaches the socket → **filtering `open`** (no NAT, a forward, or a full-cone NAT);
//!    silence → `filtered`. This runs before anything is sent to P′, or our own request
//!    would open the pinhole it tests.
//! 3. Binding to P′ → the same mapped address as from P means **mapping
//!    `endpoint_independent`** (hole punching works), another one `endpoint_dependent`.
//!
//! No answer from P → everything `unknown`. A plain RFC 5389 server works too, degraded: it
//! refuses CHANGE-REQUEST (error 420) or answers from P, so filtering is `unknown`, and
//! without OTHER-ADDRESS and nothing on P+1 the mapping is `unknown`. The answers come back on the shared socket and
//! the driver routes them here by transaction id, away from str0m. The decisions are pure
//! functions ([`decide_filtering`], [`decide_mapping`], [`alternate_server`]).

use std::net::SocketAddr;
use std::time::Duration;

use atmosphere_shared::upgrade::{HostNat, NatFiltering, NatMapping};
use stun_rs::TransactionId;
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::driver::{DriverHandle, StunReply};
use crate::discovery::nat::mapping_varies;
use crate::discovery::stun::{binding_request, binding_request_changing_port, Answer};

/// How long an answer from the other port may take before the socket counts as filtered.
pub const FILTERING_WAIT: Duration = Duration::from_millis(500);
/// How long a plain Binding answer may take (retransmitted inside it).
pub const BINDING_WAIT: Duration = Duration::from_millis(1500);

/// The result of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NatReport {
    /// Our address as the STUN server saw it.
    pub reflexive: Option<SocketAddr>,
    pub mapping: NatMapping,
    pub filtering: NatFiltering,
}

impl Default for NatReport {
    /// Nothing known: no reflexive address, mapping and filtering `unknown`.
    fn default() -> Self {
        NatReport {
            reflexive: None,
            mapping: NatMapping::Unknown,
            filtering: NatFiltering::Unknown,
        }
    }
}

impl NatReport {
    /// What `rtc_answer` reports as `nat`.
    pub fn host_nat(&self) -> HostNat {
        HostNat {
            mapping: self.mapping,
            filtering: self.filtering,
        }
    }
}

/// Where the server's other port is: its OTHER-ADDRESS (a server bound to the unspecified
/// address sends that IP: use the one we dialed), else the next port up.
pub fn alternate_server(primary: SocketAddr, other: Option<SocketAddr>) -> Option<SocketAddr> {
    match other {
        Some(o) if o.ip().is_unspecified() => Some(SocketAddr::new(primary.ip(), o.port())),
        Some(o) => Some(o),
        None => primary
            .port()
            .checked_add(1)
            .map(|p| SocketAddr::new(primary.ip(), p)),
    }
}

/// Step 2's verdict: `answered_from` is where the change-port answer came from, if one came.
/// An answer from the primary port means the server ignored the request: unknown.
pub fn decide_filtering(
    primary: SocketAddr,
    reached: bool,
    answered_from: Option<SocketAddr>,
) -> NatFiltering {
    match answered_from {
        _ if !reached => NatFiltering::Unknown,
        Some(from) if from == primary => NatFiltering::Unknown,
        Some(_) => NatFiltering::Open,
        None => NatFiltering::Filtered,
    }
}

/// Step 3's verdict from the mapped addresses seen by the two ports (one local socket).
pub fn decide_mapping(
    from_primary: Option<SocketAddr>,
    from_other: Option<SocketAddr>,
) -> NatMapping {
    let seen: Vec<SocketAddr> = [from_primary, from_other].into_iter().flatten().collect();
    match mapping_varies(&seen) {
        Some(false) => NatMapping::EndpointIndependent,
        Some(true) => NatMapping::EndpointDependent,
        None => NatMapping::Unknown,
    }
}

/// Runs the three steps against `server` (port P) from the driver's socket.
pub(crate) async fn check(driver: &DriverHandle, server: SocketAddr) -> NatReport {
    let Some(first) = binding(driver, server, false, BINDING_WAIT).await else {
        return NatReport::default();
    };
    let reflexive = mapped(&first);
    let Some(other) = alternate_server(server, first.other) else {
        return NatReport {
            reflexive,
            ..NatReport::default()
        };
    };
    let changed = binding(driver, server, true, FILTERING_WAIT).await;
    let filtering = decide_filtering(server, reflexive.is_some(), changed.map(|r| r.from));
    let second = binding(driver, other, false, BINDING_WAIT).await;
    NatReport {
        reflexive,
        mapping: decide_mapping(reflexive, second.as_ref().and_then(mapped)),
        filtering,
    }
}

/// One Binding transaction from the driver's socket: retransmitted (RTO doubling from a
/// quarter of `wait`) until an answer or `wait` is up.
pub(crate) async fn binding(
    driver: &DriverHandle,
    to: SocketAddr,
    change_port: bool,
    wait: Duration,
) -> Option<StunReply> {
    let tid = TransactionId::default();
    let request = if change_port {
        binding_request_changing_port(tid)
    } else {
        binding_request(tid)
    }
    .ok()?;
    let (tx, mut rx) = oneshot::channel();
    let deadline = Instant::now() + wait;
    let mut rto = (wait / 4).max(Duration::from_millis(50));
    driver.stun(to, request.clone(), tid, Some(tx)).await.ok()?;
    loop {
        let resend_at = (Instant::now() + rto).min(deadline);
        tokio::select! {
            r = &mut rx => return r.ok(),
            _ = tokio::time::sleep_until(resend_at) => {}
        }
        if Instant::now() >= deadline {
            return None;
        }
        driver.stun(to, request.clone(), tid, None).await.ok()?;
        rto = rto.saturating_mul(2);
    }
}

fn mapped(r: &StunReply) -> Option<SocketAddr> {
    match r.answer {
        Answer::Mapped(m) => Some(m),
        Answer::Error(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rtc::stun_fixture::{responder, Fixture};
    use tokio::net::UdpSocket;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn the_other_port_comes_from_other_address_or_is_the_next_one() {
        let p = sa("203.0.113.5:3478");
        assert_eq!(alternate_server(p, None), Some(sa("203.0.113.5:3479")));
        assert_eq!(
            alternate_server(p, Some(sa("203.0.113.5:4000"))),
            Some(sa("203.0.113.5:4000"))
        );
        assert_eq!(
            alternate_server(p, Some(sa("0.0.0.0:3479"))),
            Some(sa("203.0.113.5:3479")),
            "a server bound to 0.0.0.0 does not know the IP we dialed"
        );
        assert_eq!(alternate_server(sa("203.0.113.5:65535"), None), None);
    }

    #[test]
    fn filtering_verdicts() {
        let p = sa("203.0.113.5:3478");
        let alt = sa("203.0.113.5:3479");
        assert_eq!(decide_filtering(p, true, Some(alt)), NatFiltering::Open);
        assert_eq!(decide_filtering(p, true, None), NatFiltering::Filtered);
        assert_eq!(
            decide_filtering(p, true, Some(p)),
            NatFiltering::Unknown,
            "the server ignored CHANGE-REQUEST"
        );
        assert_eq!(decide_filtering(p, false, None), NatFiltering::Unknown);
    }

    #[test]
    fn mapping_verdicts() {
        let a = sa("198.51.100.7:40000");
        let b = sa("198.51.100.7:40001");
        assert_eq!(
            decide_mapping(Some(a), Some(a)),
            NatMapping::EndpointIndependent
        );
        assert_eq!(
            decide_mapping(Some(a), Some(b)),
            NatMapping::EndpointDependent
        );
        assert_eq!(decide_mapping(Some(a), None), NatMapping::Unknown);
        assert_eq!(decide_mapping(None, None), NatMapping::Unknown);
    }

    #[test]
    fn the_wire_names_are_the_protocols() {
        assert_eq!(
            serde_json::to_string(&NatMapping::EndpointIndependent).unwrap(),
            "\"endpoint_independent\""
        );
        assert_eq!(
            serde_json::to_string(&NatMapping::EndpointDependent).unwrap(),
            "\"endpoint_dependent\""
        );
        assert_eq!(
            serde_json::to_string(&NatFiltering::Open).unwrap(),
            "\"open\""
        );
        assert_eq!(
            serde_json::to_string(&NatFiltering::Filtered).unwrap(),
            "\"filtered\""
        );
        assert_eq!(
            serde_json::to_string(&NatFiltering::Unknown).unwrap(),
            "\"unknown\""
        );
    }

    async fn driver() -> DriverHandle {
        let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        DriverHandle::spawn(sock, 4, Duration::from_secs(10))
    }

    #[tokio::test]
    async fn loopback_without_nat_is_open_and_endpoint_independent() {
        let server = responder(Fixture::default()).await;
        let d = driver().await;
        let report = check(&d, server).await;
        assert_eq!(
            report,
            NatReport {
                reflexive: Some(d.local_addr()),
                mapping: NatMapping::EndpointIndependent,
                filtering: NatFiltering::Open,
            }
        );
    }

    #[tokio::test]
    async fn no_answer_from_the_other_port_is_filtered() {
        let server = responder(Fixture {
            drop_change_requests: true,
            ..Fixture::default()
        })
        .await;
        let d = driver().await;
        let report = check(&d, server).await;
        assert_eq!(report.filtering, NatFiltering::Filtered);
        assert_eq!(report.mapping, NatMapping::EndpointIndependent);
        assert_eq!(report.reflexive, Some(d.local_addr()));
    }

    #[tokio::test]
    async fn no_stun_server_is_unknown() {
        // A bound socket that never answers.
        let silent = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let d = driver().await;
        let report = check(&d, silent.local_addr().unwrap()).await;
        assert_eq!(report, NatReport::default());
        assert_eq!(report.mapping, NatMapping::Unknown);
        assert_eq!(report.filtering, NatFiltering::Unknown);
    }
}
