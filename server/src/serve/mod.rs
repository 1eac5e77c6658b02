//! `atmosphere serve`: the host. One listener (default `0.0.0.0:11451`) serves
//!
//! - the mesh WebSocket at `/` and `/api/ws` (→ [`crate::session`]),
//! - the admin API under `/api/` ([`api`], guarded by [`auth`]),
//! - `GET /health` and `GET /metrics` (open; counters in [`crate::host_metrics`]),
//! - `GET /dial-back/{nonce}` (open): the relay's reachability probe ([`reachability`]),
//! - the web UI with an SPA fallback ([`web`]).
//!
//! Around it: the data dir ([`crate::data_dir`]), SQLite persistence ([`crate::store`]),
//! background network discovery ([`crate::discovery`]) and, with `--relay-url`, the host's
//! link to its relay ([`relay_link`]), whose relayed sessions enter the same session handler
//! as direct ones.

pub mod api;
pub mod auth;
pub mod reachability;
pub mod relay_link;
pub mod web;

use crate::data_dir;
use crate::discovery::{Discovery, DiscoveryConfig};
use crate::host_metrics::HostMetrics;
use crate::hub::{Hub, HubConfig};
use crate::limits::PerIpLimiter;
use crate::port_mapping::{PortMapper, Wanted};
use crate::printable::printable;
use crate::rtc::{HostPeer, RtcConfig};
use crate::session::{DirectConfig, SessionConfig, Sessions, Source};
use crate::session_paths::{host_subnets, HostDirect};
use crate::store::{self, Store};
use crate::ws::FrameSocket;
use anyhow::Context;
use atmosphere_shared::handshake::HostKeys;
use atmosphere_shared::mesh_id::mesh_id_from_public_key;
use atmosphere_shared::wire::{ErrorCode, MAX_FRAME_BYTES};
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Request, State, WebSocketUpgrade};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{any, delete, get, post};
use axum::Router;
use relay_link::{HostLink, HostLinkConfig, OnSession};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::info;

/// Largest WebSocket frame/message the socket layer buffers. Slightly above the protocol
/// limit so a frame just over [`MAX_FRAME_BYTES`] is read whole and answered `too_large`;
/// anything bigger is cut off at its header without being buffered.
pub const WS_BUFFER_LIMIT: usize = MAX_FRAME_BYTES + 16 * 1024;

