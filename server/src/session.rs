//! One member session of the mesh: its handshake and its live loop. Every member socket —
//! direct (axum) or relayed (the host's data socket to the relay) — goes through
//! [`Sessions::serve_member`]. One code path for all members.
//!
//! The handshake, step by step (each a function below):
//! 1. `secure`: the Noise handshake of [`atmosphere_shared::handshake`] — message 1 in,
//!    message 2 (the host's keys and mesh certificate) out, message 3 (the device's static
//!    key and its join request) in — all within the handshake deadline (default
//!    [`HANDSHAKE_TIMEOUT_MS`]), else `timeout`. A malformed or undecryptable message is
//!    `bad_request`. These refusals go out as plaintext (there is no channel yet), which
//!    clients treat as unauthenticated hints. From here on everything is sealed;
//! 2. `authenticate`: an invite join (`redeem_invite`) checks the token, then verifies the
//!    invite and stores the new device with the static key it proved, in one SQLite
//!    transaction (`store_redemption`); a rejoin (`authenticate_device`) checks that the
//!    static key the handshake proved is the one stored for the device (or, for a device
//!    of an earlier version, its bearer key, and then stores the static key in its place).
//!    A wrong credential counts against the source's rate limit
//!    ([`crate::limits::JoinRateLimiter`]);
//! 3. `apply_rate_limit`: a source with too many failed credentials in the last minute gets
//!    `rate_limited` *for a wrong credential only*. A valid credential is admitted whatever
//!    others behind the same address (a carrier NAT, a proxy) did, so an attacker cannot
//!    lock members out. The limiter still bounds an attacker's work: a blocked source's
//!    attempt costs one indexed read (the device row, or the invite's token hash before any
//!    write transaction) and is not counted again;
//! 4. `admit`: only now, after the database commit, the member enters the presence table
//!    ([`crate::hub`]) and the others get `peer_joined`;
//! 5. answer `joined`, then the presence snapshot as `peers` pages
//!    ([`atmosphere_shared::wire::peer_pages`]), so presence never has to fit in one frame.
//!
//! Live: `send` messages are relayed as `message`; `rtc_offer` is answered and the session
//! may move onto a direct WebRTC path and back ([`crate::session_paths`]; the member's path
//! in presence and `/api/events` follow it); the host pings every `ping_interval`;
//! with no frame at all for `idle_timeout` the session is closed. A session the hub kicks
//! ends at once; a removed device's is told `device_removed` (final) before its socket
//! closes. At the end the member leaves presence (the others get `peer_left`) and its
//! `last_seen` is stored.
//!
//! Bad input (a plaintext frame, a frame that does not open, unknown JSON, oversized
//! frames) gets `bad_request` or `too_large` and a close; nothing a member sends can panic
//! the host.

use crate::clock::now_secs;
use crate::host_metrics::HostMetrics;
use crate::hub::PathHandle;
use crate::hub::{Hub, Kick, Kicked, Membership, Outbox};
use crate::limits::{rate_bucket, JoinRateLimiter};
use crate::mesh_socket::{Incoming, MeshSocket, RecvFailure, Violation};
use crate::printable::printable;
use crate::secret::{constant_time_eq, random_hex, sha256_hex};
use crate::session_paths::{HostDirect, PathInput, PathSocket, SessionPaths};
use crate::store::{self, NewDevice, RedeemError, Redemption, Store};
use crate::ws::{close_code, FrameSocket};
use atmosphere_shared::api::MeshEvent;
use atmosphere_shared::handshake::{
    Entropy, HandshakeError, HostHandshake, HostJoin, HostKeys, JoinProof, JoinRequest,
    StaticPublic,
};
use atmosphere_shared::path::PathKind;
use atmosphere_shared::token::Token;
use atmosphere_shared::upgrade::UpgradeEvent;
use atmosphere_shared::wire::{
    check_sdp, peer_pages, ClientMsg, DeviceInfo, ErrorCode, Joined, Peer, ServerMsg,
    HANDSHAKE_TIMEOUT_MS,
};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::{timeout, Instant};
use tracing::{debug, info, warn};

/// Most queued frames a session writes with one flush.
const MAX_BURST: usize = 64;

