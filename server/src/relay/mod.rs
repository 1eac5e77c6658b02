//! The relay server, `atmosphere relay`: a dumb, fast WebSocket splice for hosts and members
//! that are both behind NAT. The host's side of the link is `serve::relay_link`.
//!
//! - this file: the flags ([`Args`]) and [`run`];
//! - [`server`]: the shared state ([`server::Relay`]), routes, accept loop (plain or TLS) and
//!   the one way a handler refuses a connection;
//! - `registry`: which host holds each mesh and which members wait for their host;
//! - `control`: a host's control socket (challenge → register → session notices);
//! - `dial_back`: the one TCP dial a registered host may ask for, to its own address
//!   (public-reachability check);
//! - `member`: a member's socket and the host's data socket for it;
//! - [`splice`]: the frame pipe between the two;
//! - [`metrics`]: counters for `/metrics` and `/health`;
//! - [`web`]: the web app at `/join` and its files (`--web-dir`);
//! - [`stun_responder`]: STUN Binding on UDP `--stun-port` and the port after it (RFC 5780
//!   change port), so hosts and browsers need no third-party STUN server;
//! - [`tls`]: rustls server config, and the client connector every `wss://` dial uses
//!   (`ATMOSPHERE_RELAY_CA`).
//!
//! The control protocol, its registration handshake and the close codes live in
//! `atmosphere_shared::relay_proto`; deployment notes are in `docs/RELAY.md`.

