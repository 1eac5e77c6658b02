//! A mesh socket once the handshake is done: the WebSocket and its [`SecureChannel`], so
//! the attempt (waiting for the host's verdict) and the live session only ever see whole
//! [`ServerMsg`]s and [`ClientMsg`]s, never a frame to seal or open by hand.
//!
//! Every frame the host sends is one binary frame, opened with the channel into one JSON
//! `ServerMsg` (or nothing: a pure ack or a duplicate); every message this client sends is
//! sealed into one numbered binary frame (see [`atmosphere_shared::channel`]). A text frame on an established channel is a protocol
//! error that ends the socket: the host never sends one, so it came from something on the
//! path (a relay notice, an attacker), and it is not the host's word.
//!
//! After an upgrade to a direct path ([`crate::session_paths`]) sealed frames go on the
//! DataChannel instead, and frames from it are opened with [`SecureSocket::open_frame`]
//! through the same channel.
//!
//! Also the words for socket failures ([`stream_reason`], [`io_reason`]) that the attempt and
//! the live session share.

use super::attempt::Ws;
use crate::rtc::DirectSender;
use crate::session_paths::PathSocket;
use atmosphere_shared::channel::{ChannelError, SecureChannel};
use atmosphere_shared::racing::FailReason;
use atmosphere_shared::wire::{ClientMsg, ServerMsg};
use futures_util::{SinkExt, StreamExt};
use std::fmt;
use std::time::Duration;
use tokio_tungstenite::tungstenite::{self, Message};

/// How long a clean close may take before we just drop the socket.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// A mesh WebSocket whose handshake finished: every message through it is sealed.
pub(super) struct SecureSocket {
    ws: Ws,
    channel: SecureChannel,
    /// Set while the session runs over a DataChannel: sealed frames go there.
    direct: Option<DirectSender>,
}

/// Why [`SecureSocket::recv`] or [`SecureSocket::send`] failed. Only [`SocketError::Unreadable`]
/// and [`SocketError::TooLarge`] leave the socket usable; every other error ends it.
#[derive(Debug)]
pub(super) enum SocketError {
    /// The host (or the relay) sent a close frame, with its reason if it gave one.
    Closed(Option<String>),
    /// The connection ended without a close frame.
    Ended,
    /// The transport failed (reset, TLS, a frame over the size limit, …).
    Transport(tungstenite::Error),
    /// A frame did not open (altered, from another session, too far out of order) or the
    /// channel could not seal: the channel is broken for good.
    Channel(ChannelError),
    /// A text frame arrived on the secure channel.
    Plaintext,
    /// A frame opened fine but is not a message this build understands (e.g. an `error`
    /// with a newer code); the text says what it was. The channel is intact.
    Unreadable(String),
    /// A message too large for one sealed frame; nothing was sent.
    TooLarge { len: usize, max: usize },
}

impl fmt::Display for SocketError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SocketError::Closed(None) => f.write_str("the host closed the connection"),
            SocketError::Closed(Some(why)) => write!(f, "the host closed the connection: {why}"),
            SocketError::Ended => f.write_str("connection lost"),
            SocketError::Transport(e) => write!(f, "connection lost: {}", stream_reason(e)),
            SocketError::Channel(e) => write!(f, "protocol error: {e}"),
            SocketError::Plaintext => {
                f.write_str("protocol error: a plaintext frame arrived on the secure channel")
            }
            SocketError::Unreadable(what) => write!(f, "protocol error: {what}"),
            SocketError::TooLarge { len, max } => {
                write!(
                    f,
                    "a message of {len} bytes is over the limit of {max} bytes"
                )
            }
        }
    }
}

impl SocketError {
    /// The same failure while an attempt still waits for the host's verdict.
    pub(super) fn into_fail_reason(self) -> FailReason {
        match self {
            SocketError::Closed(_) | SocketError::Ended => FailReason::ClosedBeforeJoined,
            SocketError::Transport(e) => stream_reason(&e),
            SocketError::Channel(e) => FailReason::Protocol(e.to_string()),
            SocketError::Plaintext => {
                FailReason::Protocol("a plaintext frame arrived on the secure channel".into())
            }
            SocketError::Unreadable(what) => FailReason::Protocol(what),
            SocketError::TooLarge { .. } => FailReason::Protocol(self.to_string()),
        }
    }
}

impl SecureSocket {
    /// The socket `ws`, whose handshake produced `channel`.
    pub(super) fn new(ws: Ws, channel: SecureChannel) -> SecureSocket {
        SecureSocket {
            ws,
            channel,
            direct: None,
        }
    }

