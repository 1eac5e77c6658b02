//! The end-to-end encrypted channel after the [handshake](crate::handshake): numbered,
//! acknowledged frames, so one session can move between paths (relay WebSocket, a direct
//! WebRTC DataChannel, back to the relay) without losing, duplicating or reordering a
//! message.
//!
//! Like the rest of `shared`, this is sans-IO: the shells move the frames. All cryptography
//! is `snow`'s [`StatelessTransportState`] (explicit nonces); nothing is hand-rolled.
//!
//! ## The frame
//!
//! ```text
//! frame     = seq (u64 big-endian, 8 bytes) ‖ Noise transport ciphertext (nonce = seq)
//! plaintext = ack (u64 big-endian, 8 bytes) ‖ body
//! ```
//!
//! - `seq` numbers the frames of one direction from 0. It is the Noise nonce the frame was
//!   sealed with, so it is authenticated: a frame whose `seq` was changed does not decrypt.
//!   A sender never seals two frames with the same `seq` (a retransmission resends the
//!   same bytes, it does not seal again).
//! - `ack` is how many frames of the *other* direction this side had received in order
//!   when it sealed the frame (the next `seq` it expects). The peer forgets every retained
//!   frame below it.
//! - `body` is one mesh JSON message ([`crate::wire`]), or empty: a *pure ack*.
//!
//! Sizes: a frame is at most [`MAX_FRAME_BYTES`] (65535, the Noise limit and what every
//! transport carries in one message), at least [`MIN_FRAME_BYTES`] (32: seq, ack and the
//! AEAD tag around an empty body). So a body is at most [`MAX_BODY_BYTES`] = 65535 − 8 (seq)
//! − 8 (ack) − 16 (tag) = 65503 bytes.
//!
//! ## Receiving
//!
//! Every frame is decrypted first (so any change to any byte, `seq` included, is detected
//! and breaks the channel, as before). Then:
//!
//! - `seq` below the next expected one (or already waiting in the buffer): a duplicate, as
//!   a resend on a new path produces. Dropped silently, not an error.
//! - `seq` equal to the next expected one: delivered, followed by every buffered frame that
//!   now continues the sequence.
//! - `seq` ahead: kept in a bounded reorder buffer ([`REORDER_MAX_FRAMES`] frames within
//!   that distance of the next expected one, [`REORDER_MAX_BYTES`] bytes) until the gap
//!   fills. Beyond the bound the channel fails with [`ChannelError::ReorderOverflow`]: the
//!   peer skipped frames it will never send, or is flooding.
//!
//! [`SecureChannel::open`] returns the next body ready for the application;
//! [`SecureChannel::pop_ready`] returns the further bodies one frame unblocked (a shell
//! drains it before reading the socket again). Pure acks deliver nothing.
//!
//! ## Sending and resending
//!
//! [`SecureChannel::seal`] numbers and seals one body. Frames are kept for a resend only
//! once [`SecureChannel::enable_resend`] was called (when an upgrade to a direct path
//! starts; until then there is one path and nothing to resend, so nothing is kept). Kept
//! frames are bounded ([`ResendLimits`]: frames and bytes); past the bound the oldest is
//! forgotten, and a later [`SecureChannel::resend_frames`] that would need it fails with
//! [`ChannelError::ResendForgotten`] (the session ends and the client reconnects, rather
//! than silently losing a message). An incoming `ack` drops every kept frame below it.
//!
//! When a path dies, the shell sends [`SecureChannel::resend_frames`] (every kept frame the
//! peer has not acknowledged, in order) on the path it moves to, then carries on sealing.
//! Frames sealed before resend was enabled are not kept: they went over the path that was
//! the only one then, the relay, which stays open as the standby
//! ([`crate::upgrade`]), so they still arrive there.
//!
//! An ack is *due* once a body was delivered since this side last sealed a frame (every
//! frame carries the current ack). Pure acks never make an ack due, so two idle sides do
//! not ack each other's acks forever. [`SecureChannel::seal_ack`] gives a pure ack when one
//! is due; *when* to send it is the policy's business ([`crate::upgrade`]).
//!
//! ## Driving it
//!
//! ```
//! # use atmosphere_shared::channel::SecureChannel;
//! # fn demo(host: &mut SecureChannel, member: &mut SecureChannel) -> Result<(), atmosphere_shared::channel::ChannelError> {
//! let frame = host.seal(br#"{"type":"peers","peers":[]}"#)?;
//! // ... the frame travels over any path ...
//! if let Some(body) = member.open(&frame)? {
//!     assert_eq!(body, br#"{"type":"peers","peers":[]}"#);
//! }
//! while let Some(body) = member.pop_ready() {
//!     let _ = body; // bodies a late frame unblocked
//! }
//! # Ok(()) }
//! ```

