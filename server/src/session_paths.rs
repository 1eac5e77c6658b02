//! A mesh session's paths and which one carries it: the WebSocket it joined on (the relay)
//! and, once the upgrade policy ([`atmosphere_shared::upgrade`]) opened one, a WebRTC
//! DataChannel ([`crate::rtc`]). One implementation for both ends: the host's sessions
//! answer offers ([`SessionPaths::host`]), the native `join` makes them
//! ([`SessionPaths::client`]).
//!
//! The two WebSocket types differ (the host's [`crate::ws::FrameSocket`] over axum or
//! tungstenite, the CLI's bare tungstenite stream), so each socket implements the three
//! things this module needs of it ([`PathSocket`]: its channel, sending sealed frames on the
//! WebSocket, where sealed frames go) and everything else is here:
//!
//! - the [`Upgrade`] machine on a monotonic clock whose origin is this value's creation;
//! - the current attempt's [`DirectChannel`]: its inbound messages are channel frames
//!   ([`PathInput::Frame`], opened by the socket's channel exactly like WebSocket frames, so
//!   the reorder buffer merges the two streams), pings (answered with a pong) and pongs;
//! - executing the policy's [`Action`]s ([`SessionPaths::apply`]): resend on, start or
//!   cancel an attempt, move onto the DataChannel (the host first sends `direct`, sealed,
//!   on it), fall back (route to the WebSocket, resend every unacked frame there), pings and
//!   pure acks;
//! - the host's verdict on an open channel's kind ([`classify_direct`] from its LAN subnets,
//!   the client's candidates in the offer and the host's NAT).
//!
//! The relay WebSocket stays open the whole time (the standby, see the policy), and frames
//! from it are opened as before: nothing here reads it.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use atmosphere_shared::channel::{SecureChannel, MIN_FRAME_BYTES};
use atmosphere_shared::path::PathKind;
use atmosphere_shared::upgrade::{
    classify_direct, Action, CandidateKind, DirectPair, HostNat, Policy, Role, Subnet, Upgrade,
    UpgradeEvent, PING, PONG,
};
use atmosphere_shared::wire::{check_sdp, ServerMsg};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::debug;

use crate::rtc::{ClientPeer, DirectChannel, DirectEvent, DirectPath, DirectSender, HostPeer};
use crate::rtc::{RtcConfig, RtcError};

/// How long an offer waits for the host's first NAT check (its reflexive candidate is what
/// makes a hole punch possible).
const NAT_CHECK_WAIT: Duration = Duration::from_secs(4);

/// What [`SessionPaths`] needs of a session's socket.
pub trait PathSocket {
    /// Flow control, sending side: true while the frames kept for a resend fill half their
    /// bound; the session takes no new input until acks make room.
    fn backlogged(&mut self) -> bool {
        self.channel().is_some_and(|c| c.resend_backlogged())
    }
    /// The session's secure channel (`None` only before the handshake).
    fn channel(&mut self) -> Option<&mut SecureChannel>;
    /// Sends already sealed frames on the WebSocket, in order.
    fn send_on_websocket(
        &mut self,
        frames: Vec<Vec<u8>>,
    ) -> impl Future<Output = Result<(), String>> + Send;
    /// Where the socket sends the frames it seals from now on: the DataChannel, or (`None`)
    /// the WebSocket. A frame the DataChannel refuses is dropped: it stays in the resend
    /// buffer, and the fallback that follows a dead channel resends it.
    fn route_to(&mut self, direct: Option<DirectSender>);
}

/// The host's direct-path context, shared by its sessions.
#[derive(Clone)]
pub struct HostDirect {
    /// The UDP socket every session's peer connection runs on.
    pub peer: Arc<HostPeer>,
    /// The host's LAN subnets (a client inside one is on the `local` path).
    pub subnets: Arc<Vec<Subnet>>,
    /// True once the first NAT check finished (answers wait for it, briefly).
    pub nat_checked: watch::Receiver<bool>,
}

