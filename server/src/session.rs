//! The mesh-session handler: every member socket — direct (axum) or relayed (the host's data
//! socket to the relay) — goes through [`Hub::serve_member`]. One code path for all members.
//!
//! Lifecycle of a session:
//! 1. **Handshake**: the first data frame must be a `join` within the handshake deadline
//!    (default [`HANDSHAKE_TIMEOUT_MS`]), else `timeout` and close. A token join verifies the
//!    invite and creates the device in one SQLite transaction and only then answers `joined`
//!    (with the new `device_key`); a rejoin checks the device credential. Failed credential
//!    attempts count against the source address; too many in a minute → `rate_limited`.
//! 2. **Live**: the member is in the presence table; others get `peer_joined`; it receives
//!    `joined` (with the peers online) and `peers`. `send` frames are relayed as `message`.
//!    The host pings every `ping_interval`; with no frame at all for `idle_timeout` the
//!    session is closed.
//! 3. **End**: removed from presence, others get `peer_left`, `last_seen` is stored.
//!
//! A slow member never blocks the others: every member has a bounded outbound queue. A
//! sender facing a full queue waits a short grace (flow control for bursts); a member whose
//! queue stays full is dropped.
//! Bad input (non-JSON, unknown type, binary, oversized frames) gets `bad_request` or
//! `too_large` and a close; nothing a member sends can panic the host.

use crate::serve::metrics::Metrics;
use crate::store::{self, NewDevice, RedeemError, Store};
use crate::ws::{close_code, Frame, FrameSocket, RecvError};
use atmosphere_shared::path::PathKind;
use atmosphere_shared::token::Token;
use atmosphere_shared::wire::{
    ClientMsg, DeviceInfo, ErrorCode, Peer, ServerMsg, HANDSHAKE_TIMEOUT_MS, MAX_FRAME_BYTES,
};
use base64::Engine as _;
use rand::RngCore;
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{broadcast, mpsc, Notify};
use tokio::time::{timeout, Instant};
use tracing::{debug, info, warn};

/// Tunables of mesh sessions (defaults follow the protocol contract).
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Time a member has to send `join` after the socket opens.
    pub handshake_timeout: Duration,
    /// Interval of host → member WebSocket pings.
    pub ping_interval: Duration,
    /// A session with no frame (not even a pong) for this long is closed.
    pub idle_timeout: Duration,
    /// Failed credential attempts per source within `failure_window` before `rate_limited`.
    pub failure_limit: usize,
    /// Window of the join rate limit.
    pub failure_window: Duration,
    /// Frames queued for one member before it is considered too slow and dropped.
    pub outbound_queue: usize,
    /// Longest a single write to a member may take.
    pub write_timeout: Duration,
    /// How long a sender waits for a recipient with a full queue before that recipient is
    /// considered stalled and dropped.
    pub slow_grace: Duration,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            handshake_timeout: Duration::from_millis(HANDSHAKE_TIMEOUT_MS),
            ping_interval: Duration::from_secs(20),
            idle_timeout: Duration::from_secs(60),
            failure_limit: 10,
            failure_window: Duration::from_secs(60),
            outbound_queue: 256,
            write_timeout: Duration::from_secs(10),
            slow_grace: Duration::from_secs(2),
        }
    }
}

/// How a member socket reached the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// A WebSocket accepted by the host's own listener (local or public path).
    Direct,
    /// A data socket the host dialled to its relay.
    Relay,
}

/// Where a member socket comes from (logs and rate limiting).
#[derive(Debug, Clone)]
pub struct Source {
    pub transport: Transport,
    /// Human description for logs, e.g. `192.0.2.7:51234` or `relay(198.51.100.4:4431)`.
    pub addr: String,
    /// Rate-limit bucket (the source IP, IPv6 by /64; for relayed members what the relay
    /// reported).
    pub rate_key: String,
}

/// The rate-limit bucket of an address. One IPv6 subscriber usually holds a whole /64, so
/// per-address buckets would let it guess tokens from 2^64 "different" sources.
fn rate_bucket(ip: std::net::IpAddr) -> String {
    match ip {
        std::net::IpAddr::V4(v4) => v4.to_string(),
        std::net::IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => {
                let s = v6.segments();
                format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
            }
        },
    }
}

impl Source {
    /// A direct socket from `peer`.
    pub fn direct(peer: std::net::SocketAddr) -> Source {
        Source {
            transport: Transport::Direct,
            addr: peer.to_string(),
            rate_key: rate_bucket(peer.ip()),
        }
    }

