//! The relay's only state: which host holds each mesh, which members wait for their host's
//! data socket, how many sessions each mesh has, and how many of them each source has left
//! unanswered. No database: every entry belongs to a live socket and is owned by a guard
//! ([`HostRegistration`], [`SessionSlot`], [`UnansweredSlot`]) whose `Drop` removes it, so
//! no exit path of a handler leaks one.
//!
//! A session is *unanswered* from the member's arrival until the host sends it its first
//! text or binary frame. The relay cannot read the (end-to-end encrypted) mesh frames, but
//! it sees that: a host only answers a member that spoke its protocol. Each source (an IP,
//! or an IPv6 /64) may hold only a few unanswered sessions per mesh, so a handful of
//! addresses opening silent member sockets cannot take all of a mesh's session slots.

use super::metrics::{ConnGuard, Metrics, RefusalKind};
use super::server::Refused;
use crate::secret::constant_time_eq;
use atmosphere_shared::relay_proto::RelayMsg;
use axum::extract::ws::WebSocket;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::{mpsc, oneshot};

/// Commands to a host's control-socket task.
pub(super) enum HostCmd {
    /// Tell the host about a waiting member.
    Session(RelayMsg),
    /// A newer control socket with the same key registered: close with 4409.
    Replaced,
}

/// The host's data socket for one member, with its connection-count guard: the socket lives
/// on in the member's task (the splice), so it must stay counted there until the splice ends.
pub(super) type HostDataSocket = (WebSocket, ConnGuard);

struct HostEntry {
    key: [u8; 32],
    generation: u64,
    tx: mpsc::Sender<HostCmd>,
}

struct Pending {
    mesh_id: String,
    secret: String,
    tx: oneshot::Sender<HostDataSocket>,
}

#[derive(Default)]
struct Maps {
    hosts: HashMap<String, HostEntry>,
    pending: HashMap<String, Pending>,
    sessions_per_mesh: HashMap<String, usize>,
    /// Unanswered sessions by (mesh id, source bucket).
    unanswered: HashMap<(String, String), usize>,
}

/// Hosts by mesh id and members waiting for their host, behind one lock.
#[derive(Default)]
pub(super) struct Registry {
    maps: Mutex<Maps>,
    /// Tells registrations of one mesh apart, so an old control task never removes the
    /// entry of the newer one that replaced it.
    next_generation: AtomicU64,
}

/// Why a member could not get a session slot.
pub(super) enum NoSession {
    /// No host holds the mesh.
    HostOffline,
    /// The mesh has its maximum number of sessions.
    MeshFull,
    /// This source already has its maximum of unanswered sessions for the mesh.
    SourceBusy,
}

/// A member's session, registered and waiting for the host's data socket.
pub(super) struct OpenSession {
    /// Holds the slot (and the pending entry) until dropped.
    pub slot: SessionSlot,
    /// Holds the source's unanswered-session slot until the host answers (or the session
    /// ends).
    pub unanswered: UnansweredSlot,
    /// The control task of the mesh's host.
    pub host: mpsc::Sender<HostCmd>,
    /// Delivers the host's data socket once it dials in with the secret.
    pub data: oneshot::Receiver<HostDataSocket>,
}

impl Registry {
    fn maps(&self) -> MutexGuard<'_, Maps> {
        // A panic while holding the lock cannot leave the maps half-updated in a way that
        // matters more than losing the relay, so keep serving with the inner value.
        self.maps.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Meshes with a registered host.
    pub fn meshes(&self) -> usize {
        self.maps().hosts.len()
    }

    /// Makes `key` the host of `mesh_id`, replacing (with 4409) an older control socket of
    /// the same key. `None` when another key holds the mesh. The receiver gets the commands
    /// for the new control task; `queue` bounds them.
    pub fn claim_mesh(
        self: &Arc<Self>,
        mesh_id: &str,
        key: [u8; 32],
        queue: usize,
    ) -> Option<(HostRegistration, mpsc::Receiver<HostCmd>)> {
        let generation = self.next_generation.fetch_add(1, Ordering::Relaxed) + 1;
        let (tx, rx) = mpsc::channel(queue.max(1));
        let mut maps = self.maps();
        match maps.hosts.get(mesh_id) {
            // Unreachable in practice (the id is a hash of the key), but never let a second
            // key take over a mesh.
            Some(old) if old.key != key => return None,
            Some(old) => {
                let _ = old.tx.try_send(HostCmd::Replaced);
            }
            None => {}
        }
        maps.hosts.insert(
            mesh_id.to_string(),
            HostEntry {
                key,
                generation,
                tx,
            },
        );
        let registration = HostRegistration {
            registry: self.clone(),
            mesh_id: mesh_id.to_string(),
            generation,
        };
        Some((registration, rx))
    }