/// The native client's direct-path context.
#[derive(Debug, Clone)]
pub struct ClientDirect {
    /// Its UDP socket's bind address and host candidates.
    pub config: RtcConfig,
    /// STUN servers from `joined` (the relay's first).
    pub stun_servers: Vec<String>,
}

/// What [`SessionPaths::next`] saw. After each, call [`SessionPaths::apply`].
pub enum PathInput {
    /// A channel frame arrived on the DataChannel: open it like a WebSocket frame.
    Frame(Vec<u8>),
    /// Client: the offer of `attempt` is ready; send `rtc_offer`, then
    /// [`SessionPaths::offer_sent`].
    Offer { attempt: u32, sdp: String },
    /// Something only the policy needed to know (a timer, a ping, an open or closed channel).
    Tick,
}

struct Attempt {
    number: u32,
    channel: DirectChannel,
    /// Host: the client's host candidates from its offer (to tell `local` apart).
    client_hosts: Vec<SocketAddr>,
}

/// A client's gathering task: its peer and offer, once STUN answered (or timed out).
type Gathering = JoinHandle<Result<(ClientPeer, String), RtcError>>;

enum Side {
    Host {
        ctx: HostDirect,
        last_offer: u32,
    },
    Client {
        ctx: ClientDirect,
        gathering: Option<(u32, Gathering)>,
        offered: Option<(u32, Box<ClientPeer>)>,
    },
}

/// See the module doc.
pub struct SessionPaths {
    side: Side,
    upgrade: Upgrade,
    origin: Instant,
    attempt: Option<Attempt>,
    /// The attempt whose DataChannel carries the session's frames.
    on_direct: Option<u32>,
    pong_due: bool,
}

impl SessionPaths {
    /// A host session's paths (it answers offers).
    pub fn host(ctx: HostDirect) -> SessionPaths {
        SessionPaths::new(
            Side::Host { ctx, last_offer: 0 },
            Role::Answerer,
            Policy::default(),
        )
    }

    /// A native client's paths (it offers).
    pub fn client(ctx: ClientDirect, policy: Policy) -> SessionPaths {
        SessionPaths::new(
            Side::Client {
                ctx,
                gathering: None,
                offered: None,
            },
            Role::Offerer,
            policy,
        )
    }

    fn new(side: Side, role: Role, policy: Policy) -> SessionPaths {
        SessionPaths {
            side,
            upgrade: Upgrade::new(role, policy, rand::random()),
            origin: Instant::now(),
            attempt: None,
            on_direct: None,
            pong_due: false,
        }
    }

    fn now_ms(&self) -> u64 {
        self.origin.elapsed().as_millis() as u64
    }

    /// The session joined on `path` (only `relay` starts the upgrade).
    pub fn joined(&mut self, path: PathKind) {
        let now = self.now_ms();
        self.upgrade.handle_joined(path, now);
    }

    /// The path the session sends on now (`None` on a direct WebSocket).
    pub fn current_path(&self) -> Option<PathKind> {
        self.upgrade.current_path()
    }

    /// The next thing that happened on the direct side. Cancel-safe.
    pub async fn next(&mut self) -> PathInput {
        let deadline = self
            .upgrade
            .poll_timeout()
            .map(|ms| self.origin + Duration::from_millis(ms));
        // Biased, events first: after the session was busy (a long send on a full
        // DataChannel), what arrived meanwhile must count as inbound before the liveness
        // timer is judged, or a busy but healthy direct path is declared dead.
        tokio::select! {
            biased;
            ev = next_event(&mut self.attempt) => self.on_event(ev),
            done = gathered(&mut self.side) => self.on_gathered(done),
            _ = sleep_until(deadline) => {
                let now = self.now_ms();
                self.upgrade.handle_timeout(now);
                PathInput::Tick
            }
        }
    }

