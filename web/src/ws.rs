//! Browser shell for the shared racing policy ([`atmosphere_shared::racing::Race`]) and the
//! mesh handshake ([`atmosphere_shared::handshake`]): it executes the race's outputs with DOM
//! `WebSocket`s and `setTimeout`, runs the client side of the handshake on each attempt's
//! socket, feeds socket events back in, and keeps the winning socket and its
//! [`SecureChannel`] as the mesh session. Every policy decision (order, stagger, deadlines,
//! what counts as success, when to stop), what the client proves and whom it expects
//! ([`JoinPlan`]) and every check of the host live in `shared`; this file only does I/O.
//!
//! One attempt, step by step ([`Stage`]): the socket opens (`binaryType = "arraybuffer"`);
//! message 1 goes out as one binary frame; the first binary frame back is message 2, which
//! must prove the expected host before message 3 (the encrypted join request) is sent;
//! then the host's sealed `joined` or `error`. A text frame before the channel exists is an
//! unauthenticated notice (the relay's `host_offline`, …): the attempt fails, never finally
//! ([`FailReason::from_plaintext_notice`]). After the channel exists every frame is sealed;
//! a text frame or a frame that does not open ends the attempt or the session.
//!
//! Callbacks never run the UI while the shell's state is borrowed: events are collected
//! first and handed to the listener afterwards, so a listener may call back into the shell.

use crate::random;
use atmosphere_shared::channel::SecureChannel;
use atmosphere_shared::credential::{DeviceCredential, JoinPlan};
use atmosphere_shared::handshake::{ClientHandshake, Entropy, HostIdentity};
use atmosphere_shared::racing::{AttemptId, FailReason, Outcome, Output, Policy, Race, RaceEvent};
use atmosphere_shared::wire::{ClientMsg, Joined, ServerMsg, MAX_FRAME_BYTES};
use atmosphere_shared::{Endpoints, PathKind};
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::{Rc, Weak};
use std::time::Duration;
use wasm_bindgen::closure::Closure;
use wasm_bindgen::JsCast;
use web_sys::{BinaryType, CloseEvent, MessageEvent, WebSocket};

/// What the page learns from the shell.
#[derive(Debug, Clone, PartialEq)]
pub enum ShellEvent {
    /// A step of the race (trying, failed, connected, all failed, fatal).
    Race(RaceEvent),
    /// The race was won: the host proved its mesh and answered `joined` on `path`; the
    /// socket is now the session. `credential` is what to store: pinned to the mesh id the
    /// host proved, with this device's key (`endpoints` empty).
    Joined {
        path: PathKind,
        elapsed_ms: u64,
        joined: Joined,
        credential: DeviceCredential,
    },
    /// A frame from the host on the live session (opened from the channel: the host's word).
    Frame(ServerMsg),
    /// The session ended (host stopped, network changed, the channel broke, …).
    SessionClosed { reason: String },
}

type Listener = Rc<dyn Fn(ShellEvent)>;

/// Where one socket is in the handshake.
enum Stage {
    /// Opening; message 1 goes out when it opens.
    Connecting,
    /// Message 1 sent; waiting for the host's message 2. (Boxed: the Noise state is large
    /// and only one stage at a time holds it.)
    AwaitingHost(Box<ClientHandshake>),
    /// The host proved the expected mesh and message 3 (the join request) is sent; waiting
    /// for the sealed `joined` or `error`.
    AwaitingVerdict {
        channel: SecureChannel,
        host: HostIdentity,
    },
    /// The mesh session: every frame either way is sealed.
    Live(SecureChannel),
    /// The attempt is over (it failed or its channel broke); later frames are ignored.
    Over,
}

/// One frame as it arrived.
enum Frame {
    Text(String),
    Binary(Vec<u8>),
}

