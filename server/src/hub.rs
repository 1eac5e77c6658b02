//! The mesh's live state, shared by every member session of the host: who is online (the
//! presence table), the frames on their way to each member (fan-out), asking a session to
//! end (kicks, including [`Hub::remove`] when the admin removes a device), and the feed of mesh changes behind `GET /api/events`.
//!
//! A session enters the hub only after its handshake ([`Hub::enter`]) and leaves when its
//! [`Membership`] ends, however it ends. The hub never writes to a socket: each member has
//! an outbound queue ([`Outbox`]) that its own session drains, bounded both in frames and in
//! bytes ([`OUTBOUND_QUEUE_BYTES`]), so a member that stops reading holds at most that much
//! of the host's memory whatever size the frames sent to it are.
//!
//! A slow member never blocks the others. A sender facing a full queue waits a short grace
//! (flow control for bursts); a member whose queue stays full is kicked. Presence changes
//! never wait and never pile up: a member whose queue is full when one happens misses it
//! and is marked stale, and its session sends it a fresh presence snapshot once it has
//! caught up ([`Hub::resync`]). So a burst of N members joining or leaving costs a slow
//! member one snapshot, not N queued frames or N waiting tasks.

use atmosphere_shared::api::MeshEvent;
use atmosphere_shared::path::PathKind;
use atmosphere_shared::wire::{ErrorCode, Peer, ServerMsg, MAX_FRAME_BYTES};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::{broadcast, mpsc, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::timeout;
use tracing::{debug, warn};

/// Bytes of frames queued for one member before it is too slow (see [`HubConfig`]): eight
/// frames of the largest size (`MAX_FRAME_BYTES`), or thousands of chat-sized ones. Without a
/// byte cap the frame cap alone let one stalled member hold 256 × 64 KiB = 16 MiB.
pub const OUTBOUND_QUEUE_BYTES: usize = 8 * MAX_FRAME_BYTES;

/// Tunables of the fan-out.
#[derive(Debug, Clone)]
pub struct HubConfig {
    /// Frames queued for one member before it is considered too slow and dropped.
    pub outbound_queue: usize,
    /// Bytes queued for one member before it is considered too slow and dropped; at least
    /// `MAX_FRAME_BYTES`, so every frame fits an empty queue.
    pub outbound_bytes: usize,
    /// How long a sender waits for a recipient with a full queue before that recipient is
    /// considered stalled and dropped.
    pub slow_grace: Duration,
}

impl Default for HubConfig {
    fn default() -> Self {
        HubConfig {
            outbound_queue: 256,
            outbound_bytes: OUTBOUND_QUEUE_BYTES,
            slow_grace: Duration::from_secs(2),
        }
    }
}

/// Mesh events buffered per `/api/events` subscriber before it lags (and gets `resync`).
const EVENT_BUFFER: usize = 256;

/// Presence, fan-out and the event feed of one mesh.
pub struct Hub {
    cfg: HubConfig,
    events: broadcast::Sender<MeshEvent>,
    members: Mutex<HashMap<String, Member>>,
    /// Devices removed while this host runs. A session that checked its credential just
    /// before the row was deleted may enter only after [`Hub::remove`] looked for it; it is
    /// turned away here instead of living on. Grows by one id per removal (an admin action).
    removed: Mutex<HashSet<String>>,
    next_conn: AtomicU64,
}

/// One online member.
struct Member {
    /// Which session of the device this is (a device has at most one in the table).
    conn: u64,
    peer: Peer,
    queue: Inbox,
    kick: Arc<Kick>,
    /// Set when a presence change found no room in its queue (see [`Hub::resync`]).
    stale: Arc<AtomicBool>,
}

/// A frame in a member's queue, holding its share of the queue's byte budget until the
/// session takes it out.
struct Queued {
    frame: Arc<str>,
    _bytes: OwnedSemaphorePermit,
}

/// The hub's end of one member's queue: frames go in only with room for them, in frames
/// (the channel's capacity) and in bytes (the budget's permits, one per byte).
#[derive(Clone)]
struct Inbox {
    tx: mpsc::Sender<Queued>,
    budget: Arc<Semaphore>,
}

/// A frame that found no room in a member's queue yet.
struct NoRoom(Arc<str>);

impl Inbox {
    /// Permits for `frame`; a frame bigger than any budget can never fit.
    fn cost(frame: &str) -> u32 {
        u32::try_from(frame.len()).unwrap_or(u32::MAX)
    }

    /// Queues `frame` if there is room right now.
    fn try_push(&self, frame: Arc<str>) -> Result<(), NoRoom> {
        let Ok(bytes) = self
            .budget
            .clone()
            .try_acquire_many_owned(Self::cost(&frame))
        else {
            return Err(NoRoom(frame));
        };
        match self.tx.try_send(Queued {
            frame,
            _bytes: bytes,
        }) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(q)) => Err(NoRoom(q.frame)),
            // The session ended: nobody will read it, nothing to wait for.
            Err(mpsc::error::TrySendError::Closed(_)) => Ok(()),
        }
    }

    /// Queues `frame` once there is room for it, in bytes and in frames.
    async fn push(&self, frame: Arc<str>) {
        let Ok(bytes) = self
            .budget
            .clone()
            .acquire_many_owned(Self::cost(&frame))
            .await
        else {
            return; // the budget is never closed
        };
        let _ = self
            .tx
            .send(Queued {
                frame,
                _bytes: bytes,
            })
            .await;
    }
}