    fn on_event(&mut self, (number, ev): (u32, Option<DirectEvent>)) -> PathInput {
        let now = self.now_ms();
        match ev {
            Some(DirectEvent::Open(path)) => {
                debug!(attempt = number, local = %path.local, remote = %path.remote, "DataChannel open");
                if let Some(kind) = self.host_kind(path) {
                    self.upgrade.handle_open(number, kind, now);
                }
            }
            Some(DirectEvent::PathChanged(path)) => {
                debug!(attempt = number, local = %path.local, remote = %path.remote, "direct path moved");
            }
            Some(DirectEvent::Message(m)) => {
                self.upgrade.handle_inbound_direct(number, now);
                if m.len() >= MIN_FRAME_BYTES {
                    return PathInput::Frame(m);
                }
                if m.first() == Some(&PING) {
                    self.pong_due = true;
                } else if m.first() != Some(&PONG) {
                    debug!(
                        len = m.len(),
                        "ignoring a DataChannel message too short to be a frame"
                    );
                }
            }
            Some(DirectEvent::Closed(reason)) => {
                self.attempt = None;
                self.upgrade.handle_closed(number, &reason.to_string(), now);
            }
            None => {
                self.attempt = None;
                self.upgrade
                    .handle_closed(number, "the DataChannel went away", now);
            }
        }
        PathInput::Tick
    }

    /// Host: the kind of an open DataChannel (see the module doc). `None` on the client.
    fn host_kind(&self, path: DirectPath) -> Option<PathKind> {
        let Side::Host { ctx, .. } = &self.side else {
            return None;
        };
        let client_hosts = self
            .attempt
            .as_ref()
            .map(|a| a.client_hosts.as_slice())
            .unwrap_or_default();
        Some(direct_kind(
            path,
            client_hosts,
            &ctx.subnets,
            ctx.peer.nat().host_nat(),
        ))
    }

    fn on_gathered(
        &mut self,
        (number, done): (u32, Result<(ClientPeer, String), String>),
    ) -> PathInput {
        let now = self.now_ms();
        match done {
            Ok((peer, sdp)) => {
                debug!(attempt = number, since_joined_ms = now, "offer ready");
                if let Side::Client { offered, .. } = &mut self.side {
                    *offered = Some((number, Box::new(peer)));
                }
                PathInput::Offer {
                    attempt: number,
                    sdp,
                }
            }
            Err(why) => {
                self.upgrade.handle_closed(number, &why, now);
                PathInput::Tick
            }
        }
    }

    /// Client: the offer of `attempt` went out.
    pub fn offer_sent(&mut self, attempt: u32) {
        let now = self.now_ms();
        self.upgrade.handle_offer_sent(attempt, now);
    }

    /// Client: the host's `rtc_answer`.
    pub async fn answered(&mut self, attempt: u32, sdp: &str, nat: HostNat) {
        let now = self.now_ms();
        self.upgrade.handle_answer(attempt, nat, now);
        let Side::Client { offered, .. } = &mut self.side else {
            return;
        };
        let Some((number, peer)) = offered.take_if(|(n, _)| *n == attempt) else {
            return;
        };
        match peer.accept_answer(sdp).await {
            Ok(channel) => {
                self.attempt = Some(Attempt {
                    number,
                    channel,
                    client_hosts: Vec::new(),
                })
            }
            Err(e) => {
                let now = self.now_ms();
                self.upgrade
                    .handle_closed(number, &format!("the host's answer: {e}"), now)
            }
        }
    }

    /// Client: the host's `rtc_unavailable`.
    pub fn unavailable(&mut self, attempt: u32, reason: &str) {
        let now = self.now_ms();
        self.upgrade.handle_unavailable(attempt, reason, now);
    }

    /// Client: the host's `direct` arrived (on the DataChannel of `attempt`).
    pub fn direct(&mut self, attempt: u32, kind: PathKind) {
        let now = self.now_ms();
        if self.attempt.as_ref().is_some_and(|a| a.number == attempt) {
            self.upgrade.handle_open(attempt, kind, now);
        }
    }