/// `atmosphere serve` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// TCP port of the web UI, the API and the mesh WebSocket.
    #[arg(long, default_value_t = 11451)]
    pub port: u16,

    /// Address to listen on (0.0.0.0 = every interface, so phones on the LAN can connect).
    #[arg(long, default_value = "0.0.0.0")]
    pub bind: IpAddr,

    /// UDP port of the direct path (WebRTC DataChannels to members that joined over the
    /// relay), bound on --bind; 0 = no direct path. Its NAT is checked against the first
    /// STUN server (the relay's, see --relay-stun) at startup and every 5 minutes; forward
    /// this UDP port too for a `public` direct path behind a NAT.
    #[arg(
        long,
        value_name = "PORT",
        env = "ATMOSPHERE_UDP_PORT",
        default_value_t = crate::rtc::DEFAULT_UDP_PORT
    )]
    pub udp_port: u16,

    /// IP offered to members as this host's ICE host candidate on --udp-port (repeatable;
    /// comma-separated in the environment) [default: --bind when it is a specific address,
    /// else every LAN address]. The STUN-reflexive address is offered as well.
    #[arg(
        long,
        value_name = "IP",
        env = "ATMOSPHERE_UDP_CANDIDATE_IP",
        value_delimiter = ','
    )]
    pub udp_candidate_ip: Vec<IpAddr>,

    /// Directory for the database and the admin secret [default: the user's data directory,
    /// e.g. ~/.local/share/atmosphere].
    #[arg(long, env = "ATMOSPHERE_DATA_DIR")]
    pub data_dir: Option<PathBuf>,

    /// Mesh name shown in invites and the UI (renames an existing mesh) [default on first
    /// start: "Home Mesh"].
    #[arg(long)]
    pub mesh_name: Option<String>,

    #[command(flatten)]
    pub stun: crate::discovery::StunArgs,

    #[command(flatten)]
    pub port_mapping: crate::port_mapping::PortMappingArgs,

    /// Relay base URL (ws:// or wss://); the host keeps a control link to it and invites get
    /// a `relay` endpoint.
    #[arg(long, value_name = "URL", env = "ATMOSPHERE_RELAY_URL")]
    pub relay_url: Option<String>,

    /// The relay's STUN responder as HOST:PORT, handed to browsers for ICE as the first STUN
    /// server; `none` hands none [default: the host of --relay-url, port 3478 (the relay's
    /// default --stun-port)].
    #[arg(long, value_name = "HOST:PORT", env = "ATMOSPHERE_RELAY_STUN")]
    pub relay_stun: Option<String>,

    /// Directory of the built web UI (trunk's dist/) [default: ./dist, else dist/ of the
    /// workspace the binary was built in].
    #[arg(long, value_name = "DIR", env = "ATMOSPHERE_WEB_DIR")]
    pub web_dir: Option<PathBuf>,

    /// Base URL of the web UI that invite join links point to (e.g. https://mesh.example.com)
    /// [default: the relay's web origin with --relay-url (https:// for wss://), else this
    /// host's UI at http://LOCAL_IP:PORT].
    #[arg(long, value_name = "URL", env = "ATMOSPHERE_WEB_URL")]
    pub web_url: Option<String>,

    /// Port advertised in the public endpoint (your router's forwarded port) [default: --port].
    #[arg(long, value_name = "PORT", env = "ATMOSPHERE_PUBLIC_PORT")]
    pub public_port: Option<u16>,

    /// Public endpoint to advertise instead of the STUN-discovered one (ws:// or wss://,
    /// e.g. behind a reverse proxy).
    #[arg(long, value_name = "URL", env = "ATMOSPHERE_PUBLIC_URL")]
    pub public_url: Option<String>,

    /// LAN IP to advertise in the local endpoint [default: the address of the interface
    /// that carries the default route].
    #[arg(long, value_name = "IP", env = "ATMOSPHERE_LOCAL_IP")]
    pub local_ip: Option<IpAddr>,

    /// Most mesh WebSockets open at once from one IP address; more are refused with
    /// `rate_limited` (relayed members arrive through the relay link and are not counted).
    #[arg(
        long,
        value_name = "N",
        env = "ATMOSPHERE_MAX_CONNS_PER_IP",
        default_value_t = 32
    )]
    pub max_conns_per_ip: usize,

    /// Milliseconds a member has to send its join frame (testing knob; at most a day).
    #[arg(long, hide = true, env = "ATMOSPHERE_HANDSHAKE_TIMEOUT_MS", default_value_t = atmosphere_shared::wire::HANDSHAKE_TIMEOUT_MS,
          value_parser = clap::value_parser!(u64).range(..=crate::cli::MAX_TIMEOUT_MS))]
    pub handshake_timeout_ms: u64,

    /// Milliseconds without any frame after which a session is closed (testing knob; at
    /// most a day).
    #[arg(
        long,
        hide = true,
        env = "ATMOSPHERE_IDLE_TIMEOUT_MS",
        default_value_t = 60_000,
        value_parser = clap::value_parser!(u64).range(..=crate::cli::MAX_TIMEOUT_MS)
    )]
    pub idle_timeout_ms: u64,

    /// Milliseconds between keepalive pings (testing knob; at most a day).
    #[arg(
        long,
        hide = true,
        env = "ATMOSPHERE_PING_INTERVAL_MS",
        default_value_t = 20_000,
        value_parser = clap::value_parser!(u64).range(..=crate::cli::MAX_TIMEOUT_MS)
    )]
    pub ping_interval_ms: u64,

    /// Failed credential attempts per source address per minute before `rate_limited`.
    #[arg(
        long,
        hide = true,
        env = "ATMOSPHERE_JOIN_FAILURE_LIMIT",
        default_value_t = 10
    )]
    pub join_failure_limit: usize,
}