mod control;
mod dial_back;
mod member;
pub mod metrics;
mod registry;
pub mod server;
pub mod splice;
pub mod stun_responder;
pub mod tls;
pub mod web;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// `atmosphere relay` flags. Every limit has a default and an environment variable.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// TCP port to listen on (0 picks a free one; the address is logged).
    #[arg(long, env = "ATMOSPHERE_RELAY_PORT", default_value_t = 8080)]
    pub port: u16,
    /// Address to bind.
    #[arg(long, env = "ATMOSPHERE_RELAY_BIND", default_value = "0.0.0.0")]
    pub bind: IpAddr,
    /// PEM certificate chain: serve `wss://` directly (needs --tls-key).
    #[arg(
        long,
        env = "ATMOSPHERE_RELAY_TLS_CERT",
        requires = "tls_key",
        value_name = "FILE"
    )]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(
        long,
        env = "ATMOSPHERE_RELAY_TLS_KEY",
        requires = "tls_cert",
        value_name = "FILE"
    )]
    pub tls_key: Option<PathBuf>,
    /// Largest WebSocket frame or message forwarded, in bytes; bigger ones close the
    /// session with 4413.
    #[arg(long, env = "ATMOSPHERE_RELAY_MAX_FRAME_BYTES", default_value_t = 256 * 1024,
          value_parser = clap::value_parser!(u64).range(1024..=64 * 1024 * 1024))]
    pub max_frame_bytes: u64,
    /// Live relayed sessions per mesh; more members get 4429.
    #[arg(
        long,
        env = "ATMOSPHERE_RELAY_MAX_SESSIONS_PER_MESH",
        default_value_t = 256
    )]
    pub max_sessions_per_mesh: usize,
    /// Unanswered sessions (the host has not yet sent the member anything) per mesh and
    /// source IP (IPv6: per /64); more members from that source get 4429. Keeps a few
    /// addresses with silent member sockets from taking all of a mesh's sessions.
    #[arg(
        long,
        env = "ATMOSPHERE_RELAY_MAX_UNANSWERED_PER_IP",
        default_value_t = 16
    )]
    pub max_unanswered_per_ip: usize,
    /// Time the host has to send a member its first frame, from the member's arrival; then
    /// both sides get 4408 (at most 1day, like every timeout here).
    #[arg(long, env = "ATMOSPHERE_RELAY_ANSWER_TIMEOUT", default_value = "15s", value_parser = crate::cli::parse_timeout)]
    pub answer_timeout: Duration,
    /// Open member and host-control WebSockets per source IP; more get 4429.
    #[arg(long, env = "ATMOSPHERE_RELAY_MAX_CONNS_PER_IP", default_value_t = 64)]
    pub max_conns_per_ip: usize,
    /// Deadline for TLS and HTTP headers, and for a host to answer the challenge (4408).
    #[arg(long, env = "ATMOSPHERE_RELAY_HANDSHAKE_TIMEOUT", default_value = "5s", value_parser = crate::cli::parse_timeout)]
    pub handshake_timeout: Duration,
    /// Time the host has to dial the data socket after a member arrives; then the member
    /// gets a `timeout` error and 4408.
    #[arg(long, env = "ATMOSPHERE_RELAY_ACCEPT_TIMEOUT", default_value = "5s", value_parser = crate::cli::parse_timeout)]
    pub accept_timeout: Duration,
    /// Close a session or control socket after this long without any frame (pings count).
    #[arg(long, env = "ATMOSPHERE_RELAY_IDLE_TIMEOUT", default_value = "120s", value_parser = crate::cli::parse_timeout)]
    pub idle_timeout: Duration,
    /// The URL hosts dial this relay by, e.g. `wss://relay.example`. The relay names itself
    /// by it in every challenge, so a host's registration is valid only here (a relay that
    /// forwards this relay's challenge to its own hosts gets nothing usable). Without it the
    /// relay names itself by the `Host` header of each control request, which the requester
    /// chooses.
    #[arg(long, env = "ATMOSPHERE_RELAY_PUBLIC_URL", value_name = "URL")]
    pub public_url: Option<String>,
    /// Directory of the built web app (trunk's dist/), served at /join [default: ./dist,
    /// else dist/ of the workspace the binary was built in; without one, /join says how to
    /// build it].
    #[arg(long, env = "ATMOSPHERE_RELAY_WEB_DIR", value_name = "DIR")]
    pub web_dir: Option<PathBuf>,
    /// UDP port of the STUN responder (RFC 5389 Binding), on --bind; 0 turns it off.
    #[arg(long, env = "ATMOSPHERE_RELAY_STUN_PORT", default_value_t = atmosphere_shared::relay_proto::DEFAULT_RELAY_STUN_PORT)]
    pub stun_port: u16,
    /// The STUN responder's second UDP port, which answers RFC 5780 "change port" requests
    /// made on the first (and the other way round) [default: --stun-port + 1].
    #[arg(long, env = "ATMOSPHERE_RELAY_STUN_ALT_PORT", value_name = "PORT")]
    pub stun_alt_port: Option<u16>,
    /// Behind a trusted reverse proxy: take the client IP (for the per-IP limit and logs)
    /// from this header's last value, e.g. `X-Forwarded-For` or `X-Real-IP`. Do not set it
    /// when clients connect directly: they could forge it.
    #[arg(long, env = "ATMOSPHERE_RELAY_REAL_IP_HEADER", value_name = "HEADER")]
    pub real_ip_header: Option<String>,
}

impl Args {
    fn limits(&self) -> anyhow::Result<server::Limits> {
        let real_ip_header = match &self.real_ip_header {
            None => None,
            Some(h) => Some(
                axum::http::HeaderName::from_bytes(h.trim().as_bytes()).map_err(|_| {
                    anyhow::anyhow!("--real-ip-header {h:?} is not a valid header name")
                })?,
            ),
        };
        Ok(server::Limits {
            max_frame_bytes: self.max_frame_bytes as usize,
            max_sessions_per_mesh: self.max_sessions_per_mesh.max(1),
            max_unanswered_per_ip: self.max_unanswered_per_ip.max(1),
            answer_timeout: nonzero(self.answer_timeout),
            max_conns_per_ip: self.max_conns_per_ip.max(1),
            handshake_timeout: nonzero(self.handshake_timeout),
            accept_timeout: nonzero(self.accept_timeout),
            idle_timeout: nonzero(self.idle_timeout),
            real_ip_header,
        })
    }
}

