//! The mesh WebSocket protocol: every JSON text frame exchanged between a member and the
//! host, `"type"`-tagged. This table is the only definition of the protocol; the host,
//! the native `join` client and the browser all (de)serialise these types.
//!
//! Flow: the client sends [`ClientMsg::Join`] within the handshake deadline (10 s); the host
//! answers [`ServerMsg::Joined`] only after the membership is durably stored, or
//! [`ServerMsg::Error`] and closes. Afterwards presence ([`ServerMsg::Peers`],
//! [`ServerMsg::PeerJoined`], [`ServerMsg::PeerLeft`]) and messages
//! ([`ClientMsg::Send`] → [`ServerMsg::Message`]) flow; keepalive uses WebSocket ping/pong.

use crate::path::PathKind;
use serde::{Deserialize, Serialize};

/// Largest mesh WebSocket frame either side accepts (bytes).
pub const MAX_FRAME_BYTES: usize = 64 * 1024;
/// Time a client has to send its `join` after the socket opens.
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
    /// First frame. Either `token` + `device` (first join through an invite) or
    /// `device_id` + `device_key` (rejoin with the credential received earlier).
    Join {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        token: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        device: Option<DeviceInfo>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        device_id: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        device_key: Option<String>,
        /// The path this socket was opened on, as the client sees it.
        path: PathKind,
    },
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

/// Frames the host sends to a member.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMsg {
    /// The membership is stored; the session is live.
    Joined {
        mesh_id: String,
        mesh_name: String,
        device_id: String,
        /// Present on the first join only: the credential for later rejoins.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        device_key: Option<String>,
        /// Members online right now (excluding the receiver).
        peers: Vec<Peer>,
    },
    /// Full presence list (excluding the receiver).
    Peers {
        peers: Vec<Peer>,
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
        )
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl ClientMsg {
    /// The first frame of a first join through an invite.
    pub fn join_with_token(token: &str, device: DeviceInfo, path: PathKind) -> ClientMsg {
        ClientMsg::Join {
            token: Some(token.to_string()),
            device: Some(device),
            device_id: None,
            device_key: None,
            path,
        }
    }

    /// The first frame of a rejoin with the credential a previous `joined` handed out.
    pub fn rejoin(device_id: &str, device_key: &str, path: PathKind) -> ClientMsg {
        ClientMsg::Join {
            token: None,
            device: None,
            device_id: Some(device_id.to_string()),
            device_key: Some(device_key.to_string()),
            path,
        }
    }

    /// Serialises to a JSON text frame.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("ClientMsg always serialises")
    }

    /// Parses one text frame, enforcing [`MAX_FRAME_BYTES`].
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
    /// Serialises to a JSON text frame.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("ServerMsg always serialises")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_frame_matches_contract() {
        let m = ClientMsg::parse(
            r#"{"type":"join","token":"ATM-X","device":{"name":"Pixel 8","platform":"browser"},"path":"local"}"#,
        )
        .unwrap();
        match m {
            ClientMsg::Join {
                token,
                device,
                path,
                ..
            } => {
                assert_eq!(token.as_deref(), Some("ATM-X"));
                assert_eq!(device.unwrap().name, "Pixel 8");
                assert_eq!(path, PathKind::Local);
            }
            other => panic!("unexpected {other:?}"),
        }
    }

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
    fn join_constructors_match_the_contract() {
        let dev = DeviceInfo {
            name: "P".into(),
            platform: "cli".into(),
        };
        assert_eq!(
            ClientMsg::join_with_token("ATM-X", dev, PathKind::Public).to_json(),
            r#"{"type":"join","token":"ATM-X","device":{"name":"P","platform":"cli"},"path":"public"}"#
        );
        assert_eq!(
            ClientMsg::rejoin("d1", "k1", PathKind::Relay).to_json(),
            r#"{"type":"join","device_id":"d1","device_key":"k1","path":"relay"}"#
        );
    }

    #[test]
    fn unknown_type_is_rejected() {
        assert!(ClientMsg::parse(r#"{"type":"nope"}"#).is_err());
        assert!(ClientMsg::parse("not json").is_err());
    }
}
