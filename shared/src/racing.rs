//! The fallback/racing policy as one runtime-free, sans-IO state machine.
//!
//! Both shells drive this same code: the native `atmosphere join` (tokio-tungstenite) and
//! the browser app (the DOM `WebSocket`). The machine never touches a socket or a clock:
//! the shell feeds it *inputs* with the current time in milliseconds (any monotonic origin,
//! e.g. `performance.now()` or the time since the process started) and executes its
//! *outputs*. That is the `quinn-proto` / `str0m` style, and it is what lets the tests run
//! on virtual time with no sockets and no sleeping.
//!
//! ## The policy
//!
//! - Candidates are tried in preference order local → public → relay (absent ones are
//!   simply not candidates).
//! - Attempt *k* starts when attempt *k-1* fails, or [`Policy::stagger_ms`] after attempt
//!   *k-1* started, whichever comes first (RFC 8305 "Happy Eyeballs" style): a black-holed
//!   LAN address costs a quarter second, not a full timeout.
//! - Each attempt has its own deadline ([`Policy::attempt_timeout_ms`]).
//! - Success is only the host's `joined` on an attempt ([`Race::handle_joined`]); a socket
//!   that merely opens (e.g. a relay whose host is offline) is not success.
//! - The first `joined` wins; every other running attempt is cancelled.
//! - A host error whose code is final ([`ErrorCode::is_final`]: token and device-credential
//!   errors) stops everything: every path leads to the same host, so trying the relay after
//!   "token expired" would only waste time and hide the real reason.
//! - [`Policy::strictly_sequential`] is the original design's policy: one attempt at a time,
//!   the next only after the previous failed or timed out.
//! - In a page served over https, `ws://` candidates can never connect (mixed content), so
//!   they are reported as blocked at once and never started.
//!
//! ## Driving it
//!
//! ```
//! use atmosphere_shared::racing::{Output, Policy, Race};
//! use atmosphere_shared::Endpoints;
//!
//! let eps = Endpoints { local: Some("ws://127.0.0.1:11451".into()), ..Default::default() };
//! let mut race = Race::from_endpoints(&eps, Policy::default(), 0);
//! while let Some(out) = race.poll_output() {
//!     match out {
//!         Output::Start { id, url, .. } => { /* open a socket to `url`, run the handshake */ let _ = (id, url); }
//!         Output::Cancel { id } => { /* drop that socket */ let _ = id; }
//!         Output::Event(ev) => println!("{}", ev.describe(Some("Home"))),
//!     }
//! }
//! // Then: wait for socket activity or until `race.poll_timeout()`, feed
//! // `handle_joined` / `handle_failed` / `handle_timeout`, drain `poll_output` again,
//! // until `race.outcome()` is `Some`.
//! ```

use crate::link::Endpoints;
use crate::path::PathKind;
use crate::wire::{ErrorCode, Joined, ServerMsg};
use std::collections::VecDeque;
use std::fmt;

/// Default delay before the next candidate starts while the previous one is still pending.
pub const DEFAULT_STAGGER_MS: u64 = 250;
/// Default deadline of one attempt (connect + WebSocket handshake + `joined`).
pub const DEFAULT_ATTEMPT_TIMEOUT_MS: u64 = 10_000;

/// How candidates are raced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Delay after an attempt starts before the next candidate starts too (if the first
    /// has neither joined nor failed by then). Ignored in sequential mode.
    pub stagger_ms: u64,
    /// Deadline of each attempt, from its start to the host's `joined`.
    pub attempt_timeout_ms: u64,
    /// One attempt at a time: the next starts only after the previous failed or timed out.
    pub sequential: bool,
    /// The shell runs in a page served over https: `ws://` candidates are blocked by the
    /// browser (mixed content) and are reported failed at once instead of being started.
    pub page_is_https: bool,
}

impl Default for Policy {
    /// Staggered racing: 250 ms stagger, 10 s per attempt, not in an https page.
    fn default() -> Self {
        Policy {
            stagger_ms: DEFAULT_STAGGER_MS,
            attempt_timeout_ms: DEFAULT_ATTEMPT_TIMEOUT_MS,
            sequential: false,
            page_is_https: false,
        }
    }
}

impl Policy {
    /// The sequential policy of the original design: local → public → relay strictly one
    /// after another, each with the full 10 s deadline (`atmosphere join --sequential`).
    pub fn strictly_sequential() -> Self {
        Policy {
            sequential: true,
            ..Policy::default()
        }
    }
}

