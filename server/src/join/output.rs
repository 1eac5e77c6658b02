//! Everything `atmosphere join` prints: with `--json` one
//! [`JoinEvent`] per line on stdout (the CLI contract; the shapes live in
//! [`atmosphere_shared::join_event`]), otherwise a readable log (progress on stdout,
//! errors and warnings on stderr).
//!
//! Also [`Roster`], who is online, which turns device ids into names in readable lines and
//! keeps a presence snapshot that says nothing new from being printed at all.
//!
//! Readable lines carry text other people chose (member names and platforms, message bodies,
//! the host's reasons): each such string goes through [`printable`] so that a control
//! character or escape sequence in it is shown, never acted on by the terminal. `--json`
//! needs no such step: every control character is escaped inside its JSON string
//! ([`JoinEvent::to_line`]).

use crate::printable::printable;
use atmosphere_shared::join_event::{JoinErrorCode, JoinEvent};
use atmosphere_shared::racing::RaceEvent;
use atmosphere_shared::upgrade::UpgradeEvent;
use atmosphere_shared::wire::{Peer, ServerMsg};
use std::cell::Cell;
use std::collections::HashMap;
use std::time::Duration;

/// Prints the race's events and the session's traffic in the chosen format.
pub(super) struct Printer {
    json: bool,
    /// Set while re-establishing a lost session: a round in which every path failed is not
    /// the end (the next `reconnecting` line follows), so it is not printed as an `error`.
    retrying: Cell<bool>,
}

impl Printer {
    pub(super) fn new(json: bool) -> Printer {
        Printer {
            json,
            retrying: Cell::new(false),
        }
    }

    fn emit(&self, ev: &JoinEvent) {
        println!("{}", ev.to_line());
    }

    /// A step of the race. `mesh_name`: the host's (from its `joined`) or the invite's.
    pub(super) fn race_event(&self, ev: &RaceEvent, mesh_name: Option<&str>) {
        if self.retrying.get() && matches!(ev, RaceEvent::AllFailed { .. }) {
            return;
        }
        if self.json {
            self.emit(&JoinEvent::from_race(ev, mesh_name));
        } else if matches!(ev, RaceEvent::AllFailed { .. } | RaceEvent::Fatal { .. }) {
            eprintln!("error: {}", printable(&ev.describe(mesh_name)));
        } else {
            println!("{}", printable(&ev.describe(mesh_name)));
        }
    }

    /// An error that is not a race event (bad link, bad usage, lost session): the run ends.
    pub(super) fn error(&self, code: impl Into<JoinErrorCode>, message: &str) {
        if self.json {
            self.emit(&JoinEvent::Error {
                code: code.into(),
                message: message.to_string(),
            });
        } else {
            eprintln!("error: {}", printable(message));
        }
    }

    /// The live session ended and will be re-established.
    pub(super) fn disconnected(&self, reason: &str) {
        self.retrying.set(true);
        if self.json {
            self.emit(&JoinEvent::Disconnected {
                reason: reason.to_string(),
            });
        } else {
            eprintln!("disconnected: {}", printable(reason));
        }
    }

    /// The next reconnection round starts after `delay`.
    pub(super) fn reconnecting(&self, delay: Duration) {
        if self.json {
            self.emit(&JoinEvent::Reconnecting {
                in_ms: u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
            });
        } else {
            eprintln!(
                "reconnecting in {:.1} s (Ctrl-C to stop)",
                delay.as_secs_f64()
            );
        }
    }

    /// A live session started: its first complete presence snapshot arrived.
    pub(super) fn session_started(&self, peers: &[Peer]) {
        if self.json {
            self.peers(peers);
        } else if peers.is_empty() {
            println!("no other member online; type a line to send it to everyone, Ctrl-C to leave");
        } else {
            self.peers(peers);
            println!("type a line to send it to everyone, Ctrl-C to leave");
        }
    }

    /// A complete presence snapshot (every `peers` page of it): who else is online now.
    pub(super) fn peers(&self, peers: &[Peer]) {
        if self.json {
            self.emit(&JoinEvent::Peers {
                peers: peers.to_vec(),
            });
            return;
        }
        let list: Vec<String> = peers.iter().map(describe_peer).collect();
        println!(
            "online: {}",
            if list.is_empty() {
                "nobody else".into()
            } else {
                list.join(", ")
            }
        );
    }

    /// One host message of a live session other than presence pages (those make up a
    /// snapshot first, see [`Printer::peers`]); `roster` is who was online before it.
    pub(super) fn frame(&self, m: &ServerMsg, roster: &Roster) {
        if matches!(m, ServerMsg::Peers { .. } | ServerMsg::Joined(_)) {
            return;
        }
        if self.json {
            if let Some(ev) = JoinEvent::from_server(m) {
                self.emit(&ev);
            }
            return;
        }
        match m {
            ServerMsg::PeerJoined { peer } => println!("+ {} joined", describe_peer(peer)),
            ServerMsg::PeerLeft { device_id } => {
                println!("- {} left", printable(roster.name_of(device_id)));
            }
            ServerMsg::Message { from, body } => {
                println!("{}", message_line(roster.name_of(from), body))
            }
            ServerMsg::Error { code, message } => {
                eprintln!("host error ({code}): {}", printable(message));
            }
            // Signalling of a direct path: the upgrade policy reports what comes of it.
            ServerMsg::Peers { .. }
            | ServerMsg::Joined(_)
            | ServerMsg::RtcAnswer { .. }
            | ServerMsg::RtcUnavailable { .. }
            | ServerMsg::Direct { .. } => {}
        }
    }

