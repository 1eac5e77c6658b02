//! HTTP handlers of the host API. Admin routes are wrapped by `auth::require_admin` in
//! the router; `health` and `metrics` are open.
//!
//! Every error is JSON: `{"error": "<code>", "message": "<human sentence>"}`.

use super::AppState;
use crate::clock::{now_secs, rfc3339};
use crate::secret::{random_bytes, random_hex};
use crate::store::{self, DeviceRow, NewInvite, Revoked};
use atmosphere_shared::api::{
    ApiError, AuthStatus, DeviceList, DeviceRemoved, DeviceView, HostHealth, InviteView, MeshEvent,
    MeshView, NetworkInfo, NetworkSnapshot, Reachability, RelayState, RevokeResponse, TokenRequest,
    TokenResponse,
};
use atmosphere_shared::link::{Endpoints, Invite};
use atmosphere_shared::path::PathKind;
use atmosphere_shared::token::{Token, TOKEN_BYTES};
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::Stream;
use std::collections::HashMap;
use std::convert::Infallible;
use std::net::IpAddr;
use std::time::Duration;
use tokio::sync::broadcast::error::RecvError;
use tracing::{info, warn};

/// Longest invite lifetime accepted.
pub const MAX_TTL_SECS: u64 = 30 * 24 * 3600;
/// Longest invite label accepted (characters).
pub const MAX_LABEL_CHARS: usize = 200;
/// Longest the very first mint waits for the first network discovery.
const FIRST_DISCOVERY_WAIT: Duration = Duration::from_millis(1500);

/// A JSON error answer.
pub fn error(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        Json(ApiError {
            error: code.into(),
            message: message.into(),
        }),
    )
        .into_response()
}

fn internal(e: anyhow::Error) -> Response {
    warn!(error = %e, "internal error in the API");
    error(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal",
        "the host hit an internal error; see its log",
    )
}

/// `POST /api/mesh/token`: mints an invite.
pub async fn mint(
    State(st): State<AppState>,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Response {
    // axum's own rejection (e.g. over the body limit) is plain text; keep the JSON shape.
    let body = match body {
        Ok(b) => b,
        Err(e) => {
            let status = e.status();
            let code = if status == StatusCode::PAYLOAD_TOO_LARGE {
                "too_large"
            } else {
                "bad_request"
            };
            return error(
                status,
                code,
                &format!("the request body could not be read: {}", e.body_text()),
            );
        }
    };
    let req: TokenRequest = if body.iter().all(u8::is_ascii_whitespace) {
        TokenRequest::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(r) => r,
            Err(e) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    &format!("the body is not a valid token request: {e}"),
                )
            }
        }
    };
    let ttl = req.ttl();
    let max_uses = req.uses_limit();
    if ttl == 0 || ttl > MAX_TTL_SECS {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            &format!("ttl_secs must be between 1 and {MAX_TTL_SECS} (30 days)"),
        );
    }
    if max_uses == Some(0) {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "max_uses must be at least 1 (or null for unlimited)",
        );
    }
    let label = req
        .label
        .as_deref()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string);
    if label
        .as_ref()
        .is_some_and(|l| l.chars().count() > MAX_LABEL_CHARS)
    {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            &format!("label must be at most {MAX_LABEL_CHARS} characters"),
        );
    }

    let snap = st.network_snapshot().await;
    let token = Token::from_entropy(random_bytes::<TOKEN_BYTES>());
    let now = now_secs();
    let expires = now + ttl as i64;
    let inv = NewInvite {
        id: random_hex(8),
        token_hash: token.hash_hex(),
        label: label.clone(),
        created_at: now,
        expires_at: expires,
        max_uses,
    };
    let invite_id = inv.id.clone();
    if let Err(e) = st.store.call(move |c| store::insert_invite(c, &inv)).await {
        return internal(e);
    }
    st.metrics.invite_minted();
    st.hub.emit(MeshEvent::InviteMinted {
        invite_id: invite_id.clone(),
    });

    let endpoints = invite_endpoints(&snap);
    // The link names the mesh id, so a client makes the host prove it before it sends
    // the token (whatever endpoint of the link answers).
    let invite = Invite::v2(token.as_str(), st.mesh_name.clone(), endpoints.clone())
        .with_mesh_id(st.mesh_id.clone());
    let base = st.web_base(&snap);
    let lan_base = st.lan_base(&snap);
    let resp = TokenResponse {
        token: token.as_str().to_string(),
        mesh_id: st.mesh_id.clone(),
        mesh_name: st.mesh_name.clone(),
        endpoint: endpoints.legacy().map(str::to_string),
        network_info: NetworkInfo {
            local_ip: snap.local_ip.clone(),
            public_ip: snap.public_ip.clone(),
            is_behind_nat: snap.is_behind_nat,
            stun_source: snap.stun_source.clone(),
            stun_servers: snap.stun_servers.clone(),
        },
        qr_data: invite.to_v2_link(),
        join_url: invite.to_web_link(&base),
        lan_join_url: lan_base.map(|b| invite.to_web_link(&b)),
        endpoints,
        expires_at: rfc3339(expires),
        max_uses,
        invite_id: invite_id.clone(),
    };
    info!(invite_id = %invite_id, ttl_secs = ttl, max_uses = ?max_uses, label = ?label,
        local = resp.endpoints.local.is_some(), public = resp.endpoints.public.is_some(),
        relay = resp.endpoints.relay.is_some(), "invite minted");
    Json(resp).into_response()
}