/// One way to reach the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub path: PathKind,
    /// `ws://…` or `wss://…`.
    pub url: String,
}

/// Identifies one attempt (one candidate) of a [`Race`]. Ids are small, unique within a
/// race, and stable: the shell keys its sockets by them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AttemptId(pub u32);

impl fmt::Display for AttemptId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// Why one attempt failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FailReason {
    /// Connecting or the WebSocket handshake failed; the text says why
    /// (e.g. "connection refused", a DNS or TLS error).
    Connect(String),
    /// Something answered, but not with the mesh protocol (bad frame, unexpected message).
    Protocol(String),
    /// No `joined` within the deadline (set by the race itself, or by a shell's own
    /// connect deadline).
    Timeout { after_ms: u64 },
    /// The socket opened but closed before the host's `joined` arrived.
    ClosedBeforeJoined,
    /// A `ws://` URL from a page served over https: the browser refuses it.
    BlockedByBrowser,
    /// The host answered with an error frame through the secure channel (its own word).
    Host { code: ErrorCode, message: String },
    /// Before the secure channel existed, something sent a plaintext error frame: the
    /// relay (`host_offline`, `rate_limited`), the host turning a socket away before its
    /// handshake, or anyone on the path. It is not authenticated, so it is never final,
    /// whatever its code ([`FailReason::from_plaintext_notice`]).
    Unverified { code: String, message: String },
    /// The endpoint answered the handshake but could not prove it is the expected host
    /// (another mesh's key, a bad certificate, a message that does not decrypt). Nothing
    /// was sent to it.
    NotTheHost(String),
}

impl FailReason {
    /// A final reason stops the whole race (see [`ErrorCode::is_final`]). Only the host's
    /// own word, through the secure channel, can be final.
    pub fn is_final(&self) -> bool {
        matches!(self, FailReason::Host { code, .. } if code.is_final())
    }

    /// The reason for a plaintext text frame received before the secure channel existed:
    /// an `error` frame's code and message, unverified, or a protocol error for anything
    /// else. Never final.
    pub fn from_plaintext_notice(text: &str) -> FailReason {
        #[derive(serde::Deserialize)]
        struct Notice {
            #[serde(rename = "type")]
            kind: String,
            #[serde(default)]
            code: String,
            #[serde(default)]
            message: String,
        }
        match serde_json::from_str::<Notice>(text) {
            Ok(n) if n.kind == "error" => FailReason::unverified(n.code, n.message),
            _ => FailReason::Protocol(
                "a plaintext frame arrived before the handshake finished".into(),
            ),
        }
    }

    /// An unauthenticated notice (a plaintext `error` frame, or a refused WebSocket
    /// upgrade's JSON body), bounded: whoever sent it does not get to fill a screen.
    pub fn unverified(code: String, message: String) -> FailReason {
        FailReason::Unverified {
            code: cut(code, 64),
            message: cut(message, 300),
        }
    }

    /// The host's verdict on a join, the first message through the secure channel:
    /// `joined` wins; an `error` is the host's own word (final if its code is); anything
    /// else is a protocol failure.
    pub fn verdict(msg: ServerMsg) -> Result<Joined, FailReason> {
        match msg {
            ServerMsg::Joined(joined) => Ok(joined),
            ServerMsg::Error { code, message } => Err(FailReason::Host { code, message }),
            other => Err(FailReason::Protocol(format!(
                "expected joined, got {}",
                other.kind()
            ))),
        }
    }
}

/// At most `max` bytes of `s`, cut at a character boundary.
fn cut(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

impl fmt::Display for FailReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FailReason::Connect(t) => f.write_str(t),
            FailReason::Protocol(t) => write!(f, "protocol error: {t}"),
            FailReason::Timeout { after_ms } => write!(f, "timed out after {after_ms} ms"),
            FailReason::ClosedBeforeJoined => f.write_str("closed before the host answered"),
            FailReason::BlockedByBrowser => {
                f.write_str("blocked by the browser (ws:// from an https page)")
            }
            FailReason::Host { code, message } if message.is_empty() => write!(f, "{code}"),
            FailReason::Host { code, message } => write!(f, "{code}: {message}"),
            FailReason::Unverified { code, message } if message.is_empty() => {
                write!(f, "{code} (unverified)")
            }
            FailReason::Unverified { code, message } => {
                write!(f, "{code}: {message} (unverified)")
            }
            FailReason::NotTheHost(why) => {
                write!(f, "not the mesh's host: {why}; nothing was sent to it")
            }
        }
    }
}

