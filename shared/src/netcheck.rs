//! The report of `atmosphere netcheck`: one discovery round plus a relay reachability
//! check. `netcheck --json` prints one [`Report`] as one JSON object on one line, its keys
//! in the order of the fields below (`docs/PROTOCOL.md` has examples):
//!
//! ```json
//! {
//!   "local_ip": "192.168.86.237",            // advertised local IP or null
//!   "local_ips": ["192.168.86.237"],         // non-loopback interface addresses
//!   "public_ip": "73.45.123.89",             // first STUN answer, or null
//!   "stun_source": "stun:host:port",         // the server that gave public_ip, or null
//!   "is_behind_nat": true,
//!   "mapping_varies": false,                 // null with fewer than two answers
//!   "cgnat": false,                          // 100.64.0.0/10 here, in STUN or on the path
//!   "cgnat_hop": "100.64.0.1",               // the first 100.64.0.0/10 router on the path, or null
//!   "hint": "human sentence",                // or null
//!   "path": {"target": "ip:port", "hops": [{"ttl": 1, "addr": "192.168.1.1", "destination": false}],
//!            "error": null},                 // TTL-limited probes toward the STUN server, or null
//!   "endpoints": {"local": "ws://…", "public": "ws://…", "relay": "ws(s)://…"},
//!   "probes": [{"server": "stun:host:port", "mapped": "ip:port", "rtt_ms": 12, "error": null}],
//!   "relay": {"url": "wss://…", "status": "reachable|unreachable|not_configured|invalid",
//!             "error": null, "http_status": 101, "connect_ms": 3, "handshake_ms": 5},
//!   "port_mapping": [{"protocol": "upnp|pcp|nat-pmp", "available": true, "gateway": "ip[:port]",
//!                     "external_ip": "ip", "error": null}],   // [] with --no-port-mapping
//!   "checked_at": "2026-11-25T10:00:00Z"
//! }
//! ```
//!
//! Missing values are `null`, never omitted. The server crate runs the probes; this module
//! only holds their result, so a script or a test can parse the report with the same types.

use crate::api::{NetworkSnapshot, PathTrace, PortMappingProtocol, StunProbe};
use crate::link::Endpoints;
use serde::{Deserialize, Serialize};

/// What the relay check found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RelayStatus {
    /// It answered the WebSocket handshake (`http_status` 101), or answered the upgrade
    /// with another HTTP status, which `error` names: it is there and speaks HTTP.
    Reachable,
    /// DNS, TCP, TLS or the handshake failed or timed out; `error` says which.
    Unreachable,
    /// No relay URL was given.
    NotConfigured,
    /// The URL is not a usable `ws://` or `wss://` URL.
    Invalid,
}

impl RelayStatus {
    /// The status as it appears in the JSON (`reachable`, `not_configured`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            RelayStatus::Reachable => "reachable",
            RelayStatus::Unreachable => "unreachable",
            RelayStatus::NotConfigured => "not_configured",
            RelayStatus::Invalid => "invalid",
        }
    }
}

/// Outcome of the relay reachability check (`relay` in the report).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayCheck {
    /// The URL checked, as given (cut to its first 64 bytes when it is too long to check).
    pub url: Option<String>,
    pub status: RelayStatus,
    /// Why it is not reachable (or a note when the server answered without upgrading).
    pub error: Option<String>,
    /// HTTP status of the handshake answer (101 = WebSocket accepted).
    pub http_status: Option<u16>,
    /// Time to the TCP connection, from the start of the check.
    pub connect_ms: Option<u64>,
    /// Time to the handshake answer, from the start of the check.
    pub handshake_ms: Option<u64>,
}

impl RelayCheck {
    /// No relay URL was given.
    pub fn not_configured() -> RelayCheck {
        RelayCheck {
            url: None,
            status: RelayStatus::NotConfigured,
            error: None,
            http_status: None,
            connect_ms: None,
            handshake_ms: None,
        }
    }

    /// The check of `url` ended with `status` before any handshake answer, for `error`.
    pub fn failed(
        url: &str,
        status: RelayStatus,
        error: String,
        connect_ms: Option<u64>,
    ) -> RelayCheck {
        RelayCheck {
            url: Some(url.to_string()),
            status,
            error: Some(error),
            http_status: None,
            connect_ms,
            handshake_ms: None,
        }
    }
}

