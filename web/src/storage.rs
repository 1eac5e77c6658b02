//! The device credentials in `localStorage`: after the first join the host hands this
//! browser a `device_id` + `device_key`; later visits rejoin with it instead of spending
//! the invite again (and without creating a second device).
//!
//! Each record is one shared [`DeviceCredential`] (the same JSON object `atmosphere join
//! --device-file` writes, with its `endpoints`), keyed by `mesh_id` (known only after the
//! first `joined`). An invite link carries no mesh id, so a record also remembers the
//! endpoint URLs it was reached on; a later invite that shares one of them belongs to the
//! same host and reuses the credential. If the host no longer knows the device
//! (`unknown_device`), the record is dropped and the page joins with the invite's token
//! instead.
//!
//! The tab's invite link lives in `sessionStorage` ([`remember_tab_link`]): once joined, the
//! page drops the link (and its token) from the address bar, so a screenshot or a shared
//! address does not carry the token, and a reload of the bare `/join` finds the invite
//! here and rejoins with the stored credential. It lasts as long as the tab.

use atmosphere_shared::credential::DeviceCredential;

const PREFIX: &str = "atmosphere.device.";
/// The `sessionStorage` key of the tab's invite link.
const TAB_LINK: &str = "atmosphere.join.link";
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

/// The credential for a mesh reachable at any of `endpoint_urls`, if this browser has one.
pub fn find_for_endpoints<'a>(
    endpoint_urls: impl IntoIterator<Item = &'a str>,
) -> Option<DeviceCredential> {
    let urls: Vec<&str> = endpoint_urls.into_iter().collect();
    all()
        .into_iter()
        .find(|c| c.was_reached_through(urls.iter().copied()))
}

/// Saves (or updates) the credential of a mesh, keeping the endpoint URLs an earlier
/// record of it remembered.
pub fn save(mut cred: DeviceCredential) {
    let Some(s) = storage() else { return };
    if let Some(old) = all().into_iter().find(|c| c.mesh_id == cred.mesh_id) {
        cred.remember_endpoints_of(&old);
    }
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

fn tab_storage() -> Option<web_sys::Storage> {
    web_sys::window()?.session_storage().ok().flatten()
}

/// Remembers the invite link this tab joins with, for a reload after the address bar lost it.
pub fn remember_tab_link(link: &str) {
    if let Some(s) = tab_storage() {
        let _ = s.set_item(TAB_LINK, link);
    }
}

/// The invite link this tab last joined with, if any.
pub fn tab_link() -> Option<String> {
    tab_storage()?.get_item(TAB_LINK).ok().flatten()
}