    /// A relayed socket; `member` is the member's address as the relay described it.
    pub fn relay(member: &str) -> Source {
        // The relay reports a bare IP (`198.51.100.4`, `2001:db8::7`); tolerate `ip:port` and
        // `[v6]:port` too. Splitting at the last ':' blindly would cut an IPv6 address and
        // put different members in one rate-limit bucket.
        let ip = member
            .parse::<std::net::IpAddr>()
            .or_else(|_| member.parse::<std::net::SocketAddr>().map(|a| a.ip()));
        let host = match ip {
            Ok(ip) => rate_bucket(ip),
            Err(_) => member
                .rsplit_once(':')
                .map(|(h, _)| h)
                .unwrap_or(member)
                .to_string(),
        };
        Source {
            transport: Transport::Relay,
            addr: format!("relay({member})"),
            rate_key: format!("relay:{host}"),
        }
    }
}

/// Mesh changes pushed to the admin UI over `GET /api/events` (one JSON object per event,
/// `"type"`-tagged):
///
/// - `{"type":"device_joined","device_id","name","platform","path","new_device":bool}`
/// - `{"type":"device_left","device_id","reason"}`
/// - `{"type":"invite_minted","invite_id"}`
/// - `{"type":"invite_used","invite_id","device_id"}`
/// - `{"type":"invite_revoked","invite_id"}`
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum MeshEvent {
    DeviceJoined {
        device_id: String,
        name: String,
        platform: String,
        path: PathKind,
        new_device: bool,
    },
    DeviceLeft {
        device_id: String,
        reason: String,
    },
    InviteMinted {
        invite_id: String,
    },
    InviteUsed {
        invite_id: String,
        device_id: String,
    },
    InviteRevoked {
        invite_id: String,
    },
}

/// Asks a live session to end (slow consumer, replaced by a newer session).
struct Kick {
    notify: Notify,
    reason: Mutex<Option<&'static str>>,
}

impl Kick {
    fn reason(&self) -> String {
        self.reason
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .unwrap_or("kicked")
            .to_string()
    }

    fn kick(&self, reason: &'static str) {
        *self.reason.lock().unwrap_or_else(|p| p.into_inner()) = Some(reason);
        self.notify.notify_one();
    }
}

/// One online member.
struct Member {
    conn: u64,
    peer: Peer,
    tx: mpsc::Sender<Arc<str>>,
    kick: Arc<Kick>,
}

/// Sources tracked before stale ones are swept out.
const RATE_SWEEP_ABOVE: usize = 4096;
/// Sweeps happen at most this often, so a flood of distinct sources costs one full scan
/// per interval rather than one per failed join.
const RATE_SWEEP_EVERY: Duration = Duration::from_secs(1);

/// Per-source sliding window of failed credential attempts.
#[derive(Default)]
struct RateLimiter {
    failures: HashMap<String, VecDeque<Instant>>,
    last_sweep: Option<Instant>,
}

impl RateLimiter {
    fn prune(q: &mut VecDeque<Instant>, now: Instant, window: Duration) {
        while q.front().is_some_and(|t| now.duration_since(*t) >= window) {
            q.pop_front();
        }
    }

    fn is_blocked(&mut self, key: &str, now: Instant, limit: usize, window: Duration) -> bool {
        match self.failures.get_mut(key) {
            Some(q) => {
                Self::prune(q, now, window);
                q.len() >= limit
            }
            None => false,
        }
    }

    /// Records a failure; returns the number of failures in the window.
    fn record(&mut self, key: &str, now: Instant, window: Duration) -> usize {
        let sweep_due = self
            .last_sweep
            .is_none_or(|t| now.duration_since(t) >= RATE_SWEEP_EVERY);
        if self.failures.len() > RATE_SWEEP_ABOVE && sweep_due {
            // Bound memory under a distributed attack: forget sources with no recent failure.
            self.last_sweep = Some(now);
            self.failures.retain(|_, q| {
                Self::prune(q, now, window);
                !q.is_empty()
            });
        }
        let q = self.failures.entry(key.to_string()).or_default();
        Self::prune(q, now, window);
        q.push_back(now);
        q.len()
    }
}

/// A refusal during the handshake: sent as an `error` frame, logged, counted.
struct Refusal {
    code: ErrorCode,
    message: String,
    /// Whether it counts as a failed credential attempt for the rate limit.
    credential_failure: bool,
}

impl Refusal {
    fn new(code: ErrorCode, message: impl Into<String>) -> Refusal {
        Refusal {
            code,
            message: message.into(),
            credential_failure: false,
        }
    }
    fn credential(code: ErrorCode, message: impl Into<String>) -> Refusal {
        Refusal {
            code,
            message: message.into(),
            credential_failure: true,
        }
    }
}