/// `GET /api/mesh`: mesh, invites, devices (with online state and path).
pub async fn mesh(State(st): State<AppState>) -> Response {
    let rows = st
        .store
        .call(|c| Ok((store::list_invites(c)?, store::list_devices(c)?)))
        .await;
    let (invites, devices) = match rows {
        Ok(r) => r,
        Err(e) => return internal(e),
    };
    let online = st.hub.online();
    let view = MeshView {
        mesh_id: st.mesh_id.clone(),
        mesh_name: st.mesh_name.clone(),
        invites: invites
            .into_iter()
            .map(|i| InviteView {
                invite_id: i.id,
                label: i.label,
                created_at: rfc3339(i.created_at),
                expires_at: rfc3339(i.expires_at),
                max_uses: i.max_uses,
                uses: i.uses,
                revoked: i.revoked,
            })
            .collect(),
        devices: device_views(devices, &online),
    };
    Json(view).into_response()
}

/// The admin's view of stored devices, with who is online now (and on which path).
fn device_views(rows: Vec<DeviceRow>, online: &HashMap<String, PathKind>) -> Vec<DeviceView> {
    rows.into_iter()
        .map(|d| {
            let live = online.get(&d.id).copied();
            DeviceView {
                path: live.or_else(|| d.last_path.as_deref().and_then(PathKind::parse)),
                online: live.is_some(),
                device_id: d.id,
                invite_id: d.invite_id,
                name: d.name,
                platform: d.platform,
                joined_at: rfc3339(d.joined_at),
                last_seen: d.last_seen.map(rfc3339),
            }
        })
        .collect()
}

/// `GET /api/mesh/devices`: every member device, in join order.
pub async fn devices(State(st): State<AppState>) -> Response {
    match st.store.call(store::list_devices).await {
        Ok(rows) => Json(DeviceList {
            devices: device_views(rows, &st.hub.online()),
        })
        .into_response(),
        Err(e) => internal(e),
    }
}

/// `DELETE /api/mesh/devices/{id}`: deletes the device (its key is refused from now on),
/// then closes its live session with `device_removed`.
pub async fn remove_device(State(st): State<AppState>, Path(id): Path<String>) -> Response {
    let no_such = || error(StatusCode::NOT_FOUND, "not_found", "no device has this id");
    if id.len() > 64 {
        return no_such();
    }
    let id2 = id.clone();
    match st.store.call(move |c| store::delete_device(c, &id2)).await {
        Ok(true) => {
            let was_online = st.forget_device(&id);
            Json(DeviceRemoved {
                device_id: id,
                removed: true,
                was_online,
            })
            .into_response()
        }
        Ok(false) => no_such(),
        Err(e) => internal(e),
    }
}

