//! The host's end of direct paths: one UDP socket (`serve --udp-port`), one answering
//! `Rtc` per member session that offers, all driven by one [`driver`](super::driver) task.
//!
//! A session calls [`HostPeer::accept`] with the client's offer and sends the answer back
//! inside the mesh session; the returned [`DirectChannel`] opens once ICE and DTLS are
//! through. The answer carries every host candidate ([`RtcConfig::candidate_ips`] on the
//! socket's port) and, after a [`HostPeer::nat_check`] found it, the socket's reflexive
//! address. The NAT check's result is also what the `rtc_answer` reports as `nat`.

use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Instant;

use str0m::change::SdpOffer;
use str0m::{Candidate, Rtc};

use super::candidates::{host_candidates, reflexive_candidate, LocalAddrs};
use super::driver::{DriverHandle, SocketStats};
use super::nat_check::{self, NatReport};
use super::{
    bind_socket, check_sdp_size, str0m_config, DirectChannel, RtcConfig, RtcError, MAX_SDP_BYTES,
};

/// See the module doc. Dropping it closes the socket once the open channels have closed.
#[derive(Debug)]
pub struct HostPeer {
    driver: DriverHandle,
    config: RtcConfig,
    host_candidates: Vec<Candidate>,
    nat: Mutex<NatState>,
}

#[derive(Debug, Default, Clone)]
struct NatState {
    report: NatReport,
    /// The reflexive candidate of the last check (mapped address and its base).
    reflexive: Option<Candidate>,
    /// The router's port mapping of this socket ([`HostPeer::set_port_mapping`]).
    port_mapped: Option<Candidate>,
}

impl HostPeer {
    /// Binds the socket and starts its driver (needs a Tokio runtime).
    pub async fn bind(config: RtcConfig) -> Result<HostPeer, RtcError> {
        let (socket, local) = bind_socket(&config).await?;
        let host_candidates = host_candidates(&config.candidate_ips, local.port())?;
        let driver = DriverHandle::spawn(socket, config.max_peers, config.open_deadline);
        Ok(HostPeer {
            driver,
            config,
            host_candidates,
            nat: Mutex::new(NatState::default()),
        })
    }

    /// The socket's address (its port is what a forward must point at).
    pub fn local_addr(&self) -> SocketAddr {
        self.driver.local_addr()
    }

    /// The configuration it was bound with.
    pub fn config(&self) -> &RtcConfig {
        &self.config
    }

    /// Answers a client's offer: the answer SDP to send back, and the channel, which opens
    /// when ICE and DTLS are through (or closes with `OpenDeadline`).
    pub async fn accept(&self, offer_sdp: &str) -> Result<(String, DirectChannel), RtcError> {
        check_sdp_size(offer_sdp)?;
        if !offer_sdp.lines().any(|l| l.starts_with("m=application")) {
            return Err(RtcError::NoDataChannel);
        }
        let offer =
            SdpOffer::from_sdp_string(offer_sdp).map_err(|e| RtcError::BadSdp(e.to_string()))?;
        // Refuse before the costly part (a DTLS certificate per connection); the driver
        // checks again, race-free.
        if self.driver.stats().peers >= self.config.max_peers {
            return Err(RtcError::TooManyPeers {
                max: self.config.max_peers,
            });
        }
        let mut rtc = self.new_rtc();
        let answer = rtc
            .sdp_api()
            .accept_offer(offer)
            .map_err(|e| RtcError::BadSdp(e.to_string()))?;
        let answer_sdp = answer.to_sdp_string();
        if answer_sdp.len() > MAX_SDP_BYTES {
            return Err(RtcError::SdpTooLarge {
                len: answer_sdp.len(),
                max: MAX_SDP_BYTES,
            });
        }
        let channel = self.driver.add(rtc).await?;
        Ok((answer_sdp, channel))
    }

    /// Asks the relay's STUN responder at `stun_server` (its primary port) how the NAT treats
    /// this socket; remembers the reflexive address for later answers. Takes up to ~3.5 s.
    pub async fn nat_check(&self, stun_server: SocketAddr) -> NatReport {
        let report = nat_check::check(&self.driver, stun_server).await;
        let base = LocalAddrs::new(self.local_addr()).toward(stun_server);
        let reflexive = report
            .reflexive
            .filter(|m| !self.host_candidates.iter().any(|c| c.addr() == *m))
            .and_then(|m| reflexive_candidate(m, base));
        let mut nat = lock(&self.nat);
        nat.report = report;
        nat.reflexive = reflexive;
        report
    }

    /// Offers the router's port mapping of this socket (`mapped` = external ip:port, `None`
    /// when the mapping is gone) as one more candidate of later answers. It is typed
    /// server-reflexive with the local address toward the router as its base: str0m sends
    /// from a candidate's base, and the router's DNAT delivers the peer's checks to that
    /// base. Skipped when it equals a candidate already offered (a router that keeps the
    /// port shows the same address to STUN).
    pub fn set_port_mapping(&self, mapped: Option<SocketAddr>) {
        let candidate = mapped
            .filter(|m| !self.host_candidates.iter().any(|c| c.addr() == *m))
            .and_then(|m| {
                let base = LocalAddrs::new(self.local_addr()).toward(m);
                reflexive_candidate(m, base)
            });
        lock(&self.nat).port_mapped = candidate;
    }

    /// The last NAT check's result (all `unknown` before one ran).
    pub fn nat(&self) -> NatReport {
        lock(&self.nat).report
    }

    /// Counters of the socket.
    pub fn stats(&self) -> SocketStats {
        self.driver.stats()
    }

    fn new_rtc(&self) -> Rtc {
        let mut rtc = str0m_config().build(Instant::now());
        for c in &self.host_candidates {
            rtc.add_local_candidate(c.clone());
        }
        let nat = lock(&self.nat).clone();
        if let Some(c) = nat.reflexive.clone() {
            rtc.add_local_candidate(c);
        }
        let duplicate = nat.reflexive.as_ref().map(Candidate::addr)
            == nat.port_mapped.as_ref().map(Candidate::addr);
        if let Some(c) = nat.port_mapped.filter(|_| !duplicate) {
            rtc.add_local_candidate(c);
        }
        rtc
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
