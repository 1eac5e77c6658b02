//! The device credential a member keeps between sessions.
//!
//! A first join spends an invite: the host stores a new device and hands it a `device_key`
//! in its [`Joined`]. From then on the member rejoins with `device_id` + `device_key`
//! ([`JoinCredential::Device`]), which spends no invite use and keeps it one device.
//! [`DeviceCredential`] is that credential as clients store it: `atmosphere join
//! --device-file` writes it as a JSON file, the browser as a `localStorage` record. Both
//! are the same JSON object:
//!
//! ```json
//! {"mesh_id":"…","mesh_name":"Home","device_id":"…","device_key":"…","endpoints":["ws://…"]}
//! ```
//!
//! `endpoints` is optional (absent = empty): an invite link carries no mesh id, so a client
//! that only has an invite finds its credential by the endpoint URLs it reached that mesh
//! through. The browser fills it; the CLI names its file explicitly and leaves it empty, so
//! its files keep their four fields.

use crate::wire::{JoinCredential, Joined};
use serde::{Deserialize, Serialize};

/// Most endpoint URLs one credential remembers (the newest are kept), so a record stays
/// small however many invites of the same host were used.
pub const MAX_REMEMBERED_ENDPOINTS: usize = 16;

/// What a member keeps after its first join to rejoin the same mesh later.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceCredential {
    pub mesh_id: String,
    pub mesh_name: String,
    pub device_id: String,
    /// The secret the host issued on the first join; it is as good as a password.
    pub device_key: String,
    /// Endpoint URLs this mesh was joined or rejoined through, newest first (at most
    /// [`MAX_REMEMBERED_ENDPOINTS`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<String>,
}

impl DeviceCredential {
    /// The credential a client holds after the host's `joined`: the key the host just
    /// issued (a first join), or — on a rejoin, whose `joined` carries no key — the one it
    /// `presented`. `None` when there is neither (a token join answered without a key,
    /// which a conforming host never sends). `endpoints` starts empty.
    pub fn after_join(joined: &Joined, presented: &JoinCredential) -> Option<DeviceCredential> {
        let device_key = match (&joined.device_key, presented) {
            (Some(issued), _) => issued.clone(),
            (
                None,
                JoinCredential::Device {
                    device_id,
                    device_key,
                },
            ) if *device_id == joined.device_id => device_key.clone(),
            (None, _) => return None,
        };
        Some(DeviceCredential {
            mesh_id: joined.mesh_id.clone(),
            mesh_name: joined.mesh_name.clone(),
            device_id: joined.device_id.clone(),
            device_key,
            endpoints: Vec::new(),
        })
    }

    /// How to present this credential in a `join`.
    pub fn join_credential(&self) -> JoinCredential {
        JoinCredential::Device {
            device_id: self.device_id.clone(),
            device_key: self.device_key.clone(),
        }
    }

    /// True if this mesh was reached through any of `urls` (so an invite listing them
    /// leads to the same host, and this credential can be used instead of its token).
    pub fn was_reached_through<'a>(&self, urls: impl IntoIterator<Item = &'a str>) -> bool {
        urls.into_iter()
            .any(|u| self.endpoints.iter().any(|e| e == u))
    }

    /// Adds the endpoint URLs `older` remembered that this one lacks (after its own, which
    /// are newer), keeping at most [`MAX_REMEMBERED_ENDPOINTS`].
    pub fn remember_endpoints_of(&mut self, older: &DeviceCredential) {
        for e in &older.endpoints {
            if !self.endpoints.contains(e) {
                self.endpoints.push(e.clone());
            }
        }
        self.endpoints.truncate(MAX_REMEMBERED_ENDPOINTS);
    }
}