impl Frame {
    /// The frame of `ev`, refused above [`MAX_FRAME_BYTES`] before a binary one is copied.
    fn read(ev: &MessageEvent) -> Result<Frame, String> {
        let data = ev.data();
        let frame = if let Some(text) = data.as_string() {
            Frame::Text(text)
        } else if let Some(buf) = data.dyn_ref::<js_sys::ArrayBuffer>() {
            if buf.byte_length() as usize > MAX_FRAME_BYTES {
                return Err(format!(
                    "frame of {} bytes exceeds {MAX_FRAME_BYTES}",
                    buf.byte_length()
                ));
            }
            Frame::Binary(js_sys::Uint8Array::new(buf).to_vec())
        } else {
            return Err("a frame that is neither text nor binary".into());
        };
        match &frame {
            Frame::Text(t) if t.len() > MAX_FRAME_BYTES => Err(format!(
                "frame of {} bytes exceeds {MAX_FRAME_BYTES}",
                t.len()
            )),
            _ => Ok(frame),
        }
    }
}

/// What one frame means for its attempt or session.
enum Step {
    /// Nothing for the race or the page (message 3 went out, or an ignored frame).
    Wait,
    /// The attempt failed.
    Fail(FailReason),
    /// The host answered `joined` through the channel.
    Joined(Joined, HostIdentity),
    /// The messages one frame delivered on the live session (usually one; none for a pure
    /// ack or a duplicate; several when it filled a gap).
    Frames(Vec<ServerMsg>),
    /// The live session cannot go on (its channel broke).
    EndSession(String),
}

/// Why a sealed frame gave no message.
enum Unsealed {
    /// The channel refused it (altered, cut off, from another session): nothing after can
    /// be trusted.
    Broken(String),
    /// It opened, but is not a message this page knows (a newer host's frame type).
    Unknown(String),
}

/// Opens one sealed frame: the next message it makes ready, `None` for a pure ack, a
/// duplicate, or a frame that waits for an earlier one. Messages it unblocked besides stay
/// in the channel for [`unseal_ready`].
fn unseal(channel: &mut SecureChannel, frame: &[u8]) -> Result<Option<ServerMsg>, Unsealed> {
    let plain = channel
        .open(frame)
        .map_err(|e| Unsealed::Broken(format!("the encrypted channel failed: {e}")))?;
    plain.map(|p| parse_server(&p)).transpose()
}

/// The messages already delivered in order and not taken yet; unknown ones are skipped (a
/// newer host may send frame types this page does not know).
fn unseal_ready(channel: &mut SecureChannel) -> Vec<ServerMsg> {
    std::iter::from_fn(|| channel.pop_ready())
        .filter_map(|p| parse_server(&p).ok())
        .collect()
}

fn parse_server(plain: &[u8]) -> Result<ServerMsg, Unsealed> {
    serde_json::from_slice(plain).map_err(|e| Unsealed::Unknown(format!("unexpected frame: {e}")))
}

/// One open socket and the JS callbacks bound to it (dropped together).
struct Sock {
    ws: WebSocket,
    path: PathKind,
    opened: bool,
    stage: Stage,
    _on_open: Closure<dyn FnMut()>,
    _on_message: Closure<dyn FnMut(MessageEvent)>,
    _on_close: Closure<dyn FnMut(CloseEvent)>,
}

impl Sock {
    fn shut(&self) {
        self.ws.set_onopen(None);
        self.ws.set_onmessage(None);
        self.ws.set_onclose(None);
        self.ws.set_onerror(None);
        let _ = self.ws.close();
    }

    /// Message 1 of `plan` with fresh entropy, sent as one binary frame.
    fn send_hello(&mut self, plan: &JoinPlan) -> Result<(), FailReason> {
        let entropy = random::bytes32().map_err(|e| FailReason::Connect(e.to_string()))?;
        let (client, msg1) = plan
            .start(self.path, Entropy::new(entropy))
            .map_err(|e| FailReason::Protocol(format!("could not start the handshake: {e}")))?;
        self.ws
            .send_with_u8_array(&msg1)
            .map_err(|_| FailReason::Connect("could not send the handshake".into()))?;
        self.stage = Stage::AwaitingHost(Box::new(client));
        Ok(())
    }

