//! JSON shapes of the host's HTTP API, shared by the server (which produces them), the CLI
//! (`atmosphere token`) and the web app (which consumes them): request and answer bodies,
//! the error body, the events of `GET /api/events` and the host's `GET /health`. Field names are contracts,
//! documented with examples in `docs/PROTOCOL.md`.

use crate::link::Endpoints;
use crate::path::PathKind;
use serde::{Deserialize, Serialize};

/// Lifetime of an invite when the request names none: one hour.
pub const DEFAULT_INVITE_TTL_SECS: u64 = 3600;
/// Uses of an invite when the request names none: one device.
pub const DEFAULT_INVITE_USES: u32 = 1;

/// Optional body of `POST /api/mesh/token`. The safe defaults apply to what it leaves out:
/// an invite for [`DEFAULT_INVITE_USES`] device that expires after
/// [`DEFAULT_INVITE_TTL_SECS`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRequest {
    /// Lifetime in seconds (absent: 1 hour).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_secs: Option<u64>,
    /// How many devices may join with it: absent = 1, `null` = unlimited, else that many.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "absent_or_null"
    )]
    pub max_uses: Option<Option<u32>>,
    /// A note for the host's list of invites.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
}

impl TokenRequest {
    /// A request for an invite any number of devices may use (`"max_uses": null`), with
    /// the default lifetime.
    pub fn unlimited() -> TokenRequest {
        TokenRequest {
            max_uses: Some(None),
            ..TokenRequest::default()
        }
    }

    /// The use limit this request asks for, with the default applied (`None` = unlimited).
    pub fn uses_limit(&self) -> Option<u32> {
        self.max_uses.unwrap_or(Some(DEFAULT_INVITE_USES))
    }

    /// The lifetime this request asks for, with the default applied.
    pub fn ttl(&self) -> u64 {
        self.ttl_secs.unwrap_or(DEFAULT_INVITE_TTL_SECS)
    }
}

/// Tells an absent field (`None`, the default) from an explicit `null` (`Some(None)`).
mod absent_or_null {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<Option<u32>>, s: S) -> Result<S::Ok, S::Error> {
        // `skip_serializing_if` drops `None`; what is left is the inner value or `null`.
        v.flatten().serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Option<u32>>, D::Error> {
        // Called only when the field is present: `null` → `Some(None)`.
        Option::<u32>::deserialize(d).map(Some)
    }
}

/// `network_info` of an invite: the discovery summary of the original invite answer, which
/// the v1/v2 app clients read.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkInfo {
    pub local_ip: Option<String>,
    pub public_ip: Option<String>,
    pub is_behind_nat: bool,
    pub stun_source: Option<String>,
    /// The STUN servers the host hands to browsers for ICE, as `stun:HOST:PORT`: the relay's
    /// STUN responder first (when a relay is configured), then the host's own STUN servers.
    #[serde(default)]
    pub stun_servers: Vec<String>,
}

/// Answer of `POST /api/mesh/token`: the original invite answer the v1/v2 app clients read
/// (`token`, `mesh_id`, `endpoint`, `network_info`, `qr_data`, …), plus the endpoint set,
/// the web join link, the expiry and the invite id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenResponse {
    pub token: String,
    pub mesh_id: String,
    pub mesh_name: String,
    pub endpoints: Endpoints,
    pub network_info: NetworkInfo,
    /// Legacy single endpoint: the first of public, local, relay that exists.
    pub endpoint: Option<String>,
    /// v2 app link (`atmosphere://join?…`).
    pub qr_data: String,
    /// Web link with the invite in the fragment; the QR code encodes this. Its base is
    /// `serve --web-url`, else the relay's web origin, else the host's LAN page.
    pub join_url: String,
    /// The same invite on the host's own LAN page (`http://LAN_IP:PORT/join#…`), for a phone
    /// on the same network; `None` when the host knows no LAN address.
    #[serde(default)]
    pub lan_join_url: Option<String>,
    /// RFC 3339 UTC, e.g. `2026-11-25T10:00:00Z`.
    pub expires_at: String,
    pub max_uses: Option<u32>,
    /// Invite id (for revocation); not a secret.
    #[serde(default)]
    pub invite_id: String,
}

