//! Automatic port mapping: the host asks its router to forward the mesh port (TCP) and the
//! direct-path port (UDP) to it, so `public` works without a person logging into the router.
//!
//! ## What is mapped
//!
//! - TCP `--port` (the mesh WebSocket, 11451) and, unless the direct path is off
//!   (`--udp-port 0`), UDP `--udp-port` (11451). The same external port is asked for; what
//!   the gateway grants is accepted and advertised. TCP is required (it is the public
//!   endpoint); a refused UDP mapping is logged and the TCP one kept.
//! - Lifetime asked: [`LIFETIME`] (2 h, the NAT-PMP recommendation; UPnP lease 7200 s). An IGD
//!   that only does permanent leases (UPnP error 725) gets lease 0; it is removed on exit
//!   all the same.
//!
//! ## Protocols, in the order tried (`--port-mapping-protocol` picks a subset)
//!
//! 1. **UPnP IGD** ([`upnp`], crate `igd-next`): SSDP M-SEARCH to 239.255.255.250:1900 from
//!    the host's LAN address, then SOAP `AddPortMapping` to the device that answered.
//! 2. **PCP** (RFC 6887) and 3. **NAT-PMP** (RFC 6886) ([`pcp_nat_pmp`], crate `crab_nat`):
//!    UDP to the default gateway ([`gateway`]) port 5351.
//!
//! iroh's `portmapper` speaks all three but maps one UDP port only, so it cannot hold the TCP
//! mesh port; hence two crates.
//!
//! ## Lifecycle ([`policy`], sans-IO)
//!
//! Map at start; renew at half the granted lifetime; after a failure back off (30 s doubling
//! to 30 min) and report `unavailable` with the reason; re-map when the local address or the
//! gateway changes (the route is read every [`ROUTE_POLL`]); on shutdown remove what is
//! held within a deadline ([`PortMapper::shutdown`]; `serve` gives it
//! [`SHUTDOWN_DEADLINE`]).
//!
//! ## What it feeds
//!
//! [`PortMapper::status`] is `network_info.port_mapping` (a [`PortMappingStatus`]). With a
//! mapping and no `--public-url`, [`apply_to_snapshot`] makes `endpoints.public`
//! `ws://EXTERNAL_IP:TCP_PORT` and `public_port` the mapped port (STUN's `public_ip` stays as
//! STUN saw it). The mapped UDP address is offered to browsers as one more ICE candidate.
//!
//! ## Network safety
//!
//! Every request here goes to the LAN the host sits on (multicast SSDP, the default gateway).
//! `serve --no-port-mapping` / `ATMOSPHERE_NO_PORT_MAPPING=1` sends none; the test suites
//! set it for every host that does not run inside a test's own network namespace.

pub mod gateway;
pub mod pcp_nat_pmp;
pub mod policy;
pub mod upnp;

use atmosphere_shared::api::{
    NetworkSnapshot, PortMappingProtocol as Protocol, PortMappingState, PortMappingStatus,
};
use atmosphere_shared::netcheck::PortMappingProbe;
use policy::{Lifecycle, Route, Step};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{oneshot, watch};
use tracing::{info, warn};

/// The lifetime asked for (the gateway may grant less).
pub const LIFETIME: Duration = Duration::from_secs(2 * 60 * 60);
/// How often the default route is read to notice a network change. A read is a file read
/// and a connected-but-silent UDP socket (no packet), so it can be frequent; a re-map after
/// a new DHCP lease then waits at most this long.
pub const ROUTE_POLL: Duration = Duration::from_secs(5);
/// How long `serve` waits for the mappings to be removed on exit.
pub const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(2);
/// Every protocol, in the order tried.
pub const ALL_PROTOCOLS: [Protocol; 3] = [Protocol::Upnp, Protocol::Pcp, Protocol::NatPmp];

/// The ports to map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wanted {
    /// The mesh port (TCP).
    pub tcp: u16,
    /// The direct path's UDP port, if the direct path is on.
    pub udp: Option<u16>,
}

/// What a gateway granted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Granted {
    pub protocol: Protocol,
    /// The gateway, `ip` or `ip:port`.
    pub gateway: String,
    pub external_ip: IpAddr,
    pub tcp_port: u16,
    pub udp_port: Option<u16>,
    /// Zero = permanent.
    pub lifetime: Duration,
}