/// A member's queue, as its session reads it.
pub struct Outbox {
    rx: mpsc::Receiver<Queued>,
    /// A presence change was dropped for want of room: the member needs a new snapshot.
    stale: Arc<AtomicBool>,
}

impl Outbox {
    /// The next frame for the member; `None` once the hub let go of it (it was kicked).
    /// Taking a frame out returns its bytes to the queue's budget.
    pub async fn recv(&mut self) -> Option<Arc<str>> {
        self.rx.recv().await.map(|q| q.frame)
    }

    /// The next frame if one is queued.
    #[cfg(test)]
    fn try_recv(&mut self) -> Result<Arc<str>, mpsc::error::TryRecvError> {
        self.rx.try_recv().map(|q| q.frame)
    }

    /// Up to `max` more frames that are already queued (none if the queue is empty): a
    /// session writes a burst with one flush instead of one per frame.
    pub fn ready(&mut self, max: usize) -> Vec<Arc<str>> {
        let mut out = Vec::new();
        while out.len() < max {
            match self.rx.try_recv() {
                Ok(q) => out.push(q.frame),
                Err(_) => break,
            }
        }
        out
    }
}

/// Asks a live session to end (slow consumer, replaced by a newer session, removed).
pub struct Kick {
    notify: Notify,
    reason: Mutex<Option<Kicked>>,
}

/// Why a session was kicked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kicked {
    /// For the log and the `device_left` event.
    pub reason: &'static str,
    /// An error the member must be told before the socket closes (`device_removed`).
    pub error: Option<ErrorCode>,
}

impl Kicked {
    fn removed() -> Kicked {
        Kicked {
            reason: "removed by the host's admin",
            error: Some(ErrorCode::DeviceRemoved),
        }
    }
}

impl Kick {
    fn new() -> Kick {
        Kick {
            notify: Notify::new(),
            reason: Mutex::new(None),
        }
    }

    /// Ends the session with `reason` (it reads the kick at its next turn).
    fn kick(&self, reason: &'static str) {
        self.kick_with(Kicked {
            reason,
            error: None,
        });
    }

    fn kick_with(&self, why: Kicked) {
        *self.reason.lock().unwrap_or_else(|p| p.into_inner()) = Some(why);
        self.notify.notify_one();
    }

