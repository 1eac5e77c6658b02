//! Browser shell for the direct path: one `RTCPeerConnection` with one DataChannel
//! (`"atmosphere-mesh"`, reliable and ordered), offered by the page to the host inside the
//! encrypted mesh session. This file only does I/O: when to try, when to give up, which
//! path the session uses and what a path is called are decided in `shared`
//! ([`atmosphere_shared::upgrade`]).
//!
//! Step by step: [`DirectPeer::offer`] creates the connection with the host's STUN servers,
//! creates the DataChannel *before* the offer (so the offer carries the SCTP section),
//! sets the local description and waits until ICE gathering is complete (non-trickle: the
//! offer the host gets already lists every candidate) or [`GATHER_DEADLINE_MS`] passes;
//! [`DirectPeer::accept_answer`] applies the host's answer; the DataChannel's open,
//! messages and close come back as [`DirectEvent`]s. Chromium hides its LAN addresses
//! behind mDNS `.local` names; the host ignores those and learns a peer-reflexive candidate
//! from the browser's first connectivity check, so nothing here needs to undo the hiding.

use atmosphere_shared::upgrade::DATA_CHANNEL_LABEL;
use std::cell::RefCell;
use std::rc::Rc;
use wasm_bindgen::closure::Closure;
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::JsFuture;
use web_sys::{
    MessageEvent, RtcConfiguration, RtcDataChannel, RtcDataChannelInit, RtcDataChannelType,
    RtcIceGatheringState, RtcIceServer, RtcPeerConnection, RtcPeerConnectionState, RtcSdpType,
    RtcSessionDescriptionInit,
};

/// How long the offer waits for ICE gathering (STUN answers) before it goes out with the
/// candidates found so far: a STUN server that does not answer must not hold up the upgrade.
pub const GATHER_DEADLINE_MS: i32 = 2_000;
/// The largest DataChannel message read: one channel frame (same bound as a WebSocket frame).
pub const MAX_MESSAGE_BYTES: usize = atmosphere_shared::wire::MAX_FRAME_BYTES;

/// What the direct path tells the page.
#[derive(Debug, Clone, PartialEq)]
pub enum DirectEvent {
    /// The DataChannel is open: the path works end to end (ICE and DTLS are done).
    Open,
    /// One DataChannel message.
    Message(Vec<u8>),
    /// The DataChannel or the connection closed or failed.
    Closed(String),
}

pub type Listener = Rc<dyn Fn(DirectEvent)>;

/// One offered peer connection and its DataChannel.
pub struct DirectPeer {
    pc: RtcPeerConnection,
    dc: RtcDataChannel,
    /// The callbacks must live as long as the connection; dropped with it.
    _closures: Vec<Closure<dyn FnMut(JsValue)>>,
    closed: Rc<RefCell<bool>>,
}

impl DirectPeer {
    /// Creates the connection and its DataChannel, and returns the complete offer SDP.
    /// `stun_servers` are `host:port` or `stun:host:port` strings.
    pub async fn offer(
        stun_servers: &[String],
        listener: Listener,
    ) -> Result<(DirectPeer, String), String> {
        let pc = new_connection(stun_servers)?;
        let init = RtcDataChannelInit::new();
        init.set_ordered(true);
        let dc = pc.create_data_channel_with_data_channel_dict(DATA_CHANNEL_LABEL, &init);
        dc.set_binary_type(RtcDataChannelType::Arraybuffer);
        let closed = Rc::new(RefCell::new(false));
        let closures = wire_events(&pc, &dc, listener, closed.clone());
        let peer = DirectPeer {
            pc,
            dc,
            _closures: closures,
            closed,
        };
        let offer = JsFuture::from(peer.pc.create_offer())
            .await
            .map_err(|e| format!("createOffer failed: {}", js_text(&e)))?;
        let sdp = js_sys::Reflect::get(&offer, &"sdp".into())
            .ok()
            .and_then(|v| v.as_string())
            .ok_or("createOffer gave no SDP")?;
        let local = RtcSessionDescriptionInit::new(RtcSdpType::Offer);
        local.set_sdp(&sdp);
        JsFuture::from(peer.pc.set_local_description(&local))
            .await
            .map_err(|e| format!("setLocalDescription failed: {}", js_text(&e)))?;
        peer.gathered().await;
        let sdp = peer
            .pc
            .local_description()
            .map(|d| d.sdp())
            .ok_or("no local description after gathering")?;
        Ok((peer, sdp))
    }

    /// Applies the host's answer; the DataChannel opens (or the connection fails) later.
    pub async fn accept_answer(&self, sdp: &str) -> Result<(), String> {
        let answer = RtcSessionDescriptionInit::new(RtcSdpType::Answer);
        answer.set_sdp(sdp);
        JsFuture::from(self.pc.set_remote_description(&answer))
            .await
            .map(|_| ())
            .map_err(|e| format!("the host's answer was refused: {}", js_text(&e)))
    }

    /// Sends one DataChannel message. Fails when the channel is not open.
    pub fn send(&self, bytes: &[u8]) -> Result<(), String> {
        self.dc
            .send_with_u8_array(bytes)
            .map_err(|e| format!("DataChannel send failed: {}", js_text(&e)))
    }

    /// Closes the channel and the connection (idempotent; no event follows).
    pub fn close(&self) {
        *self.closed.borrow_mut() = true;
        self.dc.close();
        self.pc.close();
    }

