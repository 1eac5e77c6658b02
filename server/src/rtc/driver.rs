//! The UDP driver: one task owns one socket and every peer connection on it.
//!
//! Each datagram goes to exactly one place, in this order: an answer to one of our own STUN
//! transactions (the NAT check, a client's reflexive address) goes to whoever asked; else
//! the first peer whose `Rtc` accepts it (ICE username, nominated address, or the remote
//! address of a candidate pair whose check succeeded) gets it; else a DTLS datagram goes to
//! the peer whose ICE already heard from its source (a first flight that arrives before
//! this side's own checks succeeded, see [`Peer::heard_ice_from`]); else it is counted and
//! dropped. Datagrams str0m cannot parse
//! (garbage) are counted and dropped too; nothing a datagram says can stop the driver (even
//! a panic inside str0m only ends the peer connection it happened in).
//!
//! The task ends when every [`DriverHandle`] is gone and its last peer connection has
//! ended: a client's channel outlives its `ClientPeer`, a host's open channels outlive the
//! `HostPeer` (which then takes no new ones).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use str0m::net::{Protocol, Receive, Transmit};
use str0m::{Input, Rtc};
use stun_rs::TransactionId;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot, Notify};

use super::candidates::LocalAddrs;
use super::channel::{self, DirectChannel};
use super::peer::Peer;
use super::RtcError;
use crate::discovery::stun::{decode_answer, decode_other_address, Answer};

/// Receive buffer: str0m handles datagrams up to 2000 bytes; a longer one is not ours.
const RECV_BUF: usize = 2048;
/// Our own STUN transactions in flight at once (a NAT check has one or two).
const MAX_STUN_TRANSACTIONS: usize = 64;
/// Commands queued for the driver.
const COMMAND_QUEUE: usize = 64;

/// An answer to one of our STUN transactions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StunReply {
    /// Where the answer came from (the other port when a change was asked for).
    pub from: SocketAddr,
    pub answer: Answer,
    /// The server's OTHER-ADDRESS (RFC 5780), when it sent one.
    pub other: Option<SocketAddr>,
}

/// Counters of one socket, for tests and `/metrics`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SocketStats {
    /// Peer connections on the socket (open, opening or closing).
    pub peers: usize,
    /// Datagrams that are no STUN, DTLS or RTP at all.
    pub garbage_datagrams: u64,
    /// Well-formed datagrams no peer connection claimed.
    pub unmatched_datagrams: u64,
}

#[derive(Debug, Default)]
struct Counters {
    peers: AtomicUsize,
    garbage: AtomicU64,
    unmatched: AtomicU64,
}

pub(crate) enum Command {
    /// Drive this `Rtc` (it has accepted an offer or an answer) and hand back its channel.
    Add {
        rtc: Box<Rtc>,
        reply: oneshot::Sender<Result<DirectChannel, RtcError>>,
    },
    /// Send a STUN request; with `reply`, route the answer with `tid` there (a retransmit
    /// of the same transaction passes `None`).
    Stun {
        to: SocketAddr,
        request: Vec<u8>,
        tid: TransactionId,
        reply: Option<oneshot::Sender<StunReply>>,
    },
}

/// A handle on a running driver; the driver stops when the last one is dropped.
#[derive(Debug, Clone)]
pub(crate) struct DriverHandle {
    commands: mpsc::Sender<Command>,
    local: SocketAddr,
    counters: Arc<Counters>,
}

