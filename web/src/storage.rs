//! The device credential in `localStorage`: after the first join the host hands this
//! browser a `device_id` + `device_key`; later visits rejoin with it instead of spending
//! the invite again (and without creating a second device).
//!
//! Records are keyed by `mesh_id` (known only after the first `joined`). An invite link
//! carries no mesh id, so a record also remembers the endpoint URLs it was reached on; a
//! later invite that shares one of them belongs to the same host and reuses the credential.
//! If the host no longer knows the device (`unknown_device`), the record is dropped and the
//! page joins with the invite's token instead.

use serde::{Deserialize, Serialize};

const PREFIX: &str = "atmosphere.device.";
/// Stored records larger than this are ignored (a tampered or corrupt entry).
const MAX_RECORD_BYTES: usize = 8 * 1024;

/// What this browser remembers about one mesh it belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credential {
    pub mesh_id: String,
    pub mesh_name: String,
    pub device_id: String,
    pub device_key: String,
    /// Endpoint URLs of the invites this mesh was joined or rejoined through.
    #[serde(default)]
    pub endpoints: Vec<String>,
}

fn storage() -> Option<web_sys::Storage> {
    web_sys::window()?.local_storage().ok().flatten()
}

/// Every stored credential (unreadable entries are skipped).
fn all() -> Vec<Credential> {
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

/// The credential for a mesh reachable at any of `endpoint_urls`, if this browser has one.
pub fn find_for_endpoints<'a>(
    endpoint_urls: impl IntoIterator<Item = &'a str>,
) -> Option<Credential> {
    let urls: Vec<&str> = endpoint_urls.into_iter().collect();
    all()
        .into_iter()
        .find(|c| c.endpoints.iter().any(|e| urls.contains(&e.as_str())))
}

/// Saves (or updates) the credential of a mesh, merging the endpoint URLs it was reached on.
pub fn save(mut cred: Credential) {
    let Some(s) = storage() else { return };
    if let Some(old) = all().into_iter().find(|c| c.mesh_id == cred.mesh_id) {
        for e in old.endpoints {
            if !cred.endpoints.contains(&e) {
                cred.endpoints.push(e);
            }
        }
    }
    // Keep the record bounded even after many invites.
    cred.endpoints.truncate(16);
    if let Ok(v) = serde_json::to_string(&cred) {
        let _ = s.set_item(&format!("{PREFIX}{}", cred.mesh_id), &v);
    }
}

/// Forgets the credential of a mesh (the host no longer knows this device).
pub fn forget(mesh_id: &str) {
    if let Some(s) = storage() {
        let _ = s.remove_item(&format!("{PREFIX}{mesh_id}"));
    }
}