/// Tunables of mesh sessions (defaults follow the protocol contract).
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Time a member has to finish the handshake (messages 1 and 3) after the socket opens.
    pub handshake_timeout: Duration,
    /// Interval of host → member WebSocket pings.
    pub ping_interval: Duration,
    /// A session with no frame (not even a pong) for this long is closed.
    pub idle_timeout: Duration,
    /// Failed credential attempts per source within `failure_window` before `rate_limited`.
    pub failure_limit: usize,
    /// Window of the join rate limit.
    pub failure_window: Duration,
    /// Longest a single write to a member may take.
    pub write_timeout: Duration,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            handshake_timeout: Duration::from_millis(HANDSHAKE_TIMEOUT_MS),
            ping_interval: Duration::from_secs(20),
            idle_timeout: Duration::from_secs(60),
            failure_limit: 10,
            failure_window: Duration::from_secs(60),
            write_timeout: Duration::from_secs(10),
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

impl Source {
    /// A direct socket from `peer`.
    pub fn direct(peer: SocketAddr) -> Source {
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
            .parse::<IpAddr>()
            .or_else(|_| member.parse::<SocketAddr>().map(|a| a.ip()));
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

    /// The path a member on this socket is on: what it reported for a direct socket (local
    /// or public, only the client can tell), `relay` for a relayed one whatever it said.
    fn path(&self, reported: PathKind) -> PathKind {
        match self.transport {
            Transport::Relay => PathKind::Relay,
            Transport::Direct => reported,
        }
    }
}

/// Why the handshake refuses a member: sent as an `error` frame, logged, counted.
struct HandshakeRefusal {
    code: ErrorCode,
    message: String,
    /// Whether it counts as a failed credential attempt for the rate limit.
    credential_failure: bool,
}

impl HandshakeRefusal {
    fn new(code: ErrorCode, message: impl Into<String>) -> HandshakeRefusal {
        HandshakeRefusal {
            code,
            message: message.into(),
            credential_failure: false,
        }
    }

    /// A wrong token or device credential: counts against the source's rate limit.
    fn credential(code: ErrorCode, message: impl Into<String>) -> HandshakeRefusal {
        HandshakeRefusal {
            credential_failure: true,
            ..HandshakeRefusal::new(code, message)
        }
    }
}

impl From<Violation> for HandshakeRefusal {
    fn from(v: Violation) -> HandshakeRefusal {
        HandshakeRefusal::new(v.code, v.message)
    }
}

/// What the Noise handshake established about a member (its channel is in its socket).
struct Secured {
    /// The join request of message 3, or why it is not one.
    request: Result<JoinRequest, HandshakeError>,
    /// The device's static key, proven by the handshake.
    device_key: StaticPublic,
}

/// How a rejoining device proves it is the device it names.
enum DeviceProof<'a> {
    /// The handshake proved the static key; it must be the stored one.
    StaticKey,
    /// The bearer key of an earlier version (accepted while no static key is stored).
    BearerKey(&'a str),
}

/// Result of a successful handshake.
struct Admitted {
    peer: Peer,
    /// The invite used, after an invite join (a new device).
    invite_id: Option<String>,
}

/// What every member session of the host shares: the mesh identity and its handshake keys,
/// the store, the hub, the join rate limit, the tunables and the counters.
pub struct Sessions {
    keys: HostKeys,
    mesh_name: String,
    store: Store,
    hub: Arc<Hub>,
    join_limiter: JoinRateLimiter,
    cfg: SessionConfig,
    metrics: Arc<HostMetrics>,
    /// The direct path's UDP socket and context (`serve --udp-port` ≠ 0).
    direct: Option<HostDirect>,
    /// STUN servers handed to members in `joined` (the relay's first).
    stun_servers: Vec<String>,
}

/// The direct-path part of [`Sessions`]: the host's WebRTC peer (if any) and the STUN
/// servers members are told.
#[derive(Clone, Default)]
pub struct DirectConfig {
    pub direct: Option<HostDirect>,
    pub stun_servers: Vec<String>,
}

impl Sessions {
    /// The sessions of the mesh whose handshake keys are `keys` (`mesh_name` is its display
    /// name).
    pub fn new(
        keys: HostKeys,
        mesh_name: String,
        store: Store,
        hub: Arc<Hub>,
        cfg: SessionConfig,
        metrics: Arc<HostMetrics>,
        direct: DirectConfig,
    ) -> Arc<Sessions> {
        Arc::new(Sessions {
            keys,
            mesh_name,
            store,
            hub,
            join_limiter: JoinRateLimiter::new(cfg.failure_limit, cfg.failure_window),
            cfg,
            metrics,
            direct: direct.direct,
            stun_servers: direct.stun_servers,
        })
    }