fn nonzero(d: Duration) -> Duration {
    d.max(Duration::from_millis(10))
}

/// Runs the relay server until interrupted (Ctrl-C or SIGTERM).
pub async fn run(args: Args) -> ExitCode {
    let limits = match args.limits() {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let name = match &args.public_url {
        None => None,
        Some(url) => {
            match atmosphere_shared::relay_proto::relay_name(url) {
                Some(n) => Some(n),
                None => {
                    eprintln!("error: --public-url {url:?} is not a ws://, wss://, http:// or https:// URL");
                    return ExitCode::from(2);
                }
            }
        }
    };
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(c), Some(k)) => match tls::server_config(c, k) {
            Ok(t) => Some(t),
            Err(e) => {
                eprintln!("error: {e:#}");
                return ExitCode::from(2);
            }
        },
        _ => None,
    };
    let addr = SocketAddr::new(args.bind, args.port);
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: cannot listen on {addr}: {e}");
            return ExitCode::from(1);
        }
    };
    let local = listener.local_addr().unwrap_or(addr);
    let scheme = if tls.is_some() { "wss" } else { "ws" };
    tracing::info!(
        max_frame_bytes = limits.max_frame_bytes,
        max_sessions_per_mesh = limits.max_sessions_per_mesh,
        max_unanswered_per_ip = limits.max_unanswered_per_ip,
        answer_timeout_ms = limits.answer_timeout.as_millis() as u64,
        max_conns_per_ip = limits.max_conns_per_ip,
        handshake_timeout_ms = limits.handshake_timeout.as_millis() as u64,
        accept_timeout_ms = limits.accept_timeout.as_millis() as u64,
        idle_timeout_ms = limits.idle_timeout.as_millis() as u64,
        "relay listening on {scheme}://{local} (hosts: /mesh/<mesh_id>/host, members: /mesh/<mesh_id>)"
    );
    match &name {
        Some(n) => tracing::info!("relay name in challenges: {n} (--public-url)"),
        None => tracing::info!("relay name in challenges: each host's Host header (set --public-url to bind registrations to this relay)"),
    }
    let relay = server::Relay::new(limits, name);
    let _stun = match start_stun(&args, &relay).await {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
    };
    let web_dir = crate::web_bundle::resolve_web_dir(args.web_dir.as_deref());
    crate::web_bundle::log_choice("relay", web_dir.as_deref(), args.web_dir.as_deref());
    let web = web::WebApp::new(web_dir);
    server::serve(listener, tls, relay, web, crate::http::shutdown_signal()).await;
    tracing::info!("relay shutting down");
    ExitCode::SUCCESS
}

/// Starts the STUN responder unless `--stun-port 0`; its tasks end with the process.
async fn start_stun(
    args: &Args,
    relay: &server::Relay,
) -> Result<Option<[tokio::task::JoinHandle<()>; 2]>, String> {
    if args.stun_port == 0 {
        tracing::info!("STUN responder off (--stun-port 0)");
        return Ok(None);
    }
    let alt = match args.stun_alt_port {
        Some(p) => p,
        None => args.stun_port.checked_add(1).ok_or_else(|| {
            format!(
                "--stun-port {} leaves no port for --stun-alt-port; set it",
                args.stun_port
            )
        })?,
    };
    if alt == args.stun_port {
        return Err(format!(
            "--stun-alt-port must differ from --stun-port ({alt})"
        ));
    }
    let responder = stun_responder::StunResponder::bind(args.bind, args.stun_port, alt)
        .await
        .map_err(|e| {
            format!(
                "cannot listen for STUN on UDP {}:{} and :{alt}: {e} (--stun-port 0 turns it off)",
                args.bind, args.stun_port
            )
        })?;
    let a = responder.addrs();
    tracing::info!(
        "STUN responder on udp {} and {} (change port answers from the other)",
        a.primary,
        a.alternate
    );
    Ok(Some(responder.spawn(relay.metrics.clone())))
}
