//! The upgrade and roaming policy: when a session that joined over the relay tries a direct
//! WebRTC path, when it moves onto it, when it falls back, and when it tries again. One
//! runtime-free, sans-IO state machine ([`Upgrade`]) in the style of
//! [`racing`](crate::racing): the shell (the native `join` with str0m, the browser with
//! `RTCPeerConnection`, the host with str0m) feeds it inputs with the current time in
//! milliseconds and executes its [`Action`]s; the tests run it on virtual time.
//!
//! Also here: the pure classifier of a direct path's kind ([`classify_direct`]) and the
//! descriptions of the host's NAT ([`HostNat`]) with the sentence a person reads when the
//! session stays on the relay ([`why_relay`]).
//!
//! ## The policy
//!
//! - **Who tries.** Only a session that joined over `relay` ([`Upgrade::handle_joined`]); a
//!   session on a `local`/`public` WebSocket is already direct and nothing happens. The
//!   client offers ([`Role::Offerer`]), the host answers ([`Role::Answerer`]).
//! - **When.** The first attempt starts right after `joined` ([`Action::StartAttempt`]):
//!   the shell creates the peer connection and the `"atmosphere-mesh"` DataChannel, waits
//!   for ICE gathering and sends `rtc_offer` with the attempt number (counted from 1), then
//!   reports [`Upgrade::handle_offer_sent`]. Gathering has [`Policy::gather_timeout_ms`]
//!   (3 s); from the offer the DataChannel has [`Policy::attempt_timeout_ms`] (5 s) to open.
//! - **Resend is enabled** ([`Action::EnableResend`], i.e.
//!   [`SecureChannel::enable_resend`](crate::channel::SecureChannel::enable_resend)) once,
//!   right before the first attempt starts (client) or when the first offer arrives (host):
//!   from then on every frame may travel over a path that can die. From then on too, the
//!   shell sends a pure ack when one is due every [`Policy::ping_interval_ms`] (500 ms,
//!   [`Action::FlushAck`]), so the peer's resend buffer holds about half a second of
//!   traffic.
//! - **Moving onto the direct path.** When the DataChannel opens ([`Upgrade::handle_open`],
//!   with its kind from [`classify_direct`]) the session sends every frame on it from now
//!   on ([`Action::UseDirect`]) and reports the change ([`UpgradeEvent::PathChanged`],
//!   e.g. "relay → punched after 420 ms", counted from the first `joined`). Nothing is
//!   resent: the relay is still open, so what is in flight there still arrives, and the
//!   receiver's reorder buffer puts the two streams back in order.
//! - **The relay stays open as the standby.** The relay WebSocket is not closed when the
//!   session moves: the host's WebSocket pings keep it alive (the relay forwards them), so
//!   a fallback needs no reconnect and no new handshake, and takes no longer than the
//!   liveness check below. Its cost is one idle socket per session at the relay.
//! - **Liveness of the direct path.** Both sides send a ping (the DataChannel byte `0x00`)
//!   every [`Policy::ping_interval_ms`] (500 ms, [`Action::SendPing`]) and answer a ping
//!   with a pong (`0x01`) at once (the shell does that; no policy). Anything received on
//!   the DataChannel counts ([`Upgrade::handle_inbound_direct`]). Nothing for
//!   [`Policy::dead_after_ms`] (1.5 s), or the DataChannel closing, means the path is dead.
//! - **Fallback.** A dead direct path moves the session back to the relay
//!   ([`Action::Fallback`]): the shell sends
//!   [`SecureChannel::resend_frames`](crate::channel::SecureChannel::resend_frames) on the
//!   relay, sends there from now on, and closes the peer connection. With the 1.5 s
//!   liveness bound and the next tick, the session carries on over the relay within 2 s.
//! - **Trying again.** A failed attempt ([`UpgradeEvent::DirectUnavailable`], with the
//!   reason a person reads) or a fallback schedules the next attempt with capped exponential
//!   backoff ([`Backoff`]: 2 s, 4 s, 8 s … at most 30 s, jittered); a direct path that
//!   stayed up [`Policy::stable_ms`] (10 s) starts the backoff over. The host never starts
//!   attempts; a newer offer replaces its current one.
//!
//! ## Driving it
//!
//! ```
//! use atmosphere_shared::upgrade::{Action, Policy, Role, Upgrade};
//! use atmosphere_shared::PathKind;
//!
//! let mut up = Upgrade::new(Role::Offerer, Policy::default(), 7);
//! up.handle_joined(PathKind::Relay, 0);
//! while let Some(action) = up.poll_action() {
//!     match action {
//!         Action::EnableResend => { /* channel.enable_resend() */ }
//!         Action::StartAttempt { attempt } => { /* new peer connection; offer when gathered */ let _ = attempt; }
//!         other => { let _ = other; }
//!     }
//! }
//! // Then: feed handle_offer_sent / handle_answer / handle_open / handle_closed /
//! // handle_inbound_direct, and handle_timeout at up.poll_timeout(), draining poll_action.
//! ```

