//! The native `join`'s end of a direct path: the offerer.
//!
//! [`ClientPeer::bind`] opens its own UDP socket and gathers candidates (every host
//! candidate of [`RtcConfig::candidate_ips`], and the reflexive address the first answering
//! STUN server reports); [`ClientPeer::offer`] creates the `"atmosphere-mesh"` DataChannel
//! and the offer carrying all of them (non-trickle); [`ClientPeer::accept_answer`] takes
//! the host's answer and returns the same [`DirectChannel`] the host side has.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use str0m::change::{SdpAnswer, SdpPendingOffer};
use str0m::Rtc;

use super::candidates::{host_candidates, reflexive_candidate, LocalAddrs};
use super::driver::DriverHandle;
use super::nat_check::binding;
use super::{
    bind_socket, check_sdp_size, str0m_config, DirectChannel, RtcConfig, RtcError, CHANNEL_LABEL,
};
use crate::discovery::stun::{Answer, StunServer};

/// How long candidate gathering waits for a STUN server's answer.
pub const GATHER_WAIT: Duration = Duration::from_millis(1000);

/// See the module doc.
#[derive(Debug)]
pub struct ClientPeer {
    driver: DriverHandle,
    rtc: Option<Rtc>,
    pending: Option<SdpPendingOffer>,
}

impl ClientPeer {
    /// Binds the socket, starts its driver and gathers candidates; `stun_servers` are
    /// `host:port` names (the relay's first), empty for none.
    pub async fn bind(config: RtcConfig, stun_servers: &[String]) -> Result<ClientPeer, RtcError> {
        let (socket, local) = bind_socket(&config).await?;
        let candidates = host_candidates(&config.candidate_ips, local.port())?;
        // One peer connection; it is handed over only once the answer is in.
        let driver = DriverHandle::spawn(socket, 1, config.open_deadline);
        let mut rtc = str0m_config().build(Instant::now());
        for c in candidates {
            rtc.add_local_candidate(c);
        }
        if let Some(c) = gather_reflexive(&driver, stun_servers).await {
            rtc.add_local_candidate(c);
        }
        Ok(ClientPeer {
            driver,
            rtc: Some(rtc),
            pending: None,
        })
    }

    /// The socket's address.
    pub fn local_addr(&self) -> SocketAddr {
        self.driver.local_addr()
    }

    /// Creates the DataChannel and the offer (once; a second call is an error).
    pub fn offer(&mut self) -> Result<String, RtcError> {
        let rtc = self.rtc.as_mut().ok_or(RtcError::NoPendingOffer)?;
        if self.pending.is_some() {
            return Err(RtcError::NoPendingOffer);
        }
        let mut api = rtc.sdp_api();
        api.add_channel(CHANNEL_LABEL.to_string());
        let (offer, pending) = api
            .apply()
            .ok_or_else(|| RtcError::Webrtc("str0m made no offer for a new channel".into()))?;
        self.pending = Some(pending);
        Ok(offer.to_sdp_string())
    }

    /// Takes the host's answer; the channel opens when ICE and DTLS are through.
    pub async fn accept_answer(mut self, answer_sdp: &str) -> Result<DirectChannel, RtcError> {
        check_sdp_size(answer_sdp)?;
        let answer =
            SdpAnswer::from_sdp_string(answer_sdp).map_err(|e| RtcError::BadSdp(e.to_string()))?;
        let (Some(mut rtc), Some(pending)) = (self.rtc.take(), self.pending.take()) else {
            return Err(RtcError::NoPendingOffer);
        };
        rtc.sdp_api()
            .accept_answer(pending, answer)
            .map_err(|e| RtcError::BadSdp(e.to_string()))?;
        self.driver.add(rtc).await
    }
}

/// The reflexive candidate from the first STUN server that answers, tried in order.
async fn gather_reflexive(driver: &DriverHandle, servers: &[String]) -> Option<str0m::Candidate> {
    for name in servers {
        let Ok(server) = StunServer::parse(name) else {
            tracing::debug!(name, "skipping an unusable STUN server name");
            continue;
        };
        let Ok(addr) = server.resolve().await else {
            continue;
        };
        let Some(reply) = binding(driver, addr, false, GATHER_WAIT).await else {
            continue;
        };
        if let Answer::Mapped(mapped) = reply.answer {
            let base = LocalAddrs::new(driver.local_addr()).toward(addr);
            if mapped != base {
                return reflexive_candidate(mapped, base);
            }
            // Not behind a NAT: the host candidate is the same address already.
            return None;
        }
    }
    None
}
