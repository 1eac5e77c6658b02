//! Browser shell for the shared racing policy ([`atmosphere_shared::racing::Race`]): it
//! executes the machine's outputs with DOM `WebSocket`s and `setTimeout`, feeds socket
//! events back in, and keeps the winning socket as the mesh session. All policy decisions
//! (order, stagger, deadlines, what counts as success, when to stop) and the `join` frame
//! ([`JoinCredential`]) live in `shared`; this file only does I/O.
//!
//! Callbacks never run the UI while the shell's state is borrowed: events are collected
//! first and handed to the listener afterwards, so a listener may call back into the shell.

use atmosphere_shared::racing::{AttemptId, FailReason, Outcome, Output, Policy, Race, RaceEvent};
use atmosphere_shared::wire::{ClientMsg, JoinCredential, Joined, ServerMsg, MAX_FRAME_BYTES};
use atmosphere_shared::{Endpoints, PathKind};
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::{Rc, Weak};
use std::time::Duration;
use wasm_bindgen::closure::Closure;
use wasm_bindgen::JsCast;
use web_sys::{CloseEvent, MessageEvent, WebSocket};

/// What the page learns from the shell.
#[derive(Debug, Clone, PartialEq)]
pub enum ShellEvent {
    /// A step of the race (trying, failed, connected, all failed, fatal).
    Race(RaceEvent),
    /// The race was won: the host's `joined` on `path`; the socket is now the session.
    Joined {
        path: PathKind,
        elapsed_ms: u64,
        joined: Joined,
    },
    /// A frame from the host on the live session.
    Frame(ServerMsg),
    /// The session socket closed (host stopped, network changed, …).
    SessionClosed { reason: String },
}

type Listener = Rc<dyn Fn(ShellEvent)>;

/// One open socket and the JS callbacks bound to it (dropped together).
struct Sock {
    ws: WebSocket,
    path: PathKind,
    opened: bool,
    /// The host answered with an error frame; the close that follows is not news.
    errored: bool,
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
}

struct Inner {
    race: Race,
    credential: JoinCredential,
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
    /// Starts racing `endpoints` under `policy`; `listener` receives every [`ShellEvent`].
    pub fn start(
        endpoints: &Endpoints,
        policy: Policy,
        credential: JoinCredential,
        listener: impl Fn(ShellEvent) + 'static,
    ) -> Connector {
        let race = Race::from_endpoints(endpoints, policy, now_ms());
        let c = Connector {
            inner: Rc::new(RefCell::new(Inner {
                race,
                credential,
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

    /// Sends a frame on the live session. Errors are plain sentences for the UI.
    pub fn send(&self, msg: &ClientMsg) -> Result<(), String> {
        let inner = self.inner.borrow();
        let sock = inner
            .session
            .and_then(|id| inner.sockets.get(&id))
            .ok_or("not connected")?;
        let text = serde_json::to_string(msg).map_err(|e| e.to_string())?;
        if text.len() > MAX_FRAME_BYTES {
            return Err(format!(
                "message too large ({} bytes, limit {MAX_FRAME_BYTES})",
                text.len()
            ));
        }
        sock.ws
            .send_with_str(&text)
            .map_err(|_| "the connection is closed".to_string())
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
                errored: false,
                _on_open: on_open,
                _on_message: on_message,
                _on_close: on_close,
            },
        );
    }

    fn on_open(&self, id: AttemptId) {
        let mut inner = self.inner.borrow_mut();
        let frame = {
            let Some(sock) = inner.sockets.get(&id) else {
                return;
            };
            inner.credential.join_frame(sock.path)
        };
        let Some(sock) = inner.sockets.get_mut(&id) else {
            return;
        };
        sock.opened = true;
        if sock.ws.send_with_str(&frame).is_err() {
            drop(inner);
            self.fail(
                id,
                FailReason::Connect("could not send the join request".into()),
            );
        }
    }

    fn on_message(&self, id: AttemptId, ev: MessageEvent) {
        let Some(text) = ev.data().as_string() else {
            return self.protocol_error(id, "binary frame from the host");
        };
        if text.len() > MAX_FRAME_BYTES {
            return self.protocol_error(id, "frame too large");
        }
        let msg: ServerMsg = match serde_json::from_str(&text) {
            Ok(m) => m,
            // A newer host may send frame types this page does not know; after joining
            // they are ignored, before joining they mean "not a mesh host".
            Err(e) => return self.protocol_error(id, &format!("unexpected frame: {e}")),
        };
        let is_session = self.inner.borrow().session == Some(id);
        if is_session {
            self.inner.borrow_mut().pending.push(ShellEvent::Frame(msg));
            return self.deliver();
        }
        match msg {
            ServerMsg::Joined(joined) => {
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
                            // Queued behind the race's own `Connected` event by pump().
                            let ev = ShellEvent::Joined {
                                path,
                                elapsed_ms,
                                joined,
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
            ServerMsg::Error { code, message } => {
                if let Some(s) = self.inner.borrow_mut().sockets.get_mut(&id) {
                    s.errored = true;
                }
                self.fail(id, FailReason::Host { code, message });
            }
            other => self.protocol_error(id, &format!("expected `joined`, got {other:?}")),
        }
    }

    fn on_close(&self, id: AttemptId, ev: CloseEvent) {
        let (is_session, opened, errored) = {
            let inner = self.inner.borrow();
            let s = inner.sockets.get(&id);
            (
                inner.session == Some(id),
                s.is_some_and(|s| s.opened),
                s.is_some_and(|s| s.errored),
            )
        };
        if is_session {
            let reason = if ev.reason().is_empty() {
                format!("connection closed (code {})", ev.code())
            } else {
                ev.reason()
            };
            {
                let mut inner = self.inner.borrow_mut();
                if let Some(s) = inner.sockets.remove(&id) {
                    s.shut();
                    inner.graveyard.push(s);
                }
                inner.session = None;
                inner.pending.push(ShellEvent::SessionClosed { reason });
            }
            self.bury();
            return self.deliver();
        }
        if errored {
            return self.drop_socket(id);
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

    fn protocol_error(&self, id: AttemptId, what: &str) {
        if self.inner.borrow().session == Some(id) {
            return; // ignore unknown frames on a live session
        }
        self.fail(id, FailReason::Protocol(what.to_string()));
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

    fn drop_socket(&self, id: AttemptId) {
        {
            let mut inner = self.inner.borrow_mut();
            if let Some(s) = inner.sockets.remove(&id) {
                s.shut();
                inner.graveyard.push(s);
            }
        }
        self.bury();
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