impl DriverHandle {
    /// Starts the driver task on `socket`.
    pub fn spawn(socket: UdpSocket, max_peers: usize, open_deadline: Duration) -> DriverHandle {
        let local = socket
            .local_addr()
            .unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0)));
        let (tx, rx) = mpsc::channel(COMMAND_QUEUE);
        let counters = Arc::new(Counters::default());
        let driver = Driver {
            socket,
            local: LocalAddrs::new(local),
            commands: rx,
            wake: Arc::new(Notify::new()),
            peers: Vec::new(),
            max_peers,
            open_deadline,
            stun: HashMap::new(),
            counters: counters.clone(),
        };
        tokio::spawn(driver.run());
        DriverHandle {
            commands: tx,
            local,
            counters,
        }
    }

    /// The socket's address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    pub fn stats(&self) -> SocketStats {
        SocketStats {
            peers: self.counters.peers.load(Ordering::Relaxed),
            garbage_datagrams: self.counters.garbage.load(Ordering::Relaxed),
            unmatched_datagrams: self.counters.unmatched.load(Ordering::Relaxed),
        }
    }

    /// Hands an `Rtc` that has accepted an offer or answer to the driver.
    pub async fn add(&self, rtc: Rtc) -> Result<DirectChannel, RtcError> {
        let (reply, rx) = oneshot::channel();
        let rtc = Box::new(rtc);
        self.command(Command::Add { rtc, reply }).await?;
        rx.await.map_err(|_| RtcError::DriverGone)?
    }

    /// Sends one STUN request from the socket; see [`Command::Stun`].
    pub async fn stun(
        &self,
        to: SocketAddr,
        request: Vec<u8>,
        tid: TransactionId,
        reply: Option<oneshot::Sender<StunReply>>,
    ) -> Result<(), RtcError> {
        self.command(Command::Stun {
            to,
            request,
            tid,
            reply,
        })
        .await
    }

    async fn command(&self, c: Command) -> Result<(), RtcError> {
        self.commands
            .send(c)
            .await
            .map_err(|_| RtcError::DriverGone)
    }
}

/// Runs `f` on one peer; a panic inside str0m (a bug there, never expected on any input)
/// ends that peer connection only, not every session on the socket. str0m's documentation
/// recommends exactly this: an `Rtc` has no threads or locks, so discarding it is safe.
fn guarded(peer: &mut Peer, now: Instant, f: impl FnOnce(&mut Peer)) {
    if catch_unwind(AssertUnwindSafe(|| f(&mut *peer))).is_err() {
        peer.crashed(now);
    }
}

struct Driver {
    socket: UdpSocket,
    local: LocalAddrs,
    commands: mpsc::Receiver<Command>,
    /// Rung by channels that queued a message or asked to close.
    wake: Arc<Notify>,
    peers: Vec<Peer>,
    max_peers: usize,
    open_deadline: Duration,
    stun: HashMap<TransactionId, oneshot::Sender<StunReply>>,
    counters: Arc<Counters>,
}

impl Driver {
    async fn run(mut self) {
        let mut buf = vec![0u8; RECV_BUF];
        let mut out: Vec<Transmit> = Vec::new();
        let mut handles_gone = false;
        loop {
            let now = Instant::now();
            for p in &mut self.peers {
                guarded(p, now, |p| p.poll(now, &mut out));
            }
            self.send_all(&mut out).await;
            self.drop_finished(now);
            if handles_gone && self.peers.is_empty() {
                break;
            }
            let next = self
                .peers
                .iter()
                .map(|p| p.next_wake(now))
                .min()
                .unwrap_or(now + Duration::from_secs(3600));
            tokio::select! {
                cmd = self.commands.recv(), if !handles_gone => match cmd {
                    Some(c) => self.on_command(c).await,
                    None => handles_gone = true,
                },
                r = self.socket.recv_from(&mut buf) => match r {
                    Ok((n, from)) => self.on_datagram(&buf[..n], from),
                    // An ICMP error surfacing on the socket names no peer: keep going.
                    Err(e) => tracing::debug!("direct path UDP socket: {e}"),
                },
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep_until(tokio::time::Instant::from_std(next)) => {}
            }
        }
        self.counters.peers.store(0, Ordering::Relaxed);
    }

    async fn send_all(&mut self, out: &mut Vec<Transmit>) {
        for t in out.drain(..) {
            // The socket may be bound to the unspecified address: the kernel picks the
            // source of the route, which is what `LocalAddrs` reported to str0m.
            if let Err(e) = self.socket.send_to(&t.contents, t.destination).await {
                tracing::debug!(to = %t.destination, "direct path send failed: {e}");
            }
        }
    }

