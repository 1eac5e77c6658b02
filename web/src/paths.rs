//! The session's paths in the browser: the relay WebSocket the page joined over (kept open
//! as the standby) and, when the networks allow, a direct WebRTC DataChannel. This file is
//! the browser shell of the shared upgrade policy ([`atmosphere_shared::upgrade::Upgrade`],
//! [`Role::Offerer`]): it executes the policy's [`Action`]s with [`DirectPeer`] (the
//! `RTCPeerConnection`), the session's [`Connector`] (the WebSocket and the channel) and
//! `setTimeout`, and feeds events back in. When to try, when to give up, when a path is
//! dead and what the page reads all come from `shared`.
//!
//! Step by step, after `joined` on `relay` (a session on a `local`/`public` WebSocket is
//! already direct and never upgrades):
//!
//! 1. [`Action::EnableResend`]: the channel keeps sealed frames until acked.
//! 2. [`Action::StartAttempt`]: [`DirectPeer::offer`] with the STUN servers `joined` named;
//!    the offer goes out sealed (`rtc_offer`) on the relay.
//! 3. `rtc_answer` → [`DirectPeer::accept_answer`]; `rtc_unavailable`, a refused answer or
//!    a failed connection → the policy reports why and schedules the next attempt.
//! 4. The host's first frame on the open DataChannel is `direct{attempt,path}`, sealed in
//!    this session's channel: it proves the DataChannel carries *this* session. Only then
//!    ([`Action::UseDirect`]) every frame goes out on the DataChannel. Frames from both
//!    paths are opened by the one channel, which puts them back in order.
//! 5. The DataChannel's `0x00` ping is answered with `0x01` at once; the policy sends its
//!    own pings and pure acks ([`Action::SendPing`], [`Action::FlushAck`]).
//! 6. A dead or closed direct path ([`Action::Fallback`]): every unacked frame is resent on
//!    the relay, which carries the session from then on; the policy tries again later.
//!
//! Callbacks never call the page while this shell's state is borrowed: actions are
//! executed, then the collected [`UpgradeEvent`]s are handed over.

use crate::rtc::{DirectEvent, DirectPeer};
use crate::ws::{now_ms, Connector};
use atmosphere_shared::upgrade::{Action, Policy, Role, Upgrade, UpgradeEvent, PING, PONG};
use atmosphere_shared::wire::{ClientMsg, ServerMsg};
use atmosphere_shared::PathKind;
use std::cell::RefCell;
use std::rc::{Rc, Weak};
use std::time::Duration;

/// What the page learns about the session's path.
pub type Listener = Rc<dyn Fn(UpgradeEvent)>;

/// One attempt's peer connection.
struct Attempt {
    number: u32,
    peer: Rc<DirectPeer>,
    /// A sealed frame of this session opened from its DataChannel: `direct` for this
    /// attempt is believed only then.
    proven: bool,
}

struct Inner {
    up: Upgrade,
    connector: Connector,
    stun_servers: Vec<String>,
    /// The attempt being gathered (its offer is not out yet).
    gathering: Option<u32>,
    /// The attempt whose peer connection exists (offered, or open).
    attempt: Option<Attempt>,
    /// The attempt whose DataChannel carries every frame now.
    direct: Option<u32>,
    timer: Option<leptos::prelude::TimeoutHandle>,
    events: Vec<UpgradeEvent>,
    stopped: bool,
}

/// The session's paths; cheap to clone (one shared state). Call [`SessionPaths::stop`]
/// when the session ends.
#[derive(Clone)]
pub struct SessionPaths {
    inner: Rc<RefCell<Inner>>,
    listener: Listener,
}