/// Shared state of the HTTP handlers; cheap to clone.
#[derive(Clone)]
pub struct AppState(Arc<Inner>);

/// The contents of [`AppState`].
pub struct Inner {
    /// The mesh id (derived from the mesh key).
    pub mesh_id: String,
    /// The mesh's display name.
    pub mesh_name: String,
    /// Caps direct mesh WebSockets per source address.
    pub per_ip: Arc<PerIpLimiter>,
    /// Where member sockets go: handshake and live loop.
    pub sessions: Arc<Sessions>,
    /// Who is online, and the event feed.
    pub hub: Arc<Hub>,
    /// The SQLite store.
    pub store: Store,
    /// Background network discovery (cached snapshot).
    pub discovery: Discovery,
    /// The relay control link, with `--relay-url`.
    pub host_link: Option<HostLink>,
    /// The dial-back check of the public endpoint (through the relay link).
    pub reachability: reachability::ReachabilityCheck,
    /// Contents of `<data-dir>/admin_secret`.
    pub admin_secret: String,
    /// Counters for `/metrics`.
    pub metrics: Arc<HostMetrics>,
    /// The port actually listened on.
    pub port: u16,
    /// `--web-url`: base of invite join links.
    pub web_url: Option<String>,
    /// `--relay-url`: its web origin is the default base of invite join links.
    pub relay_url: Option<String>,
    /// The STUN servers handed to browsers for ICE (`stun:HOST:PORT`), the relay's first
    /// ([`ice_stun_servers`]).
    pub stun_servers: Vec<String>,
    /// `--local-ip`: the advertised LAN address.
    pub local_ip: Option<IpAddr>,
    /// The web UI build being served, if any.
    pub web_dir: Option<PathBuf>,
    /// Start time (for `uptime_secs`).
    pub started: Instant,
    /// Automatic port mapping on the router (`network_info.port_mapping`).
    pub port_mapper: PortMapper,
    /// `--public-url` is set: a mapping does not replace the public endpoint.
    pub public_url_set: bool,
}

impl std::ops::Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

/// A startup failure: message and exit code (2 = bad configuration, 1 = runtime).
struct Fail(u8, anyhow::Error);

/// Runs the host until Ctrl-C / SIGTERM.
pub async fn run(args: Args) -> ExitCode {
    match run_inner(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(Fail(code, e)) => {
            eprintln!("error: {e:#}");
            ExitCode::from(code)
        }
    }
}

/// Checks a URL that ends up as an invite endpoint. Only `ws://`/`wss://`: clients reject a
/// whole invite that carries any other scheme, and the relay link dials only WebSockets.
fn validate_ws_url(flag: &str, s: &str) -> anyhow::Result<()> {
    let u = url::Url::parse(s).with_context(|| format!("{flag} {s:?} is not a URL"))?;
    anyhow::ensure!(
        matches!(u.scheme(), "ws" | "wss") && u.host().is_some(),
        "{flag} {s:?} must be a ws:// or wss:// URL with a host"
    );
    Ok(())
}

