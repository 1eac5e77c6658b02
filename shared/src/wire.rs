//! The mesh WebSocket protocol: every JSON text frame exchanged between a member and the
//! host, `"type"`-tagged. This table is the only definition of the protocol; the host,
//! the native `join` client and the browser all (de)serialise these types.
//!
//! Flow: the client sends [`ClientMsg::Join`] within the handshake deadline (10 s); the host
//! answers [`ServerMsg::Joined`] only after the membership is durably stored, or
//! [`ServerMsg::Error`] and closes. Afterwards presence ([`ServerMsg::Peers`],
//! [`ServerMsg::PeerJoined`], [`ServerMsg::PeerLeft`]) and messages
//! ([`ClientMsg::Send`] → [`ServerMsg::Message`]) flow; keepalive uses WebSocket ping/pong.
//!
//! A client proves it may join with a [`JoinCredential`] (an invite token, or the device
//! credential a previous [`Joined`] handed out), which builds the `join` frame for each path
//! it tries; what it keeps between sessions is a
//! [`DeviceCredential`](crate::credential::DeviceCredential).

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

/// The host's answer to a successful `join`: the membership is stored and the session is
/// live. On the wire it is the fields below next to `"type":"joined"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Joined {
    pub mesh_id: String,
    pub mesh_name: String,
    /// This member's device id (new on a first join, the presented one on a rejoin).
    pub device_id: String,
    /// Present on the first join only: the secret for later rejoins (see
    /// [`DeviceCredential::after_join`](crate::credential::DeviceCredential::after_join)).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_key: Option<String>,
    /// Members online right now (excluding the receiver).
    pub peers: Vec<Peer>,
}

/// Frames the host sends to a member.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMsg {
    /// The membership is stored; the session is live.
    Joined(Joined),
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

/// How a client proves it may join: the one input of the `join` frame besides the path.
///
/// The native `atmosphere join` and the browser both hold one of these for a whole race and
/// build every attempt's first frame with [`JoinCredential::join_frame`], so the two shells
/// cannot drift apart in what they send.
#[derive(Clone, PartialEq, Eq)]
pub enum JoinCredential {
    /// First join through an invite: its token, and how this device introduces itself.
    Token { token: String, device: DeviceInfo },
    /// Rejoin with the credential a previous [`Joined`] handed out (spends no invite use
    /// and does not create a second device).
    Device {
        device_id: String,
        device_key: String,
    },
}

impl JoinCredential {
    /// The `join` message for a socket opened on `path`.
    pub fn join_msg(&self, path: PathKind) -> ClientMsg {
        match self {
            JoinCredential::Token { token, device } => ClientMsg::Join {
                token: Some(token.clone()),
                device: Some(device.clone()),
                device_id: None,
                device_key: None,
                path,
            },
            JoinCredential::Device {
                device_id,
                device_key,
            } => ClientMsg::Join {
                token: None,
                device: None,
                device_id: Some(device_id.clone()),
                device_key: Some(device_key.clone()),
                path,
            },
        }
    }

    /// [`JoinCredential::join_msg`] as the JSON text frame to send.
    pub fn join_frame(&self, path: PathKind) -> String {
        self.join_msg(path).to_json()
    }
}

/// Names the kind of credential and the device, never the token or the key: credentials
/// end up in logs through `{:?}`, and a logged secret is a leaked one.
impl std::fmt::Debug for JoinCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JoinCredential::Token { device, .. } => f
                .debug_struct("Token")
                .field("token", &"<redacted>")
                .field("device", device)
                .finish(),
            JoinCredential::Device { device_id, .. } => f
                .debug_struct("Device")
                .field("device_id", device_id)
                .field("device_key", &"<redacted>")
                .finish(),
        }
    }
}

impl ClientMsg {
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
    fn join_credentials_build_the_contract_frames() {
        let token = JoinCredential::Token {
            token: "ATM-X".into(),
            device: DeviceInfo {
                name: "P".into(),
                platform: "cli".into(),
            },
        };
        assert_eq!(
            token.join_frame(PathKind::Public),
            r#"{"type":"join","token":"ATM-X","device":{"name":"P","platform":"cli"},"path":"public"}"#
        );
        let device = JoinCredential::Device {
            device_id: "d1".into(),
            device_key: "k1".into(),
        };
        assert_eq!(
            device.join_frame(PathKind::Relay),
            r#"{"type":"join","device_id":"d1","device_key":"k1","path":"relay"}"#
        );
        // Each frame parses back into the join message it was built from.
        for (cred, path) in [(token, PathKind::Local), (device, PathKind::Public)] {
            assert_eq!(
                ClientMsg::parse(&cred.join_frame(path)).unwrap(),
                cred.join_msg(path)
            );
        }
    }

    #[test]
    fn join_credential_debug_hides_the_secrets() {
        let token = JoinCredential::Token {
            token: "ATM-SECRET".into(),
            device: DeviceInfo::default(),
        };
        let device = JoinCredential::Device {
            device_id: "d1".into(),
            device_key: "SECRET-KEY".into(),
        };
        assert!(!format!("{token:?}").contains("SECRET"));
        assert!(!format!("{device:?}").contains("SECRET"));
        assert!(format!("{device:?}").contains("d1"));
    }

    #[test]
    fn joined_frame_matches_the_contract() {
        let joined = ServerMsg::Joined(Joined {
            mesh_id: "m1".into(),
            mesh_name: "Home".into(),
            device_id: "d1".into(),
            device_key: Some("k1".into()),
            peers: vec![Peer {
                device_id: "d2".into(),
                name: "Pixel".into(),
                platform: "browser".into(),
                path: PathKind::Relay,
            }],
        });
        let text = joined.to_json();
        assert_eq!(
            text,
            r#"{"type":"joined","mesh_id":"m1","mesh_name":"Home","device_id":"d1","device_key":"k1","peers":[{"device_id":"d2","name":"Pixel","platform":"browser","path":"relay"}]}"#
        );
        assert_eq!(serde_json::from_str::<ServerMsg>(&text).unwrap(), joined);
        // A rejoin's answer carries no key, and says so by leaving the field out.
        let rejoined = ServerMsg::Joined(Joined {
            mesh_id: "m1".into(),
            mesh_name: "Home".into(),
            device_id: "d1".into(),
            device_key: None,
            peers: vec![],
        });
        let text = rejoined.to_json();
        assert_eq!(
            text,
            r#"{"type":"joined","mesh_id":"m1","mesh_name":"Home","device_id":"d1","peers":[]}"#
        );
        assert_eq!(serde_json::from_str::<ServerMsg>(&text).unwrap(), rejoined);
    }

    #[test]
    fn unknown_type_is_rejected() {
        assert!(ClientMsg::parse(r#"{"type":"nope"}"#).is_err());
        assert!(ClientMsg::parse("not json").is_err());
    }
}