    fn drop_finished(&mut self, now: Instant) {
        self.peers.retain(|p| !p.is_finished(now));
        self.counters
            .peers
            .store(self.peers.len(), Ordering::Relaxed);
    }

    async fn on_command(&mut self, c: Command) {
        match c {
            Command::Add { rtc, reply } => {
                if self.peers.len() >= self.max_peers {
                    let _ = reply.send(Err(RtcError::TooManyPeers {
                        max: self.max_peers,
                    }));
                    return;
                }
                let (channel, end) = channel::pair(self.wake.clone());
                self.peers
                    .push(Peer::new(*rtc, end, Instant::now(), self.open_deadline));
                self.counters
                    .peers
                    .store(self.peers.len(), Ordering::Relaxed);
                let _ = reply.send(Ok(channel));
            }
            Command::Stun {
                to,
                request,
                tid,
                reply,
            } => {
                if let Some(reply) = reply {
                    self.stun.retain(|_, r| !r.is_closed());
                    if self.stun.len() >= MAX_STUN_TRANSACTIONS {
                        // Dropping `reply` tells the caller: no answer will come.
                        return;
                    }
                    self.stun.insert(tid, reply);
                }
                if let Err(e) = self.socket.send_to(&request, to).await {
                    tracing::debug!(%to, "STUN request not sent: {e}");
                }
            }
        }
    }

    fn on_datagram(&mut self, datagram: &[u8], from: SocketAddr) {
        let now = Instant::now();
        if datagram.len() >= RECV_BUF {
            self.counters.garbage.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if self.take_stun_answer(datagram, from) {
            return;
        }
        let destination = self.local.toward(from);
        let Ok(receive) = Receive::new(Protocol::Udp, from, destination, datagram) else {
            self.counters.garbage.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%from, len = datagram.len(), "dropping a datagram that is no STUN, DTLS or RTP");
            return;
        };
        let input = Input::Receive(now, receive);
        let Some(peer) = self.owner(&input, datagram, from) else {
            self.counters.unmatched.fetch_add(1, Ordering::Relaxed);
            return;
        };
        if is_stun(datagram) {
            peer.note_ice_source(from);
        }
        let Input::Receive(_, receive) = input else {
            return;
        };
        guarded(peer, now, |p| p.receive(now, receive));
    }

    /// The peer a datagram belongs to: the first whose `Rtc` accepts it, else, for DTLS,
    /// the one whose ICE already heard from that address (see [`Peer::heard_ice_from`]).
    fn owner(&mut self, input: &Input, datagram: &[u8], from: SocketAddr) -> Option<&mut Peer> {
        let at = self
            .peers
            .iter()
            .position(|p| p.accepts(input))
            .or_else(|| {
                is_dtls(datagram)
                    .then(|| self.peers.iter().position(|p| p.heard_ice_from(from)))
                    .flatten()
            })?;
        self.peers.get_mut(at)
    }

    /// Routes an answer to one of our own STUN transactions; false when it is not one.
    fn take_stun_answer(&mut self, datagram: &[u8], from: SocketAddr) -> bool {
        // RFC 7983: a STUN message starts with 0 or 1. Most datagrams are not ours.
        if self.stun.is_empty() || !is_stun(datagram) {
            return false;
        }
        let Some((tid, answer)) = decode_answer(datagram) else {
            return false;
        };
        let Some(reply) = self.stun.remove(&tid) else {
            return false;
        };
        let other = decode_other_address(datagram);
        let _ = reply.send(StunReply {
            from,
            answer,
            other,
        });
        true
    }
}

/// RFC 7983 demultiplexing: a STUN message starts with 0 or 1.
fn is_stun(datagram: &[u8]) -> bool {
    matches!(datagram.first(), Some(0 | 1))
}

/// RFC 7983 demultiplexing: a DTLS record starts with 20..=63.
fn is_dtls(datagram: &[u8]) -> bool {
    matches!(datagram.first(), Some(20..=63))
}
