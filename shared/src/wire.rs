//! The mesh WebSocket protocol: every JSON message exchanged between a member and the
//! host inside the encrypted channel, `"type"`-tagged. This table is the only definition of the protocol; the host,
//! the native `join` client and the browser all (de)serialise these types.
//!
//! Flow: after the Noise handshake of [`crate::handshake`] (whose third message carries the
//! join request), every frame below is one JSON message sealed into one WebSocket binary
//! frame. The host answers the join with [`ServerMsg::Joined`] only after the membership is
//! durably stored, or [`ServerMsg::Error`] and closes. Then the presence snapshot follows as
//! one or more [`ServerMsg::Peers`] pages ([`peer_pages`]; a client joins them with
//! [`PeersSnapshot`]), then changes ([`ServerMsg::PeerJoined`], [`ServerMsg::PeerLeft`]) and
//! messages ([`ClientMsg::Send`] → [`ServerMsg::Message`]); keepalive uses WebSocket
//! ping/pong. A session that joined over the relay may signal a direct WebRTC path
//! ([`ClientMsg::RtcOffer`] → [`ServerMsg::RtcAnswer`] or [`ServerMsg::RtcUnavailable`];
//! the policy is [`crate::upgrade`]) and move onto it. What a member keeps between sessions is a
//! [`DeviceCredential`](crate::credential::DeviceCredential).

use crate::path::PathKind;
use crate::upgrade::HostNat;
use serde::{Deserialize, Serialize};

/// Largest mesh WebSocket frame either side accepts (bytes).
pub const MAX_FRAME_BYTES: usize = 64 * 1024;
/// Time a client has to finish the handshake (deliver message 3, which carries its join
/// request) after the socket opens.
pub const HANDSHAKE_TIMEOUT_MS: u64 = 10_000;

/// What a device says about itself when it first joins.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct DeviceInfo {
    /// Human name, e.g. "Pixel 8".
    pub name: String,
    /// `browser`, `cli`, `android`, … (free text, short).
    #[serde(default)]
    pub platform: String,
}

/// Largest SDP (offer or answer) either side accepts, in bytes. A real one with a dozen
/// candidates is 1–3 KiB.
pub const MAX_SDP_BYTES: usize = 16 * 1024;
/// Largest `rtc_unavailable` reason a client shows, in bytes (longer ones are cut).
pub const MAX_RTC_REASON_BYTES: usize = 300;

/// Frames a member sends to the host.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientMsg {
    /// Send `body` to one member (`to` = its device id) or to everyone (`to` = null).
    Send {
        #[serde(default)]
        to: Option<String>,
        body: serde_json::Value,
    },
    /// Signalling of a direct path ([`crate::upgrade`]): the client's WebRTC offer for its
    /// upgrade attempt `attempt` (counted from 1 in each session), non-trickle: `sdp` holds
    /// every ICE candidate the client gathered. At most [`MAX_SDP_BYTES`].
    RtcOffer { attempt: u32, sdp: String },
}

/// Why a signalling message is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignalError {
    /// An SDP over [`MAX_SDP_BYTES`].
    #[error("an SDP of {len} bytes exceeds the limit of {max} bytes")]
    SdpTooLarge { len: usize, max: usize },
    /// Attempt numbers count from 1.
    #[error("attempt numbers count from 1")]
    AttemptZero,
}

/// Checks an offer's or answer's size and attempt number before a WebRTC stack sees it.
pub fn check_sdp(attempt: u32, sdp: &str) -> Result<(), SignalError> {
    if sdp.len() > MAX_SDP_BYTES {
        return Err(SignalError::SdpTooLarge {
            len: sdp.len(),
            max: MAX_SDP_BYTES,
        });
    }
    if attempt == 0 {
        return Err(SignalError::AttemptZero);
    }
    Ok(())
}

/// One member as other members see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Peer {
    pub device_id: String,
    pub name: String,
    pub platform: String,
    /// Path of its current connection.
    pub path: PathKind,
}

