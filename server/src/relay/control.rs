//! The relay's side of a host's control socket, `GET /mesh/{mesh_id}/host` (the host's side
//! is `serve::relay_link`). The accept path is its steps, in order:
//!
//! 1. [`check_mesh_id`]: the path holds a mesh id (else 4400), and the relay has a name for
//!    this request (its `--public-url`, else the `Host` header; else 4400);
//! 2. [`send_challenge`]: a fresh random nonce and that name;
//! 3. [`read_register`]: the host's `register` within the handshake deadline (4408; a
//!    binary or malformed frame 4400; an oversize one 4413);
//! 4. [`verify_register`]: `relay_proto::verify` (4400, 4401, 4403);
//! 5. [`claim_mesh`]: the host now holds the mesh, and an older control socket of the same
//!    key is closed with 4409 (another key: 4403);
//! 6. [`send_registered`];
//! 7. [`serve_control`]: session notices out, pings in, `dial_back` requests in and their
//!    results out (`super::dial_back`; a malformed request 4400), until replaced (4409),
//!    idle (4408) or closed.

use super::metrics::{ConnKind, RefusalKind};
use super::registry::{HostCmd, HostRegistration};
use super::server::{close_and_drain, is_too_large, to_json, Ctx, Refused, Relay, Stop};
use atmosphere_shared::dial_back::{DialBackResult, HostDialLimit};
use atmosphere_shared::relay_proto::{
    self, b64_encode, close, HostMsg, RegisterError, RelayMsg, MAX_CONTROL_FRAME_BYTES, NONCE_BYTES,
};
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, Path, State};
use axum::http::HeaderMap;
use axum::response::Response;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// `GET /mesh/{mesh_id}/host`: a host's control socket.
pub(super) async fn host_ws(
    ws: WebSocketUpgrade,
    State(relay): State<Arc<Relay>>,
    Path(mesh_id): Path<String>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    let ip = relay.client_ip(peer, &headers);
    let name = relay.name_for(&headers);
    relay.accept_limited(
        ws,
        MAX_CONTROL_FRAME_BYTES,
        ConnKind::Host,
        (ip, mesh_id),
        move |relay, socket, ctx| async move {
            let mesh_id = ctx.mesh.clone();
            host_control(&relay, socket, &mesh_id, name, &ctx).await
        },
    )
}

async fn host_control(
    relay: &Arc<Relay>,
    mut ws: WebSocket,
    mesh_id: &str,
    name: Option<String>,
    ctx: &Ctx,
) {
    match register(relay, &mut ws, mesh_id, name, ctx).await {
        Ok((_registration, commands)) => serve_control(relay, ws, commands, ctx).await,
        Err(Stop::Refuse(r)) => relay.refuse(ws, r, ctx).await,
        Err(Stop::Gone) => {}
    }
}

/// Steps 1–6: on success the host holds the mesh for as long as the returned registration
/// lives, and its control task receives the commands.
async fn register(
    relay: &Arc<Relay>,
    ws: &mut WebSocket,
    mesh_id: &str,
    name: Option<String>,
    ctx: &Ctx,
) -> Result<(HostRegistration, mpsc::Receiver<HostCmd>), Stop> {
    check_mesh_id(mesh_id)?;
    let name = name.ok_or_else(|| {
        Refused::new(
            RefusalKind::BadRequest,
            "no Host header to name the relay by",
        )
    })?;
    let nonce = send_challenge(ws, &name).await?;
    let answer = read_register(ws, relay.limits.handshake_timeout).await?;
    let key = verify_register(&name, mesh_id, &nonce, &answer)?;
    let claimed = claim_mesh(relay, mesh_id, key)?;
    relay.metrics.registered();
    tracing::info!(mesh = %mesh_id, ip = %ctx.ip, "host registered");
    send_registered(ws, mesh_id).await?;
    Ok(claimed)
}

fn check_mesh_id(mesh_id: &str) -> Result<(), Refused> {
    if atmosphere_shared::mesh_id::is_valid_mesh_id(mesh_id) {
        Ok(())
    } else {
        Err(Refused::new(RefusalKind::BadRequest, "malformed mesh id"))
    }
}

/// Sends `challenge` with a fresh nonce and the relay's `name`; returns the nonce.
async fn send_challenge(ws: &mut WebSocket, name: &str) -> Result<[u8; NONCE_BYTES], Stop> {
    let nonce = crate::secret::random_bytes::<NONCE_BYTES>();
    let challenge = RelayMsg::Challenge {
        nonce: b64_encode(&nonce),
        relay: name.to_string(),
    };
    ws.send(Message::Text(to_json(&challenge).into()))
        .await
        .map_err(|_| Stop::Gone)?;
    Ok(nonce)
}

/// Reads the host's answer. It must come within `within` of the challenge; pings do not
/// extend the deadline.
async fn read_register(ws: &mut WebSocket, within: Duration) -> Result<HostMsg, Stop> {
    let deadline = tokio::time::Instant::now() + within;
    let text = loop {
        match tokio::time::timeout_at(deadline, ws.recv()).await {
            Err(_) => {
                let why = "no register message before the handshake deadline";
                return Err(Refused::new(RefusalKind::Timeout, why).into());
            }
            Ok(None) | Ok(Some(Ok(Message::Close(_)))) => return Err(Stop::Gone),
            Ok(Some(Err(e))) => {
                if is_too_large(e) {
                    let why = "control frame too large";
                    return Err(Refused::new(RefusalKind::TooLarge, why).into());
                }
                return Err(Stop::Gone);
            }
            Ok(Some(Ok(Message::Text(t)))) => break t,
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
            Ok(Some(Ok(Message::Binary(_)))) => {
                let why = "expected a register text frame";
                return Err(Refused::new(RefusalKind::BadRequest, why).into());
            }
        }
    };
    serde_json::from_str::<HostMsg>(text.as_str())
        .map_err(|_| Refused::new(RefusalKind::BadRequest, "malformed register message").into())
}