use crate::backoff::Backoff;
use crate::path::PathKind;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

/// Default time from [`Action::StartAttempt`] to the offer being sent (ICE gathering).
pub const DEFAULT_GATHER_TIMEOUT_MS: u64 = 3_000;
/// Default time from the offer to the DataChannel being open.
pub const DEFAULT_ATTEMPT_TIMEOUT_MS: u64 = 5_000;
/// Default interval of pings on the direct path (and of pure acks once resend is on).
pub const DEFAULT_PING_INTERVAL_MS: u64 = 500;
/// Default silence on the direct path after which it counts as dead.
pub const DEFAULT_DEAD_AFTER_MS: u64 = 1_500;
/// Default first and largest delay before the next attempt.
pub const DEFAULT_RETRY_FIRST_MS: u64 = 2_000;
pub const DEFAULT_RETRY_MAX_MS: u64 = 30_000;
/// A direct path up this long starts the retry backoff over.
pub const DEFAULT_STABLE_MS: u64 = 10_000;

/// The DataChannel message that asks for a pong (liveness probe of the direct path).
pub const PING: u8 = 0x00;
/// The answer to [`PING`].
pub const PONG: u8 = 0x01;
/// The label of the one DataChannel of a session.
pub const DATA_CHANNEL_LABEL: &str = "atmosphere-mesh";

/// The timings of the policy; see the module documentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    pub gather_timeout_ms: u64,
    pub attempt_timeout_ms: u64,
    /// Also the pure-ack interval once resend is enabled.
    pub ping_interval_ms: u64,
    pub dead_after_ms: u64,
    pub retry_first_ms: u64,
    pub retry_max_ms: u64,
    pub stable_ms: u64,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            gather_timeout_ms: DEFAULT_GATHER_TIMEOUT_MS,
            attempt_timeout_ms: DEFAULT_ATTEMPT_TIMEOUT_MS,
            ping_interval_ms: DEFAULT_PING_INTERVAL_MS,
            dead_after_ms: DEFAULT_DEAD_AFTER_MS,
            retry_first_ms: DEFAULT_RETRY_FIRST_MS,
            retry_max_ms: DEFAULT_RETRY_MAX_MS,
            stable_ms: DEFAULT_STABLE_MS,
        }
    }
}

/// Which side of the signalling this machine drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The member: starts attempts and offers.
    Offerer,
    /// The host: answers offers, never starts one.
    Answerer,
}

/// How the host's router maps the host's UDP socket to the outside (RFC 5780 style, as the
/// relay's STUN responder sees it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NatMapping {
    /// One outside port for every destination: a hole can be punched.
    EndpointIndependent,
    /// A new outside port per destination ("symmetric NAT"): punching cannot work.
    EndpointDependent,
    /// Not checked, or the check got no answer.
    Unknown,
}

/// Whether unsolicited inbound UDP reaches the host's socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NatFiltering {
    /// It does: a port forward, a mapped port, or no NAT.
    Open,
    /// Only answers to what the host sent first.
    Filtered,
    /// Not checked, or the check got no answer.
    Unknown,
}