    /// Runs one member session to its end. Never panics on member input.
    pub async fn serve_member(self: Arc<Self>, sock: FrameSocket, source: Source) {
        let mut sock = MeshSocket::new(sock);
        let join = match self.secure(&mut sock).await {
            Ok(join) => join,
            Err(None) => {
                debug!(addr = %source.addr, "socket closed during the handshake");
                return;
            }
            Err(Some(r)) => {
                self.refuse(&mut sock, &source, r).await;
                return;
            }
        };
        match self.authenticate(join, &source).await {
            Ok(admitted) => self.live(sock, source, admitted).await,
            Err(r) => self.refuse(&mut sock, &source, r).await,
        }
    }

    /// Refuses a socket before its handshake (e.g. too many connections from its address),
    /// through the same path as any refusal: the member gets a (plaintext, unauthenticated)
    /// error frame its client shows, and the refusal is logged and counted.
    pub async fn turn_away(
        &self,
        sock: FrameSocket,
        source: &Source,
        code: ErrorCode,
        message: String,
    ) {
        let mut sock = MeshSocket::new(sock);
        self.refuse(&mut sock, source, HandshakeRefusal::new(code, message))
            .await;
    }

    /// Sends the error frame (sealed once the channel exists), logs the refusal, counts
    /// it, closes the socket.
    async fn refuse(&self, sock: &mut MeshSocket, source: &Source, r: HandshakeRefusal) {
        let blocked_now = r.credential_failure
            && self
                .join_limiter
                .record_failure(&source.rate_key, Instant::now());
        if r.code == ErrorCode::RateLimited || blocked_now {
            warn!(addr = %source.addr, code = %r.code, reason = %printable(&r.message),
                "join refused; source is rate limited after repeated failed credentials");
        } else {
            info!(addr = %source.addr, code = %r.code, reason = %printable(&r.message), "join refused");
        }
        self.metrics.refusal(r.code);
        let msg = ServerMsg::Error {
            code: r.code,
            message: r.message,
        };
        let _ = timeout(self.cfg.write_timeout, async {
            let _ = sock.send_msg(&msg).await;
            sock.close(close_code_for(r.code), r.code.as_str()).await;
        })
        .await;
    }

    /// Step 1: the Noise handshake, within the handshake deadline. Returns the member's
    /// join request and proven static key (the channel is now in `sock`), or why not
    /// (`Err(None)`: the socket went away without a word).
    async fn secure(&self, sock: &mut MeshSocket) -> Result<Secured, Option<HandshakeRefusal>> {
        match timeout(self.cfg.handshake_timeout, self.noise(sock)).await {
            Ok(r) => r,
            Err(_) => Err(Some(HandshakeRefusal::new(
                ErrorCode::Timeout,
                format!(
                    "no complete handshake within {} ms",
                    self.cfg.handshake_timeout.as_millis()
                ),
            ))),
        }
    }

    /// Message 1 in, message 2 out, message 3 in; the channel goes into `sock`.
    async fn noise(&self, sock: &mut MeshSocket) -> Result<Secured, Option<HandshakeRefusal>> {
        let bad =
            |e: HandshakeError| Some(HandshakeRefusal::new(ErrorCode::BadRequest, e.to_string()));
        let msg1 = self.handshake_message(sock).await?;
        let hs = HostHandshake::new(&self.keys, Entropy::new(rand::random()));
        let (hs, msg2) = hs.read_client_hello(&msg1).map_err(bad)?;
        if sock.send_handshake_message(msg2).await.is_err() {
            return Err(None);
        }
        let msg3 = self.handshake_message(sock).await?;
        let HostJoin {
            request,
            device_key,
            channel,
        } = hs.read_join(&msg3).map_err(bad)?;
        sock.secure(channel);
        Ok(Secured {
            request,
            device_key,
        })
    }

    /// The next handshake message, or why not.
    async fn handshake_message(
        &self,
        sock: &mut MeshSocket,
    ) -> Result<Vec<u8>, Option<HandshakeRefusal>> {
        match sock.handshake_message().await {
            Ok(Some(m)) => Ok(m),
            Ok(None) => Err(None),
            Err(v) => Err(Some(v.into())),
        }
    }