/// The host's answer to a successful `join`: the membership is stored and the session is
/// live. On the wire it is the fields below next to `"type":"joined"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Joined {
    pub mesh_id: String,
    pub mesh_name: String,
    /// This member's device id (new on a first join, the presented one on a rejoin).
    pub device_id: String,
    /// True when the host answers direct-path offers (it has a UDP socket for WebRTC,
    /// [`crate::upgrade`]). A member offers one only then: without it a client would open a
    /// peer connection (and gather its addresses) for nothing.
    #[serde(default, skip_serializing_if = "is_false")]
    pub direct: bool,
    /// STUN servers (`stun:HOST:PORT`, the host's relay first) a member uses to find its
    /// reflexive address when it offers a direct path ([`crate::upgrade`]). Empty (and left
    /// out) when the host has none or no direct path.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stun_servers: Vec<String>,
}

/// Frames the host sends to a member.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMsg {
    /// The membership is stored; the session is live.
    Joined(Joined),
    /// The members online (excluding the receiver), as one snapshot in one or more pages:
    /// every page but the last has `more: true` (left out when false). A snapshot follows
    /// `joined`; a client shows it once the last page is in ([`PeersSnapshot`]).
    Peers {
        peers: Vec<Peer>,
        #[serde(default, skip_serializing_if = "is_false")]
        more: bool,
    },
    PeerJoined {
        peer: Peer,
    },
    PeerLeft {
        device_id: String,
    },
    /// A message from another member.
    Message {
        from: String,
        body: serde_json::Value,
    },
    /// A refusal or protocol error; the host closes the socket after sending it.
    Error {
        code: ErrorCode,
        message: String,
    },
    /// Signalling of a direct path ([`crate::upgrade`]): the host's answer to
    /// [`ClientMsg::RtcOffer`] `attempt`, with every host candidate, and how the host's UDP
    /// socket looks from outside (so the client can say why a direct path did not open).
    RtcAnswer {
        attempt: u32,
        sdp: String,
        nat: HostNat,
    },
    /// The host will not try a direct path for offer `attempt`; `reason` is a sentence
    /// (no UDP socket, too many peer connections, a bad SDP…). The session stays on the
    /// relay.
    RtcUnavailable {
        attempt: u32,
        reason: String,
    },
    /// The host's first frame on the DataChannel of offer `attempt`, once it opened: sealed
    /// in the session's channel, it proves to the client that the DataChannel carries *this*
    /// session, and it names the kind of the direct path as the host sees it (the host knows
    /// its LAN subnets and whether its UDP port is open; [`crate::upgrade::classify_direct`]).
    /// The client moves onto the direct path when this arrives.
    Direct {
        attempt: u32,
        path: PathKind,
    },
}

/// Machine-readable error codes of [`ServerMsg::Error`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    InvalidToken,
    TokenExpired,
    TokenExhausted,
    TokenRevoked,
    UnknownDevice,
    BadRequest,
    RateLimited,
    TooLarge,
    Timeout,
    Internal,
    /// Relay: no host is registered for this mesh right now.
    HostOffline,
    /// The host's admin removed this device: its live session ends with this error and its
    /// credential is refused from now on. Final: forget the credential, do not reconnect.
    DeviceRemoved,
}