use snow::{HandshakeState, StatelessTransportState};
use std::collections::{BTreeMap, VecDeque};
use std::fmt;

pub use crate::handshake::TAG_BYTES;

/// Largest frame, the Noise message limit: every transport (WebSocket binary frame,
/// DataChannel message) carries one frame in one message.
pub const MAX_FRAME_BYTES: usize = crate::handshake::MAX_NOISE_MESSAGE_BYTES;
/// The sequence number in front of the ciphertext.
pub const SEQ_BYTES: usize = 8;
/// The acknowledgement in front of the body, inside the ciphertext.
pub const ACK_BYTES: usize = 8;
/// The header bytes a frame adds to its body besides the tag: `seq` and `ack`.
pub const HEADER_BYTES: usize = SEQ_BYTES + ACK_BYTES;
/// Smallest valid frame: a pure ack (seq, ack, tag).
pub const MIN_FRAME_BYTES: usize = HEADER_BYTES + TAG_BYTES;
/// Largest body one frame carries: 65535 − 16 (seq, ack) − 16 (tag) = 65503.
pub const MAX_BODY_BYTES: usize = MAX_FRAME_BYTES - HEADER_BYTES - TAG_BYTES;

/// How many frames ahead of the next expected one the receiver keeps.
pub const REORDER_MAX_FRAMES: u64 = 512;
/// How many bytes of out-of-order bodies the receiver keeps.
pub const REORDER_MAX_BYTES: usize = 1024 * 1024;

/// Unacknowledged frames after which an ack is sent at once ([`SecureChannel::ack_urgent`]).
pub const ACK_URGENT_FRAMES: u64 = 32;

/// Noise reserves nonce 2⁶⁴−1; a direction ends one below it (never in practice).
const LAST_SEQ: u64 = u64::MAX - 1;

/// Bounds of the frames a sender keeps for a resend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResendLimits {
    /// Most frames kept.
    pub max_frames: usize,
    /// Most bytes (whole frames) kept.
    pub max_bytes: usize,
}

impl Default for ResendLimits {
    /// 512 frames and 1 MiB: several seconds of a busy chat, and a host with a thousand
    /// members upgrading at once keeps at most ~1 GiB only if every one of them floods.
    fn default() -> Self {
        ResendLimits {
            max_frames: 512,
            max_bytes: 1024 * 1024,
        }
    }
}

/// Why a [`SecureChannel`] refused a frame. Every error except a refused oversize body
/// breaks the channel for good ([`ChannelError::Broken`] afterwards): the shell closes the
/// session.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChannelError {
    /// A body to seal, or a frame to open, is over its limit.
    #[error("{what} of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        what: &'static str,
        len: usize,
        max: usize,
    },
    /// A frame shorter than a pure ack: cut off.
    #[error("frame of {len} bytes is shorter than the smallest frame ({MIN_FRAME_BYTES} bytes)")]
    Truncated { len: usize },
    /// The tag did not verify: the frame (its sequence number included) was altered, or it
    /// belongs to another session or the other direction.
    #[error("frame did not decrypt: altered, or from another session or direction")]
    Decrypt,
    /// A frame arrived too far ahead of the next expected one (more than the reorder buffer
    /// holds): frames in between are missing for good, or the peer floods.
    #[error("frame {seq} arrived while frame {expected} is still missing; the reorder buffer holds {max_frames} frames and {max_bytes} bytes")]
    ReorderOverflow {
        seq: u64,
        expected: u64,
        max_frames: u64,
        max_bytes: usize,
    },
    /// The peer acknowledged frames this side never sent: a broken peer.
    #[error("the peer acknowledged {ack} frames, but only {sent} were sent")]
    AckAhead { ack: u64, sent: u64 },
    /// A resend needs frames that were forgotten because the resend buffer was full: the
    /// session cannot continue without losing a message; reconnect.
    #[error("a resend needs frame {needed}, but frames up to {forgotten} were forgotten (the resend buffer was full)")]
    ResendForgotten { needed: u64, forgotten: u64 },
    /// The channel failed before and refuses everything.
    #[error("the secure channel already failed")]
    Broken,
    /// 2⁶⁴−1 frames in one direction (never in practice) or an internal `snow` error.
    #[error("the secure channel failed: {reason}")]
    Internal { reason: String },
}