    /// Step 2: checks the join request against the database and admits the member, or
    /// says why not (through the channel).
    async fn authenticate(
        &self,
        join: Secured,
        source: &Source,
    ) -> Result<Admitted, HandshakeRefusal> {
        let request = join
            .request
            .map_err(|e| HandshakeRefusal::new(ErrorCode::BadRequest, e.to_string()))?;
        let blocked = self
            .join_limiter
            .is_blocked(&source.rate_key, Instant::now());
        let path = source.path(request.path);
        let device_key = join.device_key;
        let admitted = match request.proof {
            JoinProof::Invite { token, device } => {
                self.redeem_invite(&token, device, path, blocked, &device_key)
                    .await
            }
            JoinProof::Device { device_id } => {
                self.authenticate_device(&device_id, DeviceProof::StaticKey, &device_key, path)
                    .await
            }
            JoinProof::DeviceKey {
                device_id,
                device_key: bearer,
            } => {
                self.authenticate_device(
                    &device_id,
                    DeviceProof::BearerKey(&bearer),
                    &device_key,
                    path,
                )
                .await
            }
        };
        admitted.map_err(|r| apply_rate_limit(r, blocked))
    }

    /// Step 2 of an invite join: checks the token's form, then redeems one use of its invite
    /// and stores the new device in one transaction. The member is admitted only after
    /// that commit, so a `joined` answer always means the membership is on disk. From a
    /// `blocked` source an unknown token is turned away by a read before any write
    /// transaction.
    async fn redeem_invite(
        &self,
        token: &str,
        device: DeviceInfo,
        path: PathKind,
        blocked: bool,
        static_key: &StaticPublic,
    ) -> Result<Admitted, HandshakeRefusal> {
        let token = parse_token(token)?;
        if blocked && !self.invite_known(&token).await? {
            return Err(unknown_token());
        }
        let new = new_device(&device, path, static_key);
        let redeemed = self.store_redemption(&token, &new).await?;
        Ok(Admitted {
            peer: Peer {
                device_id: redeemed.device_id,
                name: new.name,
                platform: new.platform,
                path,
            },
            invite_id: redeemed.new_device.then_some(redeemed.invite_id),
        })
    }

    /// Whether an invite has this token (a read only; its state is checked on redemption).
    async fn invite_known(&self, token: &Token) -> Result<bool, HandshakeRefusal> {
        let hash = token.hash_hex();
        self.store
            .call(move |c| store::invite_known(c, &hash))
            .await
            .map_err(|e| {
                warn!(error = %e, "database error while looking an invite up");
                HandshakeRefusal::new(
                    ErrorCode::Internal,
                    "the host could not check the invite; try again",
                )
            })
    }

    /// The store step of a token join: one use of the invite and the new device, atomically
    /// (or, for a device key that redeemed this invite before, that device again).
    async fn store_redemption(
        &self,
        token: &Token,
        new: &NewDevice,
    ) -> Result<Redemption, HandshakeRefusal> {
        let hash = token.hash_hex();
        let now = now_secs();
        let dev = new.clone();
        let res = self
            .store
            .call(move |c| store::redeem_invite(c, &hash, now, &dev))
            .await
            .map_err(|e| {
                warn!(error = %e, "database error while redeeming an invite");
                HandshakeRefusal::new(
                    ErrorCode::Internal,
                    "the host could not store the membership; try again",
                )
            })?;
        res.map_err(|e| match e {
            RedeemError::Unknown => unknown_token(),
            RedeemError::Revoked => HandshakeRefusal::credential(
                ErrorCode::TokenRevoked,
                "this invite was revoked by the host",
            ),
            RedeemError::Expired => HandshakeRefusal::credential(
                ErrorCode::TokenExpired,
                "this invite has expired; ask for a new one",
            ),
            RedeemError::Exhausted => HandshakeRefusal::credential(
                ErrorCode::TokenExhausted,
                "this invite has already been used up",
            ),
        })
    }

