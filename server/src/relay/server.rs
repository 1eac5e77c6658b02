//! The relay server: routes, the registry of hosts and waiting sessions, and the accept loop.
//!
//! Routes (all WebSocket routes answer every refusal with a close code from
//! [`atmosphere_shared::relay_proto::close`] plus one log line):
//! - `GET /mesh/{mesh_id}/host`: a host's control socket (challenge → register → session notices);
//! - `GET /mesh/{mesh_id}`: a member (the invite's relay endpoint);
//! - `GET /mesh/{mesh_id}/session/{session_id}`: the host's data socket for one member;
//! - `GET /health` (JSON) and `GET /metrics` (Prometheus).
//!
//! State is only live sockets (no database): a map mesh id → registered host, a map
//! session id → member waiting for its host, per-mesh session counts and per-IP connection
//! counts. Every entry is owned by a guard whose `Drop` removes it, so no exit path leaks.

use super::metrics::{ConnGuard, ConnKind, Metrics, Refusal};
use super::splice::splice;
use crate::limits::{IpPermit, PerIpLimiter};
use atmosphere_shared::mesh_id::{is_valid_mesh_id, mesh_id_from_public_key};
use atmosphere_shared::relay_proto::{
    b64_decode, b64_encode, registration_message, HostMsg, RelayMsg, MAX_CONTROL_FRAME_BYTES,
    NONCE_BYTES,
};
use atmosphere_shared::wire::{ErrorCode, ServerMsg};
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{header, HeaderMap, HeaderName};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use rand::RngCore;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

/// Configurable limits of one relay process (see `atmosphere relay --help`).
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest frame (and message) accepted on member and data sockets, in bytes.
    pub max_frame_bytes: usize,
    /// Live sessions (waiting or spliced) per mesh.
    pub max_sessions_per_mesh: usize,
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
            max_conns_per_ip: 64,
            handshake_timeout: Duration::from_secs(5),
            accept_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(120),
            real_ip_header: None,
        }
    }
}

/// Commands to a host's control-socket task.
enum HostCmd {
    /// Tell the host about a waiting member.
    Session(RelayMsg),
    /// A newer control socket with the same key registered: close with 4409.
    Replaced,
}

struct HostEntry {
    key: [u8; 32],
    generation: u64,
    tx: mpsc::Sender<HostCmd>,
}

struct Pending {
    mesh_id: String,
    secret: String,
    /// The host's data socket, with its connection-count guard: the socket lives on in the
    /// member's task (the splice), so it must stay counted there until the splice ends.
    tx: oneshot::Sender<(WebSocket, ConnGuard)>,
}

#[derive(Default)]
struct Registry {
    hosts: HashMap<String, HostEntry>,
    pending: HashMap<String, Pending>,
    sessions_per_mesh: HashMap<String, usize>,
}

/// One relay's shared state.
pub struct Relay {
    limits: Limits,
    /// Counters behind `/metrics` and `/health`.
    pub metrics: Arc<Metrics>,
    started: Instant,
    next_generation: AtomicU64,
    reg: Mutex<Registry>,
    per_ip: Arc<PerIpLimiter>,
}

impl Relay {
    /// A relay with these limits and no hosts.
    pub fn new(limits: Limits) -> Arc<Relay> {
        Arc::new(Relay {
            per_ip: PerIpLimiter::new(limits.max_conns_per_ip),
            limits,
            metrics: Arc::new(Metrics::default()),
            started: Instant::now(),
            next_generation: AtomicU64::new(1),
            reg: Mutex::new(Registry::default()),
        })
    }

    /// The limits in force.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    fn reg(&self) -> std::sync::MutexGuard<'_, Registry> {
        // A panic while holding the lock cannot leave the maps half-updated in a way that
        // matters more than losing the relay, so keep serving with the inner value.
        self.reg.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Meshes with a registered host.
    pub fn meshes(&self) -> usize {
        self.reg().hosts.len()
    }

    /// Takes one connection slot for `ip`, or `None` when the IP is at its limit.
    fn take_ip_slot(&self, ip: IpAddr) -> Option<IpPermit> {
        self.per_ip.try_acquire(ip)
    }

