//! A member socket on the host, before and after its Noise handshake
//! ([`atmosphere_shared::handshake`]).
//!
//! Before the handshake the only thing the host ever sends is a plaintext `error` text
//! frame turning the socket away (per-IP cap, handshake timeout, a malformed handshake
//! message): the client treats it as an unauthenticated hint. Once the handshake produced a
//! [`SecureChannel`], every message either way is one sealed JSON message in one numbered
//! binary frame ([`atmosphere_shared::channel`]), and nothing else is accepted. [`MeshSocket`] keeps that rule in one place, so the
//! session handler speaks in [`ServerMsg`] and [`ClientMsg`] only.
//!
//! After an upgrade ([`crate::session_paths`]) the sealed frames go on the member's
//! DataChannel instead ([`PathSocket::route_to`]); frames from the DataChannel are opened
//! with [`MeshSocket::open_frame`], through the same channel as the WebSocket's. WebSocket
//! pings stay on the WebSocket: they keep the relay's standby socket alive.

use crate::rtc::DirectSender;
use crate::session_paths::PathSocket;
use crate::ws::{Frame, FrameSocket, RecvError, SendError};
use atmosphere_shared::channel::{ChannelError, SecureChannel};
use atmosphere_shared::wire::{ClientMsg, ErrorCode, ServerMsg, MAX_FRAME_BYTES};

/// A member's socket and, after the handshake, its channel.
pub struct MeshSocket {
    frames: FrameSocket,
    channel: Option<SecureChannel>,
    /// Set while the session runs over a DataChannel: sealed frames go there.
    direct: Option<DirectSender>,
}

/// What the member sent, once its channel exists.
pub enum Incoming {
    /// One opened, parsed message.
    Msg(ClientMsg),
    /// A WebSocket ping or pong (keepalive only), or a frame with nothing to deliver (a
    /// pure ack, a duplicate, a frame waiting for an earlier one).
    Keepalive,
    /// The member closed the socket.
    Closed,
}

/// Why a frame from the member breaks the protocol: the code and sentence it is told.
pub struct Violation {
    pub code: ErrorCode,
    pub message: String,
}

impl Violation {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Violation {
        Violation {
            code,
            message: message.into(),
        }
    }

    /// A frame over [`MAX_FRAME_BYTES`] (cut off by the socket layer).
    pub fn too_large() -> Violation {
        Violation::new(
            ErrorCode::TooLarge,
            format!("frames are limited to {MAX_FRAME_BYTES} bytes"),
        )
    }
}

/// Why receiving ended the session.
pub enum RecvFailure {
    /// The connection is gone (the text says how).
    Broken(String),
    /// The member broke the protocol: tell it why.
    Violation(Violation),
}

impl MeshSocket {
    /// A socket whose handshake has not run yet.
    pub fn new(frames: FrameSocket) -> MeshSocket {
        MeshSocket {
            frames,
            channel: None,
            direct: None,
        }
    }

    /// From now on every message is sealed with `channel`.
    pub fn secure(&mut self, channel: SecureChannel) {
        self.channel = Some(channel);
    }

    /// The next binary frame of the handshake (pings and pongs are skipped; the libraries
    /// answer pings). `Ok(None)`: the socket went away.
    pub async fn handshake_message(&mut self) -> Result<Option<Vec<u8>>, Violation> {
        loop {
            match self.frames.recv().await {
                None | Some(Ok(Frame::Close(_))) | Some(Err(RecvError::Broken(_))) => {
                    return Ok(None)
                }
                Some(Err(RecvError::TooLarge)) => return Err(Violation::too_large()),
                Some(Ok(Frame::Ping(_) | Frame::Pong(_))) => continue,
                Some(Ok(Frame::Text(t))) if t.len() > MAX_FRAME_BYTES => {
                    return Err(Violation::too_large())
                }
                Some(Ok(Frame::Binary(b))) if b.len() > MAX_FRAME_BYTES => {
                    return Err(Violation::too_large())
                }
                Some(Ok(Frame::Text(_))) => {
                    return Err(Violation::new(
                        ErrorCode::BadRequest,
                        "the mesh protocol starts with a Noise handshake in binary frames \
                         (see docs/PROTOCOL.md); plaintext frames are not accepted",
                    ))
                }
                Some(Ok(Frame::Binary(b))) => return Ok(Some(b)),
            }
        }
    }

    /// Sends a raw handshake message as one binary frame.
    pub async fn send_handshake_message(&mut self, msg: Vec<u8>) -> Result<(), SendError> {
        self.frames.send(Frame::Binary(msg)).await
    }

    /// Sends one message: sealed in a binary frame once the channel exists, else (an
    /// `error` turning the socket away before its handshake) as plaintext text.
    pub async fn send_msg(&mut self, msg: &ServerMsg) -> Result<(), SendError> {
        let frame = self.frame(&msg.to_json())?;
        self.send_frames(vec![frame]).await
    }

    /// Messages already serialised (the hub's fan-out), each in its own frame, written with
    /// one flush.
    pub async fn send_all_json(&mut self, jsons: &[std::sync::Arc<str>]) -> Result<(), SendError> {
        let frames = jsons
            .iter()
            .map(|j| self.frame(j))
            .collect::<Result<Vec<_>, _>>()?;
        self.send_frames(frames).await
    }