    /// Host: answers offer `attempt`: `rtc_answer` with a new peer connection, or
    /// `rtc_unavailable` saying why not.
    pub async fn answer(&mut self, attempt: u32, sdp: &str) -> ServerMsg {
        let unavailable = |reason: String| ServerMsg::RtcUnavailable { attempt, reason };
        let Side::Host { ctx, last_offer } = &mut self.side else {
            return unavailable("only the host answers offers".into());
        };
        if let Err(e) = check_sdp(attempt, sdp) {
            return unavailable(e.to_string());
        }
        if attempt <= *last_offer {
            return unavailable(format!(
                "offer {attempt} is not newer than offer {last_offer}"
            ));
        }
        *last_offer = attempt;
        let mut checked = ctx.nat_checked.clone();
        let _ = tokio::time::timeout(NAT_CHECK_WAIT, checked.wait_for(|done| *done)).await;
        let peer = ctx.peer.clone();
        let (answer, channel) = match peer.accept(sdp).await {
            Ok(ok) => ok,
            Err(e) => return unavailable(e.to_string()),
        };
        let now = self.now_ms();
        debug!(attempt, since_joined_ms = now, "answering an offer");
        self.upgrade.handle_offer_received(attempt, now);
        // After the policy replaced the previous attempt (its CancelAttempt/Fallback
        // actions name the old number, so they leave this one alone).
        self.attempt = Some(Attempt {
            number: attempt,
            channel,
            client_hosts: offered_host_candidates(sdp),
        });
        ServerMsg::RtcAnswer {
            attempt,
            sdp: answer,
            nat: peer.nat().host_nat(),
        }
    }

    /// Executes the policy's actions on `sock`; returns the steps to report. `Err` is why
    /// the session must end (the channel failed, or a resend needed forgotten frames).
    pub async fn apply<S: PathSocket + Send>(
        &mut self,
        sock: &mut S,
    ) -> Result<Vec<UpgradeEvent>, String> {
        let mut events = Vec::new();
        while let Some(action) = self.upgrade.poll_action() {
            match action {
                Action::EnableResend => channel(sock)?.enable_resend(),
                Action::StartAttempt { attempt } => self.start_attempt(attempt),
                Action::CancelAttempt { attempt } => self.cancel(attempt),
                Action::UseDirect { attempt, kind } => self.use_direct(sock, attempt, kind).await?,
                Action::Fallback { attempt, reason } => {
                    debug!(attempt, reason, "falling back to the relay");
                    self.on_direct = None;
                    sock.route_to(None);
                    let frames = channel(sock)?
                        .resend_frames()
                        .map_err(|e| format!("cannot move back to the relay: {e}"))?;
                    sock.send_on_websocket(frames).await?;
                    self.cancel(attempt);
                }
                Action::SendPing { attempt } => self.send_direct(attempt, vec![PING]).await,
                Action::FlushAck => self.flush_ack(sock).await?,
                Action::Event(e) => events.push(e),
            }
        }
        if std::mem::take(&mut self.pong_due) {
            if let Some(a) = &self.attempt {
                let _ = a.channel.send(vec![PONG]).await;
            }
        }
        Ok(events)
    }

    /// Client: gather and offer in the background (ICE gathering waits for STUN answers).
    /// Sends a pure ack on the current path if one is due.
    async fn flush_ack<S: PathSocket>(&mut self, sock: &mut S) -> Result<(), String> {
        let ack = channel(sock)?
            .seal_ack()
            .map_err(|e| format!("cannot seal an ack: {e}"))?;
        match (ack, self.on_direct) {
            (None, _) => {}
            (Some(frame), Some(attempt)) => self.send_direct(attempt, frame).await,
            (Some(frame), None) => sock.send_on_websocket(vec![frame]).await?,
        }
        Ok(())
    }