/// Query of the revoke routes.
#[derive(Debug, Default, serde::Deserialize)]
pub struct RevokeQuery {
    /// Also remove every device the invite enrolled.
    #[serde(default)]
    remove_devices: bool,
}

/// `DELETE /api/mesh/invites/{id}` and `POST /api/mesh/invites/{id}/revoke`, each with an
/// optional `?remove_devices=true`.
pub async fn revoke(
    State(st): State<AppState>,
    Path(id): Path<String>,
    query: Result<Query<RevokeQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(Query(q)) = query else {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "remove_devices must be true or false",
        );
    };
    if id.len() > 64 {
        return error(StatusCode::NOT_FOUND, "not_found", "no invite has this id");
    }
    let id2 = id.clone();
    let remove = q.remove_devices;
    match st
        .store
        .call(move |c| store::revoke_invite(c, &id2, remove))
        .await
    {
        Ok(Revoked::Done { removed_devices }) => {
            info!(invite_id = %id, removed_devices = removed_devices.len(), "invite revoked");
            st.hub.emit(MeshEvent::InviteRevoked {
                invite_id: id.clone(),
            });
            for device in &removed_devices {
                st.forget_device(device);
            }
            Json(RevokeResponse {
                invite_id: id,
                revoked: true,
                removed_devices: remove.then_some(removed_devices),
            })
            .into_response()
        }
        Ok(Revoked::Unknown) => error(StatusCode::NOT_FOUND, "not_found", "no invite has this id"),
        Err(e) => internal(e),
    }
}

/// `GET /api/network`: the cached discovery snapshot plus the relay link state.
pub async fn network(State(st): State<AppState>) -> Json<NetworkSnapshot> {
    Json(st.snapshot_now())
}

/// `POST /api/network/refresh`: starts a discovery run now; answers the current snapshot.
pub async fn refresh(State(st): State<AppState>) -> Json<NetworkSnapshot> {
    st.discovery.refresh_now();
    Json(st.snapshot_now())
}

/// `GET /api/auth`: 200 `{"admin":true}` when the caller is admin (the route is guarded).
pub async fn whoami() -> Json<AuthStatus> {
    Json(AuthStatus { admin: true })
}

/// `GET /api/events`: Server-Sent Events, one unnamed event (a `data:` line) per mesh
/// change, holding one [`MeshEvent`] as JSON. If the client falls behind, it gets
/// `{"type":"resync"}` and should refetch `GET /api/mesh`.
pub async fn events(
    State(st): State<AppState>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let rx = st.hub.subscribe();
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        let ev = match rx.recv().await {
            Ok(ev) => ev,
            Err(RecvError::Lagged(_)) => MeshEvent::Resync,
            Err(RecvError::Closed) => return None,
        };
        let data = serde_json::to_string(&ev).unwrap_or_else(|_| "{}".into());
        Some((Ok(Event::default().data(data)), rx))
    });
    Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}

/// `GET /health` (open).
pub async fn health(State(st): State<AppState>) -> Json<HostHealth> {
    Json(HostHealth {
        members_online: st.hub.online_count() as u64,
        mesh_id: st.mesh_id.clone(),
        mesh_name: st.mesh_name.clone(),
        status: "ok".into(),
        uptime_secs: st.started.elapsed().as_secs(),
        version: env!("CARGO_PKG_VERSION").into(),
    })
}

/// `GET /metrics` (open, Prometheus text).
pub async fn metrics(State(st): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        st.metrics.render(st.hub.online_count()),
    )
        .into_response()
}

