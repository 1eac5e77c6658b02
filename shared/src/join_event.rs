//! Every JSON line `atmosphere join --json` prints, as one type.
//!
//! Each line is one [`JoinEvent`] object, tagged by `"event"`. `event` comes first and the
//! other keys follow in the order below, so the lines read well; scripts should still look
//! keys up by name.
//!
//! | `event` | keys | when |
//! | --- | --- | --- |
//! | `trying` | `path`, `url` | an attempt starts |
//! | `failed` | `path`, `reason` | an attempt failed |
//! | `connected` | `path`, `mesh_name`, `elapsed_ms` | the host's `joined` arrived; the race is won |
//! | `error` | `code`, `message` | the run ends (or, mid-session, the host reported an error) |
//! | `disconnected` | `reason` | a live session was lost and will be re-established |
//! | `reconnecting` | `in_ms` | the next reconnection round starts after this delay |
//! | `peers` | `peers` | who else is online (at the start of a session, and on change) |
//! | `peer_joined` | `peer` | a member came online |
//! | `peer_left` | `device_id` | a member went offline |
//! | `message` | `from`, `body` | a member sent this device a message |
//! | `path` | `from`, `to`, `after_ms`, `reason` (fallbacks only) | the session moved to another path, `after_ms` after the first `joined` |
//! | `direct_unavailable` | `reason`, `retry_in_ms` | a direct path did not open; the session stays on the relay and tries again then |
//!
//! The session lines (`peers` … `message`) are the host's frames ([`ServerMsg`]) with
//! `event` in place of `type`; the race lines come from [`RaceEvent`]; `path` and
//! `direct_unavailable` from the upgrade policy's [`UpgradeEvent`]. The conversions live
//! here ([`JoinEvent::from_race`], [`JoinEvent::from_server`], [`JoinEvent::from_upgrade`]),
//! so the CLI only prints.
//!
//! `error` codes are the host's final refusals ([`ErrorCode`], e.g. `token_expired`) and
//! the CLI's own ([`ClientErrorCode`]: `all_failed`, `bad_link`, `bad_usage`,
//! `disconnected`), together [`JoinErrorCode`].

use crate::path::PathKind;
use crate::racing::RaceEvent;
use crate::upgrade::UpgradeEvent;
use crate::wire::{ErrorCode, Peer, ServerMsg};
use serde::{Deserialize, Serialize};
use std::fmt;

/// One line of `atmosphere join --json` (see the module documentation for the table).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum JoinEvent {
    /// An attempt started on `path` at `url`.
    Trying { path: PathKind, url: String },
    /// An attempt failed; `reason` is a sentence (see
    /// [`FailReason`](crate::racing::FailReason)'s `Display`).
    Failed { path: PathKind, reason: String },
    /// The race was won on `path`, `elapsed_ms` after it started. `mesh_name` is the one
    /// the host's `joined` named (`null` only if neither it nor the invite had one).
    Connected {
        path: PathKind,
        mesh_name: Option<String>,
        elapsed_ms: u64,
    },
    /// The run ends with this error (exit code 1 or 2), or the host reported one on a live
    /// session.
    Error {
        code: JoinErrorCode,
        message: String,
    },
    /// A live session was lost; a `reconnecting` line follows.
    Disconnected { reason: String },
    /// The next reconnection round starts in `in_ms` milliseconds.
    Reconnecting { in_ms: u64 },
    /// Everyone else online now.
    Peers { peers: Vec<Peer> },
    /// A member came online.
    PeerJoined { peer: Peer },
    /// A member went offline.
    PeerLeft { device_id: String },
    /// A message from the member `from` (a device id); `body` is any JSON value.
    Message {
        from: String,
        body: serde_json::Value,
    },
    /// The session moved from `from` to `to`, `after_ms` after the first `joined`, e.g.
    /// `relay` → `punched`; a fallback to the relay says why.
    Path {
        from: PathKind,
        to: PathKind,
        after_ms: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// A direct path did not open (a sentence saying why); the session stays on the relay
    /// and tries again in `retry_in_ms` milliseconds.
    DirectUnavailable { reason: String, retry_in_ms: u64 },
}

