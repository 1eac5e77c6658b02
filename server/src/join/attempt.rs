//! One attempt of the race: connect to one endpoint, send the `join` frame, wait for the
//! host's verdict (`joined` or `error`), and report it to the race driver exactly once.
//!
//! Also the words for socket failures ([`stream_reason`]) the live session reuses, and
//! [`close`], the polite close both use.

use crate::dial::{dial, ClientSocket, DialError, DialOptions};
use atmosphere_shared::racing::{AttemptId, FailReason};
use atmosphere_shared::wire::{ErrorCode, Joined, ServerMsg, MAX_FRAME_BYTES};
use futures_util::{SinkExt, StreamExt};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::{self, protocol::WebSocketConfig, Message};
use tokio_tungstenite::WebSocketStream;

/// How long a clean close may take before we just drop the socket.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// A mesh WebSocket to the host (directly or through a relay).
pub(super) type Ws = ClientSocket;

/// What an attempt task reports back to the race driver.
pub(super) enum Report {
    Joined {
        id: AttemptId,
        joined: Box<Joined>,
        ws: Box<Ws>,
    },
    Failed {
        id: AttemptId,
        reason: FailReason,
    },
}

/// One attempt: connect to `url`, send `frame`, wait for the host's verdict, all within
/// `safety` (a backstop behind the race's own deadline). Reports exactly once (unless
/// aborted by a cancel, which needs no report).
pub(super) async fn run(
    id: AttemptId,
    url: String,
    frame: String,
    safety: Duration,
    tx: mpsc::Sender<Report>,
) {
    let report = match tokio::time::timeout(safety, join_over(&url, frame, safety)).await {
        Ok(Ok((joined, ws))) => Report::Joined {
            id,
            joined: Box::new(joined),
            ws: Box::new(ws),
        },
        Ok(Err(reason)) => Report::Failed { id, reason },
        Err(_) => Report::Failed {
            id,
            reason: FailReason::Timeout {
                after_ms: u64::try_from(safety.as_millis()).unwrap_or(u64::MAX),
            },
        },
    };
    let _ = tx.send(report).await;
}

/// Connect, send `join`, wait for `joined`.
async fn join_over(
    url: &str,
    frame: String,
    deadline: Duration,
) -> Result<(Joined, Ws), FailReason> {
    let mut ws = connect(url, deadline).await?;
    ws.send(Message::text(frame)).await.map_err(stream_reason)?;
    let joined = await_joined(&mut ws).await?;
    Ok((joined, ws))
}

/// The connect step: [`dial`] (TCP, TLS for `wss://` with the relay trust, the WebSocket
/// handshake) with the mesh frame limits. The attempt's own deadline is the race's, so the
/// dial gets the safety backstop as its deadline.
async fn connect(url: &str, deadline: Duration) -> Result<Ws, FailReason> {
    let config = WebSocketConfig::default()
        .max_message_size(Some(MAX_FRAME_BYTES))
        .max_frame_size(Some(MAX_FRAME_BYTES));
    let options = DialOptions {
        bearer: None,
        config,
        deadline,
    };
    dial(url, &options)
        .await
        .map(|d| d.socket)
        .map_err(connect_reason)
}

/// Reads frames until the host's verdict: `joined` (success), an `error` frame (its code
/// and message), or anything else (a protocol failure).
async fn await_joined(ws: &mut Ws) -> Result<Joined, FailReason> {
    loop {
        let msg = match ws.next().await {
            None => return Err(FailReason::ClosedBeforeJoined),
            Some(Err(e)) => return Err(stream_reason(e)),
            Some(Ok(m)) => m,
        };
        match msg {
            Message::Text(t) => match parse_server(t.as_str())? {
                ServerMsg::Joined(joined) => return Ok(joined),
                ServerMsg::Error { code, message } => {
                    return Err(FailReason::Host { code, message })
                }
                other => {
                    return Err(FailReason::Protocol(format!(
                        "expected joined, got {}",
                        type_name(&other)
                    )))
                }
            },
            Message::Close(_) => return Err(FailReason::ClosedBeforeJoined),
            Message::Binary(_) => {
                return Err(FailReason::Protocol("unexpected binary frame".into()))
            }
            // Pings are answered by tungstenite itself.
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
        }
    }
}

/// Parses a host frame. An error frame with a code this build does not know still says
/// what the host meant, as a protocol failure with its text.
fn parse_server(text: &str) -> Result<ServerMsg, FailReason> {
    match serde_json::from_str::<ServerMsg>(text) {
        Ok(m) => Ok(m),
        Err(e) => {
            let v: serde_json::Value = serde_json::from_str(text).map_err(|_| {
                FailReason::Protocol(format!("the host sent something that is not JSON: {e}"))
            })?;
            if v["type"] == "error" {
                return Err(FailReason::Protocol(format!(
                    "host error {}: {}",
                    v["code"].as_str().unwrap_or("?"),
                    v["message"].as_str().unwrap_or("")
                )));
            }
            Err(FailReason::Protocol(format!(
                "unexpected frame from the host: {e}"
            )))
        }
    }
}

fn type_name(m: &ServerMsg) -> &'static str {
    match m {
        ServerMsg::Joined(_) => "joined",
        ServerMsg::Peers { .. } => "peers",
        ServerMsg::PeerJoined { .. } => "peer_joined",
        ServerMsg::PeerLeft { .. } => "peer_left",
        ServerMsg::Message { .. } => "message",
        ServerMsg::Error { .. } => "error",
    }
}

fn io_reason(e: &std::io::Error) -> String {
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

/// Why connecting or the WebSocket handshake failed, in words a person can act on.
fn connect_reason(e: DialError) -> FailReason {
    match e {
        DialError::Handshake {
            source: tungstenite::Error::Http(resp),
            ..
        } => {
            // A relay (or host) may refuse the upgrade with a JSON error body naming a code.
            let body = resp.body().as_deref().unwrap_or_default();
            if let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) {
                let code = v.get("code").or_else(|| v.get("error")).cloned();
                if let Some(Ok(code)) = code.map(serde_json::from_value::<ErrorCode>) {
                    let message = v["message"].as_str().unwrap_or_default().to_string();
                    return FailReason::Host { code, message };
                }
            }
            FailReason::Connect(format!("HTTP {} instead of a WebSocket", resp.status()))
        }
        DialError::Timeout { deadline, .. } => FailReason::Timeout {
            after_ms: u64::try_from(deadline.as_millis()).unwrap_or(u64::MAX),
        },
        other => match other.io_error() {
            Some(io) => FailReason::Connect(io_reason(io)),
            None => FailReason::Connect(other.to_string()),
        },
    }
}

/// A failure after the socket is open.
pub(super) fn stream_reason(e: tungstenite::Error) -> FailReason {
    match e {
        tungstenite::Error::Io(io) => FailReason::Connect(io_reason(&io)),
        tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed => {
            FailReason::ClosedBeforeJoined
        }
        tungstenite::Error::Capacity(c) => FailReason::Protocol(format!("frame too large: {c}")),
        other => FailReason::Protocol(other.to_string()),
    }
}

/// Closes the socket politely, but never waits long for it.
pub(super) async fn close(mut ws: Box<Ws>) {
    let _ = tokio::time::timeout(CLOSE_GRACE, WebSocketStream::close(&mut *ws, None)).await;
}
