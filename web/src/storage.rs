//! What the page keeps between visits.
//!
//! **Device credentials** (`localStorage`): after the first join the browser keeps the
//! device's key and the mesh id the host *proved* in the handshake; later visits rejoin
//! with it instead of spending the invite again (and without creating a second device).
//! Each record is one shared [`DeviceCredential`] (the same JSON object `atmosphere join
//! --device-file` writes, with its `endpoints`), keyed by `mesh_id`.
//!
//! Which record an invite uses ([`find_for_invite`]): the one whose `mesh_id` is the mesh
//! the link names ([`Invite::expected_mesh_id`]). A link of an earlier version names no
//! mesh; then a record reached through one of the link's endpoint URLs is used. Either way
//! the rejoin is pinned to the record's mesh id, so an endpoint that cannot prove that mesh
//! (a crafted link's socket) receives nothing. A record is forgotten ([`forget`]) only when
//! the host itself, through the encrypted channel, says the device is unknown or removed;
//! never because of a plaintext notice anyone on the path could send.
//!
//! **The tab's mesh** (`sessionStorage`, [`remember_tab_mesh`]): once joined, the page
//! drops the invite link (and its token) from the address bar, so a screenshot or a shared
//! address does not carry the token. A reload of the bare `/join` then needs only the mesh
//! and where to reach it ([`TabMesh`]): the stored credential rejoins it. The token is not
//! kept anywhere; it lasts as long as the tab.

use atmosphere_shared::credential::DeviceCredential;
use atmosphere_shared::{Endpoints, Invite};
use serde::{Deserialize, Serialize};

const PREFIX: &str = "atmosphere.device.";
/// The `sessionStorage` key of the tab's mesh.
const TAB_MESH: &str = "atmosphere.join.mesh";
/// The `sessionStorage` key under which earlier versions kept the whole invite link, token
/// included; removed when the tab's mesh is stored.
const OLD_TAB_LINK: &str = "atmosphere.join.link";
/// Stored records larger than this are ignored (a tampered or corrupt entry).
const MAX_RECORD_BYTES: usize = 8 * 1024;

fn storage() -> Option<web_sys::Storage> {
    web_sys::window()?.local_storage().ok().flatten()
}

/// Every stored credential (unreadable entries are skipped).
fn all() -> Vec<DeviceCredential> {
    let Some(s) = storage() else {
        return Vec::new();
    };
    let n = s.length().unwrap_or(0);
    (0..n)
        .filter_map(|i| s.key(i).ok().flatten())
        .filter(|k| k.starts_with(PREFIX))
        .filter_map(|k| s.get_item(&k).ok().flatten())
        .filter(|v| v.len() <= MAX_RECORD_BYTES)
        .filter_map(|v| serde_json::from_str(&v).ok())
        .collect()
}

/// The credential of mesh `mesh_id`, if this browser has one.
pub fn find(mesh_id: &str) -> Option<DeviceCredential> {
    all()
        .into_iter()
        .find(|c| c.mesh_id.eq_ignore_ascii_case(mesh_id))
}

/// The credential to rejoin the mesh of `invite` with: the one of the mesh the link names,
/// or for a link that names none, one reached through any of its endpoint URLs.
pub fn find_for_invite(invite: &Invite) -> Option<DeviceCredential> {
    match invite.expected_mesh_id() {
        Some(id) => find(&id),
        None => all()
            .into_iter()
            .find(|c| c.was_reached_through(invite.endpoints.iter().map(|(_, u)| u))),
    }
}

/// Saves (or updates) the credential of a mesh, keeping the endpoint URLs an earlier
/// record of it remembered.
pub fn save(mut cred: DeviceCredential) {
    let Some(s) = storage() else { return };
    if let Some(old) = find(&cred.mesh_id) {
        cred.remember_endpoints_of(&old);
    }
    if let Ok(v) = serde_json::to_string(&cred) {
        let _ = s.set_item(&format!("{PREFIX}{}", cred.mesh_id), &v);
    }
}

/// Forgets the credential of a mesh (the host said it no longer knows this device).
pub fn forget(mesh_id: &str) {
    if let Some(s) = storage() {
        let _ = s.remove_item(&format!("{PREFIX}{mesh_id}"));
    }
}

/// What a reload of a tab that joined needs: the mesh (the id its host proved) and where
/// to reach it. No token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TabMesh {
    pub mesh_id: String,
    pub mesh_name: String,
    pub endpoints: Endpoints,
}

fn tab_storage() -> Option<web_sys::Storage> {
    web_sys::window()?.session_storage().ok().flatten()
}

/// Remembers the mesh this tab joined, for a reload after the address bar lost the link.
pub fn remember_tab_mesh(mesh: &TabMesh) {
    let Some(s) = tab_storage() else { return };
    if let Ok(v) = serde_json::to_string(mesh) {
        let _ = s.set_item(TAB_MESH, &v);
    }
    let _ = s.remove_item(OLD_TAB_LINK);
}

/// The mesh this tab last joined, if any.
pub fn tab_mesh() -> Option<TabMesh> {
    let v = tab_storage()?.get_item(TAB_MESH).ok().flatten()?;
    if v.len() > MAX_RECORD_BYTES {
        return None;
    }
    serde_json::from_str(&v).ok()
}
