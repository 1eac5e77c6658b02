//! The live session after the race is won (without `--once`): print presence and messages
//! as the host sends them, send each line typed on stdin to every member, until Ctrl-C or
//! the host goes away. Every frame goes through the session's [`SecureSocket`]; a frame that
//! does not open, or a plaintext frame, ends the session as lost (it is re-established like
//! any other loss). A final error from the host (`device_removed`) ends the session for
//! good: the credential is no longer valid, so there is nothing to reconnect with.
//!
//! Presence arrives as a snapshot in one or more `peers` pages ([`PeersSnapshot`]); it is
//! printed only once complete. The session's first snapshot starts it
//! ([`Printer::session_started`]); a later one is printed only if it says something new.

use super::output::{Printer, Roster};
use super::secure_socket::{SecureSocket, SocketError};
use super::stdin::StdinLines;
use atmosphere_shared::wire::{ClientMsg, PeersSnapshot, ServerMsg};

/// How a live session ended.
pub(super) enum SessionEnd {
    /// The person pressed Ctrl-C; the socket was closed cleanly.
    Left,
    /// The host or the network ended it (the reason, for the person).
    Lost(String),
    /// The host ended it with a final error (already printed): do not reconnect.
    Refused,
}

/// Runs one session on the winning socket, right after its `joined`.
pub(super) async fn run(
    mut socket: SecureSocket,
    out: &Printer,
    stdin: &mut StdinLines,
) -> SessionEnd {
    let mut roster = Roster::default();
    let mut snapshot = PeersSnapshot::default();
    let mut started = false;
    loop {
        tokio::select! {
            msg = socket.recv() => match msg {
                Ok(ServerMsg::Peers { peers, more }) => {
                    let Some(peers) = snapshot.page(&peers, more) else { continue };
                    if !started {
                        started = true;
                        out.session_started(&peers);
                    } else if roster.differs_from(&peers) {
                        out.peers(&peers);
                    }
                    roster = Roster::new(&peers);
                }
                Ok(m) => {
                    out.frame(&m, &roster);
                    if matches!(&m, ServerMsg::Error { code, .. } if code.is_final()) {
                        socket.close().await;
                        return SessionEnd::Refused;
                    }
                    roster.apply(&m);
                }
                Err(SocketError::Unreadable(what)) => {
                    tracing::warn!("ignoring a message the host sent that we do not understand: {what}");
                }
                Err(e) => return SessionEnd::Lost(e.to_string()),
            },
            line = stdin.next(), if stdin.is_open() => match line {
                Some(Ok(line)) => {
                    if let Err(e) = send_line(&mut socket, line, out).await {
                        return SessionEnd::Lost(e);
                    }
                }
                Some(Err(e)) => out.not_sent(&e),
                // End of input: keep listening (e.g. `join LINK < /dev/null` as a monitor).
                None => {}
            },
            _ = tokio::signal::ctrl_c() => {
                socket.close().await;
                out.info("left the mesh");
                return SessionEnd::Left;
            }
        }
    }
}

/// Sends one typed line to every member. A line too long for one sealed frame is not sent
/// (and says so); `Err` only when the socket failed (the reason the session was lost).
async fn send_line(socket: &mut SecureSocket, line: String, out: &Printer) -> Result<(), String> {
    let msg = ClientMsg::Send {
        to: None,
        body: serde_json::Value::String(line),
    };
    match socket.send(&msg).await {
        Ok(()) => Ok(()),
        Err(SocketError::TooLarge { max, .. }) => {
            out.not_sent(&format!(
                "the line is longer than a message may be ({max} bytes)"
            ));
            Ok(())
        }
        Err(e) => Err(e.to_string()),
    }
}