async fn run_inner(args: Args) -> Result<(), Fail> {
    let cfg = |e: anyhow::Error| Fail(2, e);
    if let Some(u) = &args.relay_url {
        validate_ws_url("--relay-url", u).map_err(cfg)?;
    }
    if let Some(u) = &args.public_url {
        validate_ws_url("--public-url", u).map_err(cfg)?;
    }
    if let Some(u) = &args.web_url {
        let p = url::Url::parse(u)
            .with_context(|| format!("--web-url {u:?} is not a URL"))
            .map_err(cfg)?;
        if !matches!(p.scheme(), "http" | "https") {
            return Err(cfg(anyhow::anyhow!(
                "--web-url {u:?} must be an http:// or https:// URL"
            )));
        }
    }
    if let Some(n) = &args.mesh_name {
        if n.trim().is_empty() || n.chars().count() > 100 {
            return Err(cfg(anyhow::anyhow!(
                "--mesh-name must be 1 to 100 characters"
            )));
        }
    }

    // Data dir, admin secret, database, mesh identity.
    let dir = data_dir::resolve(args.data_dir.as_deref()).map_err(|e| cfg(e.into()))?;
    data_dir::create_private_dir(&dir)
        .with_context(|| format!("cannot create the data dir {}", dir.display()))
        .map_err(cfg)?;
    data_dir::check_private(&dir).map_err(|e| cfg(e.into()))?;
    let admin_secret = auth::load_or_create_secret(&dir).map_err(cfg)?;
    let store = Store::open(&data_dir::database_path(&dir)).map_err(cfg)?;
    let mesh_name = args.mesh_name.clone();
    let mesh = store
        .call(move |c| store::load_or_create_mesh(c, mesh_name.as_deref().map(str::trim)))
        .await
        .map_err(cfg)?;
    let mesh_id = mesh_id_from_public_key(&mesh.signing_key.verifying_key().to_bytes());

    // Listen first, so discovery and links know the real port (and `--port 0` works).
    let listener = tokio::net::TcpListener::bind((args.bind, args.port))
        .await
        .with_context(|| {
            format!(
                "cannot listen on {}:{} (is another host running?)",
                args.bind, args.port
            )
        })
        .map_err(|e| Fail(1, e))?;
    let port = listener.local_addr().map_err(|e| Fail(1, e.into()))?.port();

    // clap already merged `--stun-server` flags and ATMOSPHERE_STUN_SERVERS (flags win).
    let stun_servers = args.stun.servers();
    let ice_servers = ice_stun_servers(
        args.relay_url.as_deref(),
        args.relay_stun.as_deref(),
        &stun_servers,
    )
    .map_err(cfg)?;
    let discovery = Discovery::spawn(DiscoveryConfig {
        stun_servers: stun_servers.clone(),
        listen_port: port,
        public_port: args.public_port,
        public_url: args.public_url.clone(),
        local_ip: args.local_ip,
        refresh_interval: Duration::from_secs(300),
        stun_deadline: Duration::from_millis(1500),
    });

    let direct = start_direct_path(&args, &ice_servers)
        .await
        .map_err(|e| Fail(1, e))?;
    let port_mapper = start_port_mapping(&args, port, direct.as_ref());

    let metrics = Arc::new(HostMetrics::default());
    let hub = Hub::new(HubConfig::default());
    let sessions = Sessions::new(
        HostKeys::from_signing_key(&mesh.signing_key),
        mesh.name.clone(),
        store.clone(),
        hub.clone(),
        SessionConfig {
            handshake_timeout: Duration::from_millis(args.handshake_timeout_ms.max(1)),
            ping_interval: Duration::from_millis(args.ping_interval_ms.max(100)),
            idle_timeout: Duration::from_millis(args.idle_timeout_ms.max(100)),
            failure_limit: args.join_failure_limit.max(1),
            ..SessionConfig::default()
        },
        metrics.clone(),
        DirectConfig {
            stun_servers: if direct.is_some() {
                ice_servers.clone()
            } else {
                Vec::new()
            },
            direct,
        },
    );

    let host_link = args.relay_url.as_ref().map(|url| {
        let sessions = sessions.clone();
        let on_session: OnSession = Arc::new(move |sock, member: String| {
            let sessions = sessions.clone();
            tokio::spawn(
                sessions.serve_member(FrameSocket::from_tungstenite(sock), Source::relay(&member)),
            );
        });
        HostLink::spawn(
            HostLinkConfig {
                relay_url: url.clone(),
                signing_key: mesh.signing_key.clone(),
            },
            on_session,
        )
    });

    let reachability = reachability::ReachabilityCheck::start(
        host_link.as_ref(),
        args.public_url.is_some(),
        &discovery,
        &port_mapper,
    );

    let web_dir = crate::web_bundle::resolve_web_dir(args.web_dir.as_deref());
    crate::web_bundle::log_choice("host", web_dir.as_deref(), args.web_dir.as_deref());

    let state = AppState(Arc::new(Inner {
        mesh_id: mesh_id.clone(),
        mesh_name: mesh.name.clone(),
        per_ip: PerIpLimiter::new(args.max_conns_per_ip),
        sessions,
        hub,
        store,
        discovery: discovery.clone(),
        host_link,
        reachability,
        admin_secret: admin_secret.clone(),
        metrics,
        port,
        web_url: args.web_url.clone(),
        relay_url: args.relay_url.clone(),
        stun_servers: ice_servers,
        local_ip: args.local_ip,
        web_dir,
        started: Instant::now(),
        port_mapper: port_mapper.clone(),
        public_url_set: args.public_url.is_some(),
    }));
    let app = router(state);

    info!(mesh_id = %mesh_id, mesh_name = %printable(&mesh.name), addr = %format!("{}:{port}", args.bind),
        data_dir = %dir.display(), stun = %if stun_servers.is_empty() { "disabled".to_string() } else { stun_servers.join(",") },
        relay = args.relay_url.as_deref().unwrap_or("none"), "atmosphere host listening");
    let link_ip = if args.bind.is_unspecified() || args.bind.is_loopback() {
        IpAddr::from([127, 0, 0, 1])
    } else {
        args.bind
    };
    println!("Mesh: {} ({mesh_id})", mesh.name);
    println!(
        "Admin link: http://{}/?admin={admin_secret}",
        api::host_port(link_ip, port)
    );
    if args.bind.is_unspecified() {
        // The LAN variant needs the local IP; print it once discovery knows (never block startup).
        let d = discovery.clone();
        let override_ip = args.local_ip;
        let secret = admin_secret.clone();
        tokio::spawn(async move {
            let ip = match override_ip {
                Some(ip) => Some(ip),
                None => d
                    .ready(Duration::from_secs(3))
                    .await
                    .local_ip
                    .and_then(|s| s.parse::<IpAddr>().ok()),
            };
            if let Some(ip) = ip.filter(|ip| !ip.is_loopback()) {
                println!(
                    "Admin link (LAN): http://{}/?admin={secret}",
                    api::host_port(ip, port)
                );
            }
        });
    }

    // A request head must arrive within the same deadline as a member's `join` frame
    // (slow-loris guard: a silent or trickling client cannot hold a socket for long).
    let options = crate::http::ServeOptions {
        header_timeout: Duration::from_millis(args.handshake_timeout_ms.max(1)),
        tls: None,
    };
    crate::http::serve(listener, app, options, crate::http::shutdown_signal()).await;
    port_mapper
        .shutdown(crate::port_mapping::SHUTDOWN_DEADLINE)
        .await;
    info!("host stopped");
    Ok(())
}