    /// Step 2 of a rejoin: checks that the device exists and that its proof matches what
    /// is stored (in constant time), and records the visit. A device of an earlier version
    /// proving its bearer key gets the handshake's static key stored in its place, so the
    /// bearer key retires with its first rejoin.
    async fn authenticate_device(
        &self,
        id: &str,
        proof: DeviceProof<'_>,
        static_key: &StaticPublic,
        path: PathKind,
    ) -> Result<Admitted, HandshakeRefusal> {
        let unknown = || {
            HandshakeRefusal::credential(
                ErrorCode::UnknownDevice,
                "this device is not a member of the mesh (unknown id or wrong key)",
            )
        };
        let bearer_hash = match proof {
            DeviceProof::StaticKey => None,
            DeviceProof::BearerKey(key) if key.len() <= 128 => Some(sha256_hex(key)),
            DeviceProof::BearerKey(_) => return Err(unknown()),
        };
        if id.len() > 64 {
            return Err(unknown());
        }
        let id_owned = id.to_string();
        let path_s = path.as_str().to_string();
        let static_key = static_key.to_string();
        let row = self
            .store
            .call(move |c| {
                let Some(row) = store::get_device(c, &id_owned)? else {
                    return Ok(None);
                };
                let proven = match (&bearer_hash, &row.static_key, &row.key_hash) {
                    (None, Some(stored), _) => {
                        constant_time_eq(stored.as_bytes(), static_key.as_bytes())
                    }
                    (Some(presented), None, Some(stored)) => {
                        constant_time_eq(stored.as_bytes(), presented.as_bytes())
                            && store::upgrade_device_key(c, &id_owned, &static_key)?
                    }
                    _ => false,
                };
                if !proven {
                    return Ok(None);
                }
                store::touch_device(c, &id_owned, now_secs(), &path_s)?;
                Ok(Some(row))
            })
            .await
            .map_err(|e| {
                warn!(error = %e, "database error while checking a device");
                HandshakeRefusal::new(
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
            invite_id: None,
        })
    }

    /// Step 4: puts the member into presence (the others get `peer_joined`), counts and
    /// announces the join. Returns its place in the hub and the peers already online.
    fn admit(&self, a: &Admitted, source: &Source) -> (Membership, Vec<Peer>) {
        let me = &a.peer;
        let (membership, peers) = self.hub.enter(me.clone());
        self.metrics.joined(me.path);
        info!(device_id = %me.device_id, name = %printable(&me.name), platform = %printable(&me.platform), path = %me.path,
            addr = %source.addr, new_device = a.invite_id.is_some(), "member joined");
        if let Some(inv) = &a.invite_id {
            self.hub.emit(MeshEvent::InviteUsed {
                invite_id: inv.clone(),
                device_id: me.device_id.clone(),
            });
        }
        self.hub.emit(MeshEvent::DeviceJoined {
            device_id: me.device_id.clone(),
            name: me.name.clone(),
            platform: me.platform.clone(),
            path: me.path,
            new_device: a.invite_id.is_some(),
        });
        (membership, peers)
    }

    /// The live part of a session, after its handshake: admit, answer `joined` and the
    /// `peers` pages, run the frame loop, leave.
    async fn live(&self, mut sock: MeshSocket, source: Source, a: Admitted) {
        let mut me = a.peer.clone();
        let (mut membership, peers) = self.admit(&a, &source);
        let reason = match self.greet(&mut sock, &me, peers).await {
            Err(r) => r,
            Ok(()) => {
                let mut paths = self.direct.clone().map(SessionPaths::host);
                if let Some(p) = &mut paths {
                    p.joined(me.path);
                }
                let presence = membership.path_handle();
                let mut live = Live {
                    sock: &mut sock,
                    me: &mut me,
                    paths,
                    presence,
                };
                self.run_live(&mut live, &mut membership.outbox, &membership.kick)
                    .await
            }
        };
        self.leave(sock, &me, &source, membership, reason).await;
    }

    /// Step 5: `joined`, then the presence snapshot in pages.
    async fn greet(
        &self,
        sock: &mut MeshSocket,
        me: &Peer,
        peers: Vec<Peer>,
    ) -> Result<(), String> {
        let joined = ServerMsg::Joined(Joined {
            mesh_id: self.keys.mesh_id().to_string(),
            mesh_name: self.mesh_name.clone(),
            device_id: me.device_id.clone(),
            direct: self.direct.is_some(),
            stun_servers: self.stun_servers.clone(),
        });
        self.send(sock, &joined).await?;
        for page in peer_pages(peers) {
            self.send(sock, &page).await?;
        }
        Ok(())
    }

    /// The end of a session: drops it from presence unless a newer session of this device
    /// already took over, stores `last_seen`, announces it and closes the socket.
    async fn leave(
        &self,
        mut sock: MeshSocket,
        me: &Peer,
        source: &Source,
        membership: Membership,
        reason: String,
    ) {
        let was_current = membership.leave();
        let id = me.device_id.clone();
        let path_s = me.path.as_str().to_string();
        if let Err(e) = self
            .store
            .call(move |c| store::touch_device(c, &id, now_secs(), &path_s))
            .await
        {
            warn!(error = %e, "could not record last_seen");
        }
        info!(device_id = %me.device_id, name = %printable(&me.name), path = %me.path, addr = %source.addr,
            reason = %printable(&reason), "member left");
        if was_current {
            self.hub.emit(MeshEvent::DeviceLeft {
                device_id: me.device_id.clone(),
                reason,
            });
        }
        let _ = timeout(
            Duration::from_secs(2),
            sock.close(close_code::NORMAL, "bye"),
        )
        .await;
    }

    /// The frame loop of a live session; returns why it ended.
    async fn run_live(&self, live: &mut Live<'_>, outbox: &mut Outbox, kick: &Kick) -> String {
        let mut ping = tokio::time::interval(self.cfg.ping_interval);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ping.tick().await; // the first tick is immediate
        let mut last_rx = Instant::now();
        loop {
            let idle_deadline = last_rx + self.cfg.idle_timeout;
            let backlogged = live.sock.backlogged();
            tokio::select! {
                m = live.sock.recv() => {
                    last_rx = Instant::now();
                    if let Some(end) = self.on_incoming(live, m).await {
                        return end;
                    }
                    if let Err(r) = self.ack_if_urgent(live).await {
                        return r;
                    }
                }
                input = next_path(&mut live.paths) => {
                    if let PathInput::Frame(frame) = input {
                        last_rx = Instant::now();
                        let m = live.sock.open_frame(&frame);
                        if let Some(end) = self.on_incoming(live, m).await {
                            return end;
                        }
                        if let Err(r) = self.ack_if_urgent(live).await {
                            return r;
                        }
                    }
                    if let Err(r) = self.apply_paths(live).await {
                        return r;
                    }
                }
                // Flow control: nothing new while the resend buffer is half full.
                out = outbox.recv(), if !backlogged => {
                    let Some(text) = out else {
                        // The hub let go of this member's queue: it was kicked (removed,
                        // replaced), and the kick says how to end.
                        return match kick.reason() {
                            Some(why) => self.kicked(live.sock, why).await,
                            None => "dropped".into(),
                        };
                    };
                    // A burst (presence while many join) goes out with one flush.
                    let mut burst = vec![text];
                    burst.extend(outbox.ready(MAX_BURST));
                    // A member whose socket is full blocks here; a kick (queue overflow)
                    // must still end it at once rather than after the write timeout.
                    tokio::select! {
                        r = self.bounded(live.sock.send_all_json(&burst)) => if let Err(r) = r { return r },
                        why = kick.kicked() => return self.kicked(live.sock, why).await,
                    }
                    if let Err(r) = self.resync(live.sock, live.me, outbox).await {
                        return r;
                    }
                }
                why = kick.kicked() => return self.kicked(live.sock, why).await,
                _ = ping.tick() => {
                    if let Err(r) = self.bounded(live.sock.ping()).await {
                        return r;
                    }
                }
                _ = tokio::time::sleep_until(idle_deadline) => {
                    return format!("idle for {} s (no frame or pong)", self.cfg.idle_timeout.as_secs());
                }
            }
        }
    }

    /// One message from the member, from either path; `Some` is why the session ends.
    async fn on_incoming(
        &self,
        live: &mut Live<'_>,
        m: Result<Incoming, RecvFailure>,
    ) -> Option<String> {
        match m {
            Ok(Incoming::Closed) => Some("member closed the connection".into()),
            Ok(Incoming::Keepalive) => None,
            Ok(Incoming::Msg(ClientMsg::Send { to, body })) => {
                self.hub.deliver(live.me, to.as_deref(), body).await;
                None
            }
            Ok(Incoming::Msg(ClientMsg::RtcOffer { attempt, sdp })) => {
                self.answer_offer(live, attempt, &sdp).await.err()
            }
            Err(RecvFailure::Broken(e)) => Some(format!("connection error: {e}")),
            Err(RecvFailure::Violation(v)) => Some(self.protocol_error(live.sock, v).await),
        }
    }

    /// Answers a direct-path offer: `rtc_answer` when this host has a UDP socket and the
    /// offer is usable, else `rtc_unavailable` saying why (the session stays on its path).
    async fn answer_offer(
        &self,
        live: &mut Live<'_>,
        attempt: u32,
        sdp: &str,
    ) -> Result<(), String> {
        let Some(paths) = &mut live.paths else {
            return self.decline_offer(live.sock, attempt, sdp).await;
        };
        let answer = paths.answer(attempt, sdp).await;
        if let ServerMsg::RtcUnavailable { reason, .. } = &answer {
            info!(device_id = %live.me.device_id, attempt, reason = %printable(reason), "direct path declined");
        }
        self.apply_paths(live).await?;
        self.send(live.sock, &answer).await
    }

    /// Runs the upgrade policy's actions and reports its steps: a path change goes to the
    /// log, to presence (the device list) and to `/api/events`.
    /// Flow control: an ack at once after many frames from the member.
    async fn ack_if_urgent(&self, live: &mut Live<'_>) -> Result<(), String> {
        match &mut live.paths {
            Some(paths) => paths.ack_if_urgent(live.sock).await,
            None => Ok(()),
        }
    }

    async fn apply_paths(&self, live: &mut Live<'_>) -> Result<(), String> {
        let Some(paths) = &mut live.paths else {
            return Ok(());
        };
        for ev in paths.apply(live.sock).await? {
            let line = ev.describe();
            match ev {
                UpgradeEvent::PathChanged {
                    from,
                    to,
                    after_ms,
                    reason,
                } => {
                    info!(device_id = %live.me.device_id, name = %printable(&live.me.name),
                        "member path: {}", printable(&line));
                    live.me.path = to;
                    live.presence.set(to);
                    self.hub.emit(MeshEvent::PathChanged {
                        device_id: live.me.device_id.clone(),
                        from,
                        to,
                        after_ms,
                        reason,
                    });
                }
                UpgradeEvent::DirectUnavailable { .. } => {
                    info!(device_id = %live.me.device_id, "direct path not opened: {}", printable(&line));
                }
            }
        }
        Ok(())
    }

    /// A direct path was offered but this host has no UDP socket (`--udp-port 0`): it
    /// answers `rtc_unavailable` (a bad offer says what is wrong with it) and the session
    /// stays on its path.
    async fn decline_offer(
        &self,
        sock: &mut MeshSocket,
        attempt: u32,
        sdp: &str,
    ) -> Result<(), String> {
        let reason = match check_sdp(attempt, sdp) {
            Err(e) => e.to_string(),
            Ok(()) => "this host has no UDP socket for direct connections".to_string(),
        };
        info!(attempt, reason = %printable(&reason), "direct path declined");
        self.send(sock, &ServerMsg::RtcUnavailable { attempt, reason })
            .await
    }

    /// A member that missed presence changes (its queue was full) gets what is still
    /// queued, then a fresh snapshot in `peers` pages.
    async fn resync(
        &self,
        sock: &mut MeshSocket,
        me: &Peer,
        outbox: &mut Outbox,
    ) -> Result<(), String> {
        let Some((queued, peers)) = self.hub.resync(&me.device_id, outbox) else {
            return Ok(());
        };
        debug!(device_id = %me.device_id, "member missed presence changes; sending a new snapshot");
        self.bounded(sock.send_all_json(&queued)).await?;
        for page in peer_pages(peers) {
            self.send(sock, &page).await?;
        }
        Ok(())
    }

    /// Ends a kicked session: a removed device is told `device_removed` (and the socket
    /// closed) first. Returns the leave reason.
    async fn kicked(&self, sock: &mut MeshSocket, why: Kicked) -> String {
        let Some(code) = why.error else {
            return why.reason.to_string();
        };
        self.protocol_error(
            sock,
            Violation::new(code, "this device was removed from the mesh by its host"),
        )
        .await
    }

    /// Sends an error frame for a protocol violation and returns the leave reason.
    async fn protocol_error(&self, sock: &mut MeshSocket, v: Violation) -> String {
        let Violation { code, message } = v;
        self.metrics.refusal(code);
        let reason = format!("{code}: {message}");
        let _ = self.send(sock, &ServerMsg::Error { code, message }).await;
        let _ = timeout(
            self.cfg.write_timeout,
            sock.close(close_code_for(code), code.as_str()),
        )
        .await;
        reason
    }

    async fn send(&self, sock: &mut MeshSocket, msg: &ServerMsg) -> Result<(), String> {
        self.bounded(sock.send_msg(msg)).await
    }

    /// One write within the write timeout; `Err` is the leave reason.
    async fn bounded(
        &self,
        write: impl std::future::Future<Output = Result<(), crate::ws::SendError>>,
    ) -> Result<(), String> {
        match timeout(self.cfg.write_timeout, write).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(format!("write failed: {e}")),
            Err(_) => Err(format!(
                "write stalled for {} s",
                self.cfg.write_timeout.as_secs()
            )),
        }
    }
}

/// A live session's socket, member, paths and place in presence.
struct Live<'a> {
    sock: &'a mut MeshSocket,
    me: &'a mut Peer,
    paths: Option<SessionPaths>,
    presence: PathHandle,
}

