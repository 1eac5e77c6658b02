//! The four ways a member can reach a host.

use serde::{Deserialize, Serialize};
use std::fmt;

/// A connection path, in the product's preference order (`Local` first).
///
/// `Local`, `Public` and `Relay` are the WebSocket endpoints an invite names and the race
/// tries ([`PathKind::ENDPOINTS`]). A session that joined over the relay may then move to a
/// direct WebRTC DataChannel ([`crate::upgrade`]), labelled `Local` or `Public` like the
/// WebSocket path of the same kind, or `Punched`, which exists only as a DataChannel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PathKind {
    /// The host's LAN address (same Wi-Fi).
    Local,
    /// The host's public address: a port forward or a mapped port.
    Public,
    /// A hole punched between the two sides' reflexive (NAT) addresses; direct WebRTC only.
    Punched,
    /// A relay server both sides dial out to.
    Relay,
}

impl PathKind {
    /// Every path kind, in preference order.
    pub const ALL: [PathKind; 4] = [
        PathKind::Local,
        PathKind::Public,
        PathKind::Punched,
        PathKind::Relay,
    ];

    /// The WebSocket paths an invite names and the race tries, in preference order.
    /// `Punched` is not one of them: it only exists as a direct WebRTC path.
    pub const ENDPOINTS: [PathKind; 3] = [PathKind::Local, PathKind::Public, PathKind::Relay];

    /// The lowercase name used in JSON, links and events.
    pub fn as_str(self) -> &'static str {
        match self {
            PathKind::Local => "local",
            PathKind::Public => "public",
            PathKind::Punched => "punched",
            PathKind::Relay => "relay",
        }
    }

    /// Parses the lowercase name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "local" => Some(PathKind::Local),
            "public" => Some(PathKind::Public),
            "punched" => Some(PathKind::Punched),
            "relay" => Some(PathKind::Relay),
            _ => None,
        }
    }

    /// True for the paths that reach the host without a relay in between.
    pub fn is_direct(self) -> bool {
        self != PathKind::Relay
    }
}

impl fmt::Display for PathKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_punched_is_no_endpoint() {
        for p in PathKind::ALL {
            assert_eq!(PathKind::parse(p.as_str()), Some(p));
            assert_eq!(serde_json::to_string(&p).unwrap(), format!("\"{p}\""));
        }
        assert!(!PathKind::ENDPOINTS.contains(&PathKind::Punched));
        assert!(PathKind::ALL.windows(2).all(|w| w[0] < w[1]));
        assert!(PathKind::ENDPOINTS.windows(2).all(|w| w[0] < w[1]));
        assert!(!PathKind::Relay.is_direct() && PathKind::Punched.is_direct());
    }
}
