//! What a session holds of its direct path: a [`DirectChannel`], the same type on the host
//! and in the native client.
//!
//! Every [`DirectChannel::send`] is one DataChannel message (reliable, ordered); every
//! received message is one [`DirectEvent::Message`]. Events come in this order: at most
//! one [`DirectEvent::Open`], then messages and [`DirectEvent::PathChanged`]s, then exactly
//! one [`DirectEvent::Closed`] with the reason, then `None`. Messages sent before the
//! channel opens wait in the queue and go out once it does.
//!
//! The other half, [`ChannelEnd`], belongs to the UDP driver. Dropping (or
//! [`DirectChannel::close`]-ing) the channel closes the peer connection.

use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, watch, Notify};

use super::{RtcError, MAX_INBOUND_BYTES, MAX_MESSAGE_BYTES, OUTBOUND_QUEUE};

/// The addresses a direct path runs between: ours and the peer's as we see it (its
/// reflexive address when it is behind a NAT). Input to the `local`/`public`/`punched`
/// decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DirectPath {
    pub local: SocketAddr,
    pub remote: SocketAddr,
}

/// What happens on a direct channel, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DirectEvent {
    /// The DataChannel is open, over this path.
    Open(DirectPath),
    /// One DataChannel message from the peer.
    Message(Vec<u8>),
    /// ICE moved to another candidate pair.
    PathChanged(DirectPath),
    /// The connection is gone; nothing follows.
    Closed(CloseReason),
}

/// Why a direct connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseReason {
    /// This side closed it (or dropped its [`DirectChannel`]).
    Local,
    /// The peer closed the channel or the connection.
    Remote,
    /// The DataChannel did not open within the deadline.
    OpenDeadline,
    /// ICE lost the peer and did not find it again.
    PathLost,
    /// The session did not read its messages: more than [`MAX_INBOUND_BYTES`] waited.
    SlowReader,
    /// The peer sent a message over [`MAX_MESSAGE_BYTES`] or broke the protocol.
    Failed(String),
    /// The UDP driver stopped (socket error or shutdown).
    DriverStopped,
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CloseReason::Local => f.write_str("closed by this side"),
            CloseReason::Remote => f.write_str("closed by the peer"),
            CloseReason::OpenDeadline => f.write_str("the DataChannel did not open in time"),
            CloseReason::PathLost => f.write_str("ICE lost the path to the peer"),
            CloseReason::SlowReader => write!(
                f,
                "more than {MAX_INBOUND_BYTES} received bytes were not read"
            ),
            CloseReason::Failed(why) => write!(f, "failed: {why}"),
            CloseReason::DriverStopped => f.write_str("the UDP driver stopped"),
        }
    }
}

/// State both halves see.
#[derive(Debug, Default)]
struct Shared {
    /// The session asked to close (or dropped its channel).
    close_requested: AtomicBool,
    /// Bytes delivered to the events queue and not yet received by the session.
    inbound_bytes: AtomicUsize,
    /// Set once by the driver when the connection ends.
    reason: Mutex<Option<CloseReason>>,
}

/// The session's half. See the module doc.
#[derive(Debug)]
pub struct DirectChannel {
    sender: DirectSender,
    events: mpsc::UnboundedReceiver<DirectEvent>,
    path: watch::Receiver<Option<DirectPath>>,
}

/// A sending handle (for a task other than the one receiving). It does not keep the
/// connection open: dropping the [`DirectChannel`] closes it.
#[derive(Debug, Clone)]
pub struct DirectSender {
    outbound: mpsc::Sender<Vec<u8>>,
    shared: Arc<Shared>,
    wake: Arc<Notify>,
}

impl DirectSender {
    /// Queues one message; waits while [`OUTBOUND_QUEUE`] messages are queued already.
    pub async fn send(&self, message: Vec<u8>) -> Result<(), RtcError> {
        if message.len() > MAX_MESSAGE_BYTES {
            return Err(RtcError::MessageTooLarge {
                len: message.len(),
                max: MAX_MESSAGE_BYTES,
            });
        }
        if self.shared.close_requested.load(Ordering::Acquire) {
            return Err(RtcError::Closed(CloseReason::Local));
        }
        if let Some(reason) = lock(&self.shared.reason).clone() {
            return Err(RtcError::Closed(reason));
        }
        let sent = self.outbound.send(message).await;
        self.wake.notify_one();
        sent.map_err(|_| RtcError::Closed(self.close_reason()))
    }