    /// Flow control, receiving side: after many frames in a row, acks at once rather than
    /// at the next tick, so a sender waiting on its resend bound goes on.
    pub async fn ack_if_urgent<S: PathSocket>(&mut self, sock: &mut S) -> Result<(), String> {
        if sock.channel().is_some_and(|c| c.ack_urgent()) {
            self.flush_ack(sock).await?;
        }
        Ok(())
    }

    fn start_attempt(&mut self, attempt: u32) {
        let Side::Client { ctx, gathering, .. } = &mut self.side else {
            return;
        };
        let ctx = ctx.clone();
        let task = tokio::spawn(async move {
            let mut peer = ClientPeer::bind(ctx.config, &ctx.stun_servers).await?;
            let sdp = peer.offer()?;
            Ok((peer, sdp))
        });
        if let Some((_, old)) = gathering.replace((attempt, task)) {
            old.abort();
        }
    }

    /// Forgets `attempt`: its gathering, its pending offer, its channel (closing it).
    fn cancel(&mut self, attempt: u32) {
        if let Side::Client {
            gathering, offered, ..
        } = &mut self.side
        {
            if let Some((_, task)) = gathering.take_if(|(n, _)| *n == attempt) {
                task.abort();
            }
            offered.take_if(|(n, _)| *n == attempt);
        }
        if self.attempt.as_ref().is_some_and(|a| a.number == attempt) {
            self.attempt = None;
        }
    }

    /// Moves the session onto `attempt`'s DataChannel; the host first sends `direct`.
    async fn use_direct<S: PathSocket>(
        &mut self,
        sock: &mut S,
        attempt: u32,
        kind: PathKind,
    ) -> Result<(), String> {
        let Some(a) = self.attempt.as_ref().filter(|a| a.number == attempt) else {
            return Ok(());
        };
        if matches!(self.side, Side::Host { .. }) {
            let direct = ServerMsg::Direct {
                attempt,
                path: kind,
            };
            let frame = channel(sock)?
                .seal(direct.to_json().as_bytes())
                .map_err(|e| format!("cannot seal a message: {e}"))?;
            // A refusal here means the channel died: the policy's liveness check falls
            // back and resends this frame with the rest.
            let _ = a.channel.send(frame).await;
        }
        sock.route_to(Some(a.channel.sender()));
        self.on_direct = Some(attempt);
        Ok(())
    }

    async fn send_direct(&self, attempt: u32, message: Vec<u8>) {
        if let Some(a) = self.attempt.as_ref().filter(|a| a.number == attempt) {
            let _ = a.channel.send(message).await;
        }
    }
}

fn channel<S: PathSocket>(sock: &mut S) -> Result<&mut SecureChannel, String> {
    sock.channel()
        .ok_or_else(|| "no secure channel yet".to_string())
}

/// The current attempt's next event (pending forever without one).
async fn next_event(attempt: &mut Option<Attempt>) -> (u32, Option<DirectEvent>) {
    match attempt {
        Some(a) => (a.number, a.channel.recv().await),
        None => std::future::pending().await,
    }
}

