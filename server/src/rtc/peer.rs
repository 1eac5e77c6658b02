//! One peer connection: a str0m `Rtc`, its DataChannel and the session's [`ChannelEnd`].
//!
//! The driver feeds it datagrams ([`Peer::receive`]) and calls [`Peer::poll`] whenever
//! anything may have changed (a datagram, a timeout, the session queued a message); `poll`
//! runs str0m until it asks for the next timeout and returns the datagrams to send. The
//! lifetime rules live here: the channel must open by the open deadline, ICE may stay
//! disconnected for [`DISCONNECTED_GRACE`], and after the end str0m gets [`CLOSE_DRAIN`]
//! to send its goodbyes (SCTP shutdown, DTLS close_notify) before the peer is dropped.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use str0m::channel::ChannelId;
use str0m::net::{Receive, Transmit};
use str0m::{Event, IceConnectionState, Input, Output, Rtc};

use super::channel::{ChannelEnd, CloseReason, DirectPath};
use super::{CHANNEL_LABEL, MAX_MESSAGE_BYTES};

/// How long ICE may stay "disconnected" (no answers to its checks) before the connection is
/// given up. ICE can recover within it; the session's own pings notice a dead path sooner.
pub const DISCONNECTED_GRACE: Duration = Duration::from_secs(10);
/// Time str0m gets to send its closing datagrams after the end.
const CLOSE_DRAIN: Duration = Duration::from_secs(1);
/// A str0m "no timeout" is a far future; the driver looks again at least this often.
const MAX_SLEEP: Duration = Duration::from_secs(30);
/// Source addresses of ICE traffic a peer remembers (see [`Peer::heard_ice_from`]); a
/// connection checks a handful of candidate pairs.
const MAX_ICE_SOURCES: usize = 8;

pub(crate) struct Peer {
    rtc: Rtc,
    end: ChannelEnd,
    channel: Option<ChannelId>,
    open_by: Instant,
    path: Option<DirectPath>,
    /// A message str0m's send buffer could not take yet (sent before anything newer).
    head: Option<Vec<u8>>,
    next_timeout: Instant,
    disconnected_since: Option<Instant>,
    /// Set once the end was reported; the peer is dropped when str0m is done or by then.
    drop_by: Option<Instant>,
    /// str0m panicked: never call it again.
    crashed: bool,
    /// Where this peer's ICE traffic came from, newest last (see [`Peer::heard_ice_from`]).
    ice_sources: Vec<SocketAddr>,
}

/// The path a datagram str0m sends runs on, when it tells: everything except STUN (DTLS,
/// SCTP inside it) goes over the nominated candidate pair, so its source and destination
/// are the path. STUN checks go to every candidate and say nothing.
pub(crate) fn nominated_path(t: &Transmit) -> Option<DirectPath> {
    // RFC 7983 demultiplexing: STUN starts with 0 or 1, DTLS with 20..=63.
    match t.contents.first() {
        Some(b) if (20..64).contains(b) => Some(DirectPath {
            local: t.source,
            remote: t.destination,
        }),
        _ => None,
    }
}

impl Peer {
    /// `rtc` has just accepted an offer or answer: the first `poll` gives it its first
    /// timeout (str0m 0.25 starts its ICE checks only then).
    pub fn new(rtc: Rtc, end: ChannelEnd, now: Instant, open_deadline: Duration) -> Peer {
        Peer {
            rtc,
            end,
            channel: None,
            open_by: now + open_deadline,
            path: None,
            head: None,
            next_timeout: now,
            disconnected_since: None,
            drop_by: None,
            crashed: false,
            ice_sources: Vec::new(),
        }
    }

    /// Whether this datagram belongs to this peer (ICE credentials, nominated address, or a
    /// known remote candidate).
    pub fn accepts(&self, input: &Input) -> bool {
        self.drop_by.is_none() && !self.crashed && self.rtc.accepts(input)
    }