/// Starts automatic port mapping of the mesh port (TCP) and, with a direct path, its UDP
/// port — unless `--no-port-mapping` or `--bind` is a loopback address. The mapped UDP address follows the mapping into the
/// direct path's ICE candidates.
fn start_port_mapping(args: &Args, port: u16, direct: Option<&HostDirect>) -> PortMapper {
    // A host bound to loopback cannot be reached through a router: nothing to map.
    let protocols = if args.bind.is_loopback() {
        Vec::new()
    } else {
        args.port_mapping.protocols()
    };
    if protocols.is_empty() {
        info!(bind = %args.bind, "port mapping off (--no-port-mapping, or bound to loopback)");
    }
    let wanted = Wanted {
        tcp: port,
        udp: direct.map(|d| d.peer.local_addr().port()),
    };
    let mapper = PortMapper::spawn(protocols, wanted);
    if let Some(d) = direct {
        let peer = d.peer.clone();
        let mut status = mapper.subscribe();
        tokio::spawn(async move {
            loop {
                let udp = crate::port_mapping::mapped_udp(&status.borrow_and_update());
                peer.set_port_mapping(udp);
                if status.changed().await.is_err() {
                    return;
                }
            }
        });
    }
    mapper
}

/// How often the host checks its NAT again (its router may have changed its mind).
const NAT_RECHECK: Duration = Duration::from_secs(300);

