//! The mesh's live state, shared by every member session of the host: who is online (the
//! presence table), the frames on their way to each member (fan-out), asking a session to
//! end (kicks, including [`Hub::remove`] when the admin removes a device), and the feed of mesh changes behind `GET /api/events`.
//!
//! A session enters the hub only after its handshake ([`Hub::enter`]) and leaves when its
//! [`Membership`] ends, however it ends. The hub never writes to a socket: each member has
//! a bounded outbound queue that its own session drains.
//!
//! A slow member never blocks the others. A sender facing a full queue waits a short grace
//! (flow control for bursts); a member whose queue stays full is kicked.

use atmosphere_shared::api::MeshEvent;
use atmosphere_shared::path::PathKind;
use atmosphere_shared::wire::{ErrorCode, Peer, ServerMsg};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::{broadcast, mpsc, Notify};
use tokio::time::timeout;
use tracing::{debug, warn};

/// Tunables of the fan-out.
#[derive(Debug, Clone)]
pub struct HubConfig {
    /// Frames queued for one member before it is considered too slow and dropped.
    pub outbound_queue: usize,
    /// How long a sender waits for a recipient with a full queue before that recipient is
    /// considered stalled and dropped.
    pub slow_grace: Duration,
}

impl Default for HubConfig {
    fn default() -> Self {
        HubConfig {
            outbound_queue: 256,
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
    tx: mpsc::Sender<Arc<str>>,
    kick: Arc<Kick>,
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
    pub outbox: mpsc::Receiver<Arc<str>>,
    /// Set when the hub wants this session to end.
    pub kick: Arc<Kick>,
    presence: PresenceGuard,
}

impl Membership {
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
        let (tx, outbox) = mpsc::channel::<Arc<str>>(self.cfg.outbound_queue);
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
                    tx,
                    kick: kick.clone(),
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
                if let Err(mpsc::error::TrySendError::Full(f)) = m.tx.try_send(frame.clone()) {
                    waiting.push((id.clone(), m.tx.clone(), m.kick.clone(), f));
                }
            }
        }
        let grace = self.cfg.slow_grace;
        futures_util::future::join_all(
            waiting
                .into_iter()
                .map(|(id, tx, kick, f)| send_or_kick(id, tx, kick, f, grace)),
        )
        .await;
    }

    /// Queues a host-originated frame (presence) for every member in `members`. Never
    /// waits: a full queue gets the frame from a short-lived task, or the member is dropped.
    fn fanout(&self, members: &HashMap<String, Member>, frame: &Arc<str>) {
        for (id, m) in members.iter() {
            if let Err(mpsc::error::TrySendError::Full(f)) = m.tx.try_send(frame.clone()) {
                tokio::spawn(send_or_kick(
                    id.clone(),
                    m.tx.clone(),
                    m.kick.clone(),
                    f,
                    self.cfg.slow_grace,
                ));
            }
        }
    }
}

/// Waits up to `grace` for room in a member's full queue; kicks the member if none comes.
async fn send_or_kick(
    device_id: String,
    tx: mpsc::Sender<Arc<str>>,
    kick: Arc<Kick>,
    frame: Arc<str>,
    grace: Duration,
) {
    if timeout(grace, tx.send(frame)).await.is_err() {
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
        });
        let (slow, _) = hub.enter(peer("slow"));
        let (_fast, _) = hub.enter(peer("fast")); // fills slow's queue with peer_joined
        hub.deliver(&peer("fast"), Some("slow"), serde_json::json!("hi"))
            .await;
        assert!(slow.kick.kicked().await.reason.starts_with("too slow"));
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