/// Why a protocol did not map.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum MapError {
    /// Nobody answered that protocol (no such gateway on this network).
    #[error("no {label} gateway answered ({detail})", label = .0.label(), detail = .1)]
    NoGateway(Protocol, String),
    /// A gateway answered and refused or failed.
    #[error("{label} gateway refused: {detail}", label = .0.label(), detail = .1)]
    Refused(Protocol, String),
    /// The default route is unknown, so PCP/NAT-PMP have nobody to ask.
    #[error("{0}")]
    Route(#[from] gateway::RouteError),
    #[error("{0}")]
    Config(String),
}

/// Parses `--port-mapping-protocol` values: `upnp`, `pcp`, `nat-pmp` (also `natpmp`).
pub fn parse_protocol(s: &str) -> Result<Protocol, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "upnp" => Ok(Protocol::Upnp),
        "pcp" => Ok(Protocol::Pcp),
        "nat-pmp" | "natpmp" => Ok(Protocol::NatPmp),
        other => Err(format!(
            "unknown port mapping protocol {other:?} (upnp, pcp, nat-pmp)"
        )),
    }
}

/// `serve`'s port-mapping flags (flattened into its `Args`).
#[derive(Debug, Clone, clap::Args)]
pub struct PortMappingArgs {
    /// Do not ask the router to forward ports (UPnP IGD, PCP, NAT-PMP). Mapping is on by
    /// default: it sends SSDP multicast and requests to the default gateway on the LAN.
    #[arg(
        long,
        env = "ATMOSPHERE_NO_PORT_MAPPING",
        value_parser = clap::builder::FalseyValueParser::new(),
        default_value_t = false
    )]
    pub no_port_mapping: bool,

    /// Which port-mapping protocols to try, in this order (comma list) [default: upnp,pcp,nat-pmp].
    #[arg(
        long,
        value_name = "LIST",
        env = "ATMOSPHERE_PORT_MAPPING_PROTOCOL",
        value_delimiter = ',',
        value_parser = parse_protocol
    )]
    pub port_mapping_protocol: Vec<Protocol>,
}

impl PortMappingArgs {
    /// The protocols to try (`[]` when mapping is off).
    pub fn protocols(&self) -> Vec<Protocol> {
        if self.no_port_mapping {
            Vec::new()
        } else if self.port_mapping_protocol.is_empty() {
            ALL_PROTOCOLS.to_vec()
        } else {
            let mut v = Vec::new();
            for p in &self.port_mapping_protocol {
                if !v.contains(p) {
                    v.push(*p);
                }
            }
            v
        }
    }
}

/// A mapping held through one of the protocols.
enum Holding {
    Upnp(upnp::UpnpMapping),
    PcpNatPmp(pcp_nat_pmp::Held),
}

impl Holding {
    async fn renew(&mut self) -> Result<Granted, MapError> {
        match self {
            Holding::Upnp(m) => m.renew().await,
            Holding::PcpNatPmp(m) => m.renew().await,
        }
    }

    async fn remove(self) -> Result<(), MapError> {
        match self {
            Holding::Upnp(m) => m.remove().await,
            Holding::PcpNatPmp(m) => m.remove().await,
        }
    }
}

/// Tries `protocols` in order on `route`; the first mapping wins. The error names what each
/// protocol said.
async fn map_first(
    protocols: &[Protocol],
    route: Route,
    wanted: Wanted,
) -> Result<(Holding, Granted), String> {
    let mut errors = Vec::new();
    for &p in protocols {
        let r = match p {
            Protocol::Upnp => upnp::map(route.local_ip, wanted)
                .await
                .map(|(m, g)| (Holding::Upnp(m), g)),
            Protocol::Pcp | Protocol::NatPmp => {
                pcp_nat_pmp::map(p, route.gateway, route.local_ip, wanted, LIFETIME)
                    .await
                    .map(|(m, g)| (Holding::PcpNatPmp(m), g))
            }
        };
        match r {
            Ok(ok) => return Ok(ok),
            Err(e) => {
                info!(protocol = p.label(), error = %e, "port mapping attempt failed");
                errors.push(e.to_string());
            }
        }
    }
    Err(errors.join("; "))
}

/// How long netcheck's PCP probe mapping lives if its delete is lost.
const PROBE_LIFETIME: Duration = Duration::from_secs(30);
/// The port netcheck's PCP probe maps (nothing listens there; it is deleted at once).
const PROBE_PORT: u16 = 11459;