/// One port-mapping protocol as netcheck probed it (nothing is kept: UPnP is asked for its
/// external address, NAT-PMP too, PCP maps for a few seconds and deletes it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortMappingProbe {
    pub protocol: PortMappingProtocol,
    /// The gateway answered and would map.
    pub available: bool,
    /// The gateway that answered, `ip` or `ip:port`.
    pub gateway: Option<String>,
    /// The external address it reported.
    pub external_ip: Option<String>,
    /// Why not available.
    pub error: Option<String>,
}

/// The whole report (`netcheck --json` prints exactly this, keys in field order).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    pub local_ip: Option<String>,
    pub local_ips: Vec<String>,
    pub public_ip: Option<String>,
    pub stun_source: Option<String>,
    pub is_behind_nat: bool,
    pub mapping_varies: Option<bool>,
    pub cgnat: bool,
    /// The first router on the path to the STUN server with a 100.64.0.0/10 address.
    pub cgnat_hop: Option<String>,
    pub hint: Option<String>,
    /// The routers toward the STUN server (null when no STUN server answered).
    pub path: Option<PathTrace>,
    /// The snapshot's endpoints, with `relay` set to the relay URL checked (null when it
    /// is not configured or invalid).
    pub endpoints: Endpoints,
    pub probes: Vec<StunProbe>,
    pub relay: RelayCheck,
    /// One entry per port-mapping protocol probed (empty with `--no-port-mapping`).
    #[serde(default)]
    pub port_mapping: Vec<PortMappingProbe>,
    /// RFC 3339 time of the discovery round.
    pub checked_at: Option<String>,
}

impl Report {
    /// The report of one discovery round `snap` and the relay check `relay`.
    pub fn new(snap: NetworkSnapshot, relay: RelayCheck) -> Report {
        let mut endpoints = snap.endpoints;
        if relay.status != RelayStatus::Invalid {
            endpoints.relay = relay.url.clone();
        }
        Report {
            local_ip: snap.local_ip,
            local_ips: snap.local_ips,
            public_ip: snap.public_ip,
            stun_source: snap.stun_source,
            is_behind_nat: snap.is_behind_nat,
            mapping_varies: snap.mapping_varies,
            cgnat: snap.cgnat,
            cgnat_hop: snap.cgnat_hop,
            hint: snap.hint,
            path: snap.path,
            endpoints,
            probes: snap.probes,
            relay,
            port_mapping: Vec::new(),
            checked_at: snap.updated_at,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_round_prints_every_key_as_null_or_empty() {
        let report = Report::new(NetworkSnapshot::default(), RelayCheck::not_configured());
        let json = serde_json::to_string(&report).unwrap();
        assert_eq!(
            json,
            r#"{"local_ip":null,"local_ips":[],"public_ip":null,"stun_source":null,"is_behind_nat":false,"mapping_varies":null,"cgnat":false,"cgnat_hop":null,"hint":null,"path":null,"endpoints":{"local":null,"public":null,"relay":null},"probes":[],"relay":{"url":null,"status":"not_configured","error":null,"http_status":null,"connect_ms":null,"handshake_ms":null},"port_mapping":[],"checked_at":null}"#
        );
        assert_eq!(serde_json::from_str::<Report>(&json).unwrap(), report);
    }

    #[test]
    fn the_relay_url_becomes_the_relay_endpoint_unless_invalid() {
        let checked = |status| {
            let relay = RelayCheck::failed("ws://r", status, "e".into(), None);
            Report::new(NetworkSnapshot::default(), relay)
                .endpoints
                .relay
        };
        assert_eq!(checked(RelayStatus::Unreachable).as_deref(), Some("ws://r"));
        assert_eq!(checked(RelayStatus::Invalid), None);
    }

    #[test]
    fn statuses_print_as_their_names() {
        for s in [
            RelayStatus::Reachable,
            RelayStatus::Unreachable,
            RelayStatus::NotConfigured,
            RelayStatus::Invalid,
        ] {
            assert_eq!(
                serde_json::to_string(&s).unwrap(),
                format!("\"{}\"", s.as_str())
            );
        }
    }
}