/// The host's NAT as `rtc_answer` reports it: `{"mapping":…,"filtering":…}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct HostNat {
    pub mapping: NatMapping,
    pub filtering: NatFiltering,
}

impl HostNat {
    /// Nothing known.
    pub const UNKNOWN: HostNat = HostNat {
        mapping: NatMapping::Unknown,
        filtering: NatFiltering::Unknown,
    };
}

/// Why one attempt did not give a direct path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttemptFailure {
    /// The host said `rtc_unavailable` with this reason.
    HostUnavailable(String),
    /// ICE gathering did not finish in time (no offer was sent).
    GatherTimeout { after_ms: u64 },
    /// The DataChannel did not open in time after the offer.
    Timeout { after_ms: u64 },
    /// The peer connection failed or closed before the DataChannel opened (the shell's
    /// words, e.g. "ICE failed").
    Failed(String),
}

/// The sentence a person reads when the session stays on the relay after an attempt: what
/// went wrong and, from the host's NAT when known, why. Always ends with "staying on the
/// relay".
pub fn why_relay(failure: &AttemptFailure, nat: Option<HostNat>) -> String {
    const STAY: &str = "staying on the relay";
    if let AttemptFailure::HostUnavailable(reason) = failure {
        let reason = cut(reason, crate::wire::MAX_RTC_REASON_BYTES);
        return format!("the host cannot open a direct path ({reason}); {STAY}");
    }
    if let AttemptFailure::GatherTimeout { after_ms } = failure {
        return format!(
            "this device did not finish gathering its network addresses within {} s; {STAY}",
            secs(*after_ms)
        );
    }
    let what = match failure {
        AttemptFailure::Timeout { after_ms } => {
            format!("no direct path opened within {} s", secs(*after_ms))
        }
        AttemptFailure::Failed(why) => format!("the direct path failed ({})", cut(why, 200)),
        _ => unreachable!("handled above"),
    };
    let nat = nat.unwrap_or(HostNat::UNKNOWN);
    match (nat.mapping, nat.filtering) {
        (NatMapping::EndpointDependent, NatFiltering::Open) => format!(
            "the host's UDP port is reachable, but {what}: this device's network may block UDP; {STAY}"
        ),
        (NatMapping::EndpointDependent, _) => format!(
            "the host's router gives every destination a new port (symmetric NAT), so no direct path can be punched; {STAY}"
        ),
        (_, NatFiltering::Open) => format!(
            "the host's UDP port is reachable, but {what}: this device's network may block UDP; {STAY}"
        ),
        (NatMapping::EndpointIndependent, NatFiltering::Filtered) => format!(
            "{what}: the host's router only lets in answers, and this device's network did not let a hole be punched (a symmetric NAT or blocked UDP here); {STAY}"
        ),
        _ => format!("{what}; the host's NAT could not be checked; {STAY}"),
    }
}

/// Whole seconds, else seconds to one decimal (rounded half up). Integer arithmetic: printing
/// an `f64` would link the float formatter into the browser bundle (≈ 8 KB gzip).
fn secs(ms: u64) -> String {
    if ms.is_multiple_of(1000) {
        return format!("{}", ms / 1000);
    }
    let tenths = ms.saturating_add(50) / 100;
    format!("{}.{}", tenths / 10, tenths % 10)
}

fn cut(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// How one ICE candidate was learned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CandidateKind {
    /// An address of the machine's own interfaces.
    Host,
    /// The address a STUN server saw (the NAT's outside address).
    ServerReflexive,
    /// An address learned from the peer's connectivity checks (e.g. a browser that hides
    /// its LAN address behind an mDNS name).
    PeerReflexive,
    /// A TURN relay's address.
    Relayed,
}