/// Result of a successful handshake.
struct Admitted {
    peer: Peer,
    device_key: Option<String>,
    invite_id: Option<String>,
}

/// The mesh's live state: presence table, rate limiter, event feed. Shared by all sessions.
pub struct Hub {
    /// The mesh id (derived from the mesh key).
    pub mesh_id: String,
    /// The mesh's display name.
    pub mesh_name: String,
    store: Store,
    cfg: SessionConfig,
    metrics: Arc<Metrics>,
    events: broadcast::Sender<MeshEvent>,
    members: Mutex<HashMap<String, Member>>,
    limiter: Mutex<RateLimiter>,
    next_conn: AtomicU64,
}

impl Hub {
    /// A hub for one mesh.
    pub fn new(
        mesh_id: String,
        mesh_name: String,
        store: Store,
        cfg: SessionConfig,
        metrics: Arc<Metrics>,
    ) -> Arc<Hub> {
        let (events, _) = broadcast::channel(256);
        Arc::new(Hub {
            mesh_id,
            mesh_name,
            store,
            cfg,
            metrics,
            events,
            members: Mutex::new(HashMap::new()),
            limiter: Mutex::new(RateLimiter::default()),
            next_conn: AtomicU64::new(1),
        })
    }

    /// Devices online right now with the path of their connection.
    pub fn online(&self) -> HashMap<String, PathKind> {
        self.lock_members()
            .iter()
            .map(|(id, m)| (id.clone(), m.peer.path))
            .collect()
    }

    /// Number of members online.
    pub fn online_count(&self) -> usize {
        self.lock_members().len()
    }

    /// Subscribes to mesh events (for `GET /api/events`).
    pub fn subscribe(&self) -> broadcast::Receiver<MeshEvent> {
        self.events.subscribe()
    }

    /// Publishes a mesh event (no-op without subscribers).
    pub fn emit(&self, ev: MeshEvent) {
        let _ = self.events.send(ev);
    }

    fn lock_members(&self) -> std::sync::MutexGuard<'_, HashMap<String, Member>> {
        self.members.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs one member session to its end. Never panics on member input.
    pub async fn serve_member(self: Arc<Self>, mut sock: FrameSocket, source: Source) {
        let admitted = match self.handshake(&mut sock, &source).await {
            Ok(a) => a,
            Err(None) => {
                debug!(addr = %source.addr, "socket closed before join");
                return;
            }
            Err(Some(r)) => {
                self.refuse(&mut sock, &source, r).await;
                return;
            }
        };
        self.live(sock, source, admitted).await;
    }

    /// Refuses a socket before its handshake (e.g. too many connections from its address),
    /// through the same path as any refusal: the member gets a mesh error frame its client
    /// shows, and the refusal is logged and counted.
    pub async fn turn_away(
        &self,
        mut sock: FrameSocket,
        source: &Source,
        code: ErrorCode,
        message: String,
    ) {
        self.refuse(&mut sock, source, Refusal::new(code, message))
            .await;
    }

    /// Sends the error frame, logs the refusal, counts it, closes the socket.
    async fn refuse(&self, sock: &mut FrameSocket, source: &Source, r: Refusal) {
        let blocked_now = if r.credential_failure {
            let n = self
                .limiter
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .record(&source.rate_key, Instant::now(), self.cfg.failure_window);
            n == self.cfg.failure_limit
        } else {
            false
        };
        if r.code == ErrorCode::RateLimited || blocked_now {
            warn!(addr = %source.addr, code = %r.code, reason = %r.message,
                "join refused; source is rate limited after repeated failed credentials");
        } else {
            info!(addr = %source.addr, code = %r.code, reason = %r.message, "join refused");
        }
        self.metrics.refusal(r.code);
        let frame = ServerMsg::Error {
            code: r.code,
            message: r.message,
        }
        .to_json();
        let close = if r.code == ErrorCode::TooLarge {
            close_code::TOO_BIG
        } else {
            close_code::POLICY
        };
        let _ = timeout(self.cfg.write_timeout, async {
            let _ = sock.send(Frame::Text(frame)).await;
            sock.close(close, r.code.as_str()).await;
        })
        .await;
    }

