//! Background network discovery: local IPs, public IP via STUN, NAT and CGNAT flags.
//! STUB: the public API below is fixed for other modules; the implementation is being written.

use atmosphere_shared::api::NetworkSnapshot;
use std::net::IpAddr;
use std::time::Duration;

/// Default STUN servers when neither `--stun-server` nor `ATMOSPHERE_STUN_SERVERS` is set.
pub const DEFAULT_STUN_SERVERS: &[&str] = &["stun.l.google.com:19302", "stun.cloudflare.com:3478"];

/// What discovery needs to know; built by `serve` and `netcheck` from flags and env.
#[derive(Debug, Clone)]
pub struct DiscoveryConfig {
    /// `HOST:PORT` STUN servers; empty disables STUN.
    pub stun_servers: Vec<String>,
    /// Port the host listens on (the local endpoint uses it).
    pub listen_port: u16,
    /// Port advertised in the public endpoint (default: `listen_port`).
    pub public_port: Option<u16>,
    /// Overrides the public endpoint entirely (e.g. `wss://home.example.com`).
    pub public_url: Option<String>,
    /// Overrides the advertised local IP.
    pub local_ip: Option<IpAddr>,
    /// How often the snapshot is refreshed in the background.
    pub refresh_interval: Duration,
    /// Overall deadline of one STUN round (all servers in parallel, with retransmits).
    pub stun_deadline: Duration,
}

/// Handle to the background discovery task; cheap to clone.
#[derive(Clone)]
pub struct Discovery {}

impl Discovery {
    /// Starts discovery in the background (first run immediately). Needs a tokio runtime.
    pub fn spawn(_config: DiscoveryConfig) -> Discovery {
        Discovery {}
    }

    /// The cached snapshot (never waits on the network). `endpoints.local`/`public` are filled
    /// from what was found; `endpoints.relay` and `relay` are left for `serve` to fill.
    pub fn snapshot(&self) -> NetworkSnapshot {
        NetworkSnapshot::default()
    }

    /// Waits until the first discovery has finished, at most `max_wait`, then returns the
    /// snapshot (used when minting the very first invite).
    pub async fn ready(&self, _max_wait: Duration) -> NetworkSnapshot {
        self.snapshot()
    }

    /// Asks for a refresh now (returns immediately).
    pub fn refresh_now(&self) {}
}