impl SessionPaths {
    /// Starts the policy for a session that joined over `path`; `stun_servers` are the
    /// host's (from `joined`). Only a `relay` session whose host answers offers (`offer`,
    /// `joined.direct`) tries a direct path; otherwise this only carries the session's
    /// frames on its WebSocket.
    pub fn start(
        connector: Connector,
        path: PathKind,
        offer: bool,
        stun_servers: Vec<String>,
        listener: impl Fn(UpgradeEvent) + 'static,
    ) -> SessionPaths {
        let seed = (js_sys::Math::random() * u64::MAX as f64) as u64;
        let mut up = Upgrade::new(Role::Offerer, Policy::default(), seed);
        if offer {
            up.handle_joined(path, now_ms());
        }
        let paths = SessionPaths {
            inner: Rc::new(RefCell::new(Inner {
                up,
                connector,
                stun_servers,
                gathering: None,
                attempt: None,
                direct: None,
                timer: None,
                events: Vec::new(),
                stopped: false,
            })),
            listener: Rc::new(listener),
        };
        paths.pump();
        paths
    }

    /// Sends a message on the session's current path: the DataChannel once the session
    /// moved onto it, else the WebSocket. A DataChannel that refuses the frame counts as
    /// closed: the fallback resends the frame (it is kept) on the relay.
    pub fn send(&self, msg: &ClientMsg) -> Result<(), String> {
        let (connector, direct) = {
            let inner = self.inner.borrow();
            (inner.connector.clone(), inner.direct_peer())
        };
        let frame = connector.seal(msg)?;
        match direct {
            Some((number, peer)) => {
                if let Err(why) = peer.send(&frame) {
                    self.input(|up, now| up.handle_closed(number, &why, now));
                }
                Ok(())
            }
            None => connector.send_frame(&frame),
        }
    }

    /// A signalling message from the host (delivered by the channel, from either path).
    pub fn handle_signal(&self, msg: &ServerMsg) {
        match msg {
            ServerMsg::RtcAnswer { attempt, sdp, nat } => {
                let (attempt, nat) = (*attempt, *nat);
                self.input(|up, now| up.handle_answer(attempt, nat, now));
                let Some(peer) = self.peer_of(attempt) else {
                    return;
                };
                let this = self.weak();
                let sdp = sdp.clone();
                wasm_bindgen_futures::spawn_local(async move {
                    if let Err(why) = peer.accept_answer(&sdp).await {
                        if let Some(p) = this.upgrade() {
                            p.input(|up, now| up.handle_closed(attempt, &why, now));
                        }
                    }
                });
            }
            ServerMsg::RtcUnavailable { attempt, reason } => {
                let attempt = *attempt;
                self.input(|up, now| up.handle_unavailable(attempt, reason, now));
            }
            ServerMsg::Direct { attempt, path } => {
                let (attempt, path) = (*attempt, *path);
                let proven = matches!(
                    &self.inner.borrow().attempt,
                    Some(a) if a.number == attempt && a.proven
                );
                // `direct` is only believed from the DataChannel it names.
                if proven {
                    self.input(|up, now| up.handle_open(attempt, path, now));
                }
            }
            _ => {}
        }
    }

    /// Closes the peer connection and the timer; no further events.
    pub fn stop(&self) {
        let mut inner = self.inner.borrow_mut();
        inner.stopped = true;
        if let Some(t) = inner.timer.take() {
            t.clear();
        }
        let dead = inner.attempt.take().map(|a| a.peer);
        drop(inner);
        bury(dead);
    }

    /// One input to the policy at the current time, then its actions.
    fn input(&self, f: impl FnOnce(&mut Upgrade, u64)) {
        {
            let mut inner = self.inner.borrow_mut();
            if inner.stopped {
                return;
            }
            f(&mut inner.up, now_ms());
        }
        self.pump();
    }

    fn peer_of(&self, number: u32) -> Option<Rc<DirectPeer>> {
        match &self.inner.borrow().attempt {
            Some(a) if a.number == number => Some(a.peer.clone()),
            _ => None,
        }
    }