    /// Reads the first data frame and admits the member, or says why not
    /// (`Err(None)`: the socket went away without a word).
    async fn handshake(
        &self,
        sock: &mut FrameSocket,
        source: &Source,
    ) -> Result<Admitted, Option<Refusal>> {
        let first = match timeout(self.cfg.handshake_timeout, first_text(sock)).await {
            Ok(r) => r?,
            Err(_) => {
                return Err(Some(Refusal::new(
                    ErrorCode::Timeout,
                    format!(
                        "no join frame within {} ms",
                        self.cfg.handshake_timeout.as_millis()
                    ),
                )))
            }
        };
        let msg = parse_frame(&first).map_err(Some)?;
        let ClientMsg::Join {
            token,
            device,
            device_id,
            device_key,
            path,
        } = msg
        else {
            return Err(Some(Refusal::new(
                ErrorCode::BadRequest,
                "the first frame must be a join",
            )));
        };
        let path = match source.transport {
            Transport::Relay => PathKind::Relay,
            Transport::Direct => path,
        };
        let blocked = self
            .limiter
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_blocked(
                &source.rate_key,
                Instant::now(),
                self.cfg.failure_limit,
                self.cfg.failure_window,
            );
        if blocked {
            return Err(Some(Refusal::new(
                ErrorCode::RateLimited,
                "too many failed join attempts from this address; wait a minute and try again",
            )));
        }
        if let Some(token) = token {
            self.join_with_token(&token, device.unwrap_or_default(), path)
                .await
                .map_err(Some)
        } else if let (Some(id), Some(key)) = (device_id, device_key) {
            self.rejoin(&id, &key, path).await.map_err(Some)
        } else {
            Err(Some(Refusal::new(
                ErrorCode::BadRequest,
                "join needs either a token or a device_id and device_key",
            )))
        }
    }

    async fn join_with_token(
        &self,
        token: &str,
        device: DeviceInfo,
        path: PathKind,
    ) -> Result<Admitted, Refusal> {
        if token.len() > 256 {
            return Err(Refusal::credential(
                ErrorCode::InvalidToken,
                "that is not an invite token",
            ));
        }
        let token = Token::parse(token).map_err(|e| {
            Refusal::credential(
                ErrorCode::InvalidToken,
                format!("that is not an invite token: {e}"),
            )
        })?;
        let name = clean_text(&device.name, 64).unwrap_or_else(|| "Unnamed device".into());
        let platform = clean_text(&device.platform, 32).unwrap_or_else(|| "unknown".into());
        let device_key = random_b64(32);
        let new = NewDevice {
            id: random_hex(8),
            name: name.clone(),
            platform: platform.clone(),
            key_hash: sha256_hex(&device_key),
            joined_at: store::now_secs(),
            path: path.as_str().to_string(),
        };
        let hash = token.hash_hex();
        let now = store::now_secs();
        let dev = new.clone();
        let res = self
            .store
            .call(move |c| store::redeem_invite(c, &hash, now, &dev))
            .await
            .map_err(|e| {
                warn!(error = %e, "database error while redeeming an invite");
                Refusal::new(
                    ErrorCode::Internal,
                    "the host could not store the membership; try again",
                )
            })?;
        let invite_id = res.map_err(|e| match e {
            RedeemError::Unknown => Refusal::credential(
                ErrorCode::InvalidToken,
                "this invite token is not known to the host",
            ),
            RedeemError::Revoked => Refusal::credential(
                ErrorCode::TokenRevoked,
                "this invite was revoked by the host",
            ),
            RedeemError::Expired => Refusal::credential(
                ErrorCode::TokenExpired,
                "this invite has expired; ask for a new one",
            ),
            RedeemError::Exhausted => Refusal::credential(
                ErrorCode::TokenExhausted,
                "this invite has already been used up",
            ),
        })?;
        Ok(Admitted {
            peer: Peer {
                device_id: new.id,
                name,
                platform,
                path,
            },
            device_key: Some(device_key),
            invite_id: Some(invite_id),
        })
    }

    async fn rejoin(&self, id: &str, key: &str, path: PathKind) -> Result<Admitted, Refusal> {
        let unknown = || {
            Refusal::credential(
                ErrorCode::UnknownDevice,
                "this device is not a member of the mesh (unknown id or wrong key)",
            )
        };
        if id.len() > 64 || key.len() > 128 {
            return Err(unknown());
        }
        let id_owned = id.to_string();
        let path_s = path.as_str().to_string();
        let key_hash = sha256_hex(key);
        let row = self
            .store
            .call(move |c| {
                let row = store::get_device(c, &id_owned)?;
                if let Some(r) = &row {
                    if constant_time_eq(r.key_hash.as_bytes(), key_hash.as_bytes()) {
                        store::touch_device(c, &id_owned, store::now_secs(), &path_s)?;
                        return Ok(row);
                    }
                }
                Ok(None)
            })
            .await
            .map_err(|e| {
                warn!(error = %e, "database error while checking a device");
                Refusal::new(
                    ErrorCode::Internal,
                    "the host could not check the device; try again",
                )
            })?;
        let row = row.ok_or_else(unknown)?;
        Ok(Admitted {
            peer: Peer {
                device_id: row.id,
                name: row.name,
                platform: row.platform,
                path,
            },
            device_key: None,
            invite_id: None,
        })
    }