/// Unknown `/api/...` path.
pub async fn not_found() -> Response {
    error(StatusCode::NOT_FOUND, "not_found", "no such API endpoint")
}

impl AppState {
    /// After a device's row is deleted: ends its live session with `device_removed` and
    /// announces `device_removed`. Returns whether it was online.
    fn forget_device(&self, device_id: &str) -> bool {
        let was_online = self.hub.remove(device_id);
        info!(device_id = %device_id, was_online, "device removed");
        self.hub.emit(MeshEvent::DeviceRemoved {
            device_id: device_id.to_string(),
        });
        was_online
    }

    /// The snapshot with the relay endpoint and link state filled in.
    pub fn snapshot_now(&self) -> NetworkSnapshot {
        self.complete(self.discovery.snapshot())
    }

    /// The snapshot for minting: waits (briefly) only if the first discovery is not done.
    async fn network_snapshot(&self) -> NetworkSnapshot {
        let snap = self.discovery.snapshot();
        let snap = if snap.updated_at.is_none() {
            self.discovery.ready(FIRST_DISCOVERY_WAIT).await
        } else {
            snap
        };
        self.complete(snap)
    }

    fn complete(&self, mut snap: NetworkSnapshot) -> NetworkSnapshot {
        // The advertised local address is a serve flag: honour it even if discovery has not
        // reported yet.
        if let Some(ip) = self.local_ip {
            if snap.local_ip.is_none() {
                snap.local_ip = Some(ip.to_string());
            }
            if snap.endpoints.local.is_none() {
                snap.endpoints.local = Some(format!("ws://{}", host_port(ip, self.port)));
            }
        }
        snap.stun_servers = self.stun_servers.clone();
        crate::port_mapping::apply_to_snapshot(
            &mut snap,
            &self.port_mapper.status(),
            self.public_url_set,
        );
        snap.reachability = self
            .reachability
            .current_for(snap.endpoints.public.as_deref());
        match &self.host_link {
            Some(link) => {
                snap.endpoints.relay = Some(link.invite_endpoint());
                snap.relay = Some(link.state());
            }
            None => {
                snap.endpoints.relay = None;
                snap.relay = Some(RelayState::NotConfigured);
            }
        }
        snap
    }

    /// Base of `join_url`: `--web-url`, else the relay's web origin (it serves the web app
    /// at `/join`; https for a `wss://` relay, so every phone can load it), else this host's
    /// LAN page, else its loopback page.
    fn web_base(&self, snap: &NetworkSnapshot) -> String {
        if let Some(u) = &self.web_url {
            return u.trim_end_matches('/').to_string();
        }
        if let Some(origin) = self
            .relay_url
            .as_deref()
            .and_then(atmosphere_shared::relay_proto::relay_web_origin)
        {
            return origin;
        }
        self.lan_base(snap)
            .unwrap_or_else(|| format!("http://{}", host_port([127, 0, 0, 1].into(), self.port)))
    }

    /// Base of the host's own LAN page, `http://LAN_IP:PORT`; `None` without a LAN address.
    fn lan_base(&self, snap: &NetworkSnapshot) -> Option<String> {
        let ip = snap.local_ip.as_deref()?.parse::<IpAddr>().ok()?;
        Some(format!("http://{}", host_port(ip, self.port)))
    }
}

/// The endpoints an invite carries: the snapshot's, except `public` while the dial-back
/// found it unreachable (a phone would only spend an attempt on it).
fn invite_endpoints(snap: &NetworkSnapshot) -> Endpoints {
    let mut endpoints = snap.endpoints.clone();
    if snap.reachability.state == Reachability::Unreachable {
        endpoints.public = None;
    }
    endpoints
}

/// `ip:port` with brackets around IPv6.
pub fn host_port(ip: IpAddr, port: u16) -> String {
    match ip {
        IpAddr::V4(v4) => format!("{v4}:{port}"),
        IpAddr::V6(v6) => format!("[{v6}]:{port}"),
    }
}