    /// Under one lock: finds the mesh's host, checks its session limit and the source's
    /// unanswered limit, and registers the member (from source bucket `source`) as waiting
    /// for a data socket with `session_id` and `secret`.
    pub fn open_session(
        self: &Arc<Self>,
        mesh_id: &str,
        source: &str,
        session_id: &str,
        secret: &str,
        limits: SessionLimits,
        metrics: &Arc<Metrics>,
    ) -> Result<OpenSession, NoSession> {
        let (tx, data) = oneshot::channel();
        let mut maps = self.maps();
        let host = maps
            .hosts
            .get(mesh_id)
            .map(|h| h.tx.clone())
            .ok_or(NoSession::HostOffline)?;
        let key = (mesh_id.to_string(), source.to_string());
        if maps.unanswered.get(&key).copied().unwrap_or(0) >= limits.unanswered_per_source {
            return Err(NoSession::SourceBusy);
        }
        let n = maps
            .sessions_per_mesh
            .entry(mesh_id.to_string())
            .or_insert(0);
        if *n >= limits.sessions_per_mesh {
            return Err(NoSession::MeshFull);
        }
        *n += 1;
        *maps.unanswered.entry(key.clone()).or_insert(0) += 1;
        maps.pending.insert(
            session_id.to_string(),
            Pending {
                mesh_id: mesh_id.to_string(),
                secret: secret.to_string(),
                tx,
            },
        );
        drop(maps);
        metrics.session_started();
        let slot = SessionSlot {
            registry: self.clone(),
            metrics: metrics.clone(),
            mesh_id: mesh_id.to_string(),
            session_id: session_id.to_string(),
        };
        let unanswered = UnansweredSlot {
            registry: self.clone(),
            key,
        };
        Ok(OpenSession {
            slot,
            unanswered,
            host,
            data,
        })
    }

    /// Takes the waiting member of `session_id` for the host's data socket, if it belongs
    /// to `mesh_id` and `secret` (the bearer value) is the one the host was given.
    pub fn take_pending(
        &self,
        mesh_id: &str,
        session_id: &str,
        secret: Option<&str>,
    ) -> Result<oneshot::Sender<HostDataSocket>, Refused> {
        let mut maps = self.maps();
        let gone = || Refused::new(RefusalKind::HostOffline, "unknown or expired session");
        let pending = maps.pending.get(session_id).ok_or_else(gone)?;
        if pending.mesh_id != mesh_id {
            let why = "session belongs to another mesh";
            return Err(Refused::new(RefusalKind::BadRequest, why));
        }
        if !secret.is_some_and(|s| constant_time_eq(s.as_bytes(), pending.secret.as_bytes())) {
            let why = "missing or wrong session secret";
            return Err(Refused::new(RefusalKind::BadSignature, why));
        }
        maps.pending
            .remove(session_id)
            .map(|p| p.tx)
            .ok_or_else(gone)
    }
}

/// The per-mesh limits [`Registry::open_session`] enforces.
#[derive(Debug, Clone, Copy)]
pub(super) struct SessionLimits {
    /// Live sessions (waiting or spliced) per mesh.
    pub sessions_per_mesh: usize,
    /// Unanswered sessions per mesh and source bucket.
    pub unanswered_per_source: usize,
}

/// One unanswered session of a source for a mesh; released on drop (when the host answers
/// or the session ends).
pub(super) struct UnansweredSlot {
    registry: Arc<Registry>,
    key: (String, String),
}

impl Drop for UnansweredSlot {
    fn drop(&mut self) {
        let mut maps = self.registry.maps();
        if let Some(n) = maps.unanswered.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                maps.unanswered.remove(&self.key);
            }
        }
    }
}

/// Holds one session slot of a mesh (and its pending entry) until dropped.
pub(super) struct SessionSlot {
    registry: Arc<Registry>,
    metrics: Arc<Metrics>,
    mesh_id: String,
    session_id: String,
}

impl Drop for SessionSlot {
    fn drop(&mut self) {
        let mut maps = self.registry.maps();
        maps.pending.remove(&self.session_id);
        if let Some(n) = maps.sessions_per_mesh.get_mut(&self.mesh_id) {
            *n -= 1;
            if *n == 0 {
                maps.sessions_per_mesh.remove(&self.mesh_id);
            }
        }
        drop(maps);
        self.metrics.session_ended();
    }
}

/// Removes a host's registration when its control task ends, unless a newer one replaced it.
pub(super) struct HostRegistration {
    registry: Arc<Registry>,
    mesh_id: String,
    generation: u64,
}

impl Drop for HostRegistration {
    fn drop(&mut self) {
        let mut maps = self.registry.maps();
        if maps.hosts.get(&self.mesh_id).map(|h| h.generation) == Some(self.generation) {
            maps.hosts.remove(&self.mesh_id);
        }
    }
}