/// Probes each of `protocols` without keeping anything (`atmosphere netcheck`): UPnP
/// discovery and `GetExternalIPAddress`; NAT-PMP's external-address request; PCP a MAP of
/// [`PROBE_PORT`] with a short lifetime, deleted at once. Run one after another so the
/// table order is the order tried.
pub async fn probe(protocols: &[Protocol]) -> Vec<PortMappingProbe> {
    let route = gateway::default_route();
    let mut out = Vec::new();
    for &p in protocols {
        let r = probe_one(p, route.clone()).await;
        out.push(match r {
            Ok((gateway, ip)) => PortMappingProbe {
                protocol: p,
                available: true,
                gateway: Some(gateway),
                external_ip: Some(ip.to_string()),
                error: None,
            },
            Err(e) => PortMappingProbe {
                protocol: p,
                available: false,
                gateway: None,
                external_ip: None,
                error: Some(e.to_string()),
            },
        });
    }
    out
}

async fn probe_one(
    p: Protocol,
    route: Result<Route, gateway::RouteError>,
) -> Result<(String, IpAddr), MapError> {
    match p {
        Protocol::Upnp => {
            let local = route
                .map(|r| r.local_ip)
                .unwrap_or(IpAddr::from([0, 0, 0, 0]));
            let gw = upnp::discover(local).await?;
            let ip = upnp::external_ip(&gw).await?;
            Ok((gw.addr.to_string(), ip))
        }
        Protocol::NatPmp => {
            let route = route?;
            let ip = pcp_nat_pmp::external_address(route.gateway).await?;
            Ok((route.gateway.to_string(), IpAddr::V4(ip)))
        }
        Protocol::Pcp => {
            let route = route?;
            let wanted = Wanted {
                tcp: PROBE_PORT,
                udp: None,
            };
            let (held, g) =
                pcp_nat_pmp::map(p, route.gateway, route.local_ip, wanted, PROBE_LIFETIME).await?;
            if let Err(e) = held.remove().await {
                warn!(error = %e, "netcheck: could not delete the PCP probe mapping; it lapses in 30 s");
            }
            Ok((g.gateway, g.external_ip))
        }
    }
}

/// The status a held mapping shows.
pub fn mapped_status(g: &Granted) -> PortMappingStatus {
    PortMappingStatus {
        state: PortMappingState::Mapped,
        protocol: Some(g.protocol),
        gateway: Some(g.gateway.clone()),
        external_ip: Some(g.external_ip.to_string()),
        tcp_port: Some(g.tcp_port),
        udp_port: g.udp_port,
        expires_at: (!g.lifetime.is_zero())
            .then(|| crate::clock::rfc3339(crate::clock::now_secs() + g.lifetime.as_secs() as i64)),
        error: None,
    }
}

/// The status when nothing is held and `error` says why.
fn unavailable(error: String) -> PortMappingStatus {
    PortMappingStatus {
        state: PortMappingState::Unavailable,
        error: Some(error),
        ..PortMappingStatus::default()
    }
}

/// Fills `network_info.port_mapping`, and with a mapping (and no `--public-url`) makes the
/// public endpoint the mapped one.
pub fn apply_to_snapshot(
    snap: &mut NetworkSnapshot,
    status: &PortMappingStatus,
    public_url_set: bool,
) {
    snap.port_mapping = status.clone();
    if public_url_set || status.state != PortMappingState::Mapped {
        return;
    }
    let ip = status
        .external_ip
        .as_deref()
        .and_then(|s| s.parse::<IpAddr>().ok());
    if let (Some(ip), Some(port)) = (ip, status.tcp_port) {
        snap.endpoints.public = Some(format!("ws://{}", SocketAddr::new(ip, port)));
        snap.public_port = Some(port);
        // Discovery's advice ("forward TCP port … on your router") is done by the mapping;
        // behind carrier-grade NAT it stands (the router's own WAN is not reachable).
        if !snap.cgnat {
            let by = status.protocol.map(|p| p.label()).unwrap_or("the router");
            snap.hint = Some(format!(
                "The router forwards TCP port {port} to this host automatically ({by})"
            ));
        }
    }
}

/// The mapped UDP address (external ip, udp port), if any: one more ICE candidate.
pub fn mapped_udp(status: &PortMappingStatus) -> Option<SocketAddr> {
    if status.state != PortMappingState::Mapped {
        return None;
    }
    let ip = status.external_ip.as_deref()?.parse::<IpAddr>().ok()?;
    Some(SocketAddr::new(ip, status.udp_port?))
}

/// Asks the task to remove its mappings and stop; it answers on the enclosed sender.
type StopSender = oneshot::Sender<oneshot::Sender<()>>;

/// The running port mapper: a background task and its status; cheap to clone.
#[derive(Clone)]
pub struct PortMapper {
    status: watch::Receiver<PortMappingStatus>,
    stop: Arc<Mutex<Option<StopSender>>>,
}