/// Everything but the key (see the `JoinCredential` Debug impl for why).
impl std::fmt::Debug for DeviceCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceCredential")
            .field("mesh_id", &self.mesh_id)
            .field("mesh_name", &self.mesh_name)
            .field("device_id", &self.device_id)
            .field("device_key", &"<redacted>")
            .field("endpoints", &self.endpoints)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::DeviceInfo;

    fn joined(device_key: Option<&str>) -> Joined {
        Joined {
            mesh_id: "m1".into(),
            mesh_name: "Home".into(),
            device_id: "d1".into(),
            device_key: device_key.map(str::to_string),
            peers: Vec::new(),
        }
    }

    fn token() -> JoinCredential {
        JoinCredential::Token {
            token: "ATM-X".into(),
            device: DeviceInfo::default(),
        }
    }

    fn device(id: &str, key: &str) -> JoinCredential {
        JoinCredential::Device {
            device_id: id.into(),
            device_key: key.into(),
        }
    }

    #[test]
    fn a_first_join_keeps_the_issued_key() {
        let c = DeviceCredential::after_join(&joined(Some("k-new")), &token()).unwrap();
        assert_eq!(
            (
                c.mesh_id.as_str(),
                c.device_id.as_str(),
                c.device_key.as_str()
            ),
            ("m1", "d1", "k-new")
        );
        assert_eq!(c.join_credential(), device("d1", "k-new"));
    }

    #[test]
    fn a_rejoin_keeps_the_presented_key() {
        let c = DeviceCredential::after_join(&joined(None), &device("d1", "k-old")).unwrap();
        assert_eq!(c.device_key, "k-old");
        // A key presented for another device is not this device's key.
        assert_eq!(
            DeviceCredential::after_join(&joined(None), &device("d2", "k-old")),
            None
        );
        assert_eq!(DeviceCredential::after_join(&joined(None), &token()), None);
    }

    #[test]
    fn the_cli_file_format_is_four_fields_and_reads_back() {
        let c = DeviceCredential::after_join(&joined(Some("k")), &token()).unwrap();
        let text = serde_json::to_string(&c).unwrap();
        assert_eq!(
            text,
            r#"{"mesh_id":"m1","mesh_name":"Home","device_id":"d1","device_key":"k"}"#
        );
        assert_eq!(serde_json::from_str::<DeviceCredential>(&text).unwrap(), c);
        // `--device-file` writes it pretty-printed; files from earlier versions read back.
        let file = "{\n  \"mesh_id\": \"m1\",\n  \"mesh_name\": \"Home\",\n  \"device_id\": \"d1\",\n  \"device_key\": \"k\"\n}";
        assert_eq!(serde_json::to_string_pretty(&c).unwrap(), file);
        assert_eq!(serde_json::from_str::<DeviceCredential>(file).unwrap(), c);
    }

    #[test]
    fn the_browser_record_format_reads_back() {
        let text = r#"{"mesh_id":"m1","mesh_name":"Home","device_id":"d1","device_key":"k","endpoints":["ws://a","wss://r"]}"#;
        let c: DeviceCredential = serde_json::from_str(text).unwrap();
        assert_eq!(c.endpoints, ["ws://a", "wss://r"]);
        assert_eq!(serde_json::to_string(&c).unwrap(), text);
        assert!(c.was_reached_through(["ws://x", "wss://r"]));
        assert!(!c.was_reached_through(["ws://x"]));
    }

    #[test]
    fn remembered_endpoints_merge_newest_first_and_stay_bounded() {
        let mut older = DeviceCredential::after_join(&joined(Some("k")), &token()).unwrap();
        older.endpoints = (0..20).map(|i| format!("ws://old{i}")).collect();
        let mut newer = older.clone();
        newer.endpoints = vec!["ws://new".into(), "ws://old3".into()];
        newer.remember_endpoints_of(&older);
        assert_eq!(newer.endpoints.len(), MAX_REMEMBERED_ENDPOINTS);
        assert_eq!(newer.endpoints[..3], ["ws://new", "ws://old3", "ws://old0"]);
    }

    #[test]
    fn debug_hides_the_key() {
        let c = DeviceCredential::after_join(&joined(Some("SECRET")), &token()).unwrap();
        assert!(!format!("{c:?}").contains("SECRET"));
    }
}