    /// The live part of a session, after `join` succeeded.
    async fn live(self: Arc<Self>, mut sock: FrameSocket, source: Source, a: Admitted) {
        let me = a.peer.clone();
        let conn = self.next_conn.fetch_add(1, Ordering::Relaxed);
        let (tx, mut rx) = mpsc::channel::<Arc<str>>(self.cfg.outbound_queue);
        let kick = Arc::new(Kick {
            notify: Notify::new(),
            reason: Mutex::new(None),
        });
        let peers = {
            let mut members = self.lock_members();
            if let Some(old) = members.remove(&me.device_id) {
                // The same device connected again (e.g. a new path won): the newest wins.
                old.kick
                    .kick("replaced by a newer connection of the same device");
            }
            let peers: Vec<Peer> = members.values().map(|m| m.peer.clone()).collect();
            let joined_frame: Arc<str> =
                ServerMsg::PeerJoined { peer: me.clone() }.to_json().into();
            self.fanout(&members, None, &joined_frame);
            members.insert(
                me.device_id.clone(),
                Member {
                    conn,
                    peer: me.clone(),
                    tx,
                    kick: kick.clone(),
                },
            );
            peers
        };
        // Even if this task panicked, the guard takes the member out of the presence table.
        let presence = PresenceGuard {
            hub: self.clone(),
            device_id: me.device_id.clone(),
            conn,
            done: false,
        };
        self.metrics.joined(me.path);
        info!(device_id = %me.device_id, name = %me.name, platform = %me.platform, path = %me.path,
            addr = %source.addr, new_device = a.device_key.is_some(), "member joined");
        if let Some(inv) = &a.invite_id {
            self.emit(MeshEvent::InviteUsed {
                invite_id: inv.clone(),
                device_id: me.device_id.clone(),
            });
        }
        self.emit(MeshEvent::DeviceJoined {
            device_id: me.device_id.clone(),
            name: me.name.clone(),
            platform: me.platform.clone(),
            path: me.path,
            new_device: a.device_key.is_some(),
        });

        let joined = ServerMsg::Joined(atmosphere_shared::wire::Joined {
            mesh_id: self.mesh_id.clone(),
            mesh_name: self.mesh_name.clone(),
            device_id: me.device_id.clone(),
            device_key: a.device_key,
            peers: peers.clone(),
        });
        let reason = match self.send_text(&mut sock, joined.to_json()).await {
            Err(r) => r,
            Ok(()) => match self
                .send_text(&mut sock, ServerMsg::Peers { peers }.to_json())
                .await
            {
                Err(r) => r,
                Ok(()) => self.run_live(&mut sock, &me, &mut rx, &kick).await,
            },
        };

        // Leave: drop from presence unless a newer session of this device already took over.
        let was_current = presence.finish();
        let id = me.device_id.clone();
        let path_s = me.path.as_str().to_string();
        if let Err(e) = self
            .store
            .call(move |c| store::touch_device(c, &id, store::now_secs(), &path_s))
            .await
        {
            warn!(error = %e, "could not record last_seen");
        }
        info!(device_id = %me.device_id, name = %me.name, path = %me.path, addr = %source.addr,
            reason = %reason, "member left");
        if was_current {
            self.emit(MeshEvent::DeviceLeft {
                device_id: me.device_id.clone(),
                reason: reason.clone(),
            });
        }
        let _ = timeout(
            Duration::from_secs(2),
            sock.close(close_code::NORMAL, "bye"),
        )
        .await;
    }