impl PortMapper {
    /// A mapper that does nothing (`--no-port-mapping`): status `off` forever.
    pub fn off() -> PortMapper {
        let (_tx, status) = watch::channel(PortMappingStatus::default());
        PortMapper {
            status,
            stop: Arc::default(),
        }
    }

    /// Starts mapping `wanted` with `protocols` in the background (none = [`PortMapper::off`]).
    pub fn spawn(protocols: Vec<Protocol>, wanted: Wanted) -> PortMapper {
        if protocols.is_empty() {
            return PortMapper::off();
        }
        let (tx, status) = watch::channel(PortMappingStatus {
            state: PortMappingState::Searching,
            ..PortMappingStatus::default()
        });
        let (stop_tx, stop_rx) = oneshot::channel();
        tokio::spawn(run(protocols, wanted, tx, stop_rx));
        PortMapper {
            status,
            stop: Arc::new(Mutex::new(Some(stop_tx))),
        }
    }

    /// The current status (never waits).
    pub fn status(&self) -> PortMappingStatus {
        self.status.borrow().clone()
    }

    /// A receiver that sees every status change.
    pub fn subscribe(&self) -> watch::Receiver<PortMappingStatus> {
        self.status.clone()
    }

    /// Removes what is held, waiting at most `deadline`. Later calls do nothing.
    pub async fn shutdown(&self, deadline: Duration) {
        let stop = self.stop.lock().unwrap_or_else(|e| e.into_inner()).take();
        let Some(stop) = stop else { return };
        let (done_tx, done_rx) = oneshot::channel();
        if stop.send(done_tx).is_err() {
            return;
        }
        if tokio::time::timeout(deadline, done_rx).await.is_err() {
            warn!(
                ?deadline,
                "port mappings not removed within the deadline; they lapse on their own"
            );
        }
    }
}

/// The background task: drives [`Lifecycle`] with real time and real requests.
async fn run(
    protocols: Vec<Protocol>,
    wanted: Wanted,
    tx: watch::Sender<PortMappingStatus>,
    mut stop: oneshot::Receiver<oneshot::Sender<()>>,
) {
    let origin = Instant::now();
    let now_ms = || origin.elapsed().as_millis() as u64;
    let mut life = Lifecycle::new(0);
    let mut held: Option<Holding> = None;
    let mut last_route_error: Option<String> = None;
    loop {
        let route = match gateway::default_route() {
            Ok(r) => {
                last_route_error = None;
                Some(r)
            }
            Err(e) => {
                // UPnP finds its gateway by SSDP; without a route there is no LAN to ask. A
                // mapping still held keeps showing until it is renewed elsewhere or lapses.
                if !life.is_mapped() && last_route_error.as_deref() != Some(&e.to_string()) {
                    tx.send_replace(unavailable(e.to_string()));
                    last_route_error = Some(e.to_string());
                }
                None
            }
        };
        let step = life.poll(now_ms(), route);
        let outcome = tokio::select! {
            o = execute(step, &protocols, wanted, &mut held) => o,
            done = &mut stop => return remove_on_stop(held.take(), done.ok()).await,
        };
        match outcome {
            Some(Ok((route, g))) => {
                info!(protocol = g.protocol.label(), gateway = %g.gateway, external_ip = %g.external_ip,
                    tcp = g.tcp_port, udp = ?g.udp_port, lifetime = ?g.lifetime, "port mapped");
                life.mapped(now_ms(), route, g.lifetime.as_millis() as u64);
                tx.send_replace(mapped_status(&g));
            }
            Some(Err(e)) => {
                life.failed(now_ms(), rand::random());
                if !life.is_mapped() {
                    held = None;
                    tx.send_replace(unavailable(e));
                }
            }
            None => {}
        }
        let wake =
            Duration::from_millis(life.deadline_ms().saturating_sub(now_ms())).min(ROUTE_POLL);
        tokio::select! {
            _ = tokio::time::sleep(wake) => {}
            done = &mut stop => return remove_on_stop(held.take(), done.ok()).await,
        }
    }
}

/// Runs one step; `None` when there was nothing to do.
async fn execute(
    step: Step,
    protocols: &[Protocol],
    wanted: Wanted,
    held: &mut Option<Holding>,
) -> Option<Result<(Route, Granted), String>> {
    match step {
        Step::Wait => None,
        Step::Map(route) => Some(map_and_hold(protocols, route, wanted, held).await),
        Step::Remap(route) => {
            info!(local_ip = %route.local_ip, gateway = %route.gateway, "network changed: mapping again");
            if let Some(old) = held.take() {
                let _ = old.remove().await;
            }
            Some(map_and_hold(protocols, route, wanted, held).await)
        }
        Step::Renew => {
            let (Some(h), Ok(route)) = (held.as_mut(), gateway::default_route()) else {
                return Some(Err("nothing to renew".into()));
            };
            Some(
                h.renew()
                    .await
                    .map(|g| (route, g))
                    .map_err(|e| e.to_string()),
            )
        }
    }
}