/// The encrypted channel after the handshake; see the module documentation. Each side seals
/// what it sends and opens what it receives.
pub struct SecureChannel {
    transport: StatelessTransportState,
    broken: bool,
    // Sending.
    /// The `seq` of the next sealed frame = frames sealed so far.
    next_seq: u64,
    /// The highest ack the peer sent: it holds every frame below it.
    peer_ack: u64,
    /// `Some` once resend is enabled.
    resend: Option<Resend>,
    // Receiving.
    /// The next `seq` to deliver = frames received in order (this side's ack).
    next_expected: u64,
    /// A body was delivered since this side last sealed a frame.
    ack_wanted: bool,
    /// The ack this side last sent (frames of the peer acknowledged so far).
    ack_sent: u64,
    /// Frames ahead of `next_expected`, by seq: their bodies.
    reorder: BTreeMap<u64, Vec<u8>>,
    reorder_bytes: usize,
    /// Bodies delivered in order, not yet taken by the shell.
    ready: VecDeque<Vec<u8>>,
}

#[derive(Debug)]
struct Resend {
    limits: ResendLimits,
    /// The first seq sealed while resend was enabled.
    from_seq: u64,
    /// Kept frames, consecutive seqs, oldest first.
    frames: VecDeque<(u64, Vec<u8>)>,
    bytes: usize,
    /// The highest seq forgotten because the buffer was full.
    forgotten: Option<u64>,
}

impl SecureChannel {
    pub(crate) fn from_handshake(state: HandshakeState) -> Result<SecureChannel, snow::Error> {
        Ok(SecureChannel {
            transport: state.into_stateless_transport_mode()?,
            broken: false,
            next_seq: 0,
            peer_ack: 0,
            resend: None,
            next_expected: 0,
            ack_wanted: false,
            ack_sent: 0,
            reorder: BTreeMap::new(),
            reorder_bytes: 0,
            ready: VecDeque::new(),
        })
    }

    /// Numbers and encrypts one body (at most [`MAX_BODY_BYTES`]; empty = a pure ack) into
    /// one frame, carrying the current ack. Kept for a resend if resend is enabled.
    pub fn seal(&mut self, body: &[u8]) -> Result<Vec<u8>, ChannelError> {
        if self.broken {
            return Err(ChannelError::Broken);
        }
        if body.len() > MAX_BODY_BYTES {
            // Refusing to seal an oversize body does not break the channel: nothing was
            // sent and no sequence number was used.
            return Err(ChannelError::TooLarge {
                what: "message",
                len: body.len(),
                max: MAX_BODY_BYTES,
            });
        }
        let r = self.seal_frame(body);
        self.broken = r.is_err();
        r
    }

    /// A pure ack (an empty body) if an ack is due, else `None`.
    pub fn seal_ack(&mut self) -> Result<Option<Vec<u8>>, ChannelError> {
        if !self.ack_due() {
            return Ok(None);
        }
        self.seal(&[]).map(Some)
    }

    /// True once a body was delivered since this side last sealed a frame.
    pub fn ack_due(&self) -> bool {
        self.ack_wanted && !self.broken
    }

    /// True when this side has taken at least [`ACK_URGENT_FRAMES`] frames it has not yet
    /// acknowledged: the shell sends a pure ack at once instead of at the next tick, so a
    /// sender held back by [`resend_backlogged`](Self::resend_backlogged) resumes quickly.
    pub fn ack_urgent(&self) -> bool {
        self.ack_due() && self.next_expected - self.ack_sent >= ACK_URGENT_FRAMES
    }

    /// True while the frames kept for a resend fill half of their bound: the shell takes
    /// no new input until acks make room, so the bound never forgets a frame a fallback
    /// may need (flow control; without it a burst on a fast path outruns the acks).
    pub fn resend_backlogged(&self) -> bool {
        self.resend.as_ref().is_some_and(|r| {
            r.frames.len() * 2 >= r.limits.max_frames || r.bytes * 2 >= r.limits.max_bytes
        })
    }