    /// The next message from the host. Cancel-safe: everything after the frame arrives is
    /// synchronous, so a `select!` that drops this future loses no frame.
    pub(super) async fn recv(&mut self) -> Result<ServerMsg, SocketError> {
        loop {
            // A frame that filled a gap may have unblocked several messages: those first.
            if let Some(plain) = self.channel.pop_ready() {
                return parse_server(&plain);
            }
            let frame = match self.ws.next().await {
                None => return Err(SocketError::Ended),
                Some(Err(e)) => return Err(SocketError::Transport(e)),
                Some(Ok(m)) => m,
            };
            match frame {
                Message::Binary(b) => {
                    // Nothing to deliver (a pure ack, a duplicate): wait for the next frame.
                    if let Some(msg) = self.open_frame(&b)? {
                        return Ok(msg);
                    }
                }
                Message::Text(_) => return Err(SocketError::Plaintext),
                Message::Close(frame) => {
                    let why = frame
                        .map(|f| f.reason.to_string())
                        .filter(|r| !r.is_empty());
                    return Err(SocketError::Closed(why));
                }
                // Pings are answered by tungstenite itself.
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
            }
        }
    }

    /// Opens one frame from either path; `Ok(None)`: nothing to deliver (a pure ack, a
    /// duplicate, a frame waiting for an earlier one).
    pub(super) fn open_frame(&mut self, frame: &[u8]) -> Result<Option<ServerMsg>, SocketError> {
        match self.channel.open(frame).map_err(SocketError::Channel)? {
            Some(plain) => parse_server(&plain).map(Some),
            None => Ok(None),
        }
    }

    /// Seals `msg` into one binary frame and sends it. A message too large to seal is
    /// refused with [`SocketError::TooLarge`] before anything is sent.
    pub(super) async fn send(&mut self, msg: &ClientMsg) -> Result<(), SocketError> {
        let frame = self
            .channel
            .seal(msg.to_json().as_bytes())
            .map_err(|e| match e {
                ChannelError::TooLarge { len, max, .. } => SocketError::TooLarge { len, max },
                other => SocketError::Channel(other),
            })?;
        if let Some(direct) = &self.direct {
            // Refused: the channel died; the frame waits in the resend buffer for the
            // fallback the policy is about to order.
            if let Err(e) = direct.send(frame).await {
                tracing::debug!(error = %e, "the DataChannel refused a frame");
            }
            return Ok(());
        }
        self.ws
            .send(Message::binary(frame))
            .await
            .map_err(SocketError::Transport)
    }

    /// Closes the socket politely, but never waits long for it.
    pub(super) async fn close(mut self) {
        let closing = tokio_tungstenite::WebSocketStream::close(&mut self.ws, None);
        let _ = tokio::time::timeout(CLOSE_GRACE, closing).await;
    }
}

impl PathSocket for SecureSocket {
    fn channel(&mut self) -> Option<&mut SecureChannel> {
        Some(&mut self.channel)
    }

    async fn send_on_websocket(&mut self, frames: Vec<Vec<u8>>) -> Result<(), String> {
        for frame in frames {
            self.ws
                .feed(Message::binary(frame))
                .await
                .map_err(|e| format!("connection lost: {}", stream_reason(&e)))?;
        }
        self.ws
            .flush()
            .await
            .map_err(|e| format!("connection lost: {}", stream_reason(&e)))
    }

    fn route_to(&mut self, direct: Option<DirectSender>) {
        self.direct = direct;
    }
}

/// Parses an opened frame. An error with a code this build does not know still says what
/// the host meant, in the [`SocketError::Unreadable`] text.
fn parse_server(bytes: &[u8]) -> Result<ServerMsg, SocketError> {
    let e = match serde_json::from_slice::<ServerMsg>(bytes) {
        Ok(m) => return Ok(m),
        Err(e) => e,
    };
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(bytes) else {
        return Err(SocketError::Unreadable(format!(
            "the host sent something that is not JSON: {e}"
        )));
    };
    if v["type"] == "error" {
        return Err(SocketError::Unreadable(format!(
            "host error {}: {}",
            v["code"].as_str().unwrap_or("?"),
            v["message"].as_str().unwrap_or("")
        )));
    }
    Err(SocketError::Unreadable(format!(
        "unexpected frame from the host: {e}"
    )))
}

/// An I/O failure in words a person can act on.
pub(super) fn io_reason(e: &std::io::Error) -> String {
    use std::io::ErrorKind::*;
    match e.kind() {
        ConnectionRefused => "connection refused".into(),
        ConnectionReset => "connection reset".into(),
        ConnectionAborted => "connection aborted".into(),
        TimedOut => "timed out".into(),
        HostUnreachable => "host unreachable".into(),
        NetworkUnreachable => "network unreachable".into(),
        _ => e.to_string(),
    }
}