/// A host's LAN subnet: an interface address and its prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subnet {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl Subnet {
    /// True if `ip` is inside this subnet (same family, same first `prefix` bits).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(a), IpAddr::V4(b)) => same_prefix(&a.octets(), &b.octets(), self.prefix),
            (IpAddr::V6(a), IpAddr::V6(b)) => same_prefix(&a.octets(), &b.octets(), self.prefix),
            _ => false,
        }
    }
}

fn same_prefix(a: &[u8], b: &[u8], prefix: u8) -> bool {
    let bits = usize::from(prefix).min(a.len() * 8);
    let (whole, rest) = (bits / 8, bits % 8);
    if a[..whole] != b[..whole] {
        return false;
    }
    rest == 0 || (a[whole] ^ b[whole]) >> (8 - rest) == 0
}

/// The selected candidate pair of an open DataChannel, as the host sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DirectPair {
    /// The host's candidate that carries the path.
    pub host: CandidateKind,
    /// The client's candidate, and its address as the host sees it.
    pub client: CandidateKind,
    pub client_addr: IpAddr,
}

/// The kind of an open direct path: the client's address inside one of the host's LAN
/// subnets, or both candidates host candidates → `local`; else the host's UDP is `open`
/// (forwarded or mapped) → `public`; else `punched`.
pub fn classify_direct(pair: &DirectPair, host_subnets: &[Subnet], host_nat: HostNat) -> PathKind {
    let on_lan = host_subnets.iter().any(|s| s.contains(pair.client_addr));
    let both_host = pair.host == CandidateKind::Host && pair.client == CandidateKind::Host;
    if on_lan || both_host {
        PathKind::Local
    } else if host_nat.filtering == NatFiltering::Open {
        PathKind::Public
    } else {
        PathKind::Punched
    }
}

/// A step of the upgrade, for the page, `join --json` and the host's device list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpgradeEvent {
    /// The session moved from `from` to `to`, `after_ms` after the first `joined`;
    /// `reason` says why for a fallback.
    PathChanged {
        from: PathKind,
        to: PathKind,
        after_ms: u64,
        reason: Option<String>,
    },
    /// An attempt did not give a direct path; the next starts in `retry_in_ms` (the
    /// offerer; the answerer gets `None`).
    DirectUnavailable {
        attempt: u32,
        reason: String,
        retry_in_ms: Option<u64>,
    },
}

impl UpgradeEvent {
    /// One readable line, e.g. `relay → punched after 420 ms`.
    pub fn describe(&self) -> String {
        match self {
            UpgradeEvent::PathChanged {
                from,
                to,
                after_ms,
                reason,
            } => match reason {
                None => format!("{from} → {to} after {after_ms} ms"),
                Some(r) => format!("{from} → {to} after {after_ms} ms ({r})"),
            },
            UpgradeEvent::DirectUnavailable {
                reason,
                retry_in_ms: Some(ms),
                ..
            } => format!("{reason}; trying again in {} s", secs(*ms)),
            UpgradeEvent::DirectUnavailable { reason, .. } => reason.clone(),
        }
    }
}

/// What the shell must do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Keep sealed frames for a resend from now on
    /// ([`SecureChannel::enable_resend`](crate::channel::SecureChannel::enable_resend)).
    EnableResend,
    /// Offerer: create a peer connection and its DataChannel, gather, send `rtc_offer` with
    /// this attempt number, then report [`Upgrade::handle_offer_sent`].
    StartAttempt { attempt: u32 },
    /// Close that attempt's peer connection (it failed, timed out or was replaced).
    CancelAttempt { attempt: u32 },
    /// Send every frame on that attempt's DataChannel from now on.
    UseDirect { attempt: u32, kind: PathKind },
    /// The direct path died: send the channel's `resend_frames()` on the relay, send every
    /// frame there from now on, and close that attempt's peer connection.
    Fallback { attempt: u32, reason: String },
    /// Send [`PING`] on that attempt's DataChannel.
    SendPing { attempt: u32 },
    /// Send the channel's `seal_ack()` frame, if any, on the current path.
    FlushAck,
    /// Show or print this step.
    Event(UpgradeEvent),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    /// Not joined yet, or joined on a direct WebSocket: nothing to do.
    Inactive,
    /// On the relay; the next attempt (offerer) starts at `retry_at`.
    Relay { retry_at: Option<u64> },
    /// Offerer: gathering for `attempt`, the offer is due by `deadline`.
    Gathering { attempt: u32, deadline: u64 },
    /// The offer is out (or, for the answerer, in); the DataChannel is due by `deadline`.
    Connecting { attempt: u32, deadline: u64 },
    /// On the direct path.
    Direct {
        attempt: u32,
        kind: PathKind,
        since: u64,
        last_inbound: u64,
    },
}

