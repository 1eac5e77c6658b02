//! The live session after the race is won (without `--once`): print presence and messages
//! as the host sends them, send each line typed on stdin to every member, until Ctrl-C or
//! the host goes away. A final error from the host (`device_removed`) ends the session for
//! good: the credential is no longer valid, so there is nothing to reconnect with.

use super::attempt::{close, stream_reason, Ws};
use super::output::{Printer, Roster};
use super::stdin::StdinLines;
use atmosphere_shared::wire::{ClientMsg, Joined, ServerMsg, MAX_FRAME_BYTES};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

/// How a live session ended.
pub(super) enum SessionEnd {
    /// The person pressed Ctrl-C; the socket was closed cleanly.
    Left,
    /// The host or the network ended it (the reason, for the person).
    Lost(String),
    /// The host ended it with a final error (already printed): do not reconnect.
    Refused,
}

/// Runs one session on the winning socket `ws`, whose `joined` was `joined`.
pub(super) async fn run(
    mut ws: Box<Ws>,
    joined: &Joined,
    out: &Printer,
    stdin: &mut StdinLines,
) -> SessionEnd {
    let mut roster = Roster::new(&joined.peers);
    out.session_started(&joined.peers);
    loop {
        tokio::select! {
            msg = ws.next() => match msg {
                Some(Ok(Message::Text(t))) => match serde_json::from_str::<ServerMsg>(t.as_str()) {
                    Ok(m) if roster.is_news(&m) => {
                        out.frame(&m, &roster);
                        if matches!(&m, ServerMsg::Error { code, .. } if code.is_final()) {
                            close(ws).await;
                            return SessionEnd::Refused;
                        }
                        roster.apply(&m);
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!("ignoring a frame the host sent that we do not understand: {e}"),
                },
                Some(Ok(Message::Close(frame))) => return SessionEnd::Lost(closed_by_host(frame)),
                Some(Ok(_)) => {}
                Some(Err(e)) => return SessionEnd::Lost(format!("connection lost: {}", stream_reason(e))),
                None => return SessionEnd::Lost("connection lost".into()),
            },
            line = stdin.next(), if stdin.is_open() => match line {
                Some(Ok(line)) => {
                    if let Err(e) = send_line(&mut ws, line, out).await {
                        return SessionEnd::Lost(e);
                    }
                }
                Some(Err(e)) => out.not_sent(&e),
                // End of input: keep listening (e.g. `join LINK < /dev/null` as a monitor).
                None => {}
            },
            _ = tokio::signal::ctrl_c() => {
                close(ws).await;
                out.info("left the mesh");
                return SessionEnd::Left;
            }
        }
    }
}

/// Sends one typed line to every member. A line too long for a frame is not sent (and
/// says so); `Err` only when the socket failed (the reason the session was lost).
async fn send_line(ws: &mut Ws, line: String, out: &Printer) -> Result<(), String> {
    let frame = ClientMsg::Send {
        to: None,
        body: serde_json::Value::String(line),
    }
    .to_json();
    if frame.len() > MAX_FRAME_BYTES {
        out.not_sent(&format!(
            "the line is longer than a frame may be ({MAX_FRAME_BYTES} bytes)"
        ));
        return Ok(());
    }
    ws.send(Message::text(frame))
        .await
        .map_err(|e| format!("connection lost: {}", stream_reason(e)))
}

/// The reason for a close frame from the host, with its text if it gave one.
fn closed_by_host(frame: Option<tokio_tungstenite::tungstenite::protocol::CloseFrame>) -> String {
    let why = frame
        .map(|f| f.reason.to_string())
        .filter(|r| !r.is_empty());
    format!(
        "the host closed the connection{}",
        why.map(|r| format!(": {r}")).unwrap_or_default()
    )
}