    fn close_reason(&self) -> CloseReason {
        lock(&self.shared.reason)
            .clone()
            .unwrap_or(CloseReason::DriverStopped)
    }
}

impl DirectChannel {
    /// Queues one message; waits while [`OUTBOUND_QUEUE`] messages are queued already.
    pub async fn send(&self, message: Vec<u8>) -> Result<(), RtcError> {
        self.sender.send(message).await
    }

    /// Another handle for sending.
    pub fn sender(&self) -> DirectSender {
        self.sender.clone()
    }

    /// The next event; `None` after [`DirectEvent::Closed`].
    pub async fn recv(&mut self) -> Option<DirectEvent> {
        let event = self.events.recv().await?;
        if let DirectEvent::Message(m) = &event {
            self.sender
                .shared
                .inbound_bytes
                .fetch_sub(m.len(), Ordering::AcqRel);
        }
        Some(event)
    }

    /// Bytes received and not yet taken with [`recv`](Self::recv) (the connection closes
    /// with [`CloseReason::SlowReader`] beyond [`MAX_INBOUND_BYTES`]).
    pub fn unread_bytes(&self) -> usize {
        self.sender.shared.inbound_bytes.load(Ordering::Acquire)
    }

    /// The current path, once ICE has one.
    pub fn path(&self) -> Option<DirectPath> {
        *self.path.borrow()
    }

    /// Closes the connection (also what dropping the channel does).
    pub fn close(&self) {
        let s = &self.sender;
        s.shared.close_requested.store(true, Ordering::Release);
        s.wake.notify_one();
    }
}

impl Drop for DirectChannel {
    fn drop(&mut self) {
        self.close();
    }
}

/// The driver's half. See the module doc.
#[derive(Debug)]
pub(crate) struct ChannelEnd {
    pub outbound: mpsc::Receiver<Vec<u8>>,
    events: mpsc::UnboundedSender<DirectEvent>,
    path: watch::Sender<Option<DirectPath>>,
    shared: Arc<Shared>,
}

/// A connected pair; `wake` is the driver's: the channel rings it when it queued a
/// message or asked to close.
pub(crate) fn pair(wake: Arc<Notify>) -> (DirectChannel, ChannelEnd) {
    let (out_tx, out_rx) = mpsc::channel(OUTBOUND_QUEUE);
    let (ev_tx, ev_rx) = mpsc::unbounded_channel();
    let (path_tx, path_rx) = watch::channel(None);
    let shared = Arc::new(Shared::default());
    (
        DirectChannel {
            sender: DirectSender {
                outbound: out_tx,
                shared: shared.clone(),
                wake,
            },
            events: ev_rx,
            path: path_rx,
        },
        ChannelEnd {
            outbound: out_rx,
            events: ev_tx,
            path: path_tx,
            shared,
        },
    )
}

impl ChannelEnd {
    /// The session asked to close or dropped its channel.
    pub fn close_requested(&self) -> bool {
        self.shared.close_requested.load(Ordering::Acquire)
    }

    pub fn opened(&self, path: DirectPath) {
        self.path.send_replace(Some(path));
        let _ = self.events.send(DirectEvent::Open(path));
    }

    pub fn path_changed(&self, path: DirectPath) {
        self.path.send_replace(Some(path));
        let _ = self.events.send(DirectEvent::PathChanged(path));
    }

    /// Hands one received message to the session, or says the session is too far behind.
    pub fn deliver(&self, message: Vec<u8>) -> Result<(), CloseReason> {
        let len = message.len();
        let queued = self.shared.inbound_bytes.fetch_add(len, Ordering::AcqRel);
        if queued + len > MAX_INBOUND_BYTES {
            return Err(CloseReason::SlowReader);
        }
        let _ = self.events.send(DirectEvent::Message(message));
        Ok(())
    }

    /// The last event. Later sends fail with this reason.
    pub fn closed(&self, reason: CloseReason) {
        *lock(&self.shared.reason) = Some(reason.clone());
        let _ = self.events.send(DirectEvent::Closed(reason));
    }
}

/// A poisoned lock still holds a valid `Option`: use it.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