/// The shared check of the answer; each way it can fail has its close code.
fn verify_register(
    name: &str,
    mesh_id: &str,
    nonce: &[u8],
    answer: &HostMsg,
) -> Result<[u8; 32], Refused> {
    relay_proto::verify(name, mesh_id, nonce, answer)
        .map(|key| key.to_bytes())
        .map_err(|e| {
            let kind = match e {
                RegisterError::NotThisMesh => RefusalKind::MeshMismatch,
                RegisterError::BadSignature => RefusalKind::BadSignature,
                RegisterError::KeyNotBase64
                | RegisterError::NotRegister
                | RegisterError::KeyLength { .. }
                | RegisterError::SignatureNotBase64
                | RegisterError::SignatureLength { .. }
                | RegisterError::InvalidKey => RefusalKind::BadRequest,
            };
            Refused::new(kind, e.to_string())
        })
}

/// Installs `key` as the mesh's host (see `Registry::claim_mesh`).
fn claim_mesh(
    relay: &Relay,
    mesh_id: &str,
    key: [u8; 32],
) -> Result<(HostRegistration, mpsc::Receiver<HostCmd>), Refused> {
    relay
        .registry
        .claim_mesh(mesh_id, key, relay.limits.max_sessions_per_mesh)
        .ok_or_else(|| Refused::new(RefusalKind::MeshMismatch, "another key holds this mesh"))
}

async fn send_registered(ws: &mut WebSocket, mesh_id: &str) -> Result<(), Stop> {
    let ok = RelayMsg::Registered {
        mesh_id: mesh_id.to_string(),
    };
    ws.send(Message::Text(to_json(&ok).into()))
        .await
        .map_err(|_| Stop::Gone)
}

/// The registered control socket: forwards session notices to the host and closes it when
/// a newer socket of the same key replaces it (4409) or it stays silent past the idle
/// timeout (4408).
async fn serve_control(
    relay: &Relay,
    mut ws: WebSocket,
    mut commands: mpsc::Receiver<HostCmd>,
    ctx: &Ctx,
) {
    let mesh_id = &ctx.mesh;
    let idle = relay.limits.idle_timeout;
    let mut last_frame = tokio::time::Instant::now();
    let mut dial_limit = HostDialLimit::default();
    let (dial_results_tx, mut dial_results) = mpsc::channel::<DialBackResult>(4);
    loop {
        tokio::select! {
            Some(result) = dial_results.recv() => {
                let msg = RelayMsg::DialBackResult(result);
                let send = ws.send(Message::Text(to_json(&msg).into()));
                if !matches!(tokio::time::timeout(relay.limits.handshake_timeout, send).await, Ok(Ok(()))) {
                    break;
                }
            }
            cmd = commands.recv() => match cmd {
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
                    tracing::info!(mesh = %mesh_id, ip = %ctx.ip, code = close::REPLACED, "host control socket replaced by a newer one");
                    close_and_drain(&mut ws, close::REPLACED, "replaced by a newer connection with the same key").await;
                    break;
                }
            },
            frame = ws.recv() => match frame {
                Some(Ok(Message::Close(_))) | None => break,
                Some(Err(e)) => {
                    if is_too_large(e) {
                        let r = Refused::new(RefusalKind::TooLarge, "control frame too large");
                        relay.refuse(ws, r, ctx).await;
                        return;
                    }
                    break;
                }
                Some(Ok(Message::Text(t))) => {
                    last_frame = tokio::time::Instant::now();
                    if let Err(r) = host_text(relay, t.as_str(), ctx, &mut dial_limit, &dial_results_tx) {
                        relay.refuse(ws, r, ctx).await;
                        return;
                    }
                }
                // Pings (answered by tungstenite) and anything else keep the link alive.
                Some(Ok(_)) => last_frame = tokio::time::Instant::now(),
            },
            _ = tokio::time::sleep_until(last_frame + idle) => {
                tracing::info!(mesh = %mesh_id, ip = %ctx.ip, code = close::TIMEOUT, "host control socket idle, closing");
                relay.metrics.refused(RefusalKind::Timeout);
                close_and_drain(&mut ws, close::TIMEOUT, "idle timeout").await;
                break;
            }
        }
    }
    tracing::info!(mesh = %mesh_id, ip = %ctx.ip, "host control socket closed");
}

/// A text frame from a registered host: a `dial_back` request is handed to
/// `super::dial_back` (a malformed one, e.g. with an address field, is refused with 4400);
/// anything else is ignored as before, so newer hosts may send messages this relay does not
/// know.
fn host_text(
    relay: &Relay,
    text: &str,
    ctx: &Ctx,
    limit: &mut HostDialLimit,
    results: &mpsc::Sender<DialBackResult>,
) -> Result<(), Refused> {
    match serde_json::from_str::<HostMsg>(text) {
        Ok(HostMsg::DialBack(req)) => {
            relay
                .dial_backs
                .request(req, ctx.ip, &ctx.mesh, limit, results, &relay.metrics)
        }
        Ok(HostMsg::Register { .. }) => Ok(()),
        Err(e) => {
            let is_dial_back = serde_json::from_str::<serde_json::Value>(text)
                .is_ok_and(|v| v["type"] == "dial_back");
            if is_dial_back {
                Err(Refused::new(
                    RefusalKind::BadRequest,
                    format!("malformed dial_back request: {e}"),
                ))
            } else {
                Ok(())
            }
        }
    }
}