async fn map_and_hold(
    protocols: &[Protocol],
    route: Route,
    wanted: Wanted,
    held: &mut Option<Holding>,
) -> Result<(Route, Granted), String> {
    let (h, g) = map_first(protocols, route, wanted).await?;
    *held = Some(h);
    Ok((route, g))
}

async fn remove_on_stop(held: Option<Holding>, done: Option<oneshot::Sender<()>>) {
    if let Some(h) = held {
        match h.remove().await {
            Ok(()) => info!("port mappings removed"),
            Err(e) => {
                warn!(error = %e, "could not remove the port mappings; they lapse on their own")
            }
        }
    }
    if let Some(done) = done {
        let _ = done.send(());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocol_names_parse() {
        assert_eq!(parse_protocol("UPnP"), Ok(Protocol::Upnp));
        assert_eq!(parse_protocol(" pcp "), Ok(Protocol::Pcp));
        assert_eq!(parse_protocol("nat-pmp"), Ok(Protocol::NatPmp));
        assert_eq!(parse_protocol("natpmp"), Ok(Protocol::NatPmp));
        assert!(parse_protocol("igd")
            .unwrap_err()
            .contains("upnp, pcp, nat-pmp"));
    }

    fn mapped() -> PortMappingStatus {
        mapped_status(&Granted {
            protocol: Protocol::Upnp,
            gateway: "192.168.1.1:5000".into(),
            external_ip: "11.11.0.2".parse().unwrap(),
            tcp_port: 11452,
            udp_port: Some(11451),
            lifetime: LIFETIME,
        })
    }

    #[test]
    fn a_mapping_becomes_the_public_endpoint() {
        let mut snap = NetworkSnapshot {
            public_ip: Some("11.11.0.2".into()),
            hint: Some("This host is behind NAT: forward TCP port 11451 on your router".into()),
            ..Default::default()
        };
        apply_to_snapshot(&mut snap, &mapped(), false);
        assert_eq!(
            snap.endpoints.public.as_deref(),
            Some("ws://11.11.0.2:11452")
        );
        assert_eq!(
            snap.hint.as_deref(),
            Some("The router forwards TCP port 11452 to this host automatically (UPnP)"),
            "no manual forward is asked for while a mapping is held"
        );
        let mut cgnat = NetworkSnapshot {
            cgnat: true,
            hint: Some(crate::discovery::nat::CGNAT_HINT.into()),
            ..Default::default()
        };
        apply_to_snapshot(&mut cgnat, &mapped(), false);
        assert_eq!(
            cgnat.hint.as_deref(),
            Some(crate::discovery::nat::CGNAT_HINT),
            "behind carrier-grade NAT a home mapping does not make the host reachable"
        );
        assert_eq!(snap.public_port, Some(11452));
        assert_eq!(snap.port_mapping.state, PortMappingState::Mapped);
        assert!(snap.port_mapping.expires_at.is_some());
        assert_eq!(
            mapped_udp(&snap.port_mapping),
            Some("11.11.0.2:11451".parse().unwrap())
        );
    }

    #[test]
    fn public_url_wins_and_no_mapping_changes_nothing() {
        let mut snap = NetworkSnapshot::default();
        snap.endpoints.public = Some("wss://home.example.com".into());
        apply_to_snapshot(&mut snap, &mapped(), true);
        assert_eq!(
            snap.endpoints.public.as_deref(),
            Some("wss://home.example.com")
        );
        let mut snap = NetworkSnapshot::default();
        apply_to_snapshot(&mut snap, &unavailable("no gateway".into()), false);
        assert_eq!(snap.endpoints.public, None);
        assert_eq!(mapped_udp(&snap.port_mapping), None);
    }

    #[test]
    fn flags_choose_protocols() {
        let args = |off, list: Vec<Protocol>| PortMappingArgs {
            no_port_mapping: off,
            port_mapping_protocol: list,
        };
        assert_eq!(args(false, vec![]).protocols(), ALL_PROTOCOLS.to_vec());
        assert_eq!(args(true, vec![]).protocols(), Vec::<Protocol>::new());
        assert_eq!(
            args(
                false,
                vec![Protocol::NatPmp, Protocol::NatPmp, Protocol::Pcp]
            )
            .protocols(),
            vec![Protocol::NatPmp, Protocol::Pcp]
        );
    }
}