    fn client_ip(&self, peer: SocketAddr, headers: &HeaderMap) -> IpAddr {
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

    /// Logs, counts and performs one refusal: optional mesh error frame, then close.
    async fn refuse(
        &self,
        mut ws: WebSocket,
        r: Refusal,
        why: &str,
        error_frame: Option<ErrorCode>,
        ctx: &Ctx,
    ) {
        self.metrics.refused(r);
        tracing::info!(
            code = r.close_code(),
            reason = r.as_str(),
            kind = ctx.kind,
            ip = %ctx.ip,
            mesh = %ctx.mesh,
            "relay refused connection: {why}"
        );
        if let Some(code) = error_frame {
            let frame = ServerMsg::Error {
                code,
                message: why.to_string(),
            }
            .to_json();
            let _ =
                tokio::time::timeout(Duration::from_secs(1), ws.send(Message::Text(frame.into())))
                    .await;
        }
        close_and_drain(&mut ws, r.close_code(), why).await;
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
struct Ctx {
    kind: &'static str,
    ip: IpAddr,
    mesh: String,
}

/// Holds one session slot of a mesh (and its pending entry) until dropped.
struct SessionSlot {
    relay: Arc<Relay>,
    mesh_id: String,
    session_id: String,
}

impl Drop for SessionSlot {
    fn drop(&mut self) {
        let mut reg = self.relay.reg();
        reg.pending.remove(&self.session_id);
        if let Some(n) = reg.sessions_per_mesh.get_mut(&self.mesh_id) {
            *n -= 1;
            if *n == 0 {
                reg.sessions_per_mesh.remove(&self.mesh_id);
            }
        }
        drop(reg);
        self.relay.metrics.session_ended();
    }
}

/// Removes a host's registration when its control task ends, unless a newer one replaced it.
struct HostRegistration {
    relay: Arc<Relay>,
    mesh_id: String,
    generation: u64,
}

impl Drop for HostRegistration {
    fn drop(&mut self) {
        let mut reg = self.relay.reg();
        if reg.hosts.get(&self.mesh_id).map(|h| h.generation) == Some(self.generation) {
            reg.hosts.remove(&self.mesh_id);
        }
    }
}

/// The relay's HTTP routes.
pub fn router(relay: Arc<Relay>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/mesh/{mesh_id}", get(client_ws))
        .route("/mesh/{mesh_id}/host", get(host_ws))
        .route("/mesh/{mesh_id}/session/{session_id}", get(data_ws))
        .with_state(relay)
}

async fn health(State(relay): State<Arc<Relay>>) -> Json<serde_json::Value> {
    Json(serde_json::json!({
        "status": "ok",
        "meshes": relay.meshes(),
        "sessions": relay.metrics.sessions.load(Ordering::Relaxed),
        "connections": relay.metrics.connections(),
        "uptime_secs": relay.started.elapsed().as_secs(),
    }))
}

async fn metrics(State(relay): State<Arc<Relay>>) -> Response {
    let body = relay
        .metrics
        .render(relay.meshes(), relay.started.elapsed().as_secs());
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}

fn configure(ws: WebSocketUpgrade, max: usize) -> WebSocketUpgrade {
    ws.max_frame_size(max)
        .max_message_size(max)
        .read_buffer_size(crate::ws::SOCKET_READ_BUFFER)
}

/// `GET /mesh/{mesh_id}/host`: a host's control socket.
async fn host_ws(
    ws: WebSocketUpgrade,
    State(relay): State<Arc<Relay>>,
    Path(mesh_id): Path<String>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    let ip = relay.client_ip(peer, &headers);
    let slot = relay.take_ip_slot(ip);
    configure(ws, MAX_CONTROL_FRAME_BYTES).on_upgrade(move |socket| async move {
        let _conn = relay.metrics.conn_opened(ConnKind::Host);
        let ctx = Ctx {
            kind: "host",
            ip,
            mesh: mesh_id.clone(),
        };
        let Some(_slot) = slot else {
            let why = format!("too many connections from {ip}");
            return relay
                .refuse(socket, Refusal::TooMany, &why, None, &ctx)
                .await;
        };
        host_control(relay.clone(), socket, mesh_id, ctx).await;
    })
}

async fn host_control(relay: Arc<Relay>, mut ws: WebSocket, mesh_id: String, ctx: Ctx) {
    if !is_valid_mesh_id(&mesh_id) {
        return relay
            .refuse(ws, Refusal::BadRequest, "malformed mesh id", None, &ctx)
            .await;
    }
    let mut nonce = [0u8; NONCE_BYTES];
    rand::rngs::OsRng.fill_bytes(&mut nonce);
    let challenge = RelayMsg::Challenge {
        nonce: b64_encode(&nonce),
    };
    if ws
        .send(Message::Text(to_json(&challenge).into()))
        .await
        .is_err()
    {
        return;
    }
    // The answer must come within the handshake deadline; pings do not extend it.
    let deadline = tokio::time::Instant::now() + relay.limits.handshake_timeout;
    let text = loop {
        match tokio::time::timeout_at(deadline, ws.recv()).await {
            Err(_) => {
                let why = "no register message before the handshake deadline";
                return relay.refuse(ws, Refusal::Timeout, why, None, &ctx).await;
            }
            Ok(None) | Ok(Some(Ok(Message::Close(_)))) => return,
            Ok(Some(Err(e))) => {
                if is_too_large(e) {
                    return relay
                        .refuse(ws, Refusal::TooLarge, "control frame too large", None, &ctx)
                        .await;
                }
                return;
            }
            Ok(Some(Ok(Message::Text(t)))) => break t,
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
            Ok(Some(Ok(Message::Binary(_)))) => {
                let why = "expected a register text frame";
                return relay.refuse(ws, Refusal::BadRequest, why, None, &ctx).await;
            }
        }
    };
    let Ok(HostMsg::Register {
        public_key,
        signature,
    }) = serde_json::from_str::<HostMsg>(text.as_str())
    else {
        return relay
            .refuse(
                ws,
                Refusal::BadRequest,
                "malformed register message",
                None,
                &ctx,
            )
            .await;
    };
    let key: Option<[u8; 32]> = b64_decode(&public_key).and_then(|k| k.try_into().ok());
    let sig: Option<[u8; 64]> = b64_decode(&signature).and_then(|s| s.try_into().ok());
    let (Some(key), Some(sig)) = (key, sig) else {
        let why = "public_key must be 32 and signature 64 bytes of base64";
        return relay.refuse(ws, Refusal::BadRequest, why, None, &ctx).await;
    };
    // Self-certifying id: only the holder of the key whose hash is this id may register it.
    if mesh_id_from_public_key(&key) != mesh_id {
        let why = "this key does not own the mesh id";
        return relay
            .refuse(ws, Refusal::MeshMismatch, why, None, &ctx)
            .await;
    }
    let Ok(vk) = ed25519_dalek::VerifyingKey::from_bytes(&key) else {
        return relay
            .refuse(
                ws,
                Refusal::BadRequest,
                "public_key is not a valid Ed25519 key",
                None,
                &ctx,
            )
            .await;
    };
    let sig = ed25519_dalek::Signature::from_bytes(&sig);
    if vk
        .verify_strict(&registration_message(&mesh_id, &nonce), &sig)
        .is_err()
    {
        let why = "signature does not verify against this challenge";
        return relay
            .refuse(ws, Refusal::BadSignature, why, None, &ctx)
            .await;
    }

    // Registered: install (or replace) the entry.
    let generation = relay.next_generation.fetch_add(1, Ordering::Relaxed);
    let (tx, mut rx) = mpsc::channel(relay.limits.max_sessions_per_mesh.max(1));
    let refused_other_key = {
        let mut reg = relay.reg();
        match reg.hosts.get(&mesh_id) {
            // Unreachable in practice (the id is a hash of the key), but never let a second
            // key take over a mesh.
            Some(old) if old.key != key => true,
            old => {
                if let Some(old) = old {
                    let _ = old.tx.try_send(HostCmd::Replaced);
                }
                reg.hosts.insert(
                    mesh_id.clone(),
                    HostEntry {
                        key,
                        generation,
                        tx,
                    },
                );
                false
            }
        }
    };
    if refused_other_key {
        return relay
            .refuse(
                ws,
                Refusal::MeshMismatch,
                "another key holds this mesh",
                None,
                &ctx,
            )
            .await;
    }
    let _registration = HostRegistration {
        relay: relay.clone(),
        mesh_id: mesh_id.clone(),
        generation,
    };
    relay.metrics.registered();
    tracing::info!(mesh = %mesh_id, ip = %ctx.ip, "host registered");
    let ok = RelayMsg::Registered {
        mesh_id: mesh_id.clone(),
    };
    if ws.send(Message::Text(to_json(&ok).into())).await.is_err() {
        return;
    }

    let idle = relay.limits.idle_timeout;
    let mut last_frame = tokio::time::Instant::now();
    loop {
        tokio::select! {
            cmd = rx.recv() => match cmd {
                Some(HostCmd::Session(m)) => {
                    // A host that stops reading must not pin this task (and its IP slot):
                    // the notice has to leave within the handshake deadline, else the
                    // control socket is dropped and the host's link reconnects.
                    let send = ws.send(Message::Text(to_json(&m).into()));
                    match tokio::time::timeout(relay.limits.handshake_timeout, send).await {
                        Ok(Ok(())) => {}
                        Ok(Err(_)) => break,
                        Err(_) => {
                            tracing::warn!(mesh = %mesh_id, ip = %ctx.ip, "host is not reading its control socket; dropping it");
                            break;
                        }
                    }
                }
                Some(HostCmd::Replaced) | None => {
                    tracing::info!(mesh = %mesh_id, ip = %ctx.ip, code = atmosphere_shared::relay_proto::close::REPLACED, "host control socket replaced by a newer one");
                    close_and_drain(&mut ws, atmosphere_shared::relay_proto::close::REPLACED, "replaced by a newer connection with the same key").await;
                    break;
                }
            },
            frame = ws.recv() => match frame {
                Some(Ok(Message::Close(_))) | None => break,
                Some(Err(e)) => {
                    if is_too_large(e) {
                        relay.refuse(ws, Refusal::TooLarge, "control frame too large", None, &ctx).await;
                        return;
                    }
                    break;
                }
                // Pings (answered by tungstenite) and anything else keep the link alive.
                Some(Ok(_)) => last_frame = tokio::time::Instant::now(),
            },
            _ = tokio::time::sleep_until(last_frame + idle) => {
                tracing::info!(mesh = %mesh_id, ip = %ctx.ip, code = atmosphere_shared::relay_proto::close::TIMEOUT, "host control socket idle, closing");
                relay.metrics.refused(Refusal::Timeout);
                close_and_drain(&mut ws, atmosphere_shared::relay_proto::close::TIMEOUT, "idle timeout").await;
                break;
            }
        }
    }
    tracing::info!(mesh = %mesh_id, ip = %ctx.ip, "host control socket closed");
}

/// `GET /mesh/{mesh_id}`: a member asking to reach the mesh's host.
async fn client_ws(
    ws: WebSocketUpgrade,
    State(relay): State<Arc<Relay>>,
    Path(mesh_id): Path<String>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    let ip = relay.client_ip(peer, &headers);
    let slot = relay.take_ip_slot(ip);
    let max = relay.limits.max_frame_bytes;
    configure(ws, max).on_upgrade(move |socket| async move {
        let _conn = relay.metrics.conn_opened(ConnKind::Client);
        let ctx = Ctx {
            kind: "client",
            ip,
            mesh: mesh_id.clone(),
        };
        let Some(_slot) = slot else {
            let why = format!("too many connections from {ip}");
            return relay
                .refuse(
                    socket,
                    Refusal::TooMany,
                    &why,
                    Some(ErrorCode::RateLimited),
                    &ctx,
                )
                .await;
        };
        client_session(relay.clone(), socket, mesh_id, ctx).await;
    })
}

async fn client_session(relay: Arc<Relay>, ws: WebSocket, mesh_id: String, ctx: Ctx) {
    if !is_valid_mesh_id(&mesh_id) {
        let why = "malformed mesh id in the relay URL";
        return relay
            .refuse(
                ws,
                Refusal::BadRequest,
                why,
                Some(ErrorCode::BadRequest),
                &ctx,
            )
            .await;
    }
    let session_id = random_hex(16);
    let secret = random_hex(32);
    let (tx, rx) = oneshot::channel();
    // Under one lock: find the host, check the mesh's session limit, take a slot.
    let taken = {
        let mut reg = relay.reg();
        match reg.hosts.get(&mesh_id).map(|h| h.tx.clone()) {
            None => Err(Refusal::HostOffline),
            Some(host_tx) => {
                let n = reg.sessions_per_mesh.entry(mesh_id.clone()).or_insert(0);
                if *n >= relay.limits.max_sessions_per_mesh {
                    Err(Refusal::TooMany)
                } else {
                    *n += 1;
                    reg.pending.insert(
                        session_id.clone(),
                        Pending {
                            mesh_id: mesh_id.clone(),
                            secret: secret.clone(),
                            tx,
                        },
                    );
                    Ok(host_tx)
                }
            }
        }
    };
    let host_tx = match taken {
        Ok(t) => t,
        Err(Refusal::TooMany) => {
            let why = format!(
                "the mesh already has {} relayed sessions",
                relay.limits.max_sessions_per_mesh
            );
            return relay
                .refuse(
                    ws,
                    Refusal::TooMany,
                    &why,
                    Some(ErrorCode::RateLimited),
                    &ctx,
                )
                .await;
        }
        Err(r) => {
            let why = "the host of this mesh is not connected to the relay";
            return relay
                .refuse(ws, r, why, Some(ErrorCode::HostOffline), &ctx)
                .await;
        }
    };
    relay.metrics.session_started();
    let _session = SessionSlot {
        relay: relay.clone(),
        mesh_id: mesh_id.clone(),
        session_id: session_id.clone(),
    };
    let notice = RelayMsg::Session {
        session_id: session_id.clone(),
        secret,
        remote: ctx.ip.to_string(),
    };
    if host_tx.try_send(HostCmd::Session(notice)).is_err() {
        let why = "the host of this mesh is not connected to the relay";
        return relay
            .refuse(
                ws,
                Refusal::HostOffline,
                why,
                Some(ErrorCode::HostOffline),
                &ctx,
            )
            .await;
    }
    // The member's first frames (its `join`) wait in the socket buffer until the splice
    // starts: nothing is read here, so nothing is buffered in the relay.
    let (host_ws, _data_conn) = match tokio::time::timeout(relay.limits.accept_timeout, rx).await {
        Ok(Ok(h)) => h,
        _ => {
            let why = format!(
                "the host did not pick up the relayed session within {} ms",
                relay.limits.accept_timeout.as_millis()
            );
            return relay
                .refuse(ws, Refusal::Timeout, &why, Some(ErrorCode::Timeout), &ctx)
                .await;
        }
    };
    relay.metrics.session_spliced();
    tracing::debug!(mesh = %mesh_id, session = %session_id, ip = %ctx.ip, "session spliced");
    let end = splice(
        ws,
        host_ws,
        &relay.metrics,
        relay.limits.idle_timeout,
        relay.limits.max_frame_bytes,
    )
    .await;
    tracing::debug!(mesh = %mesh_id, session = %session_id, "session ended: {end}");
}

/// `GET /mesh/{mesh_id}/session/{session_id}`: the host's data socket for one member.
async fn data_ws(
    ws: WebSocketUpgrade,
    State(relay): State<Arc<Relay>>,
    Path((mesh_id, session_id)): Path<(String, String)>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    let ip = relay.client_ip(peer, &headers);
    let secret = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|s| s.trim().to_string());
    let max = relay.limits.max_frame_bytes;
    // Data sockets are exempt from the per-IP limit: they are authenticated and bounded by
    // the per-mesh session limit, and a busy host would otherwise starve its own members.
    configure(ws, max).on_upgrade(move |socket| async move {
        let conn = relay.metrics.conn_opened(ConnKind::Data);
        let ctx = Ctx { kind: "data", ip, mesh: mesh_id.clone() };
        let checked = {
            let mut reg = relay.reg();
            match reg.pending.get(&session_id) {
                None => Err((Refusal::HostOffline, "unknown or expired session")),
                Some(p) if p.mesh_id != mesh_id => Err((Refusal::BadRequest, "session belongs to another mesh")),
                Some(p) if !secret.as_deref().is_some_and(|s| ct_eq(s.as_bytes(), p.secret.as_bytes())) => {
                    Err((Refusal::BadSignature, "missing or wrong session secret"))
                }
                Some(_) => Ok(reg.pending.remove(&session_id).map(|p| p.tx)),
            }
        };
        match checked {
            Err((r, why)) => relay.refuse(socket, r, why, None, &ctx).await,
            Ok(Some(tx)) => {
                if let Err((mut socket, _conn)) = tx.send((socket, conn)) {
                    relay.metrics.refused(Refusal::Timeout);
                    tracing::info!(code = Refusal::Timeout.close_code(), mesh = %mesh_id, "data socket arrived after the member left");
                    close_and_drain(&mut socket, Refusal::Timeout.close_code(), "the member is gone").await;
                }
            }
            Ok(None) => {}
        }
    })
}

fn to_json<T: serde::Serialize>(m: &T) -> String {
    serde_json::to_string(m).unwrap_or_default()
}

fn random_hex(bytes: usize) -> String {
    let mut b = vec![0u8; bytes];
    rand::rngs::OsRng.fill_bytes(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Constant-time comparison, so the secret check leaks no prefix length through timing.
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
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
    shutdown: impl std::future::Future<Output = ()>,
) {
    let options = crate::http::ServeOptions {
        header_timeout: relay.limits.handshake_timeout,
        tls,
    };
    crate::http::serve(listener, router(relay), options, shutdown).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ct_eq_works() {
        assert!(ct_eq(b"abc", b"abc"));
        assert!(!ct_eq(b"abc", b"abd"));
        assert!(!ct_eq(b"abc", b"ab"));
    }
}