/// A step of the race, for the UI and the CLI (which prints it as a
/// [`JoinEvent`](crate::join_event::JoinEvent) line).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RaceEvent {
    /// An attempt started.
    Trying { path: PathKind, url: String },
    /// An attempt failed (or was blocked without starting).
    Failed { path: PathKind, reason: FailReason },
    /// The host's `joined` arrived on this path; the race is won. `elapsed_ms` counts from
    /// the race's creation.
    Connected { path: PathKind, elapsed_ms: u64 },
    /// Every candidate failed; one `(path, reason)` per candidate, in preference order.
    AllFailed { reasons: Vec<(PathKind, String)> },
    /// The host refused the credential on `path`; nothing else will be tried.
    Fatal {
        path: PathKind,
        code: ErrorCode,
        message: String,
    },
}

impl RaceEvent {
    /// One readable line, e.g. `connected via public in 262 ms to mesh 'Home'`.
    pub fn describe(&self, mesh_name: Option<&str>) -> String {
        match self {
            RaceEvent::Trying { path, url } => format!("trying {path} {url}"),
            RaceEvent::Failed { path, reason } => format!("{path} failed: {reason}"),
            RaceEvent::Connected { path, elapsed_ms } => match mesh_name {
                Some(m) => format!("connected via {path} in {elapsed_ms} ms to mesh '{m}'"),
                None => format!("connected via {path} in {elapsed_ms} ms"),
            },
            RaceEvent::AllFailed { reasons } if reasons.is_empty() => {
                "no endpoint to try: the invite has none".to_string()
            }
            RaceEvent::AllFailed { reasons } => {
                let list: Vec<String> = reasons.iter().map(|(p, r)| format!("{p}: {r}")).collect();
                format!("all paths failed ({})", list.join("; "))
            }
            RaceEvent::Fatal {
                path,
                code,
                message,
            } => {
                format!("the host refused to let us in ({code}, via {path}): {message}")
            }
        }
    }

    /// True for the one event that ends a race (connected, all failed, fatal).
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            RaceEvent::Connected { .. } | RaceEvent::AllFailed { .. } | RaceEvent::Fatal { .. }
        )
    }
}

/// What the shell must do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Open a WebSocket to `url` and run the handshake with a join request for `path`
    /// ([`JoinPlan::start`](crate::credential::JoinPlan::start)); report the result with
    /// [`Race::handle_joined`] or [`Race::handle_failed`].
    Start {
        id: AttemptId,
        path: PathKind,
        url: String,
    },
    /// Close and forget that attempt's socket (it lost, timed out, or the race is over).
    /// Anything reported for it afterwards is ignored.
    Cancel { id: AttemptId },
    /// Show or print this step.
    Event(RaceEvent),
}

/// How a race ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The host's `joined` arrived on attempt `id`; keep that socket, it is the session.
    Connected {
        id: AttemptId,
        path: PathKind,
        elapsed_ms: u64,
    },
    /// Every candidate failed; one `(path, reason)` per candidate, in preference order.
    AllFailed { reasons: Vec<(PathKind, String)> },
    /// The host refused the credential (a final error code); nothing else was tried.
    Fatal {
        path: PathKind,
        code: ErrorCode,
        message: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    Waiting,
    Running { deadline_ms: u64 },
    Failed(String),
    Joined,
    Cancelled,
}

#[derive(Debug, Clone)]
struct Attempt {
    cand: Candidate,
    state: State,
}

/// One race over a set of candidates. See the module documentation for the policy.
#[derive(Debug, Clone)]
pub struct Race {
    attempts: Vec<Attempt>,
    policy: Policy,
    start_ms: u64,
    now_ms: u64,
    last_start_ms: Option<u64>,
    /// A failure happened: the next waiting candidate starts now rather than at the stagger.
    kick: bool,
    outputs: VecDeque<Output>,
    outcome: Option<Outcome>,
}