    /// The frame loop of a live session; returns why it ended.
    async fn run_live(
        &self,
        sock: &mut FrameSocket,
        me: &Peer,
        rx: &mut mpsc::Receiver<Arc<str>>,
        kick: &Kick,
    ) -> String {
        let mut ping = tokio::time::interval(self.cfg.ping_interval);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ping.tick().await; // the first tick is immediate
        let mut last_rx = Instant::now();
        loop {
            let idle_deadline = last_rx + self.cfg.idle_timeout;
            tokio::select! {
                m = sock.recv() => {
                    last_rx = Instant::now();
                    let text = match m {
                        None => return "connection closed".into(),
                        Some(Err(RecvError::Broken(e))) => return format!("connection error: {e}"),
                        Some(Err(RecvError::TooLarge)) => {
                            return self.protocol_error(sock, ErrorCode::TooLarge,
                                format!("frames are limited to {MAX_FRAME_BYTES} bytes")).await;
                        }
                        Some(Ok(Frame::Close(_))) => return "member closed the connection".into(),
                        Some(Ok(Frame::Ping(_) | Frame::Pong(_))) => continue,
                        Some(Ok(Frame::Binary(_))) => {
                            return self.protocol_error(sock, ErrorCode::BadRequest,
                                "binary frames are not part of the protocol; send JSON text".into()).await;
                        }
                        Some(Ok(Frame::Text(t))) => t,
                    };
                    match parse_frame(&text) {
                        Err(r) => return self.protocol_error(sock, r.code, r.message).await,
                        Ok(ClientMsg::Join { .. }) => {
                            return self.protocol_error(sock, ErrorCode::BadRequest,
                                "already joined; join is only valid as the first frame".into()).await;
                        }
                        Ok(ClientMsg::Send { to, body }) => self.deliver(me, to.as_deref(), body).await,
                    }
                }
                out = rx.recv() => {
                    let Some(text) = out else { return "dropped".into() };
                    // A member whose socket is full blocks here; a kick (queue overflow)
                    // must still end it at once rather than after the write timeout.
                    tokio::select! {
                        r = self.send_text(sock, text.to_string()) => if let Err(r) = r { return r },
                        _ = kick.notify.notified() => return kick.reason(),
                    }
                }
                _ = kick.notify.notified() => return kick.reason(),
                _ = ping.tick() => {
                    if let Err(r) = self.send_frame(sock, Frame::Ping(b"atmosphere".to_vec())).await {
                        return r;
                    }
                }
                _ = tokio::time::sleep_until(idle_deadline) => {
                    return format!("idle for {} s (no frame or pong)", self.cfg.idle_timeout.as_secs());
                }
            }
        }
    }

    /// Sends an error frame for a protocol violation and returns the leave reason.
    async fn protocol_error(
        &self,
        sock: &mut FrameSocket,
        code: ErrorCode,
        message: String,
    ) -> String {
        self.metrics.refusal(code);
        let reason = format!("{code}: {message}");
        let close = if code == ErrorCode::TooLarge {
            close_code::TOO_BIG
        } else {
            close_code::POLICY
        };
        let _ = self
            .send_text(sock, ServerMsg::Error { code, message }.to_json())
            .await;
        let _ = timeout(self.cfg.write_timeout, sock.close(close, code.as_str())).await;
        reason
    }

    async fn send_text(&self, sock: &mut FrameSocket, text: String) -> Result<(), String> {
        self.send_frame(sock, Frame::Text(text)).await
    }

    async fn send_frame(&self, sock: &mut FrameSocket, f: Frame) -> Result<(), String> {
        match timeout(self.cfg.write_timeout, sock.send(f)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(format!("write failed: {e}")),
            Err(_) => Err(format!(
                "write stalled for {} s",
                self.cfg.write_timeout.as_secs()
            )),
        }
    }

    /// Takes session `conn` of `device_id` out of presence and tells the others, unless a
    /// newer session of the same device replaced it. Returns whether it was current.
    fn leave(&self, device_id: &str, conn: u64) -> bool {
        let mut members = self.lock_members();
        let ours = members.get(device_id).is_some_and(|m| m.conn == conn);
        if ours {
            members.remove(device_id);
            let left: Arc<str> = ServerMsg::PeerLeft {
                device_id: device_id.to_string(),
            }
            .to_json()
            .into();
            self.fanout(&members, None, &left);
        }
        ours
    }

    /// Routes a `send` from `from` to one member or to everyone else.
    ///
    /// Flow control: a recipient whose queue is full makes the *sender* wait (its session
    /// reads no further frames meanwhile), so a flood is paced to its readers and memory stays
    /// bounded. A recipient that makes no room within [`SessionConfig::slow_grace`] is
    /// stalled and is dropped; the sender then carries on. Nobody else waits on it.
    async fn deliver(&self, from: &Peer, to: Option<&str>, body: serde_json::Value) {
        let frame: Arc<str> = ServerMsg::Message {
            from: from.device_id.clone(),
            body,
        }
        .to_json()
        .into();
        let mut waiting = Vec::new();
        {
            let members = self.lock_members();
            let targets: Vec<(&String, &Member)> = match to {
                None => members
                    .iter()
                    .filter(|(id, _)| **id != from.device_id)
                    .collect(),
                Some(id) => match members.get_key_value(id) {
                    Some(t) => vec![t],
                    None => {
                        debug!(from = %from.device_id, to = %id, "message for a device that is not online dropped");
                        vec![]
                    }
                },
            };
            for (id, m) in targets {
                if let Err(mpsc::error::TrySendError::Full(f)) = m.tx.try_send(frame.clone()) {
                    waiting.push((id.clone(), m.tx.clone(), m.kick.clone(), f));
                }
            }
        }
        let grace = self.cfg.slow_grace;
        futures_util::future::join_all(waiting.into_iter().map(|(id, tx, kick, f)| async move {
            if timeout(grace, tx.send(f)).await.is_err() {
                warn!(device_id = %id, "member cannot keep up (outbound queue full); dropping it");
                kick.kick("too slow: outbound queue stayed full");
            }
        }))
        .await;
    }