impl JoinEvent {
    /// The line for a step of the race. `mesh_name` comes from the shell (the host's
    /// `joined`, or the invite's). Every candidate failing becomes an `error` with code
    /// `all_failed` and the readable summary; a final refusal an `error` with its code.
    pub fn from_race(ev: &RaceEvent, mesh_name: Option<&str>) -> JoinEvent {
        match ev {
            RaceEvent::Trying { path, url } => JoinEvent::Trying {
                path: *path,
                url: url.clone(),
            },
            RaceEvent::Failed { path, reason } => JoinEvent::Failed {
                path: *path,
                reason: reason.to_string(),
            },
            RaceEvent::Connected { path, elapsed_ms } => JoinEvent::Connected {
                path: *path,
                mesh_name: mesh_name.map(str::to_string),
                elapsed_ms: *elapsed_ms,
            },
            RaceEvent::AllFailed { .. } => JoinEvent::Error {
                code: ClientErrorCode::AllFailed.into(),
                message: ev.describe(mesh_name),
            },
            RaceEvent::Fatal { code, message, .. } => JoinEvent::Error {
                code: (*code).into(),
                message: message.clone(),
            },
        }
    }

    /// The line for a step of the upgrade policy (the client's, which always has a retry
    /// time for `direct_unavailable`).
    pub fn from_upgrade(ev: &UpgradeEvent) -> JoinEvent {
        match ev {
            UpgradeEvent::PathChanged {
                from,
                to,
                after_ms,
                reason,
            } => JoinEvent::Path {
                from: *from,
                to: *to,
                after_ms: *after_ms,
                reason: reason.clone(),
            },
            UpgradeEvent::DirectUnavailable {
                reason,
                retry_in_ms,
                ..
            } => JoinEvent::DirectUnavailable {
                reason: reason.clone(),
                retry_in_ms: retry_in_ms.unwrap_or(0),
            },
        }
    }

    /// The line for a host frame on a live session: the frame with `event` for `type`.
    /// `None` for `joined`, which the host sends only once, before the session starts, and
    /// for the signalling of a direct path (the upgrade policy reports its outcome).
    pub fn from_server(msg: &ServerMsg) -> Option<JoinEvent> {
        Some(match msg {
            ServerMsg::Joined(_) => return None,
            ServerMsg::RtcAnswer { .. }
            | ServerMsg::RtcUnavailable { .. }
            | ServerMsg::Direct { .. } => return None,
            ServerMsg::Peers { peers, .. } => JoinEvent::Peers {
                peers: peers.clone(),
            },
            ServerMsg::PeerJoined { peer } => JoinEvent::PeerJoined { peer: peer.clone() },
            ServerMsg::PeerLeft { device_id } => JoinEvent::PeerLeft {
                device_id: device_id.clone(),
            },
            ServerMsg::Message { from, body } => JoinEvent::Message {
                from: from.clone(),
                body: body.clone(),
            },
            ServerMsg::Error { code, message } => JoinEvent::Error {
                code: (*code).into(),
                message: message.clone(),
            },
        })
    }

    /// The event as one line of JSON (no newline), `event` first, with no raw control
    /// character in it: the strings carry other members' text, and the line may well be read
    /// on a terminal. serde_json escapes C0 controls itself but writes DEL and the C1
    /// controls (U+0080–U+009F, which some terminals act on like `ESC`) as they are; they
    /// can only occur inside JSON strings, where a `\uXXXX` escape means the same character.
    pub fn to_line(&self) -> String {
        let line = serde_json::to_string(self).expect("JoinEvent always serialises");
        if !line.chars().any(char::is_control) {
            return line;
        }
        let mut out = String::with_capacity(line.len() + 12);
        for c in line.chars() {
            if c.is_control() {
                out.push_str(&format!("\\u{:04x}", u32::from(c)));
            } else {
                out.push(c);
            }
        }
        out
    }
}

/// The `code` of an `error` line: a host's code or the CLI's own. On the wire both are
/// plain snake_case strings, and no name is in both sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(untagged)]
pub enum JoinErrorCode {
    /// The host's (or the relay's) code: a final refusal such as `token_expired`, or an
    /// error it reported on a live session.
    Host(ErrorCode),
    /// Decided by the CLI itself.
    Client(ClientErrorCode),
}

/// Error codes `atmosphere join` decides on itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientErrorCode {
    /// Every path failed (exit 1); the message lists each path's reason.
    AllFailed,
    /// The link is not an invite, or lists no endpoint (exit 2).
    BadLink,
    /// A flag or the device file is unusable (exit 2).
    BadUsage,
    /// The live session was lost and will not be re-established (`--no-reconnect`, or no
    /// device credential to rejoin with; exit 1).
    Disconnected,
}