    /// Advances this socket's handshake or session by one frame.
    fn step(&mut self, frame: Frame) -> Step {
        match (std::mem::replace(&mut self.stage, Stage::Over), frame) {
            (Stage::Over, _) => Step::Wait,
            // Before the channel exists, text is anyone's word (the relay, the path): a
            // notice that fails this attempt, never finally.
            (Stage::Connecting | Stage::AwaitingHost(_), Frame::Text(text)) => {
                Step::Fail(FailReason::from_plaintext_notice(&text))
            }
            (Stage::Connecting, Frame::Binary(_)) => Step::Fail(FailReason::Protocol(
                "a frame arrived before the handshake started".into(),
            )),
            (Stage::AwaitingHost(client), Frame::Binary(msg2)) => {
                match client.read_host_hello(&msg2) {
                    // Not the expected host: it gets nothing more, not even message 3.
                    Err(e) => Step::Fail(FailReason::NotTheHost(e.to_string())),
                    Ok(done) => {
                        if self.ws.send_with_u8_array(&done.message).is_err() {
                            return Step::Fail(FailReason::Connect(
                                "could not send the join request".into(),
                            ));
                        }
                        self.stage = Stage::AwaitingVerdict {
                            channel: done.channel,
                            host: done.host,
                        };
                        Step::Wait
                    }
                }
            }
            (Stage::AwaitingVerdict { .. }, Frame::Text(_)) => Step::Fail(FailReason::Protocol(
                "a plaintext frame arrived after the handshake".into(),
            )),
            (Stage::AwaitingVerdict { mut channel, host }, Frame::Binary(sealed)) => {
                // Through the channel: the host's own word, final if its code is.
                match unseal(&mut channel, &sealed).map(|m| m.map(FailReason::verdict)) {
                    Ok(None) => {
                        self.stage = Stage::AwaitingVerdict { channel, host };
                        Step::Wait
                    }
                    Ok(Some(Ok(joined))) => {
                        self.stage = Stage::Live(channel);
                        Step::Joined(joined, host)
                    }
                    Ok(Some(Err(reason))) => Step::Fail(reason),
                    Err(Unsealed::Broken(why) | Unsealed::Unknown(why)) => {
                        Step::Fail(FailReason::Protocol(why))
                    }
                }
            }
            // Text on the encrypted session is not the host's: end the session rather
            // than act on it.
            (Stage::Live(_), Frame::Text(_)) => Step::EndSession(
                "protocol error: a plaintext frame arrived on the encrypted session".into(),
            ),
            (Stage::Live(mut channel), Frame::Binary(sealed)) => {
                let first = match unseal(&mut channel, &sealed) {
                    Ok(msg) => msg,
                    // A newer host may send frame types this page does not know.
                    Err(Unsealed::Unknown(_)) => None,
                    Err(Unsealed::Broken(why)) => return Step::EndSession(why),
                };
                let mut msgs: Vec<ServerMsg> = first.into_iter().collect();
                msgs.extend(unseal_ready(&mut channel));
                self.stage = Stage::Live(channel);
                Step::Frames(msgs)
            }
        }
    }
}

struct Inner {
    race: Race,
    plan: JoinPlan,
    sockets: HashMap<AttemptId, Sock>,
    /// The attempt that won; its socket is the session.
    session: Option<AttemptId>,
    timer: Option<leptos::prelude::TimeoutHandle>,
    /// Sockets being dropped: their closures may be on the JS stack right now, so they are
    /// released on the next microtask rather than inside their own callback.
    graveyard: Vec<Sock>,
    pending: Vec<ShellEvent>,
    stopped: bool,
}

/// A running race and, once won, the mesh session. Dropping the last handle does not
/// close anything by itself; call [`Connector::stop`].
#[derive(Clone)]
pub struct Connector {
    inner: Rc<RefCell<Inner>>,
    listener: Listener,
}

/// Milliseconds on the page's monotonic clock (`performance.now()`).
pub fn now_ms() -> u64 {
    web_sys::window()
        .and_then(|w| w.performance())
        .map(|p| p.now().max(0.0) as u64)
        .unwrap_or_else(|| js_sys::Date::now() as u64)
}