    /// Resolves when ICE gathering is complete or after [`GATHER_DEADLINE_MS`].
    async fn gathered(&self) {
        if self.pc.ice_gathering_state() == RtcIceGatheringState::Complete {
            return;
        }
        let resolver: Rc<RefCell<Option<js_sys::Function>>> = Rc::default();
        let done = js_sys::Promise::new(&mut |resolve, _| {
            if let Some(window) = web_sys::window() {
                let _ = window.set_timeout_with_callback_and_timeout_and_arguments_0(
                    &resolve,
                    GATHER_DEADLINE_MS,
                );
            }
            *resolver.borrow_mut() = Some(resolve);
        });
        let pc = self.pc.clone();
        let on_change = Closure::<dyn FnMut(JsValue)>::new(move |_| {
            if pc.ice_gathering_state() == RtcIceGatheringState::Complete {
                if let Some(resolve) = resolver.borrow().as_ref() {
                    let _ = resolve.call0(&JsValue::NULL);
                }
            }
        });
        self.pc
            .set_onicegatheringstatechange(Some(on_change.as_ref().unchecked_ref()));
        let _ = JsFuture::from(done).await;
        // Unhooked before the closure is dropped (here, not leaked).
        self.pc.set_onicegatheringstatechange(None);
        drop(on_change);
    }
}

impl Drop for DirectPeer {
    fn drop(&mut self) {
        self.close();
        self.dc.set_onopen(None);
        self.dc.set_onmessage(None);
        self.dc.set_onclose(None);
        self.pc.set_onconnectionstatechange(None);
    }
}

/// A peer connection that uses `stun_servers` for its reflexive candidates.
fn new_connection(stun_servers: &[String]) -> Result<RtcPeerConnection, String> {
    let config = RtcConfiguration::new();
    let servers = js_sys::Array::new();
    for s in stun_servers {
        let server = RtcIceServer::new();
        let url = if s.starts_with("stun:") {
            s.clone()
        } else {
            format!("stun:{s}")
        };
        server.set_urls_str(&url);
        servers.push(&server);
    }
    config.set_ice_servers(&servers);
    RtcPeerConnection::new_with_configuration(&config).map_err(|e| {
        format!(
            "this browser cannot open a peer connection: {}",
            js_text(&e)
        )
    })
}

/// Hooks the DataChannel's and the connection's events to `listener`.
fn wire_events(
    pc: &RtcPeerConnection,
    dc: &RtcDataChannel,
    listener: Listener,
    closed: Rc<RefCell<bool>>,
) -> Vec<Closure<dyn FnMut(JsValue)>> {
    let emit = {
        let closed = closed.clone();
        move |ev: DirectEvent| {
            if *closed.borrow() {
                return;
            }
            if matches!(ev, DirectEvent::Closed(_)) {
                *closed.borrow_mut() = true;
            }
            listener(ev);
        }
    };
    let emit = Rc::new(emit);
    let on_open = {
        let emit = emit.clone();
        Closure::<dyn FnMut(JsValue)>::new(move |_| emit(DirectEvent::Open))
    };
    let on_message = {
        let emit = emit.clone();
        Closure::<dyn FnMut(JsValue)>::new(move |ev: JsValue| {
            let Some(ev) = ev.dyn_ref::<MessageEvent>() else {
                return;
            };
            match ev.data().dyn_ref::<js_sys::ArrayBuffer>() {
                Some(buf) if buf.byte_length() as usize <= MAX_MESSAGE_BYTES => {
                    emit(DirectEvent::Message(js_sys::Uint8Array::new(buf).to_vec()))
                }
                Some(buf) => emit(DirectEvent::Closed(format!(
                    "a direct message of {} bytes exceeds {MAX_MESSAGE_BYTES}",
                    buf.byte_length()
                ))),
                None => emit(DirectEvent::Closed(
                    "a text message on the direct path".into(),
                )),
            }
        })
    };
    let on_close = {
        let emit = emit.clone();
        Closure::<dyn FnMut(JsValue)>::new(move |_| {
            emit(DirectEvent::Closed("the DataChannel closed".into()))
        })
    };
    let on_state = {
        let emit = emit.clone();
        let pc = pc.clone();
        Closure::<dyn FnMut(JsValue)>::new(move |_| match pc.connection_state() {
            RtcPeerConnectionState::Failed => {
                emit(DirectEvent::Closed("the direct connection failed".into()))
            }
            RtcPeerConnectionState::Closed => {
                emit(DirectEvent::Closed("the direct connection closed".into()))
            }
            _ => {}
        })
    };
    dc.set_onopen(Some(on_open.as_ref().unchecked_ref()));
    dc.set_onmessage(Some(on_message.as_ref().unchecked_ref()));
    dc.set_onclose(Some(on_close.as_ref().unchecked_ref()));
    pc.set_onconnectionstatechange(Some(on_state.as_ref().unchecked_ref()));
    vec![on_open, on_message, on_close, on_state]
}

/// A JS error as text, for messages.
fn js_text(e: &JsValue) -> String {
    e.as_string()
        .or_else(|| {
            js_sys::Reflect::get(e, &"message".into())
                .ok()
                .and_then(|m| m.as_string())
        })
        .unwrap_or_else(|| format!("{e:?}"))
}
