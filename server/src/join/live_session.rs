//! The live session after the race is won (without `--once`): print presence and messages
//! as the host sends them, send each line typed on stdin to every member, until Ctrl-C or
//! the host goes away. Every frame goes through the session's [`SecureSocket`]; a frame that
//! does not open, or a plaintext frame, ends the session as lost (it is re-established like
//! any other loss). A final error from the host (`device_removed`) ends the session for
//! good: the credential is no longer valid, so there is nothing to reconnect with.
//!
//! A session that joined over the relay tries a direct path ([`SessionPaths`], the offerer):
//! `rtc_offer` out, `rtc_answer`/`rtc_unavailable` in, the host's `direct` on the open
//! DataChannel moves the session there; the steps are printed (`path`,
//! `direct_unavailable`). Frames from the DataChannel are opened and handled exactly like
//! the WebSocket's.
//!
//! Presence arrives as a snapshot in one or more `peers` pages ([`PeersSnapshot`]); it is
//! printed only once complete. The session's first snapshot starts it
//! ([`Printer::session_started`]); a later one is printed only if it says something new.

use super::output::{Printer, Roster};
use super::secure_socket::{SecureSocket, SocketError};
use super::stdin::StdinLines;
use crate::session_paths::{PathInput, PathSocket, SessionPaths};
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

/// One session's state: its socket, its paths, what it printed.
struct Session<'a> {
    socket: SecureSocket,
    paths: Option<SessionPaths>,
    out: &'a Printer,
    roster: Roster,
    snapshot: PeersSnapshot,
    started: bool,
}

/// Runs one session on the winning socket, right after its `joined`; `paths` drives its
/// direct path (`None`: `--no-direct`).
pub(super) async fn run(
    socket: SecureSocket,
    paths: Option<SessionPaths>,
    out: &Printer,
    stdin: &mut StdinLines,
) -> SessionEnd {
    let mut s = Session {
        socket,
        paths,
        out,
        roster: Roster::default(),
        snapshot: PeersSnapshot::default(),
        started: false,
    };
    if let Err(e) = s.apply_paths().await {
        return SessionEnd::Lost(e);
    }
    loop {
        let backlogged = s.socket.backlogged();
        tokio::select! {
            msg = s.socket.recv() => {
                if let Some(end) = s.on_received(msg.map(Some)).await {
                    return s.finish(end).await;
                }
                if let Err(e) = s.ack_if_urgent().await {
                    return SessionEnd::Lost(e);
                }
            }
            input = next_path(&mut s.paths) => {
                if let Some(end) = s.on_path_input(input).await {
                    return s.finish(end).await;
                }
            }
            // Flow control: no new line while the resend buffer is half full.
            line = stdin.next(), if stdin.is_open() && !backlogged => match line {
                Some(Ok(line)) => {
                    if let Err(e) = send_line(&mut s.socket, line, out).await {
                        return SessionEnd::Lost(e);
                    }
                }
                Some(Err(e)) => out.not_sent(&e),
                // End of input: keep listening (e.g. `join LINK < /dev/null` as a monitor).
                None => {}
            },
            _ = tokio::signal::ctrl_c() => {
                s.socket.close().await;
                out.info("left the mesh");
                return SessionEnd::Left;
            }
        }
    }
}

impl Session<'_> {
    /// After a final error the socket is closed politely before the run ends.
    async fn finish(self, end: SessionEnd) -> SessionEnd {
        if matches!(end, SessionEnd::Refused) {
            self.socket.close().await;
        }
        end
    }

    /// A frame from the DataChannel, an offer ready to go, or a tick of the policy.
    async fn on_path_input(&mut self, input: PathInput) -> Option<SessionEnd> {
        match input {
            PathInput::Frame(frame) => {
                let msg = self.socket.open_frame(&frame);
                if let Some(end) = self.on_received(msg).await {
                    return Some(end);
                }
                if let Err(e) = self.ack_if_urgent().await {
                    return Some(SessionEnd::Lost(e));
                }
            }
            PathInput::Offer { attempt, sdp } => {
                if let Err(e) = self
                    .socket
                    .send(&ClientMsg::RtcOffer { attempt, sdp })
                    .await
                {
                    return Some(SessionEnd::Lost(e.to_string()));
                }
                if let Some(p) = &mut self.paths {
                    p.offer_sent(attempt);
                }
            }
            PathInput::Tick => {}
        }
        self.apply_paths().await.err().map(SessionEnd::Lost)
    }

    /// Flow control: an ack at once after many frames from the host.
    async fn ack_if_urgent(&mut self) -> Result<(), String> {
        match &mut self.paths {
            Some(paths) => paths.ack_if_urgent(&mut self.socket).await,
            None => Ok(()),
        }
    }

    /// One opened message from either path (`Ok(None)`: nothing to deliver).
    async fn on_received(
        &mut self,
        msg: Result<Option<ServerMsg>, SocketError>,
    ) -> Option<SessionEnd> {
        match msg {
            Ok(None) => None,
            Ok(Some(m)) => self.on_message(m).await,
            Err(SocketError::Unreadable(what)) => {
                tracing::warn!(
                    "ignoring a message the host sent that we do not understand: {what}"
                );
                None
            }
            Err(e) => Some(SessionEnd::Lost(e.to_string())),
        }
    }

    async fn on_message(&mut self, m: ServerMsg) -> Option<SessionEnd> {
        match m {
            ServerMsg::Peers { peers, more } => {
                let peers = self.snapshot.page(&peers, more)?;
                if !self.started {
                    self.started = true;
                    self.out.session_started(&peers);
                } else if self.roster.differs_from(&peers) {
                    self.out.peers(&peers);
                }
                self.roster = Roster::new(&peers);
                None
            }
            ServerMsg::RtcAnswer { attempt, sdp, nat } => {
                if let Some(p) = &mut self.paths {
                    p.answered(attempt, &sdp, nat).await;
                }
                self.apply_paths().await.err().map(SessionEnd::Lost)
            }
            ServerMsg::RtcUnavailable { attempt, reason } => {
                if let Some(p) = &mut self.paths {
                    p.unavailable(attempt, &reason);
                }
                self.apply_paths().await.err().map(SessionEnd::Lost)
            }
            ServerMsg::Direct { attempt, path } => {
                if let Some(p) = &mut self.paths {
                    p.direct(attempt, path);
                }
                self.apply_paths().await.err().map(SessionEnd::Lost)
            }
            m => {
                self.out.frame(&m, &self.roster);
                if matches!(&m, ServerMsg::Error { code, .. } if code.is_final()) {
                    return Some(SessionEnd::Refused);
                }
                self.roster.apply(&m);
                None
            }
        }
    }

    /// Runs the upgrade policy's actions and prints its steps; `Err` ends the session.
    async fn apply_paths(&mut self) -> Result<(), String> {
        let Some(paths) = &mut self.paths else {
            return Ok(());
        };
        for ev in paths.apply(&mut self.socket).await? {
            self.out.upgrade_event(&ev);
        }
        Ok(())
    }
}

/// The next input of the session's direct side (pending forever without one).
async fn next_path(paths: &mut Option<SessionPaths>) -> PathInput {
    match paths {
        Some(p) => p.next().await,
        None => std::future::pending().await,
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