/// Binds the direct path's UDP socket (`--udp-port`, 0 = none) and starts checking the NAT
/// against the first STUN server (the relay's responder) in the background: at once, then
/// every [`NAT_RECHECK`].
async fn start_direct_path(
    args: &Args,
    ice_servers: &[String],
) -> anyhow::Result<Option<HostDirect>> {
    if args.udp_port == 0 {
        info!("direct path off (--udp-port 0): members stay on their WebSocket path");
        return Ok(None);
    }
    let mut config = RtcConfig::bound(args.bind, args.udp_port);
    if !args.udp_candidate_ip.is_empty() {
        config.candidate_ips = args.udp_candidate_ip.clone();
    }
    let peer = Arc::new(
        HostPeer::bind(config)
            .await
            .context("cannot start the direct path (--udp-port; 0 turns it off)")?,
    );
    info!(addr = %peer.local_addr(), candidates = ?peer.config().candidate_ips, "direct path (WebRTC) listening on UDP");
    let (checked_tx, nat_checked) = tokio::sync::watch::channel(false);
    let stun = ice_servers.first().cloned();
    let checker = peer.clone();
    tokio::spawn(async move {
        loop {
            check_nat(&checker, stun.as_deref()).await;
            checked_tx.send_replace(true);
            tokio::time::sleep(NAT_RECHECK).await;
        }
    });
    Ok(Some(HostDirect {
        peer,
        subnets: Arc::new(host_subnets()),
        nat_checked,
    }))
}

/// One NAT check of the direct path's socket against `stun` (`stun:HOST:PORT`), logged.
async fn check_nat(peer: &HostPeer, stun: Option<&str>) {
    use crate::discovery::stun::StunServer;
    let Some(name) = stun else {
        info!("no STUN server: the direct path offers host candidates only, NAT unknown");
        return;
    };
    let addr = match StunServer::parse(name) {
        Ok(s) => s.resolve().await,
        Err(e) => Err(e),
    };
    match addr {
        Ok(addr) => {
            let r = peer.nat_check(addr).await;
            info!(stun = %addr, reflexive = ?r.reflexive, mapping = ?r.mapping, filtering = ?r.filtering,
                "direct path NAT check");
        }
        Err(e) => info!(stun = name, error = %e, "cannot reach the STUN server for the NAT check"),
    }
}

/// The STUN servers the host hands to browsers for ICE, as `stun:HOST:PORT`: the relay's
/// STUN responder first, then the host's own `stun_servers` (duplicates dropped).
///
/// The relay's address is `relay_stun` (`--relay-stun HOST:PORT`; `none` for no relay STUN
/// server), else the host of `relay_url` on the relay's default STUN port 3478. The host does
/// not ask the relay: a relay that runs its responder on another port is named with
/// `--relay-stun`, which keeps the control protocol unchanged.
pub fn ice_stun_servers(
    relay_url: Option<&str>,
    relay_stun: Option<&str>,
    stun_servers: &[String],
) -> anyhow::Result<Vec<String>> {
    use crate::discovery::stun::StunServer;
    use atmosphere_shared::relay_proto::{relay_stun_url, DEFAULT_RELAY_STUN_PORT};
    let relay = match relay_stun.map(str::trim) {
        Some(s) if s.eq_ignore_ascii_case("none") => None,
        Some(s) => Some(
            StunServer::parse(s)
                .map_err(|e| anyhow::anyhow!("--relay-stun: {e}"))?
                .label(),
        ),
        None => relay_url.and_then(|u| relay_stun_url(u, DEFAULT_RELAY_STUN_PORT)),
    };
    let mut out: Vec<String> = relay.into_iter().collect();
    for s in stun_servers {
        // The discovery list was validated when it was read; a name it cannot parse is
        // simply not handed on.
        if let Ok(label) = StunServer::parse(s).map(|s| s.label()) {
            if !out.contains(&label) {
                out.push(label);
            }
        }
    }
    Ok(out)
}