impl Race {
    /// Starts a race at `now_ms`. Candidates are (stably) sorted into preference order
    /// local → public → relay. The first attempt's [`Output::Start`] (and any
    /// "blocked by the browser" events) are ready in [`Race::poll_output`] at once.
    /// An empty candidate list ends at once with [`Outcome::AllFailed`] and no reasons.
    pub fn new(mut candidates: Vec<Candidate>, policy: Policy, now_ms: u64) -> Race {
        candidates.sort_by_key(|c| c.path);
        let mut race = Race {
            attempts: Vec::with_capacity(candidates.len()),
            policy,
            start_ms: now_ms,
            now_ms,
            last_start_ms: None,
            kick: false,
            outputs: VecDeque::new(),
            outcome: None,
        };
        for cand in candidates {
            let blocked = policy.page_is_https && is_plain_ws(&cand.url);
            let state = if blocked {
                let reason = FailReason::BlockedByBrowser;
                race.outputs.push_back(Output::Event(RaceEvent::Failed {
                    path: cand.path,
                    reason: reason.clone(),
                }));
                State::Failed(reason.to_string())
            } else {
                State::Waiting
            };
            race.attempts.push(Attempt { cand, state });
        }
        race.drive();
        race
    }

    /// A race over an invite's endpoints (local → public → relay; absent ones skipped).
    pub fn from_endpoints(endpoints: &Endpoints, policy: Policy, now_ms: u64) -> Race {
        let cands = endpoints
            .iter()
            .map(|(path, url)| Candidate {
                path,
                url: url.to_string(),
            })
            .collect();
        Race::new(cands, policy, now_ms)
    }

    /// The policy this race runs with.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// The candidate behind an attempt id (for the shell's bookkeeping and logs).
    pub fn candidate(&self, id: AttemptId) -> Option<&Candidate> {
        self.attempts.get(id.0 as usize).map(|a| &a.cand)
    }

    /// The host's `joined` arrived on attempt `id`: the race is won (if it still runs and
    /// that attempt is still live). Late or duplicate reports are ignored.
    pub fn handle_joined(&mut self, id: AttemptId, now_ms: u64) {
        self.advance_clock(now_ms);
        if self.outcome.is_some() {
            return;
        }
        let Some(a) = self.attempts.get_mut(id.0 as usize) else {
            return;
        };
        if !matches!(a.state, State::Running { .. }) {
            return;
        }
        a.state = State::Joined;
        let path = a.cand.path;
        let elapsed_ms = self.now_ms.saturating_sub(self.start_ms);
        self.cancel_running();
        self.outputs
            .push_back(Output::Event(RaceEvent::Connected { path, elapsed_ms }));
        self.outcome = Some(Outcome::Connected {
            id,
            path,
            elapsed_ms,
        });
    }

    /// Attempt `id` failed. A final host error ([`FailReason::is_final`]) ends the race;
    /// any other reason starts the next candidate at once. Reports for attempts that are
    /// not running (cancelled, already failed, unknown) are ignored. The shell has already
    /// dropped its socket, so no [`Output::Cancel`] is emitted for it.
    pub fn handle_failed(&mut self, id: AttemptId, reason: FailReason, now_ms: u64) {
        self.advance_clock(now_ms);
        if self.outcome.is_some() {
            return;
        }
        let Some(a) = self.attempts.get(id.0 as usize) else {
            return;
        };
        if !matches!(a.state, State::Running { .. }) {
            return;
        }
        self.fail(id.0 as usize, reason);
        self.drive();
    }

    /// Time passed: expire attempts past their deadline and start staggered candidates.
    /// Call it when [`Race::poll_timeout`]'s instant is reached (calling it early is harmless).
    pub fn handle_timeout(&mut self, now_ms: u64) {
        self.advance_clock(now_ms);
        self.drive();
    }

    /// The next instant (same clock as the inputs) at which [`Race::handle_timeout`] must
    /// be called, or `None` when no timer is pending (the race is over).
    pub fn poll_timeout(&self) -> Option<u64> {
        if self.outcome.is_some() {
            return None;
        }
        let mut next = self
            .attempts
            .iter()
            .filter_map(|a| match a.state {
                State::Running { deadline_ms } => Some(deadline_ms),
                _ => None,
            })
            .min();
        if !self.policy.sequential && self.next_waiting().is_some() {
            if let Some(t) = self.last_start_ms {
                let due = t.saturating_add(self.policy.stagger_ms);
                next = Some(next.map_or(due, |n| n.min(due)));
            }
        }
        next
    }

    /// The next thing for the shell to do, in order. Drain it after every input.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// How the race ended, once it has.
    pub fn outcome(&self) -> Option<&Outcome> {
        self.outcome.as_ref()
    }