    /// A step of the direct-path upgrade: a `path` or `direct_unavailable` line, or
    /// `path: relay → punched after 420 ms` for a person.
    pub(super) fn upgrade_event(&self, ev: &UpgradeEvent) {
        if self.json {
            self.emit(&JoinEvent::from_upgrade(ev));
            return;
        }
        match ev {
            UpgradeEvent::PathChanged { .. } => println!("path: {}", printable(&ev.describe())),
            UpgradeEvent::DirectUnavailable { .. } => {
                println!("direct path unavailable: {}", printable(&ev.describe()))
            }
        }
    }

    /// Progress only a person needs (nothing with `--json`).
    pub(super) fn info(&self, text: &str) {
        if !self.json {
            println!("{}", printable(text));
        }
    }

    /// Something went wrong that does not end the run (stderr, in both formats).
    pub(super) fn warning(&self, text: &str) {
        eprintln!("warning: {}", printable(text));
    }

    /// A typed line that was not sent, and why (stderr, in both formats).
    pub(super) fn not_sent(&self, why: &str) {
        eprintln!("not sent: {}", printable(why));
    }
}

/// A member in a readable line: `NAME (PLATFORM, via PATH)`, escaped.
fn describe_peer(p: &Peer) -> String {
    format!(
        "{} ({}, via {})",
        printable(&p.name),
        printable(&p.platform),
        p.path
    )
}

/// A message in a readable line: `WHO: BODY`, escaped (a body that is not a string is shown
/// as its JSON text).
fn message_line(who: &str, body: &serde_json::Value) -> String {
    let text = match body {
        serde_json::Value::String(s) => printable(s).into_owned(),
        other => printable(&other.to_string()).into_owned(),
    };
    format!("{}: {text}", printable(who))
}

/// Who is online now (device id → name), kept from the host's presence messages. Empty
/// until the session's first snapshot.
#[derive(Default)]
pub(super) struct Roster {
    names: HashMap<String, String>,
}

impl Roster {
    /// Everyone a complete snapshot lists.
    pub(super) fn new(peers: &[Peer]) -> Roster {
        Roster {
            names: peers
                .iter()
                .map(|p| (p.device_id.clone(), p.name.clone()))
                .collect(),
        }
    }

    /// False for a snapshot naming exactly who is known already: printing it would say
    /// nothing.
    pub(super) fn differs_from(&self, peers: &[Peer]) -> bool {
        peers.len() != self.names.len()
            || !peers.iter().all(|p| self.names.contains_key(&p.device_id))
    }

    /// Takes a change of presence into account (snapshots replace the roster, see
    /// [`Roster::new`]).
    pub(super) fn apply(&mut self, m: &ServerMsg) {
        match m {
            ServerMsg::PeerJoined { peer } => {
                self.names.insert(peer.device_id.clone(), peer.name.clone());
            }
            ServerMsg::PeerLeft { device_id } => {
                self.names.remove(device_id);
            }
            _ => {}
        }
    }

    /// The member's name, or its device id if it is not (or no longer) online.
    pub(super) fn name_of<'a>(&'a self, device_id: &'a str) -> &'a str {
        self.names.get(device_id).map_or(device_id, String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use atmosphere_shared::PathKind;

    fn has_control(s: &str) -> bool {
        s.chars().any(char::is_control)
    }

    #[test]
    fn peers_are_described_without_control_characters() {
        let p = Peer {
            device_id: "d1".into(),
            name: "Mal\x1b]0;pwned\x07".into(),
            platform: "cli\u{9b}2J".into(),
            path: PathKind::Local,
        };
        let line = describe_peer(&p);
        assert!(!has_control(&line), "{line:?}");
        assert_eq!(line, "Mal\\u{1b}]0;pwned\\u{7} (cli\\u{9b}2J, via local)");
    }

    #[test]
    fn message_lines_escape_string_and_other_bodies() {
        let s = message_line("Bob\n", &serde_json::json!("hi\x1b[2J"));
        assert_eq!(s, "Bob\\n: hi\\u{1b}[2J");
        let o = message_line("Bob", &serde_json::json!({"k": "\u{7f}\u{85}"}));
        assert!(!has_control(&o), "{o:?}");
    }

    fn peer(id: &str, name: &str) -> Peer {
        Peer {
            device_id: id.into(),
            name: name.into(),
            platform: "cli".into(),
            path: PathKind::Local,
        }
    }

    #[test]
    fn the_roster_follows_presence_and_spots_a_snapshot_with_nothing_new() {
        let mut roster = Roster::default();
        assert!(!roster.differs_from(&[]));
        roster = Roster::new(&[peer("d1", "Ann")]);
        assert_eq!(roster.name_of("d1"), "Ann");
        roster.apply(&ServerMsg::PeerJoined {
            peer: peer("d2", "Bob"),
        });
        assert!(!roster.differs_from(&[peer("d2", "Bob"), peer("d1", "Ann")]));
        assert!(roster.differs_from(&[peer("d1", "Ann")]));
        assert!(roster.differs_from(&[peer("d1", "Ann"), peer("d3", "Cy")]));
        roster.apply(&ServerMsg::PeerLeft {
            device_id: "d2".into(),
        });
        assert_eq!(roster.name_of("d2"), "d2");
    }
}