    /// Executes the policy's actions until it is idle, re-arms the timer, then hands the
    /// events to the page with no borrow held.
    fn pump(&self) {
        loop {
            let action = {
                let mut inner = self.inner.borrow_mut();
                if inner.stopped {
                    return;
                }
                inner.up.poll_action()
            };
            let Some(action) = action else { break };
            self.execute(action);
        }
        self.arm_timer();
        let events = std::mem::take(&mut self.inner.borrow_mut().events);
        for ev in events {
            (self.listener)(ev);
        }
    }

    fn execute(&self, action: Action) {
        let connector = self.inner.borrow().connector.clone();
        match action {
            Action::EnableResend => {
                connector.with_channel(|c| c.enable_resend());
            }
            Action::StartAttempt { attempt } => self.start_attempt(attempt),
            Action::CancelAttempt { attempt } => self.cancel(attempt),
            Action::UseDirect { attempt, .. } => self.inner.borrow_mut().direct = Some(attempt),
            Action::Fallback { attempt, .. } => self.fall_back(&connector, attempt),
            Action::SendPing { attempt } => {
                if let Some(peer) = self.peer_of(attempt) {
                    // A ping that cannot go out is a dead path; liveness notices it.
                    let _ = peer.send(&[PING]);
                }
            }
            Action::FlushAck => self.flush_ack(&connector),
            Action::Event(ev) => self.inner.borrow_mut().events.push(ev),
        }
    }

    /// Creates the peer connection and, once gathered, sends the offer on the relay.
    fn start_attempt(&self, number: u32) {
        let stun = {
            let mut inner = self.inner.borrow_mut();
            inner.gathering = Some(number);
            inner.stun_servers.clone()
        };
        let this = self.weak();
        let events: crate::rtc::Listener = Rc::new(move |ev| {
            if let Some(p) = this.upgrade() {
                p.on_direct(number, ev);
            }
        });
        let this = self.weak();
        wasm_bindgen_futures::spawn_local(async move {
            let offered = DirectPeer::offer(&stun, events).await;
            let Some(p) = this.upgrade() else { return };
            let still_wanted = p.inner.borrow().gathering == Some(number);
            match offered {
                // Gathering ran past the policy's deadline: the attempt is over already.
                Ok((peer, _)) if !still_wanted => bury(Some(Rc::new(peer))),
                Ok((peer, sdp)) => {
                    let connector = {
                        let mut inner = p.inner.borrow_mut();
                        inner.gathering = None;
                        let old = inner.attempt.replace(Attempt {
                            number,
                            peer: Rc::new(peer),
                            proven: false,
                        });
                        bury(old.map(|a| a.peer));
                        inner.connector.clone()
                    };
                    let offer = ClientMsg::RtcOffer {
                        attempt: number,
                        sdp,
                    };
                    match connector.send(&offer) {
                        Ok(()) => p.input(|up, now| up.handle_offer_sent(number, now)),
                        Err(why) => p.input(|up, now| up.handle_closed(number, &why, now)),
                    }
                }
                Err(why) => {
                    p.inner.borrow_mut().gathering = None;
                    p.input(|up, now| up.handle_closed(number, &why, now));
                }
            }
        });
    }

    /// One event of attempt `number`'s DataChannel.
    fn on_direct(&self, number: u32, ev: DirectEvent) {
        match ev {
            // The path works; the session moves when the host's `direct` proves it.
            DirectEvent::Open => {}
            DirectEvent::Message(bytes) => {
                self.input(|up, now| up.handle_inbound_direct(number, now));
                match bytes.as_slice() {
                    [PING] => {
                        if let Some(peer) = self.peer_of(number) {
                            let _ = peer.send(&[PONG]);
                        }
                    }
                    [PONG] => {}
                    _ => self.open_direct_frame(number, bytes),
                }
            }
            DirectEvent::Closed(why) => self.input(|up, now| up.handle_closed(number, &why, now)),
        }
    }