/// A failure after the socket is open.
pub(super) fn stream_reason(e: &tungstenite::Error) -> FailReason {
    match e {
        tungstenite::Error::Io(io) => FailReason::Connect(io_reason(io)),
        tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed => {
            FailReason::ClosedBeforeJoined
        }
        tungstenite::Error::Capacity(c) => FailReason::Protocol(format!("frame too large: {c}")),
        other => FailReason::Protocol(other.to_string()),
    }
}

/// A scripted fake host on loopback for the socket tests of this module and `attempt`.
#[cfg(test)]
pub(super) mod testing {
    use atmosphere_shared::channel::SecureChannel;
    use atmosphere_shared::handshake::{Entropy, HostHandshake, HostKeys};
    use futures_util::{SinkExt, StreamExt};
    use std::future::Future;
    use tokio::net::{TcpListener, TcpStream};
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::WebSocketStream;

    /// The host side of one test socket.
    pub(in crate::join) type HostWs = WebSocketStream<TcpStream>;

    /// The keys of the test mesh.
    pub(in crate::join) fn host_keys() -> HostKeys {
        HostKeys::from_signing_key(&ed25519_dalek::SigningKey::from_bytes(&[7; 32]))
    }

    /// Listens on loopback; `script` runs on the one WebSocket accepted there. Returns the
    /// `ws://` URL to dial.
    pub(in crate::join) async fn fake_host<F, Fut>(script: F) -> String
    where
        F: FnOnce(HostWs) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("ws://{}/ws", listener.local_addr().unwrap());
        tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
            script(ws).await;
        });
        url
    }

    /// The next binary frame (skipping control frames); panics on anything else.
    pub(in crate::join) async fn next_binary(ws: &mut HostWs) -> Vec<u8> {
        loop {
            match ws.next().await.expect("socket open").expect("no error") {
                Message::Binary(b) => return b.to_vec(),
                Message::Ping(_) | Message::Pong(_) => {}
                other => panic!("expected a binary frame, got {other:?}"),
            }
        }
    }

    /// Runs the real host handshake with `keys`; the channel to answer through and the
    /// join request's JSON.
    pub(in crate::join) async fn accept(
        ws: &mut HostWs,
        keys: &HostKeys,
    ) -> (SecureChannel, serde_json::Value) {
        let msg1 = next_binary(ws).await;
        let (host, msg2) = HostHandshake::new(keys, Entropy::new([2; 32]))
            .read_client_hello(&msg1)
            .unwrap();
        ws.send(Message::binary(msg2)).await.unwrap();
        let msg3 = next_binary(ws).await;
        let join = host.read_join(&msg3).unwrap();
        let request = serde_json::to_value(join.request.unwrap()).unwrap();
        (join.channel, request)
    }

    /// Seals `json` and sends it as one binary frame.
    pub(in crate::join) async fn send_sealed(
        ws: &mut HostWs,
        channel: &mut SecureChannel,
        json: &str,
    ) {
        let frame = channel.seal(json.as_bytes()).unwrap();
        ws.send(Message::binary(frame)).await.unwrap();
    }
}

#[cfg(test)]
mod tests {
    use super::testing::*;
    use super::*;
    use crate::dial::{dial, DialOptions};
    use atmosphere_shared::credential::JoinPlan;
    use atmosphere_shared::handshake::{Entropy, StaticSecret};
    use atmosphere_shared::link::Endpoints;
    use atmosphere_shared::wire::DeviceInfo;
    use atmosphere_shared::{Invite, PathKind};

    /// Dials `url` and runs the client handshake of a first join to the test mesh.
    async fn connect(url: &str) -> SecureSocket {
        let keys = host_keys();
        let mut invite = Invite::v2("ATM-TEST", "Home", Endpoints::default());
        invite.mesh_id = Some(keys.mesh_id().to_string());
        let plan = JoinPlan::first_join(
            &invite,
            DeviceInfo::default(),
            StaticSecret::from_bytes([9; 32]),
        );
        let (client, msg1) = plan.start(PathKind::Local, Entropy::new([1; 32])).unwrap();
        let mut ws = dial(url, &DialOptions::default()).await.unwrap().socket;
        ws.send(Message::binary(msg1)).await.unwrap();
        let msg2 = loop {
            if let Message::Binary(b) = ws.next().await.unwrap().unwrap() {
                break b;
            }
        };
        let done = client.read_host_hello(&msg2).unwrap();
        ws.send(Message::binary(done.message)).await.unwrap();
        SecureSocket::new(ws, done.channel)
    }