    /// Frames on the current path: the DataChannel when routed there (binary frames only;
    /// one refused there waits in the resend buffer for the fallback), else the WebSocket.
    async fn send_frames(&mut self, frames: Vec<Frame>) -> Result<(), SendError> {
        let Some(direct) = &self.direct else {
            return match <[Frame; 1]>::try_from(frames) {
                Ok([one]) => self.frames.send(one).await,
                Err(many) => self.frames.send_all(many).await,
            };
        };
        for frame in frames {
            if let Frame::Binary(b) = frame {
                if let Err(e) = direct.send(b).await {
                    tracing::debug!(error = %e, "the DataChannel refused a frame; the fallback resends it");
                }
            }
        }
        Ok(())
    }

    /// One message as its frame: sealed once the channel exists, else plaintext text.
    fn frame(&mut self, json: &str) -> Result<Frame, SendError> {
        Ok(match &mut self.channel {
            None => Frame::Text(json.to_string()),
            Some(channel) => Frame::Binary(
                channel
                    .seal(json.as_bytes())
                    .map_err(|e| SendError(format!("cannot seal a message: {e}")))?,
            ),
        })
    }

    /// Sends a WebSocket ping (keepalive; not part of the sealed stream).
    pub async fn ping(&mut self) -> Result<(), SendError> {
        self.frames.send(Frame::Ping(b"atmosphere".to_vec())).await
    }

    /// The next message of a live session, opened and parsed.
    pub async fn recv(&mut self) -> Result<Incoming, RecvFailure> {
        // A frame that filled a gap may have unblocked several messages: those first.
        if let Some(plain) = self.channel.as_mut().and_then(SecureChannel::pop_ready) {
            return parse_client_msg(&plain)
                .map(Incoming::Msg)
                .map_err(RecvFailure::Violation);
        }
        let frame = match self.frames.recv().await {
            None => return Ok(Incoming::Closed),
            Some(Ok(Frame::Close(_))) => return Ok(Incoming::Closed),
            Some(Err(RecvError::Broken(e))) => return Err(RecvFailure::Broken(e)),
            Some(Err(RecvError::TooLarge)) => {
                return Err(RecvFailure::Violation(Violation::too_large()))
            }
            Some(Ok(Frame::Ping(_) | Frame::Pong(_))) => return Ok(Incoming::Keepalive),
            Some(Ok(Frame::Text(t))) if t.len() > MAX_FRAME_BYTES => {
                return Err(RecvFailure::Violation(Violation::too_large()))
            }
            Some(Ok(Frame::Text(_))) => {
                return Err(RecvFailure::Violation(Violation::new(
                    ErrorCode::BadRequest,
                    "plaintext frames are not part of the protocol after the handshake",
                )))
            }
            Some(Ok(Frame::Binary(b))) => b,
        };
        self.open_frame(&frame)
    }

    /// Opens one frame that arrived on either path (the WebSocket, or the DataChannel).
    pub fn open_frame(&mut self, frame: &[u8]) -> Result<Incoming, RecvFailure> {
        let Some(channel) = &mut self.channel else {
            return Err(RecvFailure::Violation(Violation::new(
                ErrorCode::BadRequest,
                "no secure channel yet",
            )));
        };
        let plain = channel.open(frame).map_err(|e| {
            let code = match e {
                ChannelError::TooLarge { .. } => ErrorCode::TooLarge,
                _ => ErrorCode::BadRequest,
            };
            RecvFailure::Violation(Violation::new(code, e.to_string()))
        })?;
        let Some(plain) = plain else {
            return Ok(Incoming::Keepalive);
        };
        parse_client_msg(&plain)
            .map(Incoming::Msg)
            .map_err(RecvFailure::Violation)
    }

    /// Sends a close frame (best effort).
    pub async fn close(&mut self, code: u16, reason: &str) {
        self.frames.close(code, reason).await
    }
}

impl PathSocket for MeshSocket {
    fn channel(&mut self) -> Option<&mut SecureChannel> {
        self.channel.as_mut()
    }

    async fn send_on_websocket(&mut self, frames: Vec<Vec<u8>>) -> Result<(), String> {
        if frames.is_empty() {
            return Ok(());
        }
        let frames = frames.into_iter().map(Frame::Binary).collect();
        self.frames
            .send_all(frames)
            .await
            .map_err(|e| format!("write failed: {e}"))
    }

    fn route_to(&mut self, direct: Option<DirectSender>) {
        self.direct = direct;
    }
}

/// Parses one opened member message with clear errors.
fn parse_client_msg(bytes: &[u8]) -> Result<ClientMsg, Violation> {
    serde_json::from_slice::<ClientMsg>(bytes).map_err(|e| {
        let what = if serde_json::from_slice::<serde_json::Value>(bytes).is_err() {
            "message is not valid JSON"
        } else {
            "message is not a known message"
        };
        let mut e = e.to_string();
        e.truncate(200);
        Violation::new(ErrorCode::BadRequest, format!("{what}: {e}"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opened_messages_parse_with_clear_errors() {
        assert!(matches!(
            parse_client_msg(br#"{"type":"send","to":null,"body":"hi"}"#),
            Ok(ClientMsg::Send { .. })
        ));
        let e = parse_client_msg(b"nope").err().unwrap();
        assert_eq!(e.code, ErrorCode::BadRequest);
        assert!(
            e.message.starts_with("message is not valid JSON"),
            "{}",
            e.message
        );
        // The plaintext join of earlier versions is not a message any more.
        let e = parse_client_msg(br#"{"type":"join","token":"ATM-X","path":"local"}"#)
            .err()
            .unwrap();
        assert!(
            e.message.starts_with("message is not a known message"),
            "{}",
            e.message
        );
    }
}