/// The next input of the session's direct side (pending forever without one).
async fn next_path(paths: &mut Option<SessionPaths>) -> PathInput {
    match paths {
        Some(p) => p.next().await,
        None => std::future::pending().await,
    }
}

/// The WebSocket close code that goes with an error frame: "message too big" for
/// `too_large`, "policy violation" for everything else.
fn close_code_for(code: ErrorCode) -> u16 {
    if code == ErrorCode::TooLarge {
        close_code::TOO_BIG
    } else {
        close_code::POLICY
    }
}

/// Step 3: a wrong credential from a source that has used up its failed attempts is
/// answered `rate_limited` (and not counted again); every other answer stands, so a valid
/// credential is never refused for what others from the same address did.
fn apply_rate_limit(r: HandshakeRefusal, blocked: bool) -> HandshakeRefusal {
    if blocked && r.credential_failure {
        HandshakeRefusal::new(
            ErrorCode::RateLimited,
            "too many failed join attempts from this address; wait a minute and try again",
        )
    } else {
        r
    }
}

/// The refusal of a token no invite has.
fn unknown_token() -> HandshakeRefusal {
    HandshakeRefusal::credential(
        ErrorCode::InvalidToken,
        "this invite token is not known to the host",
    )
}

/// The invite token of a join, or `invalid_token` (a credential failure).
fn parse_token(token: &str) -> Result<Token, HandshakeRefusal> {
    if token.len() > 256 {
        return Err(HandshakeRefusal::credential(
            ErrorCode::InvalidToken,
            "that is not an invite token",
        ));
    }
    Token::parse(token).map_err(|e| {
        HandshakeRefusal::credential(
            ErrorCode::InvalidToken,
            format!("that is not an invite token: {e}"),
        )
    })
}