    /// Whether `from` sent this peer ICE traffic (a check carrying its username, or an
    /// answer to one of its checks) — the fallback owner of a DTLS datagram that
    /// [`Peer::accepts`] refuses.
    ///
    /// str0m accepts DTLS only from its nominated address or a candidate pair whose own
    /// check succeeded. The side whose ICE connects first sends its first DTLS flight at
    /// once; when it is the DTLS client, the ClientHello reaches the other side before that
    /// side's checks have come back (behind a NAT that dropped its first checks, hundreds
    /// of ms later), and refused, it waits for the 1 s DTLS retransmit timer. Handing it to
    /// the peer whose ICE already heard from that address lets the answering flight go out
    /// the moment that side's ICE connects. Nothing is trusted less: DTLS still checks the
    /// signalled fingerprint, and a peer that never accepted traffic from the address never
    /// sees its DTLS.
    pub fn heard_ice_from(&self, from: SocketAddr) -> bool {
        self.drop_by.is_none() && !self.crashed && self.ice_sources.contains(&from)
    }

    /// Remembers that `from` sent this peer a STUN datagram it accepted.
    pub fn note_ice_source(&mut self, from: SocketAddr) {
        if self.ice_sources.contains(&from) {
            return;
        }
        if self.ice_sources.len() == MAX_ICE_SOURCES {
            self.ice_sources.remove(0);
        }
        self.ice_sources.push(from);
    }

    /// Feeds one datagram.
    pub fn receive(&mut self, now: Instant, datagram: Receive) {
        if let Err(e) = self.rtc.handle_input(Input::Receive(now, datagram)) {
            self.end_with(now, CloseReason::Failed(e.to_string()));
        }
    }

    /// Runs str0m until it waits; pushes what it wants sent onto `out`.
    pub fn poll(&mut self, now: Instant, out: &mut Vec<Transmit>) {
        if self.crashed {
            return;
        }
        self.check_lifetime(now);
        if now >= self.next_timeout {
            if let Err(e) = self.rtc.handle_input(Input::Timeout(now)) {
                self.end_with(now, CloseReason::Failed(e.to_string()));
            }
        }
        loop {
            let wrote = self.pump_outbound(now);
            self.drain_output(now, out);
            if !wrote {
                break;
            }
        }
    }

    /// When `poll` must run again at the latest.
    pub fn next_wake(&self, now: Instant) -> Instant {
        let mut at = self.next_timeout.min(now + MAX_SLEEP);
        if self.channel.is_none() {
            at = at.min(self.open_by);
        }
        if let Some(since) = self.disconnected_since {
            at = at.min(since + DISCONNECTED_GRACE);
        }
        if let Some(by) = self.drop_by {
            at = at.min(by);
        }
        at
    }

    /// Ended and done draining: the driver drops it.
    pub fn is_finished(&self, now: Instant) -> bool {
        match self.drop_by {
            Some(by) => self.crashed || now >= by || !self.rtc.is_alive(),
            None => false,
        }
    }

    /// str0m panicked inside this peer: report the end and drop it now, without touching
    /// the `Rtc` again (its state is unknown).
    pub fn crashed(&mut self, now: Instant) {
        if self.drop_by.is_none() {
            self.end
                .closed(CloseReason::Failed("the WebRTC stack failed".into()));
        }
        self.drop_by = Some(now);
        self.crashed = true;
    }

    fn check_lifetime(&mut self, now: Instant) {
        if self.end.close_requested() {
            self.end_with(now, CloseReason::Local);
        } else if self.channel.is_none() && now >= self.open_by {
            self.end_with(now, CloseReason::OpenDeadline);
        } else if self
            .disconnected_since
            .is_some_and(|since| now >= since + DISCONNECTED_GRACE)
        {
            self.end_with(now, CloseReason::PathLost);
        }
    }

    /// Reports the end once and starts str0m's closing drain.
    fn end_with(&mut self, now: Instant, reason: CloseReason) {
        if self.drop_by.is_some() {
            return;
        }
        tracing::debug!(%reason, "direct connection ends");
        self.end.closed(reason);
        self.drop_by = Some(now + CLOSE_DRAIN);
        if self.rtc.close().is_err() {
            self.rtc.disconnect();
        }
    }