    /// True once the race has an outcome.
    pub fn is_finished(&self) -> bool {
        self.outcome.is_some()
    }

    // The clock never goes backwards, even if a shell's does.
    fn advance_clock(&mut self, now_ms: u64) {
        self.now_ms = self.now_ms.max(now_ms);
    }

    fn next_waiting(&self) -> Option<usize> {
        self.attempts.iter().position(|a| a.state == State::Waiting)
    }

    fn any_running(&self) -> bool {
        self.attempts
            .iter()
            .any(|a| matches!(a.state, State::Running { .. }))
    }

    fn cancel_running(&mut self) {
        for (i, a) in self.attempts.iter_mut().enumerate() {
            if matches!(a.state, State::Running { .. }) {
                a.state = State::Cancelled;
                self.outputs.push_back(Output::Cancel {
                    id: AttemptId(i as u32),
                });
            }
        }
    }

    /// Marks a running attempt failed and reports it; a final reason ends the race.
    fn fail(&mut self, i: usize, reason: FailReason) {
        let a = &mut self.attempts[i];
        let path = a.cand.path;
        a.state = State::Failed(reason.to_string());
        let fatal = match &reason {
            FailReason::Host { code, message } if code.is_final() => Some((*code, message.clone())),
            _ => None,
        };
        self.outputs
            .push_back(Output::Event(RaceEvent::Failed { path, reason }));
        if let Some((code, message)) = fatal {
            self.cancel_running();
            self.outputs.push_back(Output::Event(RaceEvent::Fatal {
                path,
                code,
                message: message.clone(),
            }));
            self.outcome = Some(Outcome::Fatal {
                path,
                code,
                message,
            });
        } else {
            self.kick = true;
        }
    }

    /// Applies the policy at `self.now_ms` until nothing changes: expire deadlines, start
    /// due candidates, detect "all failed".
    fn drive(&mut self) {
        loop {
            if self.outcome.is_some() {
                return;
            }
            let now = self.now_ms;
            let mut changed = false;

            if let Some(i) = self.attempts.iter().position(
                |a| matches!(a.state, State::Running { deadline_ms } if deadline_ms <= now),
            ) {
                // The shell still holds a socket for it: tell it to drop that socket.
                self.outputs.push_back(Output::Cancel {
                    id: AttemptId(i as u32),
                });
                self.fail(
                    i,
                    FailReason::Timeout {
                        after_ms: self.policy.attempt_timeout_ms,
                    },
                );
                continue;
            }

            if let Some(i) = self.next_waiting() {
                let stagger_due = !self.policy.sequential
                    && self
                        .last_start_ms
                        .is_some_and(|t| now >= t.saturating_add(self.policy.stagger_ms));
                if self.kick || !self.any_running() || stagger_due {
                    self.start(i);
                    changed = true;
                }
            } else {
                self.kick = false;
            }

            if !self.any_running() && self.next_waiting().is_none() {
                let reasons: Vec<(PathKind, String)> = self
                    .attempts
                    .iter()
                    .map(|a| match &a.state {
                        State::Failed(r) => (a.cand.path, r.clone()),
                        // Unreachable in practice (no winner, nothing running or waiting).
                        other => (a.cand.path, format!("{other:?}")),
                    })
                    .collect();
                self.outputs.push_back(Output::Event(RaceEvent::AllFailed {
                    reasons: reasons.clone(),
                }));
                self.outcome = Some(Outcome::AllFailed { reasons });
                return;
            }
            if !changed {
                return;
            }
        }
    }

    fn start(&mut self, i: usize) {
        let now = self.now_ms;
        let a = &mut self.attempts[i];
        a.state = State::Running {
            deadline_ms: now.saturating_add(self.policy.attempt_timeout_ms),
        };
        self.kick = false;
        self.last_start_ms = Some(now);
        let (path, url) = (a.cand.path, a.cand.url.clone());
        self.outputs.push_back(Output::Event(RaceEvent::Trying {
            path,
            url: url.clone(),
        }));
        self.outputs.push_back(Output::Start {
            id: AttemptId(i as u32),
            path,
            url,
        });
    }
}

/// `ws://` (not `wss://`), ignoring case and surrounding blanks.
fn is_plain_ws(url: &str) -> bool {
    let u = url.trim_start();
    u.len() >= 5 && u.as_bytes()[..5].eq_ignore_ascii_case(b"ws://")
}
