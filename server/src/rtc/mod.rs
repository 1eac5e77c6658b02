//! The direct path: one WebRTC DataChannel per member session, over `str0m`.
//!
//! A session that joined over the relay upgrades to a direct path: the **client** offers
//! (the native `join` with [`client::ClientPeer`], a browser with `RTCPeerConnection`), the
//! **host** answers with [`host::HostPeer`]. Offer and answer travel as mesh messages inside
//! the Noise channel, so the DTLS fingerprints they carry are authenticated end to end; this
//! module only turns SDP text into a [`DirectChannel`] and never sees the mesh protocol.
//!
//! Shape of the stack (str0m is sans-IO, these files are its I/O shell):
//! - [`driver`] owns one UDP socket and every `Rtc` on it: it routes each datagram to the
//!   one `Rtc` that [`str0m::Rtc::accepts`] it (or to one of our own STUN transactions),
//!   drives timeouts, and moves messages between str0m and the sessions' handles. The host
//!   has one driver for all sessions, a client one driver for its one peer connection.
//! - [`peer`] is one `Rtc` with its channel, its open deadline and its queues.
//! - [`channel`] is what a session holds: [`DirectChannel`] (send one message per
//!   DataChannel message; receive [`DirectEvent`]s: open, messages, path changes, close).
//! - [`candidates`] picks the ICE host candidates and the local address a datagram arrived on.
//! - [`nat_check`] asks the relay's STUN responder how the host's NAT treats its UDP socket
//!   (reflexive address, mapping, filtering), from the same socket.
//!
//! Facts of str0m 0.25 this relies on (measured in network namespaces): full ICE (not
//! ICE-lite) so server-reflexive pairs can punch; one `Input::Timeout(now)` right after
//! `accept_offer`/`accept_answer`, or `poll_output` reports "no timeout" and checks never
//! start; an `Input::Receive`'s `destination` must be exactly a local host candidate or
//! str0m drops STUN checks as "unknown interface".
//!
//! Limits: SDP ≤ [`MAX_SDP_BYTES`], at most [`RtcConfig::max_peers`] peer connections per
//! socket, a connection whose channel is not open by [`RtcConfig::open_deadline`] is
//! dropped, messages ≤ [`MAX_MESSAGE_BYTES`], at most [`MAX_INBOUND_BYTES`] queued for a
//! session that does not read. Garbage datagrams are counted and dropped.

pub mod candidates;
pub mod channel;
pub mod client;
mod driver;
pub mod host;
pub mod nat_check;
mod peer;
#[cfg(test)]
mod stun_fixture;
#[cfg(test)]
mod tests;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

pub use channel::{CloseReason, DirectChannel, DirectEvent, DirectPath, DirectSender};
pub use client::ClientPeer;
pub use driver::SocketStats;
pub use host::HostPeer;
pub use nat_check::NatReport;

/// `serve --udp-port` default: the same number as the TCP port, on UDP.
pub const DEFAULT_UDP_PORT: u16 = 11451;
/// The one DataChannel's label; the client creates it before the offer.
pub use atmosphere_shared::upgrade::DATA_CHANNEL_LABEL as CHANNEL_LABEL;
/// Largest offer or answer accepted (a browser's offer with a dozen candidates is ~1 KiB).
pub const MAX_SDP_BYTES: usize = 16 * 1024;
/// Default bound on peer connections per socket.
pub const MAX_PEERS: usize = 256;
/// Default time from offer to open DataChannel before a connection is dropped.
pub const OPEN_DEADLINE: Duration = Duration::from_secs(10);
/// Largest DataChannel message sent or received (what browsers accept: 256 KiB).
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024;
/// Bytes received but not yet read by the session; beyond this the connection is closed
/// (a session that stopped reading must not grow the host's memory).
pub const MAX_INBOUND_BYTES: usize = 4 * 1024 * 1024;
/// Messages a session may have queued for sending before `send` waits.
pub const OUTBOUND_QUEUE: usize = 256;