impl Connector {
    /// Starts racing `endpoints` under `policy`, every attempt running the handshake of
    /// `plan`; `listener` receives every [`ShellEvent`].
    pub fn start(
        endpoints: &Endpoints,
        policy: Policy,
        plan: JoinPlan,
        listener: impl Fn(ShellEvent) + 'static,
    ) -> Connector {
        let race = Race::from_endpoints(endpoints, policy, now_ms());
        let c = Connector {
            inner: Rc::new(RefCell::new(Inner {
                race,
                plan,
                sockets: HashMap::new(),
                session: None,
                timer: None,
                graveyard: Vec::new(),
                pending: Vec::new(),
                stopped: false,
            })),
            listener: Rc::new(listener),
        };
        c.pump();
        c
    }

    /// Sends a message on the live session, sealed into one binary frame. Errors are plain
    /// sentences for the UI.
    pub fn send(&self, msg: &ClientMsg) -> Result<(), String> {
        let frame = self.seal(msg)?;
        self.send_frame(&frame)
    }

    /// Seals a message into one frame of the live session's channel (sent by the caller on
    /// whichever path the session uses).
    pub fn seal(&self, msg: &ClientMsg) -> Result<Vec<u8>, String> {
        let json = serde_json::to_vec(msg).map_err(|e| e.to_string())?;
        self.with_channel(|channel| channel.seal(&json).map_err(|e| e.to_string()))
            .ok_or_else(|| "not connected".to_string())?
    }

    /// Sends one already sealed frame on the session's WebSocket.
    pub fn send_frame(&self, frame: &[u8]) -> Result<(), String> {
        let inner = self.inner.borrow();
        let sock = inner.session.and_then(|id| inner.sockets.get(&id));
        let Some(sock) = sock else {
            return Err("not connected".into());
        };
        sock.ws
            .send_with_u8_array(frame)
            .map_err(|_| "the connection is closed".to_string())
    }

    /// Runs `f` on the live session's channel (`None` when there is no session).
    pub fn with_channel<R>(&self, f: impl FnOnce(&mut SecureChannel) -> R) -> Option<R> {
        let mut inner = self.inner.borrow_mut();
        let id = inner.session?;
        match inner.sockets.get_mut(&id) {
            Some(Sock {
                stage: Stage::Live(channel),
                ..
            }) => Some(f(channel)),
            _ => None,
        }
    }

    /// Opens one frame of the session that arrived on another path (the direct
    /// DataChannel) and delivers its messages like the WebSocket's
    /// ([`ShellEvent::Frame`]). `Ok` when it decrypted (even if it delivered nothing: a
    /// duplicate, a pure ack, or a frame waiting for an earlier one); a frame that does not
    /// open ends the session, like one on the WebSocket.
    pub fn open_frame(&self, frame: Vec<u8>) -> Result<(), String> {
        let step = {
            let mut inner = self.inner.borrow_mut();
            let Some(id) = inner.session else {
                return Err("not connected".into());
            };
            match inner.sockets.get_mut(&id) {
                Some(sock) => (id, sock.step(Frame::Binary(frame))),
                None => return Err("not connected".into()),
            }
        };
        match step {
            (_, Step::Frames(msgs)) => {
                let mut inner = self.inner.borrow_mut();
                inner
                    .pending
                    .extend(msgs.into_iter().map(ShellEvent::Frame));
                drop(inner);
                self.deliver();
                Ok(())
            }
            (id, Step::EndSession(reason)) => {
                self.end_session(id, reason.clone());
                Err(reason)
            }
            (_, _) => Ok(()),
        }
    }

    /// Ends the live session with `reason` (e.g. a resend that cannot be done); the page
    /// gets [`ShellEvent::SessionClosed`].
    pub fn end(&self, reason: String) {
        let id = self.inner.borrow().session;
        if let Some(id) = id {
            self.end_session(id, reason);
        }
    }

    /// Closes every socket and timer; no further events are delivered.
    pub fn stop(&self) {
        let mut inner = self.inner.borrow_mut();
        inner.stopped = true;
        if let Some(t) = inner.timer.take() {
            t.clear();
        }
        let socks: Vec<Sock> = inner.sockets.drain().map(|(_, s)| s).collect();
        for s in &socks {
            s.shut();
        }
        inner.graveyard.extend(socks);
        drop(inner);
        self.bury();
    }