    /// A sealed frame from the DataChannel: opened by the session's one channel (its
    /// messages reach the page like the WebSocket's); a frame that opens proves the
    /// DataChannel carries this session.
    fn open_direct_frame(&self, number: u32, frame: Vec<u8>) {
        if self.peer_of(number).is_none() {
            return;
        }
        if let Some(a) = self.inner.borrow_mut().attempt.as_mut() {
            // Marked before the frame is opened: the frame may be `direct` itself.
            a.proven = true;
        }
        let connector = self.inner.borrow().connector.clone();
        if connector.open_frame(frame).is_err() {
            // The channel refused it: the session ends (the connector said why).
            if let Some(a) = self.inner.borrow_mut().attempt.as_mut() {
                a.proven = false;
            }
        }
    }

    fn cancel(&self, number: u32) {
        let mut inner = self.inner.borrow_mut();
        if inner.gathering == Some(number) {
            inner.gathering = None;
        }
        if inner.attempt.as_ref().is_some_and(|a| a.number == number) {
            let dead = inner.attempt.take().map(|a| a.peer);
            drop(inner);
            bury(dead);
        }
    }

    /// Back to the relay: resend what the peer has not acknowledged, then send there.
    fn fall_back(&self, connector: &Connector, number: u32) {
        self.inner.borrow_mut().direct = None;
        self.cancel(number);
        match connector.with_channel(|c| c.resend_frames()) {
            Some(Ok(frames)) => {
                for f in frames {
                    if connector.send_frame(&f).is_err() {
                        break;
                    }
                }
            }
            Some(Err(e)) => connector.end(format!("could not move back to the relay: {e}")),
            None => {}
        }
    }

    /// A pure ack on the current path, if one is due.
    fn flush_ack(&self, connector: &Connector) {
        let Some(Ok(Some(frame))) = connector.with_channel(|c| c.seal_ack()) else {
            return;
        };
        let direct = self.inner.borrow().direct_peer();
        match direct {
            Some((_, peer)) => {
                let _ = peer.send(&frame);
            }
            None => {
                let _ = connector.send_frame(&frame);
            }
        }
    }

    fn arm_timer(&self) {
        let mut inner = self.inner.borrow_mut();
        if let Some(t) = inner.timer.take() {
            t.clear();
        }
        let Some(at) = inner.up.poll_timeout() else {
            return;
        };
        let this = self.weak();
        inner.timer = leptos::prelude::set_timeout_with_handle(
            move || {
                if let Some(p) = this.upgrade() {
                    p.input(|up, now| up.handle_timeout(now));
                }
            },
            Duration::from_millis(at.saturating_sub(now_ms())),
        )
        .ok();
    }

    fn weak(&self) -> WeakPaths {
        WeakPaths {
            inner: Rc::downgrade(&self.inner),
            listener: self.listener.clone(),
        }
    }
}

impl Inner {
    /// The DataChannel the session sends on, if it moved onto one.
    fn direct_peer(&self) -> Option<(u32, Rc<DirectPeer>)> {
        let number = self.direct?;
        let a = self.attempt.as_ref().filter(|a| a.number == number)?;
        Some((number, a.peer.clone()))
    }
}

/// Closes a peer connection now (no more events) and releases it on the next microtask:
/// its own callback may be on the JS stack right now (a fallback decided inside a
/// DataChannel event).
fn bury(dead: Option<Rc<DirectPeer>>) {
    if let Some(dead) = dead {
        dead.close();
        leptos::prelude::queue_microtask(move || drop(dead));
    }
}

/// A non-owning handle for JS callbacks and futures, so they do not keep the session alive.
struct WeakPaths {
    inner: Weak<RefCell<Inner>>,
    listener: Listener,
}

impl WeakPaths {
    fn upgrade(&self) -> Option<SessionPaths> {
        let inner = self.inner.upgrade()?;
        if inner.borrow().stopped {
            return None;
        }
        Some(SessionPaths {
            inner,
            listener: self.listener.clone(),
        })
    }
}
