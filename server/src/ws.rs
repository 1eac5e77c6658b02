//! One WebSocket shape for the mesh-session handler, whatever carries the socket.
//!
//! A direct member arrives as an axum [`WebSocket`]; a relayed member arrives as the
//! tokio-tungstenite stream the host dialled to the relay. Both are adapted here into a
//! [`FrameSocket`] (a boxed stream of [`Frame`]s plus a boxed sink), so `session` has exactly
//! one code path for every member, as the architecture requires.

/// Initial read buffer of every server-side WebSocket (host members, relay sockets).
/// tungstenite's default is 128 KiB per socket, allocated up front: an idle relayed session
/// (two sockets) then costs ~260 KiB of RSS. Larger frames still grow the buffer on demand,
/// so this trades a few more read calls on big messages for memory that scales with
/// thousands of idle members (see docs/BENCHMARKS.md).
pub const SOCKET_READ_BUFFER: usize = 4 * 1024;

use axum::extract::ws::{self as axum_ws, WebSocket};
use futures_util::{future, Sink, SinkExt, Stream, StreamExt};
use std::pin::Pin;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::tungstenite::{self, Bytes};
use tokio_tungstenite::WebSocketStream;

/// A WebSocket message, independent of the library that carried it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Text(String),
    Binary(Vec<u8>),
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    /// A close frame (`code`, `reason`), or a bare close.
    Close(Option<(u16, String)>),
}

/// Why receiving failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecvError {
    /// The peer sent a frame larger than the socket accepts; the stream cannot continue.
    TooLarge,
    /// Anything else (reset, protocol violation, …): the connection is gone.
    Broken(String),
}

/// Why sending failed (the text of the underlying library's error).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendError(pub String);

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

// `From` conversions rather than `sink_map_err`: that combinator's closure is `FnOnce` and
// panics on a second error ("polled MapErr after completion").
impl From<axum::Error> for SendError {
    fn from(e: axum::Error) -> Self {
        SendError(e.to_string())
    }
}

impl From<tungstenite::Error> for SendError {
    fn from(e: tungstenite::Error) -> Self {
        SendError(e.to_string())
    }
}

type FrameStream = Pin<Box<dyn Stream<Item = Result<Frame, RecvError>> + Send>>;
type FrameSink = Pin<Box<dyn Sink<Frame, Error = SendError> + Send>>;

/// A member socket as the session handler sees it.
pub struct FrameSocket {
    rx: FrameStream,
    tx: FrameSink,
    /// Set once the sink was closed or failed: later sends fail fast without touching it.
    done: bool,
}

impl FrameSocket {
    /// Adapts an axum WebSocket (a direct member).
    pub fn from_axum(ws: WebSocket) -> FrameSocket {
        let (tx, rx) = ws.split();
        let rx = rx.filter_map(|m| {
            future::ready(match m {
                Ok(m) => from_axum_msg(m).map(Ok),
                Err(e) => Some(Err(classify(e.into_inner()))),
            })
        });
        let tx = tx.with(|f: Frame| future::ready(Ok::<_, SendError>(to_axum_msg(f))));
        FrameSocket {
            rx: Box::pin(rx),
            tx: Box::pin(tx),
            done: false,
        }
    }