impl ErrorCode {
    /// The snake_case name used on the wire and in CLI events.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidToken => "invalid_token",
            ErrorCode::TokenExpired => "token_expired",
            ErrorCode::TokenExhausted => "token_exhausted",
            ErrorCode::TokenRevoked => "token_revoked",
            ErrorCode::UnknownDevice => "unknown_device",
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::Timeout => "timeout",
            ErrorCode::Internal => "internal",
            ErrorCode::HostOffline => "host_offline",
            ErrorCode::DeviceRemoved => "device_removed",
        }
    }

    /// A credential error is final for the whole invite: every path reaches the same host,
    /// so the racing client stops all attempts instead of trying the next path.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            ErrorCode::InvalidToken
                | ErrorCode::TokenExpired
                | ErrorCode::TokenExhausted
                | ErrorCode::TokenRevoked
                | ErrorCode::UnknownDevice
                | ErrorCode::DeviceRemoved
        )
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// Bytes of peer JSON one `peers` page carries at most, well under the frame limit (and
/// under the channel's limit, 65,503 bytes of body) whatever the names.
///
/// Small on purpose: a host's WebSocket keeps the capacity of its write buffer after the
/// largest frame it ever wrote (tungstenite never shrinks it), and every member that joins
/// with many others online gets a snapshot of many pages. With 32 KiB pages the host held
/// ~50 KiB of write buffer per member (the buffer doubles to 64 KiB as soon as one page is a
/// little longer than the first); with 4 KiB pages ~8 KiB (docs/BENCHMARKS.md, issue 11).
/// 10,000 members online make ~270 pages of ~40 peers each.
pub const PEERS_PAGE_BYTES: usize = 4 * 1024;

/// Splits a presence snapshot into `peers` pages of at most [`PEERS_PAGE_BYTES`] of peer
/// JSON each, so presence never has to fit in one frame however many members are online.
/// Always at least one page (an empty snapshot is one empty page).
pub fn peer_pages(peers: Vec<Peer>) -> Vec<ServerMsg> {
    let mut pages = Vec::new();
    let mut page = Vec::new();
    let mut bytes = 0;
    for peer in peers {
        let len = serde_json::to_string(&peer).map_or(0, |s| s.len()) + 1;
        if !page.is_empty() && bytes + len > PEERS_PAGE_BYTES {
            pages.push(std::mem::take(&mut page));
            bytes = 0;
        }
        bytes += len;
        page.push(peer);
    }
    pages.push(page);
    let last = pages.len() - 1;
    pages
        .into_iter()
        .enumerate()
        .map(|(i, peers)| ServerMsg::Peers {
            peers,
            more: i < last,
        })
        .collect()
}

/// Joins `peers` pages into the snapshot they make up (the client side of [`peer_pages`]).
#[derive(Debug, Default)]
pub struct PeersSnapshot {
    pending: Vec<Peer>,
}

impl PeersSnapshot {
    /// Takes one page; returns the whole snapshot when this was its last page.
    pub fn page(&mut self, peers: &[Peer], more: bool) -> Option<Vec<Peer>> {
        self.pending.extend_from_slice(peers);
        (!more).then(|| std::mem::take(&mut self.pending))
    }
}

impl ClientMsg {
    /// Serialises to the JSON a sealed frame carries.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("ClientMsg always serialises")
    }

    /// Parses one message (the JSON an opened frame holds), enforcing [`MAX_FRAME_BYTES`].
    pub fn parse(text: &str) -> Result<Self, String> {
        if text.len() > MAX_FRAME_BYTES {
            return Err(format!(
                "frame of {} bytes exceeds {MAX_FRAME_BYTES}",
                text.len()
            ));
        }
        serde_json::from_str(text).map_err(|e| e.to_string())
    }
}

