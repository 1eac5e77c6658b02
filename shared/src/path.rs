//! The three ways a member can reach a host.

use serde::{Deserialize, Serialize};
use std::fmt;

/// A connection path, in the product's preference order (`Local` first).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PathKind {
    /// The host's LAN address (same Wi-Fi).
    Local,
    /// The host's public address found with STUN (needs a port forward).
    Public,
    /// A relay server both sides dial out to.
    Relay,
}

impl PathKind {
    /// All paths in preference order.
    pub const ALL: [PathKind; 3] = [PathKind::Local, PathKind::Public, PathKind::Relay];

    /// The lowercase name used in JSON, links and events.
    pub fn as_str(self) -> &'static str {
        match self {
            PathKind::Local => "local",
            PathKind::Public => "public",
            PathKind::Relay => "relay",
        }
    }

    /// Parses the lowercase name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "local" => Some(PathKind::Local),
            "public" => Some(PathKind::Public),
            "relay" => Some(PathKind::Relay),
            _ => None,
        }
    }
}

impl fmt::Display for PathKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