/// One session's upgrade policy. See the module documentation.
#[derive(Debug, Clone)]
pub struct Upgrade {
    role: Role,
    policy: Policy,
    state: State,
    now: u64,
    joined_at: Option<u64>,
    /// Attempts started (offerer) or the latest offer seen (answerer).
    attempt: u32,
    resend_enabled: bool,
    /// The next ping/ack tick, once resend is enabled.
    next_tick: Option<u64>,
    nat: Option<HostNat>,
    backoff: Backoff,
    rng: u64,
    actions: VecDeque<Action>,
}

impl Upgrade {
    /// A machine for one session; `seed` feeds the retry jitter (any value; the shell
    /// passes a random one, tests a fixed one).
    pub fn new(role: Role, policy: Policy, seed: u64) -> Upgrade {
        Upgrade {
            role,
            policy,
            state: State::Inactive,
            now: 0,
            joined_at: None,
            attempt: 0,
            resend_enabled: false,
            next_tick: None,
            nat: None,
            backoff: Backoff::new(
                Duration::from_millis(policy.retry_first_ms),
                Duration::from_millis(policy.retry_max_ms),
            ),
            rng: seed | 1,
            actions: VecDeque::new(),
        }
    }

    /// The session joined on `path`. Only the first call counts (it is the origin of
    /// every `after_ms`); on `relay` the offerer starts its first attempt at once.
    pub fn handle_joined(&mut self, path: PathKind, now_ms: u64) {
        self.advance(now_ms);
        if self.joined_at.is_some() {
            return;
        }
        self.joined_at = Some(self.now);
        if path == PathKind::Relay {
            self.state = State::Relay {
                retry_at: (self.role == Role::Offerer).then_some(self.now),
            };
            self.drive();
        }
    }

    /// Offerer: the offer of `attempt` went out.
    pub fn handle_offer_sent(&mut self, attempt: u32, now_ms: u64) {
        self.advance(now_ms);
        if matches!(self.state, State::Gathering { attempt: a, .. } if a == attempt) {
            self.state = State::Connecting {
                attempt,
                deadline: self.now.saturating_add(self.policy.attempt_timeout_ms),
            };
        }
    }

    /// Answerer: offer `attempt` arrived and the answer went out. A newer offer replaces
    /// the current attempt (and a direct path: the client only offers again when it lost
    /// it). An offer on a session that did not join over the relay is answered all the
    /// same (the client decides).
    pub fn handle_offer_received(&mut self, attempt: u32, now_ms: u64) {
        self.advance(now_ms);
        if self.role != Role::Answerer || attempt <= self.attempt {
            return;
        }
        self.joined_at.get_or_insert(self.now);
        self.enable_resend();
        match self.state {
            State::Connecting { attempt: old, .. } => {
                self.actions
                    .push_back(Action::CancelAttempt { attempt: old });
            }
            State::Direct { attempt: old, .. } => {
                self.fall_back(old, "the client offered a new direct path".into());
            }
            _ => {}
        }
        self.attempt = attempt;
        self.state = State::Connecting {
            attempt,
            deadline: self.now.saturating_add(self.policy.attempt_timeout_ms),
        };
        self.drive();
    }

    /// Offerer: the host's `rtc_answer` for `attempt` arrived, describing its NAT.
    pub fn handle_answer(&mut self, attempt: u32, nat: HostNat, now_ms: u64) {
        self.advance(now_ms);
        if attempt == self.attempt {
            self.nat = Some(nat);
        }
    }

