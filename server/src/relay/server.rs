//! The relay server: its shared state ([`Relay`]), routes, the accept loop, and the one way
//! every handler refuses a connection (`Relay::refuse`).
//!
//! Routes (all WebSocket routes answer every refusal with a close code from
//! [`atmosphere_shared::relay_proto::close`] plus one log line):
//! - `GET /mesh/{mesh_id}/host`: a host's control socket (`control`);
//! - `GET /mesh/{mesh_id}`: a member (the invite's relay endpoint, `member`);
//! - `GET /mesh/{mesh_id}/session/{session_id}`: the host's data socket for one member
//!   (`member`);
//! - `GET /health` (JSON) and `GET /metrics` (Prometheus);
//! - the web app: `GET /join` and the bundle's files, `/` → `/join` ([`super::web`]).
//!
//! State is only live sockets (no database): see `registry`, plus the per-IP
//! connection counts.

use super::dial_back::DialBacks;
use super::metrics::{ConnKind, Metrics, RefusalKind};
use super::registry::Registry;
use super::web::WebApp;
use super::{control, member};
use crate::limits::{rate_bucket, IpPermit, JoinRateLimiter, PerIpLimiter};
use atmosphere_shared::api::ApiError;
use atmosphere_shared::relay_proto::RelayHealth;
use atmosphere_shared::wire::{ErrorCode, ServerMsg};
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderName, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Configurable limits of one relay process (see `atmosphere relay --help`).
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest frame (and message) accepted on member and data sockets, in bytes.
    pub max_frame_bytes: usize,
    /// Live sessions (waiting or spliced) per mesh.
    pub max_sessions_per_mesh: usize,
    /// Unanswered sessions (the host has not sent the member a frame yet) per mesh and
    /// source IP (an IPv6 /64 counts as one source).
    pub max_unanswered_per_ip: usize,
    /// Time from a member's arrival to the host's first frame to it.
    pub answer_timeout: Duration,
    /// Open member + host-control WebSockets per source IP.
    pub max_conns_per_ip: usize,
    /// Time for TLS + HTTP headers, and for a host to answer the challenge.
    pub handshake_timeout: Duration,
    /// Time for the host to dial the data socket after a member arrived.
    pub accept_timeout: Duration,
    /// A spliced session (or control socket) with no frame for this long is closed.
    pub idle_timeout: Duration,
    /// Take the client IP from this header (last value), for relays behind a trusted proxy.
    pub real_ip_header: Option<HeaderName>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_frame_bytes: 256 * 1024,
            max_sessions_per_mesh: 256,
            max_unanswered_per_ip: 16,
            answer_timeout: Duration::from_secs(15),
            max_conns_per_ip: 64,
            handshake_timeout: Duration::from_secs(5),
            accept_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(120),
            real_ip_header: None,
        }
    }
}

/// One relay's shared state.
pub struct Relay {
    pub(super) limits: Limits,
    /// Counters behind `/metrics` and `/health`.
    pub metrics: Arc<Metrics>,
    started: Instant,
    pub(super) registry: Arc<Registry>,
    per_ip: Arc<PerIpLimiter>,
    /// Failed data-socket proofs per source ([`DATA_FAILURE_LIMIT`]).
    data_failures: JoinRateLimiter,
    /// The relay's name from `--public-url` (`relay_proto::relay_name`), sent in every
    /// challenge; `None`: each control request's `Host` header.
    name: Option<String>,
    /// Dial-back requests of registered hosts: the relay-wide budget.
    pub(super) dial_backs: DialBacks,
}

impl Relay {
    /// A relay with these limits and no hosts, naming itself `name` in its challenges
    /// (`None`: by the `Host` header of each control request).
    pub fn new(limits: Limits, name: Option<String>) -> Arc<Relay> {
        Arc::new(Relay {
            per_ip: PerIpLimiter::new(limits.max_conns_per_ip),
            limits,
            metrics: Arc::new(Metrics::default()),
            started: Instant::now(),
            registry: Arc::new(Registry::default()),
            data_failures: JoinRateLimiter::new(DATA_FAILURE_LIMIT, DATA_FAILURE_WINDOW),
            name,
            dial_backs: DialBacks::default(),
        })
    }

    /// The name this relay gives in a challenge on a control request with `headers`: its
    /// `--public-url` name, else the request's `Host` header (lowercase), the authority the
    /// host dialed. `None` without either.
    pub(super) fn name_for(&self, headers: &HeaderMap) -> Option<String> {
        if let Some(n) = &self.name {
            return Some(n.clone());
        }
        headers
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .map(|h| h.trim().to_ascii_lowercase())
            .filter(|h| !h.is_empty())
    }

    /// The limits in force.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Meshes with a registered host.
    pub fn meshes(&self) -> usize {
        self.registry.meshes()
    }