    /// Moves queued messages into str0m while its send buffer takes them. True when at
    /// least one was written (so str0m has new output).
    fn pump_outbound(&mut self, now: Instant) -> bool {
        let Some(id) = self.channel.filter(|_| self.drop_by.is_none()) else {
            return false;
        };
        let mut wrote = false;
        loop {
            let message = match self.head.take() {
                Some(m) => m,
                None => match self.end.outbound.try_recv() {
                    Ok(m) => m,
                    Err(_) => return wrote,
                },
            };
            let Some(mut channel) = self.rtc.channel(id) else {
                self.end_with(now, CloseReason::Remote);
                return wrote;
            };
            match channel.write(true, &message) {
                Ok(true) => wrote = true,
                Ok(false) => {
                    self.head = Some(message);
                    return wrote;
                }
                Err(e) => {
                    self.end_with(now, CloseReason::Failed(e.to_string()));
                    return wrote;
                }
            }
        }
    }

    fn drain_output(&mut self, now: Instant, out: &mut Vec<Transmit>) {
        loop {
            match self.rtc.poll_output() {
                Ok(Output::Transmit(t)) => {
                    if let Some(path) = nominated_path(&t) {
                        self.note_path(path);
                    }
                    out.push(t);
                }
                Ok(Output::Timeout(at)) => {
                    self.next_timeout = at;
                    return;
                }
                Ok(Output::Event(e)) => self.on_event(now, e),
                Err(e) => {
                    self.end_with(now, CloseReason::Failed(e.to_string()));
                    self.rtc.disconnect();
                    self.next_timeout = now + MAX_SLEEP;
                    return;
                }
            }
        }
    }

    fn note_path(&mut self, path: DirectPath) {
        if self.path == Some(path) {
            return;
        }
        let was = self.path.replace(path);
        if was.is_some() && self.channel.is_some() && self.drop_by.is_none() {
            self.end.path_changed(path);
        }
    }

    fn on_event(&mut self, now: Instant, event: Event) {
        match event {
            Event::ChannelOpen(id, label) => {
                if label != CHANNEL_LABEL || self.channel.is_some() || self.drop_by.is_some() {
                    tracing::debug!(label, "ignoring an extra or unknown DataChannel");
                    return;
                }
                let Some(path) = self.path else {
                    // DTLS runs before SCTP can open a channel, so str0m has sent on the
                    // nominated pair; without it the open is not trustworthy.
                    self.end_with(
                        now,
                        CloseReason::Failed("channel open without a path".into()),
                    );
                    return;
                };
                self.channel = Some(id);
                self.end.opened(path);
            }
            Event::ChannelData(d) if Some(d.id) == self.channel => {
                if d.data.len() > MAX_MESSAGE_BYTES {
                    let why = format!("the peer sent a {} byte message", d.data.len());
                    self.end_with(now, CloseReason::Failed(why));
                } else if let Err(reason) = self.end.deliver(d.data) {
                    self.end_with(now, reason);
                }
            }
            Event::ChannelClose(id) if Some(id) == self.channel => {
                self.end_with(now, CloseReason::Remote)
            }
            Event::Closed => self.end_with(now, CloseReason::Remote),
            Event::IceConnectionStateChange(state) => {
                if state == IceConnectionState::Disconnected {
                    self.disconnected_since.get_or_insert(now);
                } else {
                    self.disconnected_since = None;
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use str0m::net::Protocol;

    fn transmit(first: u8) -> Transmit {
        Transmit {
            proto: Protocol::Udp,
            source: "10.0.0.2:11451".parse().unwrap(),
            destination: "203.0.113.9:40000".parse().unwrap(),
            contents: vec![first, 0, 0, 0].into(),
        }
    }

    #[test]
    fn dtls_and_sctp_datagrams_name_the_path_stun_checks_do_not() {
        // DTLS records (content types 20..=63, SCTP rides inside them) go over the pair
        // ICE nominated: that destination is the peer as we see it.
        for first in [20, 22, 23, 63] {
            assert_eq!(
                nominated_path(&transmit(first)),
                Some(DirectPath {
                    local: "10.0.0.2:11451".parse().unwrap(),
                    remote: "203.0.113.9:40000".parse().unwrap(),
                }),
                "byte {first}"
            );
        }
        // STUN (0, 1) is sent to every candidate being checked; RTP/RTCP never runs here.
        for first in [0, 1, 64, 128] {
            assert_eq!(nominated_path(&transmit(first)), None, "byte {first}");
        }
    }
}