impl ClientErrorCode {
    /// The snake_case name used in the JSON lines.
    pub fn as_str(self) -> &'static str {
        match self {
            ClientErrorCode::AllFailed => "all_failed",
            ClientErrorCode::BadLink => "bad_link",
            ClientErrorCode::BadUsage => "bad_usage",
            ClientErrorCode::Disconnected => "disconnected",
        }
    }
}

impl JoinErrorCode {
    /// The snake_case name used in the JSON lines.
    pub fn as_str(self) -> &'static str {
        match self {
            JoinErrorCode::Host(c) => c.as_str(),
            JoinErrorCode::Client(c) => c.as_str(),
        }
    }
}

impl From<ErrorCode> for JoinErrorCode {
    fn from(c: ErrorCode) -> Self {
        JoinErrorCode::Host(c)
    }
}

impl From<ClientErrorCode> for JoinErrorCode {
    fn from(c: ClientErrorCode) -> Self {
        JoinErrorCode::Client(c)
    }
}

impl fmt::Display for JoinErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::racing::FailReason;
    use serde_json::json;

    #[test]
    fn lines_carry_no_raw_control_character_and_decode_to_the_text_sent() {
        let body = "a\u{1b}[2J\u{7}\u{7f}\u{85}\u{9b}31m\n";
        let line = JoinEvent::Message {
            from: "d1".into(),
            body: json!(body),
        }
        .to_line();
        assert!(!line.chars().any(char::is_control), "{line:?}");
        let back: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(back["body"], body);
    }

    fn peer() -> Peer {
        Peer {
            device_id: "d2".into(),
            name: "Pixel".into(),
            platform: "browser".into(),
            path: PathKind::Relay,
        }
    }

    /// Each event prints exactly `line`, and `line` parses back into the same event.
    fn pin(ev: JoinEvent, line: &str) {
        assert_eq!(ev.to_line(), line);
        assert_eq!(
            serde_json::from_str::<JoinEvent>(line).unwrap(),
            ev,
            "{line}"
        );
    }

    #[test]
    fn path_lines_are_exactly_the_contract() {
        let up = |ev: UpgradeEvent| JoinEvent::from_upgrade(&ev);
        pin(
            up(UpgradeEvent::PathChanged {
                from: PathKind::Relay,
                to: PathKind::Punched,
                after_ms: 420,
                reason: None,
            }),
            r#"{"event":"path","from":"relay","to":"punched","after_ms":420}"#,
        );
        pin(
            up(UpgradeEvent::PathChanged {
                from: PathKind::Punched,
                to: PathKind::Relay,
                after_ms: 9000,
                reason: Some("nothing arrived on the direct path for 1500 ms".into()),
            }),
            r#"{"event":"path","from":"punched","to":"relay","after_ms":9000,"reason":"nothing arrived on the direct path for 1500 ms"}"#,
        );
        pin(
            up(UpgradeEvent::DirectUnavailable {
                attempt: 1,
                reason: "no direct path opened within 5 s; staying on the relay".into(),
                retry_in_ms: Some(1800),
            }),
            r#"{"event":"direct_unavailable","reason":"no direct path opened within 5 s; staying on the relay","retry_in_ms":1800}"#,
        );
        let signal = ServerMsg::RtcUnavailable {
            attempt: 1,
            reason: "x".into(),
        };
        assert_eq!(JoinEvent::from_server(&signal), None);
    }

    #[test]
    fn race_lines_are_exactly_the_contract() {
        let from = |ev: RaceEvent| JoinEvent::from_race(&ev, Some("Home"));
        pin(
            from(RaceEvent::Trying {
                path: PathKind::Local,
                url: "ws://192.168.1.20:11451".into(),
            }),
            r#"{"event":"trying","path":"local","url":"ws://192.168.1.20:11451"}"#,
        );
        pin(
            from(RaceEvent::Failed {
                path: PathKind::Local,
                reason: FailReason::Connect("connection refused".into()),
            }),
            r#"{"event":"failed","path":"local","reason":"connection refused"}"#,
        );
        pin(
            from(RaceEvent::Failed {
                path: PathKind::Relay,
                reason: FailReason::Timeout { after_ms: 10_000 },
            }),
            r#"{"event":"failed","path":"relay","reason":"timed out after 10000 ms"}"#,
        );
        pin(
            from(RaceEvent::Connected {
                path: PathKind::Public,
                elapsed_ms: 262,
            }),
            r#"{"event":"connected","path":"public","mesh_name":"Home","elapsed_ms":262}"#,
        );
        pin(
            JoinEvent::from_race(
                &RaceEvent::Connected {
                    path: PathKind::Public,
                    elapsed_ms: 5,
                },
                None,
            ),
            r#"{"event":"connected","path":"public","mesh_name":null,"elapsed_ms":5}"#,
        );
        pin(
            from(RaceEvent::Fatal {
                path: PathKind::Local,
                code: ErrorCode::TokenExpired,
                message: "this invite expired".into(),
            }),
            r#"{"event":"error","code":"token_expired","message":"this invite expired"}"#,
        );
        pin(
            from(RaceEvent::AllFailed {
                reasons: vec![
                    (PathKind::Local, "connection refused".into()),
                    (PathKind::Relay, "timed out after 10000 ms".into()),
                ],
            }),
            r#"{"event":"error","code":"all_failed","message":"all paths failed (local: connection refused; relay: timed out after 10000 ms)"}"#,
        );
    }

    #[test]
    fn client_lines_are_exactly_the_contract() {
        for (code, name) in [
            (ClientErrorCode::AllFailed, "all_failed"),
            (ClientErrorCode::BadLink, "bad_link"),
            (ClientErrorCode::BadUsage, "bad_usage"),
            (ClientErrorCode::Disconnected, "disconnected"),
        ] {
            pin(
                JoinEvent::Error {
                    code: code.into(),
                    message: "why".into(),
                },
                &format!(r#"{{"event":"error","code":"{name}","message":"why"}}"#),
            );
            assert_eq!(JoinErrorCode::from(code).to_string(), name);
        }
        pin(
            JoinEvent::Disconnected {
                reason: "the host closed the connection".into(),
            },
            r#"{"event":"disconnected","reason":"the host closed the connection"}"#,
        );
        pin(
            JoinEvent::Reconnecting { in_ms: 1000 },
            r#"{"event":"reconnecting","in_ms":1000}"#,
        );
    }

    #[test]
    fn session_lines_are_the_host_frames_with_event_for_type() {
        let frames = [
            ServerMsg::Peers {
                peers: vec![peer()],
                more: false,
            },
            ServerMsg::PeerJoined { peer: peer() },
            ServerMsg::PeerLeft {
                device_id: "d2".into(),
            },
            ServerMsg::Message {
                from: "d2".into(),
                body: json!({"b": [1, "two"], "a": null}),
            },
            ServerMsg::Message {
                from: "d2".into(),
                body: json!("hello"),
            },
            ServerMsg::Error {
                code: ErrorCode::TooLarge,
                message: "frame too large".into(),
            },
        ];
        for frame in frames {
            let ev = JoinEvent::from_server(&frame).unwrap();
            let wire = frame.to_json();
            let want = format!(r#"{{"event":{}"#, wire.strip_prefix(r#"{"type":"#).unwrap());
            pin(ev, &want);
        }
        pin(
            JoinEvent::from_server(&ServerMsg::Peers {
                peers: vec![peer()],
                more: false,
            })
            .unwrap(),
            r#"{"event":"peers","peers":[{"device_id":"d2","name":"Pixel","platform":"browser","path":"relay"}]}"#,
        );
        pin(
            JoinEvent::from_server(&ServerMsg::PeerLeft {
                device_id: "d2".into(),
            })
            .unwrap(),
            r#"{"event":"peer_left","device_id":"d2"}"#,
        );
        pin(
            JoinEvent::from_server(&ServerMsg::Message {
                from: "d2".into(),
                body: json!("hi"),
            })
            .unwrap(),
            r#"{"event":"message","from":"d2","body":"hi"}"#,
        );
    }

    #[test]
    fn joined_is_not_a_session_line() {
        let joined = ServerMsg::Joined(crate::wire::Joined {
            mesh_id: "m".into(),
            mesh_name: "Home".into(),
            device_id: "d".into(),
            direct: false,
            stun_servers: Vec::new(),
        });
        assert_eq!(JoinEvent::from_server(&joined), None);
    }

    #[test]
    fn unknown_events_and_codes_are_rejected() {
        assert!(serde_json::from_str::<JoinEvent>(r#"{"event":"nope"}"#).is_err());
        assert!(serde_json::from_str::<JoinEvent>(
            r#"{"event":"error","code":"no_such_code","message":""}"#
        )
        .is_err());
    }
}