    /// The front of a control or member socket: the source's connection slot is taken
    /// before the upgrade; once the socket is open the connection is counted and, if the
    /// source had no slot left, refused with 4429 (and, for members, a `rate_limited` error
    /// frame they can show); otherwise `serve` runs with the slot held until it returns.
    pub(super) fn accept_limited<F, Fut>(
        self: Arc<Self>,
        ws: WebSocketUpgrade,
        max_frame_bytes: usize,
        kind: ConnKind,
        (ip, mesh): (IpAddr, String),
        serve: F,
    ) -> Response
    where
        F: FnOnce(Arc<Relay>, WebSocket, Ctx) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send,
    {
        let slot: Option<IpPermit> = self.per_ip.try_acquire(ip);
        configure(ws, max_frame_bytes).on_upgrade(move |socket| async move {
            let _conn = self.metrics.conn_opened(kind);
            let ctx = Ctx {
                kind: kind.as_str(),
                ip,
                mesh,
            };
            let Some(_slot) = slot else {
                let mut refusal = too_many_from(ip);
                if kind == ConnKind::Client {
                    refusal = refusal.with_error_frame(ErrorCode::RateLimited);
                }
                return self.refuse(socket, refusal, &ctx).await;
            };
            serve(self.clone(), socket, ctx).await;
        })
    }

    /// The client's address: the peer's, or the configured real-IP header's (behind a
    /// trusted proxy).
    pub(super) fn client_ip(&self, peer: SocketAddr, headers: &HeaderMap) -> IpAddr {
        if let Some(h) = &self.limits.real_ip_header {
            // The last value of the last line: a proxy may append its own header line after
            // one the client forged (HAProxy's `option forwardfor` does).
            if let Some(ip) = headers
                .get_all(h)
                .iter()
                .next_back()
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.rsplit(',').next())
                .and_then(|v| v.trim().parse::<IpAddr>().ok())
            {
                return ip;
            }
        }
        peer.ip()
    }

    /// Refuses a data-socket request before its upgrade: a plain HTTP answer with an
    /// [`ApiError`] body naming the refusal (`bad_request` 400, `bad_signature` 401,
    /// `host_offline` 404, `too_many` 429). Failed proofs (400, 401) count against the
    /// source's failure window; a source past it gets 429 without a log line and its HTTP
    /// connection closed, so a flood of bad secrets costs a TCP handshake each and cannot
    /// flood the log. A valid secret is admitted whatever its source did.
    pub(super) fn refuse_http(&self, r: Refused, ctx: &Ctx) -> Response {
        let now = tokio::time::Instant::now();
        let source = rate_bucket(ctx.ip);
        if self.data_failures.is_blocked(&source, now) {
            self.metrics.refused(RefusalKind::TooMany);
            let body = ApiError {
                error: RefusalKind::TooMany.as_str().into(),
                message: format!("too many failed data-socket attempts from {source}"),
            };
            let status = StatusCode::TOO_MANY_REQUESTS;
            return (status, [(header::CONNECTION, "close")], Json(body)).into_response();
        }
        let Refused { kind, why, .. } = r;
        if matches!(kind, RefusalKind::BadRequest | RefusalKind::BadSignature)
            && self.data_failures.record_failure(&source, now)
        {
            tracing::warn!(ip = %ctx.ip, "{DATA_FAILURE_LIMIT} failed data-socket attempts from {source}: refusing its failures with 429 for a while");
        }
        self.metrics.refused(kind);
        tracing::info!(
            status = http_status(kind).as_u16(),
            reason = kind.as_str(),
            kind = ctx.kind,
            ip = %ctx.ip,
            mesh = %ctx.mesh,
            "relay refused connection: {why}"
        );
        let body = ApiError {
            error: kind.as_str().into(),
            message: why,
        };
        (http_status(kind), Json(body)).into_response()
    }

    /// Logs, counts and performs one refusal: optional mesh error frame, then close.
    pub(super) async fn refuse(&self, mut ws: WebSocket, r: Refused, ctx: &Ctx) {
        let Refused {
            kind,
            why,
            error_frame,
        } = r;
        self.metrics.refused(kind);
        tracing::info!(
            code = kind.close_code(),
            reason = kind.as_str(),
            kind = ctx.kind,
            ip = %ctx.ip,
            mesh = %ctx.mesh,
            "relay refused connection: {why}"
        );
        if let Some(code) = error_frame {
            let frame = ServerMsg::Error {
                code,
                message: why.clone(),
            }
            .to_json();
            let _ =
                tokio::time::timeout(Duration::from_secs(1), ws.send(Message::Text(frame.into())))
                    .await;
        }
        close_and_drain(&mut ws, kind.close_code(), &why).await;
    }
}

/// Failed data-socket proofs (wrong secret, session of another mesh) one source may make
/// within [`DATA_FAILURE_WINDOW`] before its failures are answered 429.
pub const DATA_FAILURE_LIMIT: usize = 10;
/// The window of [`DATA_FAILURE_LIMIT`].
pub const DATA_FAILURE_WINDOW: Duration = Duration::from_secs(60);