    /// Adapts a tokio-tungstenite WebSocket (a relayed member's data socket).
    pub fn from_tungstenite<S>(ws: WebSocketStream<S>) -> FrameSocket
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (tx, rx) = ws.split();
        let rx = rx.filter_map(|m| {
            future::ready(match m {
                Ok(m) => from_tungstenite_msg(m).map(Ok),
                Err(e) => Some(Err(classify(Box::new(e)))),
            })
        });
        let tx = tx.with(|f: Frame| future::ready(Ok::<_, SendError>(to_tungstenite_msg(f))));
        FrameSocket {
            rx: Box::pin(rx),
            tx: Box::pin(tx),
            done: false,
        }
    }

    /// The next frame; `None` once the connection has ended.
    pub async fn recv(&mut self) -> Option<Result<Frame, RecvError>> {
        self.rx.next().await
    }

    /// Sends and flushes one frame.
    pub async fn send(&mut self, frame: Frame) -> Result<(), SendError> {
        if self.done {
            return Err(SendError("the socket is closed".into()));
        }
        let r = self.tx.send(frame).await;
        if r.is_err() {
            self.done = true;
        }
        r
    }

    /// Sends frames in order with one flush at the end (a burst costs one write, not one
    /// per frame).
    pub async fn send_all(&mut self, frames: Vec<Frame>) -> Result<(), SendError> {
        if self.done {
            return Err(SendError("the socket is closed".into()));
        }
        let mut r = Ok(());
        for f in frames {
            r = self.tx.feed(f).await;
            if r.is_err() {
                break;
            }
        }
        if r.is_ok() {
            r = self.tx.flush().await;
        }
        if r.is_err() {
            self.done = true;
        }
        r
    }

    /// Sends a close frame and closes the sink (best effort; idempotent).
    pub async fn close(&mut self, code: u16, reason: &str) {
        if self.done {
            return;
        }
        let _ = self
            .tx
            .send(Frame::Close(Some((code, reason.to_string()))))
            .await;
        let _ = self.tx.close().await;
        self.done = true;
    }
}

/// Close codes used by the host (RFC 6455 §7.4.1).
pub mod close_code {
    /// Normal closure.
    pub const NORMAL: u16 = 1000;
    /// Policy violation (bad request, refused credential, deadline).
    pub const POLICY: u16 = 1008;
    /// Message too big.
    pub const TOO_BIG: u16 = 1009;
}

fn classify(err: Box<dyn std::error::Error + Send + Sync>) -> RecvError {
    match err.downcast_ref::<tungstenite::Error>() {
        Some(tungstenite::Error::Capacity(_)) => RecvError::TooLarge,
        _ => RecvError::Broken(err.to_string()),
    }
}

fn from_axum_msg(m: axum_ws::Message) -> Option<Frame> {
    Some(match m {
        axum_ws::Message::Text(t) => Frame::Text(t.as_str().to_owned()),
        axum_ws::Message::Binary(b) => Frame::Binary(b.to_vec()),
        axum_ws::Message::Ping(b) => Frame::Ping(b.to_vec()),
        axum_ws::Message::Pong(b) => Frame::Pong(b.to_vec()),
        axum_ws::Message::Close(c) => {
            Frame::Close(c.map(|c| (c.code, c.reason.as_str().to_owned())))
        }
    })
}

fn to_axum_msg(f: Frame) -> axum_ws::Message {
    match f {
        Frame::Text(t) => axum_ws::Message::Text(t.into()),
        Frame::Binary(b) => axum_ws::Message::Binary(b.into()),
        Frame::Ping(b) => axum_ws::Message::Ping(b.into()),
        Frame::Pong(b) => axum_ws::Message::Pong(b.into()),
        Frame::Close(c) => axum_ws::Message::Close(c.map(|(code, reason)| axum_ws::CloseFrame {
            code,
            reason: reason.into(),
        })),
    }
}

fn from_tungstenite_msg(m: tungstenite::Message) -> Option<Frame> {
    use tungstenite::Message as M;
    Some(match m {
        M::Text(t) => Frame::Text(t.as_str().to_owned()),
        M::Binary(b) => Frame::Binary(b.to_vec()),
        M::Ping(b) => Frame::Ping(b.to_vec()),
        M::Pong(b) => Frame::Pong(b.to_vec()),
        M::Close(c) => Frame::Close(c.map(|c| (u16::from(c.code), c.reason.as_str().to_owned()))),
        // Raw frames only appear when reading with `read_frame`; never here.
        M::Frame(_) => return None,
    })
}

fn to_tungstenite_msg(f: Frame) -> tungstenite::Message {
    use tungstenite::protocol::frame::{coding::CloseCode, CloseFrame};
    use tungstenite::Message as M;
    match f {
        Frame::Text(t) => M::Text(t.into()),
        Frame::Binary(b) => M::Binary(Bytes::from(b)),
        Frame::Ping(b) => M::Ping(Bytes::from(b)),
        Frame::Pong(b) => M::Pong(Bytes::from(b)),
        Frame::Close(c) => M::Close(c.map(|(code, reason)| CloseFrame {
            code: CloseCode::from(code),
            reason: reason.into(),
        })),
    }
}