    /// Queues a host-originated frame (presence) for every member except `except`. Never
    /// waits: a full queue gets the frame from a short-lived task, or the member is dropped.
    fn fanout(&self, members: &HashMap<String, Member>, except: Option<&str>, frame: &Arc<str>) {
        for (id, m) in members.iter() {
            if Some(id.as_str()) == except {
                continue;
            }
            if let Err(mpsc::error::TrySendError::Full(f)) = m.tx.try_send(frame.clone()) {
                let (id, tx, kick, grace) = (
                    id.clone(),
                    m.tx.clone(),
                    m.kick.clone(),
                    self.cfg.slow_grace,
                );
                tokio::spawn(async move {
                    if timeout(grace, tx.send(f)).await.is_err() {
                        warn!(device_id = %id, "member cannot keep up (outbound queue full); dropping it");
                        kick.kick("too slow: outbound queue stayed full");
                    }
                });
            }
        }
    }
}

/// Removes a session from the presence table when it ends, however it ends.
struct PresenceGuard {
    hub: Arc<Hub>,
    device_id: String,
    conn: u64,
    done: bool,
}

impl PresenceGuard {
    /// Leaves now; returns whether this session was still the device's current one.
    fn finish(mut self) -> bool {
        self.done = true;
        self.hub.leave(&self.device_id, self.conn)
    }
}

impl Drop for PresenceGuard {
    fn drop(&mut self) {
        if !self.done {
            self.hub.leave(&self.device_id, self.conn);
        }
    }
}

/// Waits for the first text frame, answering pings (the libraries do) and ignoring pongs.
async fn first_text(sock: &mut FrameSocket) -> Result<String, Option<Refusal>> {
    loop {
        match sock.recv().await {
            None | Some(Ok(Frame::Close(_))) | Some(Err(RecvError::Broken(_))) => return Err(None),
            Some(Err(RecvError::TooLarge)) => {
                return Err(Some(Refusal::new(
                    ErrorCode::TooLarge,
                    format!("frames are limited to {MAX_FRAME_BYTES} bytes"),
                )))
            }
            Some(Ok(Frame::Ping(_) | Frame::Pong(_))) => continue,
            Some(Ok(Frame::Binary(_))) => {
                return Err(Some(Refusal::new(
                    ErrorCode::BadRequest,
                    "binary frames are not part of the protocol; send a JSON join frame",
                )))
            }
            Some(Ok(Frame::Text(t))) => return Ok(t),
        }
    }
}

/// Parses a member's text frame with the size limit and clear errors.
fn parse_frame(text: &str) -> Result<ClientMsg, Refusal> {
    if text.len() > MAX_FRAME_BYTES {
        return Err(Refusal::new(
            ErrorCode::TooLarge,
            format!(
                "frame of {} bytes exceeds the limit of {MAX_FRAME_BYTES} bytes",
                text.len()
            ),
        ));
    }
    ClientMsg::parse(text).map_err(|e| {
        let what = if serde_json::from_str::<serde_json::Value>(text).is_err() {
            "frame is not valid JSON"
        } else {
            "frame is not a known message"
        };
        let mut e = e;
        e.truncate(200);
        Refusal::new(ErrorCode::BadRequest, format!("{what}: {e}"))
    })
}

/// Trims, drops control characters and bounds a person-supplied string.
fn clean_text(s: &str, max_chars: usize) -> Option<String> {
    let t: String = s
        .chars()
        .filter(|c| !c.is_control())
        .take(max_chars)
        .collect();
    let t = t.trim();
    (!t.is_empty()).then(|| t.to_string())
}

/// Lowercase hex of `n` CSPRNG bytes.
pub fn random_hex(n: usize) -> String {
    let mut b = vec![0u8; n];
    rand::rngs::OsRng.fill_bytes(&mut b);
    hex(&b)
}