    /// Keeps every frame sealed from now on until the peer acknowledges it, within the
    /// default [`ResendLimits`]. Calling it again changes nothing.
    pub fn enable_resend(&mut self) {
        self.enable_resend_with(ResendLimits::default());
    }

    /// [`SecureChannel::enable_resend`] with other bounds (tests, benchmarks).
    pub fn enable_resend_with(&mut self, limits: ResendLimits) {
        if self.resend.is_none() {
            self.resend = Some(Resend {
                limits,
                from_seq: self.next_seq,
                frames: VecDeque::new(),
                bytes: 0,
                forgotten: None,
            });
        }
    }

    /// True once [`SecureChannel::enable_resend`] was called.
    pub fn resend_enabled(&self) -> bool {
        self.resend.is_some()
    }

    /// Every kept frame the peer has not acknowledged, oldest first: what to send on a new
    /// path when the old one died. Fails if a frame it needs was forgotten (the bound was
    /// exceeded); that breaks the channel.
    pub fn resend_frames(&mut self) -> Result<Vec<Vec<u8>>, ChannelError> {
        if self.broken {
            return Err(ChannelError::Broken);
        }
        let Some(resend) = &self.resend else {
            return Ok(Vec::new());
        };
        if let Some(forgotten) = resend.forgotten {
            if forgotten >= self.peer_ack {
                self.broken = true;
                return Err(ChannelError::ResendForgotten {
                    needed: self.peer_ack.max(resend.from_seq),
                    forgotten,
                });
            }
        }
        Ok(resend.frames.iter().map(|(_, f)| f.clone()).collect())
    }

    /// How many kept frames wait for the peer's ack.
    pub fn unacked(&self) -> usize {
        self.resend.as_ref().map_or(0, |r| r.frames.len())
    }

    /// Frames sealed so far (the `seq` of the next one).
    pub fn sent(&self) -> u64 {
        self.next_seq
    }

    /// Frames received in order so far (this side's ack).
    pub fn received(&self) -> u64 {
        self.next_expected
    }

    /// The highest ack the peer sent (frames of this side it holds).
    pub fn acked(&self) -> u64 {
        self.peer_ack
    }

    /// Decrypts one received frame and returns the next body ready for the application:
    /// `None` for a duplicate, a pure ack, or a frame that waits for an earlier one. After
    /// it, drain [`SecureChannel::pop_ready`]. Any error breaks the channel.
    pub fn open(&mut self, frame: &[u8]) -> Result<Option<Vec<u8>>, ChannelError> {
        if self.broken {
            return Err(ChannelError::Broken);
        }
        match self.open_frame(frame) {
            Ok(()) => Ok(self.ready.pop_front()),
            Err(e) => {
                self.broken = true;
                Err(e)
            }
        }
    }

    /// The next body already delivered in order but not taken yet (one frame can fill a
    /// gap and unblock several).
    pub fn pop_ready(&mut self) -> Option<Vec<u8>> {
        self.ready.pop_front()
    }

    fn seal_frame(&mut self, body: &[u8]) -> Result<Vec<u8>, ChannelError> {
        let seq = self.next_seq;
        if seq > LAST_SEQ {
            return Err(ChannelError::Internal {
                reason: "the frame sequence is exhausted".into(),
            });
        }
        let mut plain = Vec::with_capacity(ACK_BYTES + body.len());
        plain.extend_from_slice(&self.next_expected.to_be_bytes());
        plain.extend_from_slice(body);
        let mut frame = vec![0u8; SEQ_BYTES + plain.len() + TAG_BYTES];
        frame[..SEQ_BYTES].copy_from_slice(&seq.to_be_bytes());
        let n = self
            .transport
            .write_message(seq, &plain, &mut frame[SEQ_BYTES..])
            .map_err(|e| ChannelError::Internal {
                reason: e.to_string(),
            })?;
        frame.truncate(SEQ_BYTES + n);
        self.next_seq = seq + 1;
        self.ack_wanted = false;
        self.ack_sent = self.next_expected;
        if let Some(resend) = &mut self.resend {
            resend.keep(seq, &frame);
        }
        Ok(frame)
    }