    /// Offerer: the host's `rtc_unavailable` for `attempt`.
    pub fn handle_unavailable(&mut self, attempt: u32, reason: &str, now_ms: u64) {
        self.advance(now_ms);
        if self.is_pending(attempt) {
            self.fail(attempt, AttemptFailure::HostUnavailable(reason.to_string()));
        }
        self.drive();
    }

    /// The DataChannel of `attempt` opened; `kind` is its [`classify_direct`] result (the
    /// host computes it; the client learns it from the host or computes it the same way).
    pub fn handle_open(&mut self, attempt: u32, kind: PathKind, now_ms: u64) {
        self.advance(now_ms);
        if !self.is_pending(attempt) || !kind.is_direct() {
            return;
        }
        self.state = State::Direct {
            attempt,
            kind,
            since: self.now,
            last_inbound: self.now,
        };
        self.actions.push_back(Action::UseDirect { attempt, kind });
        self.event(UpgradeEvent::PathChanged {
            from: PathKind::Relay,
            to: kind,
            after_ms: self.since_joined(),
            reason: None,
        });
        self.next_tick = Some(self.now.saturating_add(self.policy.ping_interval_ms));
        self.drive();
    }

    /// The peer connection or DataChannel of `attempt` closed or failed (`why` in the
    /// shell's words).
    pub fn handle_closed(&mut self, attempt: u32, why: &str, now_ms: u64) {
        self.advance(now_ms);
        match self.state {
            State::Direct { attempt: a, .. } if a == attempt => {
                self.fall_back(attempt, format!("the direct path closed: {why}"));
                self.schedule_retry();
            }
            _ if self.is_pending(attempt) => {
                self.actions.push_back(Action::CancelAttempt { attempt });
                self.fail(attempt, AttemptFailure::Failed(why.to_string()));
            }
            _ => {}
        }
        self.drive();
    }

    /// Something (a frame, a ping, a pong) arrived on the DataChannel of `attempt`.
    pub fn handle_inbound_direct(&mut self, attempt: u32, now_ms: u64) {
        self.advance(now_ms);
        if let State::Direct {
            attempt: a,
            last_inbound,
            ..
        } = &mut self.state
        {
            if *a == attempt {
                *last_inbound = self.now;
            }
        }
    }

    /// Time passed: deadlines, pings, acks, liveness, retries. Call it at
    /// [`Upgrade::poll_timeout`] (early is harmless).
    pub fn handle_timeout(&mut self, now_ms: u64) {
        self.advance(now_ms);
        self.drive();
    }