/// URL-safe base64 (no padding) of `n` CSPRNG bytes.
pub fn random_b64(n: usize) -> String {
    let mut b = vec![0u8; n];
    rand::rngs::OsRng.fill_bytes(&mut b);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

/// Hex SHA-256 of a secret (what the store keeps instead of the secret).
pub fn sha256_hex(s: &str) -> String {
    hex(&Sha256::digest(s.as_bytes()))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Compares secrets without an early exit.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limiter_blocks_after_limit_and_forgets_after_window() {
        let mut rl = RateLimiter::default();
        let w = Duration::from_secs(60);
        let t0 = Instant::now();
        for i in 1..=3 {
            assert_eq!(rl.record("a", t0, w), i);
        }
        assert!(rl.is_blocked("a", t0, 3, w));
        assert!(!rl.is_blocked("b", t0, 3, w));
        assert!(!rl.is_blocked("a", t0 + w, 3, w));
    }

    #[test]
    fn rate_limiter_sweeps_stale_sources_at_most_once_a_second() {
        let mut rl = RateLimiter::default();
        let w = Duration::from_secs(60);
        let t0 = Instant::now();
        for i in 0..=RATE_SWEEP_ABOVE {
            rl.record(&format!("old{i}"), t0, w);
        }
        // A window later the old sources are stale: the next failure sweeps them out.
        let t1 = t0 + w;
        rl.record("new0", t1, w);
        assert_eq!(rl.failures.len(), 1, "stale sources were not swept");
        // Refill past the threshold within the same second: no second scan yet.
        for i in 0..=RATE_SWEEP_ABOVE {
            rl.record(&format!("burst{i}"), t1 - w, w);
        }
        let before = rl.failures.len();
        rl.record("new1", t1 + Duration::from_millis(500), w);
        assert_eq!(rl.failures.len(), before + 1, "swept twice within a second");
        rl.record("new2", t1 + RATE_SWEEP_EVERY, w);
        assert_eq!(
            rl.failures.len(),
            3,
            "the next due sweep keeps only live sources"
        );
    }

    #[test]
    fn frame_parsing_errors_are_clear() {
        assert_eq!(parse_frame("nope").unwrap_err().code, ErrorCode::BadRequest);
        assert_eq!(
            parse_frame(r#"{"type":"dance"}"#).unwrap_err().code,
            ErrorCode::BadRequest
        );
        let big = format!(
            r#"{{"type":"send","body":"{}"}}"#,
            "x".repeat(MAX_FRAME_BYTES)
        );
        assert_eq!(parse_frame(&big).unwrap_err().code, ErrorCode::TooLarge);
    }

    #[test]
    fn relayed_sources_are_rate_limited_per_member_ip() {
        assert_eq!(Source::relay("198.51.100.4").rate_key, "relay:198.51.100.4");
        assert_eq!(
            Source::relay("198.51.100.4:4431").rate_key,
            "relay:198.51.100.4"
        );
        assert_eq!(
            Source::relay("2001:db8:0:1::7").rate_key,
            "relay:2001:db8:0:1::/64"
        );
        assert_eq!(
            Source::relay("[2001:db8:0:1::7]:4431").rate_key,
            "relay:2001:db8:0:1::/64"
        );
        assert_ne!(
            Source::relay("2001:db8:0:1::7").rate_key,
            Source::relay("2001:db8:0:2::7").rate_key,
            "members in different /64s must not share a rate-limit bucket"
        );
    }

    #[test]
    fn one_ipv6_subscriber_is_one_bucket_however_many_addresses_it_uses() {
        let a: std::net::SocketAddr = "[2001:db8:0:1::7]:5000".parse().unwrap();
        let b: std::net::SocketAddr = "[2001:db8:0:1:ffff::9]:5001".parse().unwrap();
        assert_eq!(Source::direct(a).rate_key, Source::direct(b).rate_key);
        let v4: std::net::SocketAddr = "192.0.2.7:1".parse().unwrap();
        assert_eq!(Source::direct(v4).rate_key, "192.0.2.7");
        let mapped: std::net::SocketAddr = "[::ffff:192.0.2.7]:1".parse().unwrap();
        assert_eq!(Source::direct(mapped).rate_key, "192.0.2.7");
    }

    #[test]
    fn clean_text_bounds_names() {
        assert_eq!(
            clean_text("  Pixel\u{7} 8 ", 64).as_deref(),
            Some("Pixel 8")
        );
        assert_eq!(clean_text("   ", 64), None);
        assert_eq!(
            clean_text(&"é".repeat(100), 64).unwrap().chars().count(),
            64
        );
    }
}