    /// Runs the machine's outputs until it is idle, re-arms the timer, then delivers the
    /// collected events with no borrow held.
    fn pump(&self) {
        {
            let mut inner = self.inner.borrow_mut();
            if inner.stopped {
                return;
            }
            while let Some(out) = inner.race.poll_output() {
                match out {
                    Output::Start { id, path, url } => self.open(&mut inner, id, path, &url),
                    Output::Cancel { id } => {
                        if let Some(s) = inner.sockets.remove(&id) {
                            s.shut();
                            inner.graveyard.push(s);
                        }
                    }
                    Output::Event(ev) => inner.pending.push(ShellEvent::Race(ev)),
                }
            }
            if let Some(t) = inner.timer.take() {
                t.clear();
            }
            if let Some(at) = inner.race.poll_timeout() {
                let delay = at.saturating_sub(now_ms());
                let this = self.weak_clone();
                inner.timer = leptos::prelude::set_timeout_with_handle(
                    move || {
                        if let Some(c) = this.upgrade() {
                            c.inner.borrow_mut().race.handle_timeout(now_ms());
                            c.pump();
                        }
                    },
                    Duration::from_millis(delay),
                )
                .ok();
            }
        }
        self.bury();
        self.deliver();
    }

    fn deliver(&self) {
        let events = std::mem::take(&mut self.inner.borrow_mut().pending);
        for ev in events {
            (self.listener)(ev);
        }
    }

    fn bury(&self) {
        let dead = std::mem::take(&mut self.inner.borrow_mut().graveyard);
        if !dead.is_empty() {
            leptos::prelude::queue_microtask(move || drop(dead));
        }
    }

    fn weak_clone(&self) -> WeakConnector {
        WeakConnector {
            inner: Rc::downgrade(&self.inner),
            listener: self.listener.clone(),
        }
    }

    /// Opens the socket for one attempt; a synchronous refusal (bad URL, blocked scheme)
    /// is reported as that attempt's failure right away.
    fn open(&self, inner: &mut Inner, id: AttemptId, path: PathKind, url: &str) {
        let ws = match WebSocket::new(url) {
            Ok(ws) => ws,
            Err(e) => {
                let why = js_sys::Reflect::get(&e, &"message".into())
                    .ok()
                    .and_then(|m| m.as_string())
                    .unwrap_or_else(|| "the browser refused this address".into());
                inner
                    .race
                    .handle_failed(id, FailReason::Connect(why), now_ms());
                return;
            }
        };
        // Handshake and session frames arrive as ArrayBuffers (not Blobs): readable at once.
        ws.set_binary_type(BinaryType::Arraybuffer);
        let this = self.weak_clone();
        let on_open = Closure::<dyn FnMut()>::new(move || {
            if let Some(c) = this.upgrade() {
                c.on_open(id);
            }
        });
        let this = self.weak_clone();
        let on_message = Closure::<dyn FnMut(MessageEvent)>::new(move |ev: MessageEvent| {
            if let Some(c) = this.upgrade() {
                c.on_message(id, ev);
            }
        });
        let this = self.weak_clone();
        let on_close = Closure::<dyn FnMut(CloseEvent)>::new(move |ev: CloseEvent| {
            if let Some(c) = this.upgrade() {
                c.on_close(id, ev);
            }
        });
        ws.set_onopen(Some(on_open.as_ref().unchecked_ref()));
        ws.set_onmessage(Some(on_message.as_ref().unchecked_ref()));
        ws.set_onclose(Some(on_close.as_ref().unchecked_ref()));
        inner.sockets.insert(
            id,
            Sock {
                ws,
                path,
                opened: false,
                stage: Stage::Connecting,
                _on_open: on_open,
                _on_message: on_message,
                _on_close: on_close,
            },
        );
    }

    /// The socket is open: message 1 goes out.
    fn on_open(&self, id: AttemptId) {
        let sent = {
            let mut guard = self.inner.borrow_mut();
            let inner = &mut *guard;
            let Some(sock) = inner.sockets.get_mut(&id) else {
                return;
            };
            sock.opened = true;
            sock.send_hello(&inner.plan)
        };
        if let Err(reason) = sent {
            self.fail(id, reason);
        }
    }