    /// The next instant at which [`Upgrade::handle_timeout`] must be called, if any.
    pub fn poll_timeout(&self) -> Option<u64> {
        let state = match self.state {
            State::Inactive => None,
            State::Relay { retry_at } => retry_at,
            State::Gathering { deadline, .. } | State::Connecting { deadline, .. } => {
                Some(deadline)
            }
            State::Direct { last_inbound, .. } => {
                Some(last_inbound.saturating_add(self.policy.dead_after_ms))
            }
        };
        match (state, self.next_tick) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The next thing for the shell to do, in order. Drain it after every input.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// The path the session sends on now (`None` before `joined` or on a direct WebSocket).
    pub fn current_path(&self) -> Option<PathKind> {
        match self.state {
            State::Inactive => None,
            State::Direct { kind, .. } => Some(kind),
            _ => Some(PathKind::Relay),
        }
    }

    fn advance(&mut self, now_ms: u64) {
        self.now = self.now.max(now_ms);
    }

    fn since_joined(&self) -> u64 {
        self.now - self.joined_at.unwrap_or(self.now)
    }

    fn event(&mut self, ev: UpgradeEvent) {
        self.actions.push_back(Action::Event(ev));
    }

    fn is_pending(&self, attempt: u32) -> bool {
        matches!(self.state,
            State::Gathering { attempt: a, .. } | State::Connecting { attempt: a, .. } if a == attempt)
    }

    fn enable_resend(&mut self) {
        if !self.resend_enabled {
            self.resend_enabled = true;
            self.actions.push_back(Action::EnableResend);
            self.next_tick = Some(self.now.saturating_add(self.policy.ping_interval_ms));
        }
    }

    /// A pending attempt failed: report why and (offerer) when the next one starts.
    fn fail(&mut self, attempt: u32, failure: AttemptFailure) {
        let reason = why_relay(&failure, self.nat);
        self.state = State::Relay { retry_at: None };
        let retry_in_ms = self.schedule_retry();
        self.event(UpgradeEvent::DirectUnavailable {
            attempt,
            reason,
            retry_in_ms,
        });
    }

    /// Back to the relay from a direct path.
    fn fall_back(&mut self, attempt: u32, reason: String) {
        let State::Direct { kind, since, .. } = self.state else {
            return;
        };
        if self.now.saturating_sub(since) >= self.policy.stable_ms {
            self.backoff.reset();
        }
        self.state = State::Relay { retry_at: None };
        self.actions.push_back(Action::Fallback {
            attempt,
            reason: reason.clone(),
        });
        self.event(UpgradeEvent::PathChanged {
            from: kind,
            to: PathKind::Relay,
            after_ms: self.since_joined(),
            reason: Some(reason),
        });
    }

    /// Offerer: the next attempt after the backoff delay; returns the delay.
    fn schedule_retry(&mut self) -> Option<u64> {
        if self.role != Role::Offerer {
            return None;
        }
        let unit = self.random_unit();
        let delay = self.backoff.next_delay(unit).as_millis() as u64;
        self.state = State::Relay {
            retry_at: Some(self.now.saturating_add(delay)),
        };
        Some(delay)
    }

    /// xorshift64: enough to spread retries; the seed comes from the shell.
    fn random_unit(&mut self) -> f64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        (self.rng >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Applies the policy at `self.now` until nothing is due.
    fn drive(&mut self) {
        loop {
            let now = self.now;
            match self.state {
                State::Relay { retry_at: Some(at) } if at <= now => {
                    self.enable_resend();
                    self.attempt += 1;
                    let attempt = self.attempt;
                    self.state = State::Gathering {
                        attempt,
                        deadline: now.saturating_add(self.policy.gather_timeout_ms),
                    };
                    self.actions.push_back(Action::StartAttempt { attempt });
                    continue;
                }
                State::Gathering { attempt, deadline } if deadline <= now => {
                    self.actions.push_back(Action::CancelAttempt { attempt });
                    let after_ms = self.policy.gather_timeout_ms;
                    self.fail(attempt, AttemptFailure::GatherTimeout { after_ms });
                    continue;
                }
                State::Connecting { attempt, deadline } if deadline <= now => {
                    self.actions.push_back(Action::CancelAttempt { attempt });
                    let after_ms = self.policy.attempt_timeout_ms;
                    self.fail(attempt, AttemptFailure::Timeout { after_ms });
                    continue;
                }
                State::Direct {
                    attempt,
                    last_inbound,
                    ..
                } if now.saturating_sub(last_inbound) >= self.policy.dead_after_ms => {
                    let silent = now - last_inbound;
                    self.fall_back(
                        attempt,
                        format!("nothing arrived on the direct path for {silent} ms"),
                    );
                    self.schedule_retry();
                    continue;
                }
                _ => {}
            }
            if self.next_tick.is_some_and(|t| t <= now) {
                if let State::Direct { attempt, .. } = self.state {
                    self.actions.push_back(Action::SendPing { attempt });
                }
                self.actions.push_back(Action::FlushAck);
                // One tick per interval from now: never a burst after a long pause.
                self.next_tick = Some(now.saturating_add(self.policy.ping_interval_ms.max(1)));
                continue;
            }
            return;
        }
    }
}

impl fmt::Display for AttemptFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&why_relay(self, None))
    }
}

#[cfg(test)]
mod tests;