/// The host's HTTP routes.
pub fn router(state: AppState) -> Router {
    let admin = Router::new()
        .route("/api/mesh/token", post(api::mint))
        .route("/api/mesh", get(api::mesh))
        .route("/api/mesh/invites/{id}", delete(api::revoke))
        .route("/api/mesh/invites/{id}/revoke", post(api::revoke))
        .route("/api/mesh/devices", get(api::devices))
        .route("/api/mesh/devices/{id}", delete(api::remove_device))
        .route("/api/network", get(api::network))
        .route("/api/network/refresh", post(api::refresh))
        .route("/api/events", get(api::events))
        .route("/api/auth", get(api::whoami))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            auth::require_admin,
        ));
    Router::new()
        .route("/", get(root))
        .route("/api/ws", get(ws_only))
        .route("/health", get(api::health))
        .route("/metrics", get(api::metrics))
        .route("/dial-back/{nonce}", get(reachability::probe_route))
        .merge(admin)
        .route("/api/{*rest}", any(api::not_found))
        .fallback(web::serve)
        .layer(DefaultBodyLimit::max(16 * 1024))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            common_headers,
        ))
        .with_state(state)
}

/// Counts requests and adds headers every answer should carry (and never CORS ones).
async fn common_headers(State(st): State<AppState>, req: Request, next: Next) -> Response {
    let api = req.uri().path().starts_with("/api/");
    let mut resp = next.run(req).await;
    st.metrics.http_request(resp.status().as_u16());
    let h = resp.headers_mut();
    crate::web_bundle::insert_security_headers(h);
    if api {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    resp
}

/// `GET /`: the mesh WebSocket when it is an upgrade (the bare `ws://IP:PORT` endpoint of
/// the v1/v2 app links), else the web UI.
async fn root(
    st: State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
    req: Request,
) -> Response {
    match ws {
        Ok(ws) => upgrade(st.0, peer, ws),
        Err(_) => web::serve(st, req).await,
    }
}

/// `GET /api/ws`: the mesh WebSocket only.
async fn ws_only(
    State(st): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    match ws {
        Ok(ws) => upgrade(st, peer, ws),
        Err(_) => api::error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "this endpoint only accepts WebSocket upgrades",
        ),
    }
}

fn upgrade(st: AppState, peer: SocketAddr, ws: WebSocketUpgrade) -> Response {
    let permit = st.per_ip.try_acquire(peer.ip());
    let max = st.per_ip.max();
    let sessions = st.sessions.clone();
    ws.max_message_size(WS_BUFFER_LIMIT)
        .max_frame_size(WS_BUFFER_LIMIT)
        .read_buffer_size(crate::ws::SOCKET_READ_BUFFER)
        .on_upgrade(move |sock| async move {
            let sock = FrameSocket::from_axum(sock);
            let source = Source::direct(peer);
            match permit {
                // The permit lives as long as the session.
                Some(_permit) => sessions.serve_member(sock, source).await,
                None => {
                    let why = format!("too many connections from {} (limit {max})", peer.ip());
                    sessions
                        .turn_away(sock, &source, ErrorCode::RateLimited, why)
                        .await
                }
            }
        })
}