/// State of the host's control link to its relay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum RelayState {
    NotConfigured,
    Connecting {
        url: String,
    },
    Connected {
        url: String,
    },
    Retrying {
        url: String,
        last_error: String,
        retry_in_ms: u64,
    },
}

/// One STUN server's answer in a discovery run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StunProbe {
    /// `stun:host:port`.
    pub server: String,
    /// `ip:port` mapped address, when it answered.
    pub mapped: Option<String>,
    pub rtt_ms: Option<u64>,
    pub error: Option<String>,
}

/// Answer of `GET /api/network`: the cached discovery snapshot.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkSnapshot {
    /// The advertised local IP (the interface that carries the default route).
    pub local_ip: Option<String>,
    /// Every non-loopback interface address seen.
    pub local_ips: Vec<String>,
    pub public_ip: Option<String>,
    pub public_port: Option<u16>,
    pub is_behind_nat: bool,
    /// A 100.64.0.0/10 address was seen on the path (carrier-grade NAT).
    pub cgnat: bool,
    /// Human hint for the UI, e.g. why a port forward will not help.
    pub hint: Option<String>,
    pub stun_source: Option<String>,
    /// The STUN servers the host hands to browsers for ICE (`stun:HOST:PORT`, the relay's
    /// first); see [`NetworkInfo::stun_servers`].
    #[serde(default)]
    pub stun_servers: Vec<String>,
    /// `Some(true)` when two STUN servers saw different mappings (endpoint-dependent NAT).
    pub mapping_varies: Option<bool>,
    pub probes: Vec<StunProbe>,
    pub endpoints: Endpoints,
    pub relay: Option<RelayState>,
    /// RFC 3339 time of the last completed discovery (None before the first).
    pub updated_at: Option<String>,
    /// The routers on the way to the STUN server that answered (TTL-limited probes), or
    /// `None` when no path probe ran (STUN disabled or unanswered, or not yet done).
    #[serde(default)]
    pub path: Option<PathTrace>,
    /// The first router on that path with a 100.64.0.0/10 address (carrier-grade NAT), as
    /// `ip`; it sets `cgnat` even when this machine and STUN only saw ordinary addresses.
    #[serde(default)]
    pub cgnat_hop: Option<String>,
    /// Automatic port mapping on the home router (UPnP IGD, PCP or NAT-PMP): what the host
    /// holds now, or why it holds nothing.
    #[serde(default)]
    pub port_mapping: PortMappingStatus,
    /// Whether the public endpoint answers from outside, as the relay's dial-back found it.
    /// An invite carries `public` only while this is not [`Reachability::Unreachable`].
    #[serde(default)]
    pub reachability: PublicReachability,
}

/// The state of automatic port mapping (`network_info.port_mapping`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PortMappingState {
    /// Turned off (`serve --no-port-mapping`), or not a host (netcheck without probing).
    #[default]
    Off,
    /// Looking for a gateway that maps ports; nothing held yet.
    Searching,
    /// A mapping is held (and renewed before it expires).
    Mapped,
    /// No gateway mapped the port; `error` says why.
    Unavailable,
}

/// The protocol that made (or would make) a mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PortMappingProtocol {
    /// UPnP Internet Gateway Device (SSDP discovery, SOAP `AddPortMapping`).
    Upnp,
    /// Port Control Protocol, RFC 6887.
    Pcp,
    /// NAT Port Mapping Protocol, RFC 6886.
    NatPmp,
}

impl PortMappingProtocol {
    /// The name a person reads: `UPnP`, `PCP`, `NAT-PMP`.
    pub fn label(self) -> &'static str {
        match self {
            PortMappingProtocol::Upnp => "UPnP",
            PortMappingProtocol::Pcp => "PCP",
            PortMappingProtocol::NatPmp => "NAT-PMP",
        }
    }
}