/// The client's gathering task's result (pending forever without one).
async fn gathered(side: &mut Side) -> (u32, Result<(ClientPeer, String), String>) {
    let Side::Client {
        gathering: Some((number, task)),
        ..
    } = side
    else {
        return std::future::pending().await;
    };
    let number = *number;
    let done = match task.await {
        Ok(Ok(ok)) => Ok(ok),
        Ok(Err(e)) => Err(format!("this device could not prepare a direct path: {e}")),
        Err(e) => Err(format!("gathering stopped: {e}")),
    };
    if let Side::Client { gathering, .. } = side {
        *gathering = None;
    }
    (number, done)
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// The kind of an open direct path as the host sees it: the client's address inside one of
/// the host's subnets, or one of the host candidates the client offered (a host ↔ host
/// pair) → `local`; else by the host's NAT (`public` when its UDP port is open, else
/// `punched`).
pub fn direct_kind(
    path: DirectPath,
    client_hosts: &[SocketAddr],
    subnets: &[Subnet],
    nat: HostNat,
) -> PathKind {
    let client = if client_hosts.contains(&path.remote) {
        CandidateKind::Host
    } else {
        CandidateKind::ServerReflexive
    };
    let pair = DirectPair {
        host: CandidateKind::Host,
        client,
        client_addr: path.remote.ip(),
    };
    classify_direct(&pair, subnets, nat)
}

/// The `typ host` candidates of an SDP (`a=candidate:F C udp P IP PORT typ host …`).
pub fn offered_host_candidates(sdp: &str) -> Vec<SocketAddr> {
    sdp.lines()
        .filter_map(|l| l.trim().strip_prefix("a=candidate:"))
        .filter_map(|c| {
            let f: Vec<&str> = c.split_whitespace().collect();
            if f.len() < 8 || f[6] != "typ" || f[7] != "host" {
                return None;
            }
            let ip: IpAddr = f[4].parse().ok()?;
            Some(SocketAddr::new(ip, f[5].parse().ok()?))
        })
        .collect()
}

/// The machine's interface subnets (loopback included: a member on the same machine is
/// `local`).
pub fn host_subnets() -> Vec<Subnet> {
    match if_addrs::get_if_addrs() {
        Ok(ifs) => ifs
            .into_iter()
            .map(|i| match i.addr {
                if_addrs::IfAddr::V4(a) => Subnet {
                    addr: IpAddr::V4(a.ip),
                    prefix: a.prefixlen,
                },
                if_addrs::IfAddr::V6(a) => Subnet {
                    addr: IpAddr::V6(a.ip),
                    prefix: a.prefixlen,
                },
            })
            .collect(),
        Err(e) => {
            tracing::warn!("cannot list interface subnets: {e}");
            Vec::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use atmosphere_shared::upgrade::{NatFiltering, NatMapping};

    const OFFER: &str = "v=0\r\na=candidate:1 1 udp 2130706431 127.0.0.1 50000 typ host\r\n\
        a=candidate:2 1 udp 1694498815 203.0.113.9 40000 typ srflx raddr 0.0.0.0 rport 0\r\n";

    fn path(remote: &str) -> DirectPath {
        DirectPath {
            local: "10.0.0.2:11451".parse().unwrap(),
            remote: remote.parse().unwrap(),
        }
    }

    #[test]
    fn host_candidates_are_read_from_the_offer() {
        assert_eq!(
            offered_host_candidates(OFFER),
            vec!["127.0.0.1:50000".parse::<SocketAddr>().unwrap()]
        );
        assert!(offered_host_candidates("a=candidate:garbage").is_empty());
    }

    #[test]
    fn the_host_classifies_by_subnet_candidate_and_nat() {
        let lan = [Subnet {
            addr: "10.0.0.2".parse().unwrap(),
            prefix: 24,
        }];
        let filtered = HostNat {
            mapping: NatMapping::EndpointIndependent,
            filtering: NatFiltering::Filtered,
        };
        let open = HostNat {
            filtering: NatFiltering::Open,
            ..filtered
        };
        let hosts = offered_host_candidates(OFFER);
        assert_eq!(
            direct_kind(path("10.0.0.7:1"), &[], &lan, filtered),
            PathKind::Local
        );
        assert_eq!(
            direct_kind(path("127.0.0.1:50000"), &hosts, &[], filtered),
            PathKind::Local
        );
        assert_eq!(
            direct_kind(path("203.0.113.9:40000"), &hosts, &lan, open),
            PathKind::Public
        );
        assert_eq!(
            direct_kind(path("203.0.113.9:40000"), &hosts, &lan, filtered),
            PathKind::Punched
        );
    }
}