    /// Why the session was kicked, if it was. The hub drops a member's queue only after
    /// kicking it, so a session that finds its queue closed reads the reason here.
    pub fn reason(&self) -> Option<Kicked> {
        self.reason
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Waits until the session is kicked; returns why.
    pub async fn kicked(&self) -> Kicked {
        self.notify.notified().await;
        self.reason
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .unwrap_or(Kicked {
                reason: "kicked",
                error: None,
            })
    }
}

/// A session's place in the hub, from [`Hub::enter`] to [`Membership::leave`] (or drop).
pub struct Membership {
    /// Frames for this member, in order; the session writes them to its socket.
    pub outbox: Outbox,
    /// Set when the hub wants this session to end.
    pub kick: Arc<Kick>,
    presence: PresenceGuard,
}

/// Updates the path presence shows for one session (see [`Membership::path_handle`]).
#[derive(Clone)]
pub struct PathHandle {
    hub: Arc<Hub>,
    device_id: String,
    conn: u64,
}

impl PathHandle {
    /// The session now runs over `path`.
    pub fn set(&self, path: PathKind) {
        self.hub.set_path(&self.device_id, self.conn, path);
    }
}

impl Membership {
    /// A handle that updates this session's path in presence.
    pub fn path_handle(&self) -> PathHandle {
        PathHandle {
            hub: self.presence.hub.clone(),
            device_id: self.presence.device_id.clone(),
            conn: self.presence.conn,
        }
    }

    /// Leaves the presence table now; returns whether this session was still the device's
    /// current one (false when a newer session of the same device replaced it).
    pub fn leave(self) -> bool {
        self.presence.finish()
    }
}

/// Removes a session from the presence table when it ends, however it ends (even if its
/// task panics).
struct PresenceGuard {
    hub: Arc<Hub>,
    device_id: String,
    conn: u64,
    done: bool,
}

impl PresenceGuard {
    fn finish(mut self) -> bool {
        self.done = true;
        self.hub.leave(&self.device_id, self.conn)
    }
}

impl Drop for PresenceGuard {
    fn drop(&mut self) {
        if !self.done {
            self.hub.leave(&self.device_id, self.conn);
        }
    }
}

impl Hub {
    /// An empty hub.
    pub fn new(cfg: HubConfig) -> Arc<Hub> {
        let (events, _) = broadcast::channel(EVENT_BUFFER);
        Arc::new(Hub {
            cfg,
            events,
            members: Mutex::new(HashMap::new()),
            removed: Mutex::new(HashSet::new()),
            next_conn: AtomicU64::new(1),
        })
    }

    /// Devices online right now with the path of their connection.
    pub fn online(&self) -> HashMap<String, PathKind> {
        self.lock_members()
            .iter()
            .map(|(id, m)| (id.clone(), m.peer.path))
            .collect()
    }

    /// The member's session `conn` now runs over `path` (a newer session of the same device
    /// is left alone). Presence lists and the device list show it from now on.
    fn set_path(&self, device_id: &str, conn: u64, path: PathKind) {
        if let Some(m) = self.lock_members().get_mut(device_id) {
            if m.conn == conn {
                m.peer.path = path;
            }
        }
    }

    /// Number of members online.
    pub fn online_count(&self) -> usize {
        self.lock_members().len()
    }

    /// Subscribes to mesh events (for `GET /api/events`).
    pub fn subscribe(&self) -> broadcast::Receiver<MeshEvent> {
        self.events.subscribe()
    }

    /// Publishes a mesh event (no-op without subscribers).
    pub fn emit(&self, ev: MeshEvent) {
        let _ = self.events.send(ev);
    }