/// `network_info.port_mapping`: the mapping the host holds on its router, or why none.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortMappingStatus {
    pub state: PortMappingState,
    /// Which protocol holds (or last held) the mapping.
    #[serde(default)]
    pub protocol: Option<PortMappingProtocol>,
    /// The gateway that answered, `ip` or `ip:port`.
    #[serde(default)]
    pub gateway: Option<String>,
    /// The router's external IP, as the gateway reports it.
    #[serde(default)]
    pub external_ip: Option<String>,
    /// External TCP port mapped to the mesh port (`None` if only UDP could be mapped).
    #[serde(default)]
    pub tcp_port: Option<u16>,
    /// External UDP port mapped to the direct-path port (`None` when not mapped or off).
    #[serde(default)]
    pub udp_port: Option<u16>,
    /// RFC 3339 time the mapping lapses unless renewed (renewal runs well before).
    #[serde(default)]
    pub expires_at: Option<String>,
    /// Why no mapping is held, for a person: "no UPnP, PCP or NAT-PMP gateway answered".
    #[serde(default)]
    pub error: Option<String>,
}

/// The dial-back verdict on the public endpoint.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reachability {
    /// Not checked (no relay, no public endpoint, `--public-url`, or not yet answered).
    #[default]
    Unknown,
    /// The relay reached the host's public endpoint from outside.
    Reachable,
    /// The relay could not reach it; invites leave `public` out.
    Unreachable,
}

/// `network_info.reachability`: the last dial-back check of the public endpoint.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublicReachability {
    pub state: Reachability,
    /// The endpoint that was checked, `ws://ip:port`.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// RFC 3339 time of the verdict.
    #[serde(default)]
    pub checked_at: Option<String>,
    /// For a person: why unknown or unreachable ("connection refused", "no relay").
    #[serde(default)]
    pub detail: Option<String>,
}

/// A short traceroute toward the STUN server that answered (TTL 1, 2, … until the server
/// itself answers or the hop limit is reached).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PathTrace {
    /// `ip:port` of the STUN server the probes were sent to.
    pub target: String,
    /// One entry per TTL probed, nearest first.
    #[serde(default)]
    pub hops: Vec<PathHop>,
    /// Why the trace is missing or incomplete (unsupported OS, IPv6 target, socket error).
    #[serde(default)]
    pub error: Option<String>,
}

/// One TTL of a [`PathTrace`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PathHop {
    /// The IP TTL of the probe (1 = the first router).
    pub ttl: u8,
    /// Who answered (an ICMP time-exceeded source, or the server itself); `None` when
    /// nothing answered within the deadline (many routers stay silent).
    pub addr: Option<String>,
    /// True when this is the STUN server itself (the end of the path).
    #[serde(default)]
    pub destination: bool,
}

/// An outstanding invite as the admin sees it (never the token itself).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InviteView {
    pub invite_id: String,
    pub label: Option<String>,
    pub created_at: String,
    pub expires_at: String,
    pub max_uses: Option<u32>,
    pub uses: u32,
    pub revoked: bool,
}

/// A member device as the admin sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceView {
    pub device_id: String,
    /// The invite it joined with (absent for devices whose invite is not recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invite_id: Option<String>,
    pub name: String,
    pub platform: String,
    /// Path of the current or last connection.
    pub path: Option<PathKind>,
    pub online: bool,
    pub joined_at: String,
    pub last_seen: Option<String>,
}

/// Answer of `GET /api/mesh`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeshView {
    pub mesh_id: String,
    pub mesh_name: String,
    pub invites: Vec<InviteView>,
    pub devices: Vec<DeviceView>,
}

/// Answer of `DELETE /api/mesh/invites/{id}` (and `POST …/{id}/revoke`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevokeResponse {
    pub invite_id: String,
    /// Always `true`: an unknown id is a 404 [`ApiError`] instead.
    pub revoked: bool,
    /// With `?remove_devices=true`: the devices this invite enrolled, now removed (absent
    /// otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub removed_devices: Option<Vec<String>>,
}

/// Answer of `GET /api/mesh/devices`: every member device, in join order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceList {
    pub devices: Vec<DeviceView>,
}

/// Answer of `DELETE /api/mesh/devices/{id}`: the device is gone, its live session (if
/// any) was closed with `device_removed`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceRemoved {
    pub device_id: String,
    /// Always `true`: an unknown id is a 404 [`ApiError`] instead.
    pub removed: bool,
    /// Whether a live session was closed.
    pub was_online: bool,
}