/// The device an invite join creates, with the static key its handshake proved.
fn new_device(device: &DeviceInfo, path: PathKind, static_key: &StaticPublic) -> NewDevice {
    NewDevice {
        id: random_hex(8),
        name: clean_text(&device.name, 64).unwrap_or_else(|| "Unnamed device".into()),
        platform: clean_text(&device.platform, 32).unwrap_or_else(|| "unknown".into()),
        static_key: static_key.to_string(),
        joined_at: now_secs(),
        path: path.as_str().to_string(),
    }
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

#[cfg(test)]
mod tests {
    use super::*;

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
    fn direct_sources_are_bucketed_by_address() {
        let a: SocketAddr = "[2001:db8:0:1::7]:5000".parse().unwrap();
        let b: SocketAddr = "[2001:db8:0:1:ffff::9]:5001".parse().unwrap();
        assert_eq!(Source::direct(a).rate_key, Source::direct(b).rate_key);
        let v4: SocketAddr = "192.0.2.7:1".parse().unwrap();
        assert_eq!(Source::direct(v4).rate_key, "192.0.2.7");
    }

    #[test]
    fn relayed_members_are_on_the_relay_path_whatever_they_report() {
        let relayed = Source::relay("198.51.100.4");
        assert_eq!(relayed.path(PathKind::Local), PathKind::Relay);
        let direct = Source::direct("192.0.2.7:1".parse().unwrap());
        assert_eq!(direct.path(PathKind::Public), PathKind::Public);
    }

    #[test]
    fn token_form_failures_count_as_credential_failures() {
        let r = parse_token(&"A".repeat(300)).err().unwrap();
        assert!(r.credential_failure);
        assert_eq!(r.code, ErrorCode::InvalidToken);
        assert!(parse_token("not a token").err().unwrap().credential_failure);
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
