//! A relayed session: a member's socket `GET /mesh/{mesh_id}` and the host's data socket
//! `GET /mesh/{mesh_id}/session/{session_id}` for it, spliced together.
//!
//! The member's path, in order:
//! 1. [`check_mesh_id`]: the path holds a mesh id (else 4400);
//! 2. [`open_session`]: the mesh has a host (else 4404), a free session slot, and the
//!    member's source has fewer than its maximum of unanswered sessions for the mesh (else
//!    4429; see `registry`);
//! 3. [`notify_host`]: a `session` notice with a one-time secret on the host's control socket;
//! 4. [`wait_for_host`]: the host dials the data socket within the accept deadline (else
//!    4408);
//! 5. the splice ([`super::splice`]), which also closes the session with 4408 if the host
//!    has not answered the member by the answer deadline.
//!
//! Every refusal of a member also sends a mesh `error` frame first: members speak the mesh
//! protocol and show that error. The host's data socket ([`data_ws`]) only has to present
//! the session's secret, which is checked before the WebSocket upgrade.

use super::metrics::{ConnKind, RefusalKind};
use super::registry::{HostCmd, HostDataSocket, NoSession, OpenSession, SessionLimits};
use super::server::{close_and_drain, configure, Ctx, Refused, Relay};
use super::splice::{splice, Unanswered};
use crate::limits::rate_bucket;
use crate::secret::random_hex;
use atmosphere_shared::relay_proto::RelayMsg;
use atmosphere_shared::wire::ErrorCode;
use axum::extract::ws::{WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{header, HeaderMap};
use axum::response::Response;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// `GET /mesh/{mesh_id}`: a member asking to reach the mesh's host.
pub(super) async fn client_ws(
    ws: WebSocketUpgrade,
    State(relay): State<Arc<Relay>>,
    Path(mesh_id): Path<String>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    let ip = relay.client_ip(peer, &headers);
    let max = relay.limits.max_frame_bytes;
    relay.accept_limited(
        ws,
        max,
        ConnKind::Client,
        (ip, mesh_id),
        |relay, socket, ctx| async move {
            let mesh_id = ctx.mesh.clone();
            client_session(&relay, socket, &mesh_id, &ctx).await
        },
    )
}

async fn client_session(relay: &Arc<Relay>, ws: WebSocket, mesh_id: &str, ctx: &Ctx) {
    if let Err(r) = check_mesh_id(mesh_id) {
        return relay.refuse(ws, r, ctx).await;
    }
    let arrived = tokio::time::Instant::now();
    let session_id = random_hex(16);
    let secret = random_hex(32);
    // The session holds its slot (`_slot`) until this function returns, refusals included.
    let OpenSession {
        slot: _slot,
        unanswered,
        host,
        data,
    } = match open_session(relay, mesh_id, ctx, &session_id, &secret) {
        Ok(s) => s,
        Err(r) => return relay.refuse(ws, r, ctx).await,
    };
    if let Err(r) = notify_host(&host, session_id.clone(), secret, ctx) {
        return relay.refuse(ws, r, ctx).await;
    }
    // The member's first frames (its `join`) wait in the socket buffer until the splice
    // starts: nothing is read here, so nothing is buffered in the relay.
    let (host_ws, _data_conn) = match wait_for_host(relay, data).await {
        Ok(h) => h,
        Err(r) => return relay.refuse(ws, r, ctx).await,
    };
    relay.metrics.session_spliced();
    tracing::debug!(mesh = %mesh_id, session = %session_id, ip = %ctx.ip, "session spliced");
    let end = splice(
        ws,
        host_ws,
        &relay.metrics,
        relay.limits.idle_timeout,
        relay.limits.max_frame_bytes,
        Some(Unanswered {
            slot: unanswered,
            deadline: deadline_after(arrived, relay.limits.answer_timeout),
        }),
    )
    .await;
    tracing::debug!(mesh = %mesh_id, session = %session_id, "session ended: {end}");
}

fn check_mesh_id(mesh_id: &str) -> Result<(), Refused> {
    if atmosphere_shared::mesh_id::is_valid_mesh_id(mesh_id) {
        Ok(())
    } else {
        let why = "malformed mesh id in the relay URL";
        Err(Refused::new(RefusalKind::BadRequest, why).with_error_frame(ErrorCode::BadRequest))
    }
}

fn host_offline() -> Refused {
    let why = "the host of this mesh is not connected to the relay";
    Refused::new(RefusalKind::HostOffline, why).with_error_frame(ErrorCode::HostOffline)
}

/// `start + after`, or a date centuries away when that does not fit in an `Instant`.
fn deadline_after(start: tokio::time::Instant, after: Duration) -> tokio::time::Instant {
    start
        .checked_add(after)
        .unwrap_or_else(|| start + Duration::from_secs(100 * 365 * 24 * 3600))
}

/// Takes a session slot of the mesh (and an unanswered slot of the member's source) and
/// registers the member as waiting for the data socket that presents `secret`.
fn open_session(
    relay: &Arc<Relay>,
    mesh_id: &str,
    ctx: &Ctx,
    session_id: &str,
    secret: &str,
) -> Result<OpenSession, Refused> {
    let limits = SessionLimits {
        sessions_per_mesh: relay.limits.max_sessions_per_mesh,
        unanswered_per_source: relay.limits.max_unanswered_per_ip,
    };
    let source = rate_bucket(ctx.ip);
    relay
        .registry
        .open_session(mesh_id, &source, session_id, secret, limits, &relay.metrics)
        .map_err(|e| match e {
            NoSession::HostOffline => host_offline(),
            NoSession::MeshFull => {
                let why = format!(
                    "the mesh already has {} relayed sessions",
                    limits.sessions_per_mesh
                );
                Refused::new(RefusalKind::TooMany, why).with_error_frame(ErrorCode::RateLimited)
            }
            NoSession::SourceBusy => {
                let why = format!(
                    "{source} already has {} sessions of this mesh the host has not answered",
                    limits.unanswered_per_source
                );
                Refused::new(RefusalKind::TooMany, why).with_error_frame(ErrorCode::RateLimited)
            }
        })
}

/// Tells the host (on its control socket) to dial the data socket for this session.
fn notify_host(
    host: &mpsc::Sender<HostCmd>,
    session_id: String,
    secret: String,
    ctx: &Ctx,
) -> Result<(), Refused> {
    let notice = RelayMsg::Session {
        session_id,
        secret,
        remote: ctx.ip.to_string(),
    };
    host.try_send(HostCmd::Session(notice))
        .map_err(|_| host_offline())
}

/// Waits for the host's data socket, up to the accept deadline.
async fn wait_for_host(
    relay: &Relay,
    data: oneshot::Receiver<HostDataSocket>,
) -> Result<HostDataSocket, Refused> {
    match tokio::time::timeout(relay.limits.accept_timeout, data).await {
        Ok(Ok(h)) => Ok(h),
        _ => {
            let why = format!(
                "the host did not pick up the relayed session within {} ms",
                relay.limits.accept_timeout.as_millis()
            );
            Err(Refused::new(RefusalKind::Timeout, why).with_error_frame(ErrorCode::Timeout))
        }
    }
}

/// `GET /mesh/{mesh_id}/session/{session_id}`: the host's data socket for one member.
///
/// The session id and its secret are checked before the upgrade: a request that does not
/// present them gets a plain HTTP refusal (`Relay::refuse_http`) and never holds a
/// WebSocket.
pub(super) async fn data_ws(
    ws: WebSocketUpgrade,
    State(relay): State<Arc<Relay>>,
    Path((mesh_id, session_id)): Path<(String, String)>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    let ip = relay.client_ip(peer, &headers);
    let secret = bearer(&headers);
    let ctx = Ctx {
        kind: "data",
        ip,
        mesh: mesh_id.clone(),
    };
    let member = match relay
        .registry
        .take_pending(&mesh_id, &session_id, secret.as_deref())
    {
        Ok(member) => member,
        Err(r) => return relay.refuse_http(r, &ctx),
    };
    let max = relay.limits.max_frame_bytes;
    // Data sockets are exempt from the per-IP limit: they are authenticated and bounded by
    // the per-mesh session limit, and a busy host would otherwise starve its own members.
    configure(ws, max).on_upgrade(move |socket| async move {
        let conn = relay.metrics.conn_opened(ConnKind::Data);
        hand_over(&relay, member, (socket, conn), &mesh_id).await
    })
}

/// The `Authorization: Bearer` value of a data-socket request.
fn bearer(headers: &HeaderMap) -> Option<String> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|s| s.trim().to_string())
}

/// Gives the data socket to the waiting member's task, which splices it; closes it with
/// 4408 when the member has already given up.
async fn hand_over(
    relay: &Relay,
    member: oneshot::Sender<HostDataSocket>,
    data: HostDataSocket,
    mesh_id: &str,
) {
    if let Err((mut socket, _conn)) = member.send(data) {
        let timeout = RefusalKind::Timeout;
        relay.metrics.refused(timeout);
        tracing::info!(code = timeout.close_code(), mesh = %mesh_id, "data socket arrived after the member left");
        close_and_drain(&mut socket, timeout.close_code(), "the member is gone").await;
    }
}