/// Where a peer's UDP socket is and which addresses it offers as ICE host candidates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RtcConfig {
    /// The socket's address (`0.0.0.0:11451` for the host, `0.0.0.0:0` for a client).
    pub bind: SocketAddr,
    /// The host candidates' IPs (each with the socket's port). Loopback tests set exactly
    /// `127.0.0.1` so nothing is offered (or checked) beyond loopback.
    pub candidate_ips: Vec<IpAddr>,
    /// A connection whose DataChannel has not opened by then is dropped.
    pub open_deadline: Duration,
    /// Most peer connections on the socket at once.
    pub max_peers: usize,
}

impl RtcConfig {
    /// Bound on `ip:port`. Candidates: `ip` itself when it is a specific address, else every
    /// LAN-dialable interface address of its family (loopback only when bound to it).
    pub fn bound(ip: IpAddr, port: u16) -> RtcConfig {
        RtcConfig {
            bind: SocketAddr::new(ip, port),
            candidate_ips: candidates::default_candidate_ips(ip),
            open_deadline: OPEN_DEADLINE,
            max_peers: MAX_PEERS,
        }
    }

    /// Bound on `127.0.0.1`, an OS-chosen port, loopback the only candidate (tests).
    pub fn loopback() -> RtcConfig {
        let ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
        RtcConfig {
            bind: SocketAddr::new(ip, 0),
            candidate_ips: vec![ip],
            open_deadline: OPEN_DEADLINE,
            max_peers: MAX_PEERS,
        }
    }
}

/// Why an offer, answer or message was refused. Each names what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum RtcError {
    #[error("cannot open the direct path's UDP socket on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("the SDP is {len} bytes; at most {max} are accepted")]
    SdpTooLarge { len: usize, max: usize },
    #[error("the SDP does not parse or cannot be used: {0}")]
    BadSdp(String),
    #[error("the offer has no DataChannel (no m=application section)")]
    NoDataChannel,
    #[error("{max} direct connections are open already; try again later")]
    TooManyPeers { max: usize },
    #[error("no address to offer as an ICE candidate")]
    NoCandidates,
    #[error("a message of {len} bytes is larger than the {max} a DataChannel message may be")]
    MessageTooLarge { len: usize, max: usize },
    #[error("the DataChannel is closed: {0}")]
    Closed(CloseReason),
    #[error("no offer of this peer is waiting for an answer")]
    NoPendingOffer,
    #[error("the direct path's UDP driver has stopped")]
    DriverGone,
    #[error("WebRTC: {0}")]
    Webrtc(String),
}

impl From<str0m::RtcError> for RtcError {
    fn from(e: str0m::RtcError) -> RtcError {
        RtcError::Webrtc(e.to_string())
    }
}

/// Refuses an SDP over [`MAX_SDP_BYTES`] before anything parses it.
pub fn check_sdp_size(sdp: &str) -> Result<(), RtcError> {
    if sdp.len() > MAX_SDP_BYTES {
        return Err(RtcError::SdpTooLarge {
            len: sdp.len(),
            max: MAX_SDP_BYTES,
        });
    }
    Ok(())
}

/// A fresh str0m configuration for our one use: full ICE, a DataChannel that can carry
/// [`MAX_MESSAGE_BYTES`] messages, no media, no stats.
/// Binds the UDP socket of `config`; returns it with the address it got.
async fn bind_socket(config: &RtcConfig) -> Result<(tokio::net::UdpSocket, SocketAddr), RtcError> {
    let failed = |source| RtcError::Bind {
        addr: config.bind,
        source,
    };
    let socket = tokio::net::UdpSocket::bind(config.bind)
        .await
        .map_err(failed)?;
    let local = socket.local_addr().map_err(failed)?;
    Ok((socket, local))
}

fn str0m_config() -> str0m::RtcConfig {
    str0m::Rtc::builder()
        // Full ICE: ICE-lite rejects server-reflexive candidates, so no hole punching.
        .set_ice_lite(false)
        .set_sctp_max_message_size(MAX_MESSAGE_BYTES as u32)
        // A message is only written whole; the buffer must hold a few of the largest.
        .set_sctp_max_buffered_amount(4 * MAX_MESSAGE_BYTES)
}