    fn lock_members(&self) -> MutexGuard<'_, HashMap<String, Member>> {
        self.members.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Taken only while holding the members lock (one lock order).
    fn lock_removed(&self) -> MutexGuard<'_, HashSet<String>> {
        self.removed.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Puts an admitted member into the presence table and tells the others
    /// (`peer_joined`). An older session of the same device is kicked: the newest wins.
    /// Returns the member's place and the peers that were online before it. A device
    /// removed meanwhile does not enter: its membership comes back already kicked with
    /// `device_removed`.
    pub fn enter(self: &Arc<Self>, peer: Peer) -> (Membership, Vec<Peer>) {
        let conn = self.next_conn.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(self.cfg.outbound_queue.max(1));
        let queue = Inbox {
            tx,
            budget: Arc::new(Semaphore::new(
                self.cfg
                    .outbound_bytes
                    .clamp(MAX_FRAME_BYTES, Semaphore::MAX_PERMITS),
            )),
        };
        let stale = Arc::new(AtomicBool::new(false));
        let outbox = Outbox {
            rx,
            stale: stale.clone(),
        };
        let kick = Arc::new(Kick::new());
        let device_id = peer.device_id.clone();
        let peers = {
            let mut members = self.lock_members();
            if self.lock_removed().contains(&device_id) {
                kick.kick_with(Kicked::removed());
                drop(members);
                let presence = PresenceGuard {
                    hub: self.clone(),
                    device_id,
                    conn,
                    done: false,
                };
                return (
                    Membership {
                        outbox,
                        kick,
                        presence,
                    },
                    Vec::new(),
                );
            }
            if let Some(old) = members.remove(&device_id) {
                // The same device connected again (e.g. a new path won): the newest wins.
                old.kick
                    .kick("replaced by a newer connection of the same device");
            }
            let peers: Vec<Peer> = members.values().map(|m| m.peer.clone()).collect();
            let joined_frame: Arc<str> = ServerMsg::PeerJoined { peer: peer.clone() }
                .to_json()
                .into();
            self.fanout(&members, &joined_frame);
            members.insert(
                device_id.clone(),
                Member {
                    conn,
                    peer,
                    queue,
                    kick: kick.clone(),
                    stale,
                },
            );
            peers
        };
        let presence = PresenceGuard {
            hub: self.clone(),
            device_id,
            conn,
            done: false,
        };
        (
            Membership {
                outbox,
                kick,
                presence,
            },
            peers,
        )
    }

    /// Ends the live session of a removed device at once: it is taken out of presence (the
    /// others get `peer_left`) and told `device_removed` before its socket closes. Returns
    /// whether the device was online.
    pub fn remove(&self, device_id: &str) -> bool {
        let mut members = self.lock_members();
        self.lock_removed().insert(device_id.to_string());
        let Some(m) = members.remove(device_id) else {
            return false;
        };
        m.kick.kick_with(Kicked::removed());
        let left: Arc<str> = ServerMsg::PeerLeft {
            device_id: device_id.to_string(),
        }
        .to_json()
        .into();
        self.fanout(&members, &left);
        true
    }

    /// Takes session `conn` of `device_id` out of presence and tells the others
    /// (`peer_left`), unless a newer session of the same device replaced it. Returns
    /// whether it was current.
    fn leave(&self, device_id: &str, conn: u64) -> bool {
        let mut members = self.lock_members();
        let ours = members.get(device_id).is_some_and(|m| m.conn == conn);
        if ours {
            members.remove(device_id);
            let left: Arc<str> = ServerMsg::PeerLeft {
                device_id: device_id.to_string(),
            }
            .to_json()
            .into();
            self.fanout(&members, &left);
        }
        ours
    }

    /// Routes a `send` from `from` to one member or to everyone else, as `message`.
    ///
    /// Flow control: a recipient whose queue is full makes the *sender* wait (its session
    /// reads no further frames meanwhile), so a flood is paced to its readers and memory stays
    /// bounded. A recipient that makes no room within [`HubConfig::slow_grace`] is stalled
    /// and is dropped; the sender then carries on. Nobody else waits on it.
    pub async fn deliver(&self, from: &Peer, to: Option<&str>, body: serde_json::Value) {
        let frame: Arc<str> = ServerMsg::Message {
            from: from.device_id.clone(),
            body,
        }
        .to_json()
        .into();
        let mut waiting = Vec::new();
        {
            let members = self.lock_members();
            let targets: Vec<(&String, &Member)> = match to {
                None => members
                    .iter()
                    .filter(|(id, _)| **id != from.device_id)
                    .collect(),
                Some(id) => match members.get_key_value(id) {
                    Some(t) => vec![t],
                    None => {
                        debug!(from = %from.device_id, to = %id, "message for a device that is not online dropped");
                        vec![]
                    }
                },
            };
            for (id, m) in targets {
                if let Err(NoRoom(f)) = m.queue.try_push(frame.clone()) {
                    waiting.push((id.clone(), m.queue.clone(), m.kick.clone(), f));
                }
            }
        }
        let grace = self.cfg.slow_grace;
        futures_util::future::join_all(
            waiting
                .into_iter()
                .map(|(id, queue, kick, f)| send_or_kick(id, queue, kick, f, grace)),
        )
        .await;
    }