impl ServerMsg {
    /// Its `type` on the wire, e.g. `peer_joined`.
    pub fn kind(&self) -> &'static str {
        match self {
            ServerMsg::Joined(_) => "joined",
            ServerMsg::Peers { .. } => "peers",
            ServerMsg::PeerJoined { .. } => "peer_joined",
            ServerMsg::PeerLeft { .. } => "peer_left",
            ServerMsg::Message { .. } => "message",
            ServerMsg::Error { .. } => "error",
            ServerMsg::RtcAnswer { .. } => "rtc_answer",
            ServerMsg::RtcUnavailable { .. } => "rtc_unavailable",
            ServerMsg::Direct { .. } => "direct",
        }
    }

    /// Serialises to the JSON a sealed frame carries.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("ServerMsg always serialises")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_frame_shape() {
        let s = ServerMsg::Error {
            code: ErrorCode::TokenExpired,
            message: "expired".into(),
        }
        .to_json();
        assert_eq!(
            s,
            r#"{"type":"error","code":"token_expired","message":"expired"}"#
        );
    }

    #[test]
    fn joined_frame_matches_the_contract() {
        let joined = ServerMsg::Joined(Joined {
            mesh_id: "m1".into(),
            mesh_name: "Home".into(),
            device_id: "d1".into(),
            direct: false,
            stun_servers: Vec::new(),
        });
        let text = joined.to_json();
        assert_eq!(
            text,
            r#"{"type":"joined","mesh_id":"m1","mesh_name":"Home","device_id":"d1"}"#
        );
        assert_eq!(serde_json::from_str::<ServerMsg>(&text).unwrap(), joined);
    }

    fn peer(i: usize, name_len: usize) -> Peer {
        Peer {
            device_id: format!("{i:016x}"),
            name: "\"".repeat(name_len),
            platform: "browser".into(),
            path: PathKind::Relay,
        }
    }

    #[test]
    fn presence_of_ten_thousand_members_is_paged_under_the_frame_limit() {
        let peers: Vec<Peer> = (0..10_000).map(|i| peer(i, 64)).collect();
        let pages = peer_pages(peers.clone());
        assert!(pages.len() > 1);
        let mut snapshot = PeersSnapshot::default();
        let mut whole = None;
        for (i, page) in pages.iter().enumerate() {
            let text = page.to_json();
            assert!(text.len() < 48 * 1024, "page {i} is {} bytes", text.len());
            let ServerMsg::Peers { peers, more } = serde_json::from_str(&text).unwrap() else {
                panic!("not a peers page")
            };
            assert_eq!(more, i + 1 < pages.len());
            assert!(whole.is_none(), "a snapshot completed before its last page");
            whole = snapshot.page(&peers, more);
        }
        assert_eq!(whole.unwrap(), peers);
    }

    #[test]
    fn a_small_snapshot_is_one_page_without_more() {
        let pages = peer_pages(vec![peer(1, 3)]);
        assert_eq!(pages.len(), 1);
        assert!(!pages[0].to_json().contains("more"));
        assert_eq!(
            peer_pages(Vec::new())[0].to_json(),
            r#"{"type":"peers","peers":[]}"#
        );
    }

    #[test]
    fn signalling_messages_have_their_contract_shape() {
        use crate::upgrade::{NatFiltering, NatMapping};
        let offer = ClientMsg::RtcOffer {
            attempt: 1,
            sdp: "v=0\r\n".into(),
        };
        assert_eq!(
            offer.to_json(),
            r#"{"type":"rtc_offer","attempt":1,"sdp":"v=0\r\n"}"#
        );
        let answer = ServerMsg::RtcAnswer {
            attempt: 1,
            sdp: "v=0".into(),
            nat: HostNat {
                mapping: NatMapping::EndpointIndependent,
                filtering: NatFiltering::Filtered,
            },
        };
        assert_eq!(
            answer.to_json(),
            r#"{"type":"rtc_answer","attempt":1,"sdp":"v=0","nat":{"mapping":"endpoint_independent","filtering":"filtered"}}"#
        );
        let no = ServerMsg::RtcUnavailable {
            attempt: 2,
            reason: "no UDP socket".into(),
        };
        assert_eq!(
            no.to_json(),
            r#"{"type":"rtc_unavailable","attempt":2,"reason":"no UDP socket"}"#
        );
        assert_eq!(
            (answer.kind(), no.kind()),
            ("rtc_answer", "rtc_unavailable")
        );
        assert_eq!(check_sdp(1, &"a".repeat(MAX_SDP_BYTES)), Ok(()));
        assert_eq!(
            check_sdp(1, &"a".repeat(MAX_SDP_BYTES + 1)),
            Err(SignalError::SdpTooLarge {
                len: MAX_SDP_BYTES + 1,
                max: MAX_SDP_BYTES
            })
        );
        assert_eq!(check_sdp(0, "v=0"), Err(SignalError::AttemptZero));
    }

    #[test]
    fn unknown_type_is_rejected() {
        assert!(ClientMsg::parse(r#"{"type":"nope"}"#).is_err());
        assert!(ClientMsg::parse("not json").is_err());
    }
}