    #[tokio::test]
    async fn messages_cross_sealed_both_ways() {
        let (seen_tx, seen_rx) = tokio::sync::oneshot::channel();
        let url = fake_host(|mut ws| async move {
            let (mut ch, _) = accept(&mut ws, &host_keys()).await;
            send_sealed(
                &mut ws,
                &mut ch,
                r#"{"type":"joined","mesh_id":"m","mesh_name":"Home","device_id":"d1"}"#,
            )
            .await;
            let frame = next_binary(&mut ws).await;
            let _ = seen_tx.send((frame.clone(), ch.open(&frame).unwrap().unwrap()));
        })
        .await;
        let mut s = connect(&url).await;
        match s.recv().await.unwrap() {
            ServerMsg::Joined(j) => assert_eq!(j.device_id, "d1"),
            other => panic!("expected joined, got {other:?}"),
        }
        s.send(&ClientMsg::Send {
            to: None,
            body: "secret words".into(),
        })
        .await
        .unwrap();
        let (wire, plain) = seen_rx.await.unwrap();
        // What crossed the socket is not the message; what the host opened is.
        assert!(!String::from_utf8_lossy(&wire).contains("secret words"));
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&plain).unwrap(),
            serde_json::json!({"type":"send","to":null,"body":"secret words"})
        );
    }

    #[tokio::test]
    async fn a_text_frame_on_the_channel_is_a_protocol_error() {
        let url = fake_host(|mut ws| async move {
            let _ = accept(&mut ws, &host_keys()).await;
            let notice = r#"{"type":"error","code":"device_removed","message":"x"}"#;
            ws.send(Message::text(notice)).await.unwrap();
            let _ = ws.next().await;
        })
        .await;
        let mut s = connect(&url).await;
        let err = s.recv().await.unwrap_err();
        assert!(matches!(err, SocketError::Plaintext), "{err:?}");
        // Never mistaken for the host's final word.
        assert!(!err.into_fail_reason().is_final());
    }

    #[tokio::test]
    async fn an_altered_frame_breaks_the_channel() {
        let url = fake_host(|mut ws| async move {
            let (mut ch, _) = accept(&mut ws, &host_keys()).await;
            let mut frame = ch
                .seal(br#"{"type":"peer_left","device_id":"d2"}"#)
                .unwrap();
            frame[3] ^= 1;
            ws.send(Message::binary(frame)).await.unwrap();
            let _ = ws.next().await;
        })
        .await;
        let mut s = connect(&url).await;
        let err = s.recv().await.unwrap_err();
        assert!(
            matches!(err, SocketError::Channel(ChannelError::Decrypt)),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn an_oversize_message_is_refused_and_the_socket_keeps_working() {
        let (seen_tx, seen_rx) = tokio::sync::oneshot::channel();
        let url = fake_host(|mut ws| async move {
            let (mut ch, _) = accept(&mut ws, &host_keys()).await;
            let frame = next_binary(&mut ws).await;
            let _ = seen_tx.send(ch.open(&frame).unwrap().unwrap());
        })
        .await;
        let mut s = connect(&url).await;
        let huge = ClientMsg::Send {
            to: None,
            body: "x".repeat(70_000).into(),
        };
        let err = s.send(&huge).await.unwrap_err();
        assert!(matches!(err, SocketError::TooLarge { .. }), "{err:?}");
        s.send(&ClientMsg::Send {
            to: None,
            body: "small".into(),
        })
        .await
        .unwrap();
        let plain = seen_rx.await.unwrap();
        assert!(String::from_utf8(plain).unwrap().contains("small"));
    }

    #[tokio::test]
    async fn an_error_with_an_unknown_code_still_says_what_the_host_meant() {
        let url = fake_host(|mut ws| async move {
            let (mut ch, _) = accept(&mut ws, &host_keys()).await;
            let text = r#"{"type":"error","code":"from_the_future","message":"later"}"#;
            send_sealed(&mut ws, &mut ch, text).await;
            send_sealed(&mut ws, &mut ch, r#"{"type":"peer_left","device_id":"d2"}"#).await;
            let _ = ws.next().await;
        })
        .await;
        let mut s = connect(&url).await;
        let err = s.recv().await.unwrap_err();
        assert_eq!(
            err.to_string(),
            "protocol error: host error from_the_future: later"
        );
        // The channel is intact: the next message opens.
        assert!(matches!(
            s.recv().await.unwrap(),
            ServerMsg::PeerLeft { device_id } if device_id == "d2"
        ));
    }
}