    fn open_frame(&mut self, frame: &[u8]) -> Result<(), ChannelError> {
        if frame.len() > MAX_FRAME_BYTES {
            return Err(ChannelError::TooLarge {
                what: "frame",
                len: frame.len(),
                max: MAX_FRAME_BYTES,
            });
        }
        if frame.len() < MIN_FRAME_BYTES {
            return Err(ChannelError::Truncated { len: frame.len() });
        }
        let (seq, plain) = self.decrypt(frame)?;
        let ack = read_u64(&plain[..ACK_BYTES]);
        self.take_ack(ack)?;
        let body = &plain[ACK_BYTES..];
        if seq < self.next_expected || self.reorder.contains_key(&seq) {
            return Ok(()); // a duplicate: already delivered or waiting
        }
        if seq > self.next_expected {
            return self.buffer(seq, body);
        }
        self.deliver(body);
        while let Some(body) = self.reorder.remove(&self.next_expected) {
            self.reorder_bytes -= body.len();
            self.deliver(&body);
        }
        Ok(())
    }

    fn decrypt(&self, frame: &[u8]) -> Result<(u64, Vec<u8>), ChannelError> {
        let seq = read_u64(&frame[..SEQ_BYTES]);
        if seq > LAST_SEQ {
            // Never sealed by an honest peer; snow would refuse the nonce anyway.
            return Err(ChannelError::Decrypt);
        }
        let ciphertext = &frame[SEQ_BYTES..];
        let mut plain = vec![0u8; ciphertext.len() - TAG_BYTES];
        match self.transport.read_message(seq, ciphertext, &mut plain) {
            Ok(n) if n >= ACK_BYTES => {
                plain.truncate(n);
                Ok((seq, plain))
            }
            Ok(_) | Err(snow::Error::Decrypt) => Err(ChannelError::Decrypt),
            Err(e) => Err(ChannelError::Internal {
                reason: e.to_string(),
            }),
        }
    }

    /// The peer holds every frame below `ack`: forget them.
    fn take_ack(&mut self, ack: u64) -> Result<(), ChannelError> {
        if ack > self.next_seq {
            return Err(ChannelError::AckAhead {
                ack,
                sent: self.next_seq,
            });
        }
        if ack > self.peer_ack {
            self.peer_ack = ack;
            if let Some(resend) = &mut self.resend {
                resend.drop_below(ack);
            }
        }
        Ok(())
    }

    fn buffer(&mut self, seq: u64, body: &[u8]) -> Result<(), ChannelError> {
        if seq - self.next_expected > REORDER_MAX_FRAMES
            || self.reorder_bytes + body.len() > REORDER_MAX_BYTES
        {
            return Err(ChannelError::ReorderOverflow {
                seq,
                expected: self.next_expected,
                max_frames: REORDER_MAX_FRAMES,
                max_bytes: REORDER_MAX_BYTES,
            });
        }
        self.reorder_bytes += body.len();
        self.reorder.insert(seq, body.to_vec());
        Ok(())
    }

    fn deliver(&mut self, body: &[u8]) {
        self.next_expected += 1;
        if !body.is_empty() {
            self.ready.push_back(body.to_vec());
            self.ack_wanted = true;
        }
    }
}

impl Resend {
    fn keep(&mut self, seq: u64, frame: &[u8]) {
        self.frames.push_back((seq, frame.to_vec()));
        self.bytes += frame.len();
        while self.frames.len() > self.limits.max_frames || self.bytes > self.limits.max_bytes {
            let Some((old, f)) = self.frames.pop_front() else {
                break;
            };
            self.bytes -= f.len();
            self.forgotten = Some(old);
        }
    }

    fn drop_below(&mut self, ack: u64) {
        while self.frames.front().is_some_and(|(seq, _)| *seq < ack) {
            if let Some((_, f)) = self.frames.pop_front() {
                self.bytes -= f.len();
            }
        }
    }
}

fn read_u64(bytes: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&bytes[..8]);
    u64::from_be_bytes(b)
}

impl fmt::Debug for SecureChannel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecureChannel")
            .field("broken", &self.broken)
            .field("sent", &self.next_seq)
            .field("received", &self.next_expected)
            .field("acked", &self.peer_ack)
            .field("unacked", &self.unacked())
            .field("reordered", &self.reorder.len())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests;
