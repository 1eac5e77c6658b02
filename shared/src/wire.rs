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
//! ping/pong. What a member keeps between sessions is a
//! [`DeviceCredential`](crate::credential::DeviceCredential).

use crate::path::PathKind;
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
/// under the Noise transport limit, 65,519 bytes of plaintext) whatever the names.
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
    fn unknown_type_is_rejected() {
        assert!(ClientMsg::parse(r#"{"type":"nope"}"#).is_err());
        assert!(ClientMsg::parse("not json").is_err());
    }
}