    /// Queues a presence change for every member in `members`. Never waits and spawns
    /// nothing: a member whose queue is full misses it and is marked stale instead (its
    /// session then asks for a new snapshot, [`Hub::resync`]).
    fn fanout(&self, members: &HashMap<String, Member>, frame: &Arc<str>) {
        for m in members.values() {
            if m.queue.try_push(frame.clone()).is_err() {
                m.stale.store(true, Ordering::Relaxed);
            }
        }
    }

    /// For a stale member (it missed a presence change): everything still queued for it and
    /// the peers online now, taken together under the presence lock, so the snapshot is
    /// newer than every queued frame and older than every frame queued after it. The session
    /// sends the queued frames, then the snapshot. `None` when the member is not stale.
    pub fn resync(
        &self,
        device_id: &str,
        outbox: &mut Outbox,
    ) -> Option<(Vec<Arc<str>>, Vec<Peer>)> {
        if !outbox.stale.swap(false, Ordering::Relaxed) {
            return None;
        }
        let members = self.lock_members();
        let peers = members
            .iter()
            .filter(|(id, _)| id.as_str() != device_id)
            .map(|(_, m)| m.peer.clone())
            .collect();
        let queued = outbox.ready(usize::MAX);
        drop(members);
        Some((queued, peers))
    }
}

/// Waits up to `grace` for room in a member's full queue; kicks the member if none comes.
async fn send_or_kick(
    device_id: String,
    queue: Inbox,
    kick: Arc<Kick>,
    frame: Arc<str>,
    grace: Duration,
) {
    if timeout(grace, queue.push(frame)).await.is_err() {
        warn!(device_id = %device_id, "member cannot keep up (outbound queue full); dropping it");
        kick.kick("too slow: outbound queue stayed full");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(id: &str) -> Peer {
        Peer {
            device_id: id.into(),
            name: id.into(),
            platform: "test".into(),
            path: PathKind::Local,
        }
    }

    #[tokio::test]
    async fn presence_is_announced_and_the_newest_session_of_a_device_wins() {
        let hub = Hub::new(HubConfig::default());
        let (mut a, before) = hub.enter(peer("a"));
        assert!(before.is_empty());
        let (b, before) = hub.enter(peer("b"));
        assert_eq!(before, vec![peer("a")]);
        let seen = a.outbox.recv().await.unwrap();
        assert!(seen.contains("peer_joined"), "{seen}");
        assert_eq!(hub.online_count(), 2);

        // A second session of `a` replaces the first, which is kicked and leaves quietly.
        let (a2, _) = hub.enter(peer("a"));
        assert!(a.kick.kicked().await.reason.starts_with("replaced"));
        assert!(!a.leave(), "the replaced session was no longer current");
        assert_eq!(hub.online_count(), 2);
        assert!(a2.leave());
        assert_eq!(hub.online().keys().collect::<Vec<_>>(), vec!["b"]);
        drop(b);
        assert_eq!(hub.online_count(), 0, "dropping a membership leaves");
    }

    #[tokio::test]
    async fn a_member_whose_queue_stays_full_is_kicked() {
        let hub = Hub::new(HubConfig {
            outbound_queue: 1,
            slow_grace: Duration::from_millis(20),
            ..HubConfig::default()
        });
        let (slow, _) = hub.enter(peer("slow"));
        let (_fast, _) = hub.enter(peer("fast")); // fills slow's queue with peer_joined
        hub.deliver(&peer("fast"), Some("slow"), serde_json::json!("hi"))
            .await;
        assert!(slow.kick.kicked().await.reason.starts_with("too slow"));
    }

    #[tokio::test]
    async fn a_stalled_member_is_kicked_at_its_byte_cap_and_a_reading_member_is_not() {
        let cfg = HubConfig {
            slow_grace: Duration::from_millis(50),
            ..HubConfig::default()
        };
        let cap = cfg.outbound_bytes;
        let hub = Hub::new(cfg);
        let (mut stalled, _) = hub.enter(peer("stalled"));
        let (mut reader, _) = hub.enter(peer("reader"));
        let sender = peer("sender");
        let _sending = hub.enter(sender.clone());
        let body = serde_json::json!("x".repeat(60 * 1024));
        let sent = 4 * cap / (60 * 1024);
        let reading = tokio::spawn(async move {
            let mut messages = 0;
            while messages < sent {
                let frame = reader.outbox.recv().await.expect("the reader stays in");
                if frame.contains("\"type\":\"message\"") {
                    messages += 1;
                }
            }
            reader
        });
        for _ in 0..sent {
            hub.deliver(&sender, None, body.clone()).await;
        }
        let reader = reading.await.unwrap();
        assert_eq!(reader.kick.reason(), None, "a reading member was kicked");
        let why = stalled
            .kick
            .reason()
            .expect("the stalled member was not kicked");
        assert!(why.reason.starts_with("too slow"), "{why:?}");
        let mut queued = 0;
        while let Ok(frame) = stalled.outbox.try_recv() {
            queued += frame.len();
        }
        assert!(
            queued <= cap,
            "{queued} bytes queued for a member capped at {cap}"
        );
    }

    #[tokio::test]
    async fn a_member_with_a_full_queue_misses_presence_changes_and_gets_a_snapshot() {
        let hub = Hub::new(HubConfig {
            outbound_queue: 1,
            ..HubConfig::default()
        });
        let (mut slow, _) = hub.enter(peer("slow"));
        let (_b, _) = hub.enter(peer("b")); // fills slow's queue with peer_joined b
        let mut others = Vec::new();
        for i in 0..100 {
            others.push(hub.enter(peer(&format!("m{i}"))).0);
        }
        drop(others.pop()); // and one leaves again
                            // Nothing waits on the slow member and it is not dropped for presence.
        assert_eq!(slow.kick.reason(), None);
        let (queued, peers) = hub.resync("slow", &mut slow.outbox).expect("stale");
        assert_eq!(queued.len(), 1);
        assert!(queued[0].contains("peer_joined"));
        assert_eq!(peers.len(), 100, "b and the 99 still online");
        assert!(peers.iter().all(|p| p.device_id != "slow"));
        assert!(
            hub.resync("slow", &mut slow.outbox).is_none(),
            "resynced once"
        );
    }

    #[tokio::test]
    async fn a_removed_device_is_kicked_with_device_removed_and_the_others_see_it_leave() {
        let hub = Hub::new(HubConfig::default());
        let (gone, _) = hub.enter(peer("gone"));
        let (mut stay, _) = hub.enter(peer("stay"));
        assert!(hub.remove("gone"));
        assert!(!hub.remove("gone"), "no longer online");
        let why = gone.kick.kicked().await;
        assert_eq!(why.error, Some(ErrorCode::DeviceRemoved));
        assert!(stay.outbox.recv().await.unwrap().contains("peer_left"));
        assert!(!gone.leave(), "already out of presence");
        assert_eq!(hub.online().keys().collect::<Vec<_>>(), vec!["stay"]);

        // A session of the removed device that checked its key before the removal and
        // enters only now is turned away, unseen by the others.
        let (late, before) = hub.enter(peer("gone"));
        assert!(before.is_empty());
        assert_eq!(
            late.kick.reason().unwrap().error,
            Some(ErrorCode::DeviceRemoved)
        );
        assert_eq!(hub.online().keys().collect::<Vec<_>>(), vec!["stay"]);
        assert!(!late.leave());
        assert!(stay.outbox.try_recv().is_err(), "no peer_joined for it");
    }
}