/// Answer of `GET /api/auth`: `{"admin":true}` when the caller is admin (anyone else gets a
/// 401 [`ApiError`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthStatus {
    pub admin: bool,
}

/// Answer of the host's open `GET /health`. The fields are in the order the host sends
/// them (alphabetical).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostHealth {
    /// Members connected now.
    pub members_online: u64,
    pub mesh_id: String,
    pub mesh_name: String,
    /// Always `ok` (a host that answers is up).
    pub status: String,
    /// Seconds since the host started.
    pub uptime_secs: u64,
    /// The host's `atmosphere` version.
    pub version: String,
}

/// JSON error body of the HTTP API (`401`, `400`, …).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiError {
    pub error: String,
    pub message: String,
}

/// One Server-Sent Event of `GET /api/events`: a `data:` line holding one JSON object,
/// tagged by `"type"`. Each says the mesh changed; the admin UI refetches `GET /api/mesh`.
///
/// ```json
/// {"type":"device_joined","device_id":"3f9a1c0e5b7d2a64","name":"Pixel 8","platform":"android","path":"local","new_device":true}
/// {"type":"device_left","device_id":"3f9a1c0e5b7d2a64","reason":"connection closed"}
/// {"type":"invite_minted","invite_id":"0c1d2e3f4a5b6c7d"}
/// {"type":"invite_used","invite_id":"0c1d2e3f4a5b6c7d","device_id":"3f9a1c0e5b7d2a64"}
/// {"type":"invite_revoked","invite_id":"0c1d2e3f4a5b6c7d"}
/// {"type":"device_removed","device_id":"3f9a1c0e5b7d2a64"}
/// {"type":"resync"}
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum MeshEvent {
    /// A member finished its handshake; `new_device` when it joined with an invite (rather
    /// than rejoining with its device credential).
    DeviceJoined {
        device_id: String,
        name: String,
        platform: String,
        path: PathKind,
        new_device: bool,
    },
    /// A member's session ended; `reason` says why, for people (not a code).
    DeviceLeft { device_id: String, reason: String },
    /// An invite was minted.
    InviteMinted { invite_id: String },
    /// A device joined with the invite (one use of it).
    InviteUsed {
        invite_id: String,
        device_id: String,
    },
    /// The invite was revoked.
    InviteRevoked { invite_id: String },
    /// The admin removed the device: its row is gone and its live session was closed.
    DeviceRemoved { device_id: String },
    /// A member's session moved between paths (relay → a direct WebRTC path, or back):
    /// `after_ms` since it joined, `reason` for a move back to the relay.
    PathChanged {
        device_id: String,
        from: PathKind,
        to: PathKind,
        after_ms: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// The subscriber fell behind and missed events: refetch everything. The host sends it
    /// in place of the events it dropped.
    Resync,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mesh_events_keep_their_wire_shape() {
        let ev = MeshEvent::DeviceJoined {
            device_id: "d1".into(),
            name: "Pixel".into(),
            platform: "android".into(),
            path: PathKind::Relay,
            new_device: true,
        };
        let json = serde_json::to_value(&ev).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"type":"device_joined","device_id":"d1","name":"Pixel",
                "platform":"android","path":"relay","new_device":true})
        );
        assert_eq!(serde_json::from_value::<MeshEvent>(json).unwrap(), ev);
        let moved = MeshEvent::PathChanged {
            device_id: "d1".into(),
            from: PathKind::Relay,
            to: PathKind::Punched,
            after_ms: 420,
            reason: None,
        };
        assert_eq!(
            serde_json::to_value(&moved).unwrap(),
            serde_json::json!({"type":"path_changed","device_id":"d1","from":"relay",
                "to":"punched","after_ms":420})
        );
        assert_eq!(
            serde_json::to_string(&MeshEvent::Resync).unwrap(),
            r#"{"type":"resync"}"#
        );
        assert_eq!(
            serde_json::from_str::<MeshEvent>(r#"{"type":"invite_minted","invite_id":"i"}"#)
                .unwrap(),
            MeshEvent::InviteMinted {
                invite_id: "i".into()
            }
        );
    }
}