/// The HTTP status of a data-socket refusal of `kind`.
fn http_status(kind: RefusalKind) -> StatusCode {
    match kind {
        RefusalKind::BadSignature => StatusCode::UNAUTHORIZED,
        RefusalKind::HostOffline => StatusCode::NOT_FOUND,
        RefusalKind::TooMany => StatusCode::TOO_MANY_REQUESTS,
        RefusalKind::Timeout => StatusCode::REQUEST_TIMEOUT,
        RefusalKind::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        RefusalKind::MeshMismatch => StatusCode::FORBIDDEN,
        RefusalKind::BadRequest => StatusCode::BAD_REQUEST,
    }
}

/// A refusal decided by a handler step: what kind (close code and metric label), why (the
/// close reason and log line), and, for member sockets, the mesh error frame sent first.
pub(super) struct Refused {
    pub kind: RefusalKind,
    pub why: String,
    pub error_frame: Option<ErrorCode>,
}

impl Refused {
    pub fn new(kind: RefusalKind, why: impl Into<String>) -> Refused {
        Refused {
            kind,
            why: why.into(),
            error_frame: None,
        }
    }

    /// Also sends `code` as a mesh `error` frame before closing, for members: they speak the
    /// mesh protocol and show that error to the person.
    pub fn with_error_frame(mut self, code: ErrorCode) -> Refused {
        self.error_frame = Some(code);
        self
    }
}

/// How a handler step ended the connection early.
pub(super) enum Stop {
    /// Refuse the peer (count, log, close with the code).
    Refuse(Refused),
    /// The peer closed or vanished: nothing left to send.
    Gone,
}

impl From<Refused> for Stop {
    fn from(r: Refused) -> Stop {
        Stop::Refuse(r)
    }
}

/// Sends a close frame and waits (briefly) for the peer's close so the close handshake
/// completes and the peer sees the code, then drops the socket.
pub(crate) async fn close_and_drain(ws: &mut WebSocket, code: u16, why: &str) {
    // Close reasons are limited to 123 bytes on the wire; ours are short, but cut safely.
    let mut reason = why;
    while reason.len() > 123 {
        let mut cut = 123.min(reason.len() - 1);
        while !reason.is_char_boundary(cut) {
            cut -= 1;
        }
        reason = &reason[..cut];
    }
    let frame = CloseFrame {
        code,
        reason: reason.into(),
    };
    let _ =
        tokio::time::timeout(Duration::from_secs(1), ws.send(Message::Close(Some(frame)))).await;
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        while let Some(Ok(_)) = ws.recv().await {}
    })
    .await;
}

/// Log context of one connection.
pub(super) struct Ctx {
    pub kind: &'static str,
    pub ip: IpAddr,
    pub mesh: String,
}

/// The relay's HTTP routes, then the web app's (`web`: `/`, `/join` and the bundle's files).
pub fn router(relay: Arc<Relay>, web: WebApp) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/mesh/{mesh_id}", get(member::client_ws))
        .route("/mesh/{mesh_id}/host", get(control::host_ws))
        .route("/mesh/{mesh_id}/session/{session_id}", get(member::data_ws))
        .with_state(relay)
        .merge(super::web::routes(web))
}

async fn health(State(relay): State<Arc<Relay>>) -> Json<RelayHealth> {
    Json(RelayHealth {
        connections: relay.metrics.connections(),
        meshes: relay.meshes() as u64,
        sessions: relay.metrics.sessions.load(Ordering::Relaxed),
        status: "ok".into(),
        uptime_secs: relay.started.elapsed().as_secs(),
    })
}

async fn metrics(State(relay): State<Arc<Relay>>) -> Response {
    let body = relay
        .metrics
        .render(relay.meshes(), relay.started.elapsed().as_secs());
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}

/// The upgrade with the relay's frame and message limit `max` and the shared read buffer.
pub(super) fn configure(ws: WebSocketUpgrade, max: usize) -> WebSocketUpgrade {
    ws.max_frame_size(max)
        .max_message_size(max)
        .read_buffer_size(crate::ws::SOCKET_READ_BUFFER)
}

/// The refusal of a member or control socket whose IP has no connection slot left (4429).
fn too_many_from(ip: IpAddr) -> Refused {
    Refused::new(
        RefusalKind::TooMany,
        format!("too many connections from {ip}"),
    )
}

pub(super) fn to_json<T: serde::Serialize>(m: &T) -> String {
    serde_json::to_string(m).unwrap_or_default()
}

/// Whether a WebSocket read failed because a frame or message exceeded the size limit.
pub(crate) fn is_too_large(e: axum::Error) -> bool {
    use tokio_tungstenite::tungstenite::Error as WsError;
    match e.into_inner().downcast::<WsError>() {
        Ok(e) => matches!(*e, WsError::Capacity(_)),
        Err(other) => other.to_string().contains("too long"),
    }
}

/// Serves the relay on `listener` until `shutdown` completes: TLS (when configured) and the
/// HTTP/1.1 upgrade run in a task per connection, both under the handshake deadline, so a
/// slow or silent client costs one task for at most that long.
pub async fn serve(
    listener: tokio::net::TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    relay: Arc<Relay>,
    web: WebApp,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let options = crate::http::ServeOptions {
        header_timeout: relay.limits.handshake_timeout,
        tls,
    };
    crate::http::serve(listener, router(relay, web), options, shutdown).await
}