    fn on_message(&self, id: AttemptId, ev: MessageEvent) {
        let step = match Frame::read(&ev) {
            Ok(frame) => {
                let mut inner = self.inner.borrow_mut();
                let Some(sock) = inner.sockets.get_mut(&id) else {
                    return;
                };
                sock.step(frame)
            }
            Err(why) if self.inner.borrow().session == Some(id) => {
                Step::EndSession(format!("protocol error: {why}"))
            }
            Err(why) => Step::Fail(FailReason::Protocol(why)),
        };
        match step {
            Step::Wait => {}
            Step::Fail(reason) => self.fail(id, reason),
            Step::Joined(joined, host) => self.joined(id, joined, &host),
            Step::Frames(msgs) if msgs.is_empty() => {}
            Step::Frames(msgs) => {
                let mut inner = self.inner.borrow_mut();
                inner
                    .pending
                    .extend(msgs.into_iter().map(ShellEvent::Frame));
                drop(inner);
                self.deliver();
            }
            Step::EndSession(reason) => self.end_session(id, reason),
        }
    }

    /// Attempt `id` got the host's `joined`: if it won the race, its socket is the session.
    fn joined(&self, id: AttemptId, joined: Joined, host: &HostIdentity) {
        {
            let mut inner = self.inner.borrow_mut();
            inner.race.handle_joined(id, now_ms());
            if let Some(Outcome::Connected {
                id: won,
                path,
                elapsed_ms,
            }) = inner.race.outcome().cloned()
            {
                if won == id {
                    inner.session = Some(id);
                    let credential = inner.plan.credential(host, &joined);
                    // Queued behind the race's own `Connected` event by pump().
                    let ev = ShellEvent::Joined {
                        path,
                        elapsed_ms,
                        joined,
                        credential,
                    };
                    drop(inner);
                    self.pump();
                    self.inner.borrow_mut().pending.push(ev);
                    return self.deliver();
                }
            }
        }
        self.pump();
    }

    fn on_close(&self, id: AttemptId, ev: CloseEvent) {
        let (is_session, opened) = {
            let inner = self.inner.borrow();
            (
                inner.session == Some(id),
                inner.sockets.get(&id).is_some_and(|s| s.opened),
            )
        };
        if is_session {
            let reason = if ev.reason().is_empty() {
                format!("connection closed (code {})", ev.code())
            } else {
                ev.reason()
            };
            return self.end_session(id, reason);
        }
        // Browsers deliberately hide why a WebSocket could not connect (code 1006, no
        // reason), so the sentence names the likely causes.
        let reason = if opened {
            FailReason::ClosedBeforeJoined
        } else {
            FailReason::Connect(
                "could not connect (refused, unreachable or not an Atmosphere host)".into(),
            )
        };
        self.fail(id, reason);
    }

    /// Closes the session socket `id` and tells the page why.
    fn end_session(&self, id: AttemptId, reason: String) {
        {
            let mut inner = self.inner.borrow_mut();
            if inner.session != Some(id) {
                return;
            }
            if let Some(s) = inner.sockets.remove(&id) {
                s.shut();
                inner.graveyard.push(s);
            }
            inner.session = None;
            inner.pending.push(ShellEvent::SessionClosed { reason });
        }
        self.bury();
        self.deliver();
    }

    /// Drops an attempt's socket and reports its failure to the machine.
    fn fail(&self, id: AttemptId, reason: FailReason) {
        {
            let mut inner = self.inner.borrow_mut();
            if let Some(s) = inner.sockets.remove(&id) {
                s.shut();
                inner.graveyard.push(s);
            }
            inner.race.handle_failed(id, reason, now_ms());
        }
        self.pump();
    }
}

/// A non-owning handle used inside JS callbacks, so sockets and timers do not keep the
/// shell alive in a reference cycle.
struct WeakConnector {
    inner: Weak<RefCell<Inner>>,
    listener: Listener,
}

impl WeakConnector {
    fn upgrade(&self) -> Option<Connector> {
        let inner = self.inner.upgrade()?;
        if inner.borrow().stopped {
            return None;
        }
        Some(Connector {
            inner,
            listener: self.listener.clone(),
        })
    }
}
