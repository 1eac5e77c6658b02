//! What a member presents to join, and what it keeps between sessions.
//!
//! A first join spends an invite: the client makes a new device key (an X25519 static key,
//! 32 random bytes, see [`crate::handshake`]), proves it in the handshake and sends the
//! invite's token; the host stores the device with that public key. From then on the
//! member rejoins by proving the same key ([`JoinProof::Device`]): the secret never leaves
//! the device, a rejoin spends no invite use and keeps it one device.
//!
//! [`JoinPlan`] is everything one join (all the attempts of one race) needs: the proof, the
//! device key, and the host the client expects ([`HostExpectation`]: the invite's mesh id,
//! or the pinned one on a rejoin). The native `atmosphere join` and the browser both build
//! one and start every attempt's handshake from it ([`JoinPlan::start`]), so the two shells
//! cannot drift apart in what they send or check.
//!
//! [`DeviceCredential`] is what a client stores after a `joined`: `atmosphere join
//! --device-file` writes it as a JSON file (mode 0600), the browser as a `localStorage`
//! record. Both are the same JSON object:
//!
//! ```json
//! {"mesh_id":"…","mesh_name":"Home","device_id":"…","device_secret":"…","endpoints":["ws://…"]}
//! ```
//!
//! `mesh_id` is the id the host *proved* in the handshake, never what a frame said, so a
//! rejoin is pinned to it. `endpoints` is optional (absent = empty): a client that only has
//! an invite finds its credential by the endpoint URLs it reached that mesh through. The
//! browser fills it; the CLI names its file explicitly and leaves it empty. A record of an
//! earlier version carries a bearer `device_key` instead of `device_secret`; it still
//! rejoins (a [`JoinProof::DeviceKey`] with a new device key, which the host then stores in
//! place of the bearer key), and is stored in the new form afterwards.

use crate::handshake::{
    ClientHandshake, Entropy, HandshakeError, HostExpectation, HostIdentity, JoinProof,
    JoinRequest, StaticSecret,
};
use crate::link::Invite;
use crate::path::PathKind;
use crate::wire::{DeviceInfo, Joined};
use serde::{Deserialize, Serialize};

/// Most endpoint URLs one credential remembers (the newest are kept), so a record stays
/// small however many invites of the same host were used.
pub const MAX_REMEMBERED_ENDPOINTS: usize = 16;

/// What a member keeps after its first join to rejoin the same mesh later.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceCredential {
    /// The mesh id the host proved; every rejoin requires the same.
    pub mesh_id: String,
    pub mesh_name: String,
    pub device_id: String,
    /// The device's X25519 static secret, base64url without padding (32 bytes). As good as
    /// a password; it never crosses the network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_secret: Option<String>,
    /// The bearer key earlier versions were handed (only in records of those versions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_key: Option<String>,
    /// Endpoint URLs this mesh was joined or rejoined through, newest first (at most
    /// [`MAX_REMEMBERED_ENDPOINTS`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<String>,
}

/// Why a stored credential cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CredentialError {
    #[error("the device credential has neither a device_secret nor a device_key")]
    NoSecret,
    #[error("the device credential's device_secret is not 32 bytes of base64url")]
    BadSecret,
}

impl DeviceCredential {
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

    /// The stored device key, if this record has one.
    fn static_secret(&self) -> Result<Option<StaticSecret>, CredentialError> {
        let Some(text) = &self.device_secret else {
            return Ok(None);
        };
        let bytes = data_encoding::BASE64URL_NOPAD
            .decode(text.trim().as_bytes())
            .map_err(|_| CredentialError::BadSecret)?;
        let bytes: [u8; 32] = bytes.try_into().map_err(|_| CredentialError::BadSecret)?;
        Ok(Some(StaticSecret::from_bytes(bytes)))
    }
}

/// Everything but the secrets (see the [`JoinProof`] Debug impl for why).
impl std::fmt::Debug for DeviceCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let redact = |o: &Option<String>| o.as_ref().map(|_| "<redacted>");
        f.debug_struct("DeviceCredential")
            .field("mesh_id", &self.mesh_id)
            .field("mesh_name", &self.mesh_name)
            .field("device_id", &self.device_id)
            .field("device_secret", &redact(&self.device_secret))
            .field("device_key", &redact(&self.device_key))
            .field("endpoints", &self.endpoints)
            .finish()
    }
}

/// One join, for every attempt of a race: what to prove, with which device key, to whom.
pub struct JoinPlan {
    proof: JoinProof,
    device_secret: StaticSecret,
    expectation: HostExpectation,
}

impl JoinPlan {
    /// A first join through `invite`, as the new device `device` whose key is
    /// `device_secret` (32 fresh random bytes). The host must prove the invite's mesh id
    /// ([`Invite::expected_mesh_id`]), or — a link of an earlier version that names none —
    /// is trusted on first use and pinned.
    pub fn first_join(
        invite: &Invite,
        device: DeviceInfo,
        device_secret: StaticSecret,
    ) -> JoinPlan {
        JoinPlan {
            proof: JoinProof::Invite {
                token: invite.token.clone(),
                device,
            },
            device_secret,
            expectation: match invite.expected_mesh_id() {
                Some(id) => HostExpectation::MeshId(id),
                None => HostExpectation::TrustOnFirstUse,
            },
        }
    }

    /// A rejoin with a stored credential; the host must prove the pinned mesh id. A record
    /// of an earlier version (a bearer `device_key`, no `device_secret`) proves its key and
    /// takes `fresh_secret` (32 fresh random bytes) as its device key from now on.
    pub fn rejoin(
        cred: &DeviceCredential,
        fresh_secret: [u8; 32],
    ) -> Result<JoinPlan, CredentialError> {
        let (proof, device_secret) = match (cred.static_secret()?, &cred.device_key) {
            (Some(secret), _) => (
                JoinProof::Device {
                    device_id: cred.device_id.clone(),
                },
                secret,
            ),
            (None, Some(key)) => (
                JoinProof::DeviceKey {
                    device_id: cred.device_id.clone(),
                    device_key: key.clone(),
                },
                StaticSecret::from_bytes(fresh_secret),
            ),
            (None, None) => return Err(CredentialError::NoSecret),
        };
        Ok(JoinPlan {
            proof,
            device_secret,
            expectation: HostExpectation::Pinned {
                mesh_id: cred.mesh_id.clone(),
            },
        })
    }

    /// True for a rejoin with a stored credential (not an invite).
    pub fn is_rejoin(&self) -> bool {
        !matches!(self.proof, JoinProof::Invite { .. })
    }

    /// Whom the host must prove to be.
    pub fn expectation(&self) -> &HostExpectation {
        &self.expectation
    }

    /// Starts one attempt's handshake on a socket opened on `path`, with that attempt's
    /// own `entropy`. Returns message 1 to send.
    pub fn start(
        &self,
        path: PathKind,
        entropy: Entropy,
    ) -> Result<(ClientHandshake, Vec<u8>), HandshakeError> {
        let request = JoinRequest {
            proof: self.proof.clone(),
            path,
        };
        ClientHandshake::start(
            self.expectation.clone(),
            &request,
            &self.device_secret,
            entropy,
        )
    }

    /// The credential to store after the host authenticated as `host` and answered
    /// `joined`: pinned to the mesh id the host proved, with this plan's device key
    /// (`endpoints` starts empty).
    pub fn credential(&self, host: &HostIdentity, joined: &Joined) -> DeviceCredential {
        DeviceCredential {
            mesh_id: host.mesh_id.clone(),
            mesh_name: joined.mesh_name.clone(),
            device_id: joined.device_id.clone(),
            device_secret: Some(
                data_encoding::BASE64URL_NOPAD.encode(&self.device_secret.to_bytes()),
            ),
            device_key: None,
            endpoints: Vec::new(),
        }
    }
}

impl std::fmt::Debug for JoinPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinPlan")
            .field("proof", &self.proof)
            .field("expectation", &self.expectation)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handshake::{HostHandshake, HostKeys};
    use crate::link::Endpoints;

    fn keys() -> HostKeys {
        HostKeys::from_signing_key(&ed25519_dalek::SigningKey::from_bytes(&[7; 32]))
    }

    fn invite(mesh_id: Option<&str>) -> Invite {
        let mut inv = Invite::v2(
            "ATM-HAEQDDBYEJ9FCA91ABJEK9GC76VZTCRG",
            "Home",
            Endpoints {
                local: Some("ws://192.168.1.2:11451/ws".into()),
                ..Endpoints::default()
            },
        );
        inv.mesh_id = mesh_id.map(str::to_string);
        inv
    }

    fn joined() -> Joined {
        Joined {
            mesh_id: "anything the host says".into(),
            mesh_name: "Home".into(),
            device_id: "d1".into(),
            direct: false,
            stun_servers: Vec::new(),
        }
    }

    /// Runs `plan` against the host of [`keys`]; the host identity the client saw.
    fn handshake(plan: &JoinPlan) -> Result<(HostIdentity, JoinRequest), HandshakeError> {
        let (client, msg1) = plan.start(PathKind::Local, Entropy::new([1; 32]))?;
        let (host, msg2) =
            HostHandshake::new(&keys(), Entropy::new([2; 32])).read_client_hello(&msg1)?;
        let done = client.read_host_hello(&msg2)?;
        let join = host.read_join(&done.message)?;
        Ok((done.host, join.request?))
    }

    #[test]
    fn a_first_join_pins_the_mesh_the_host_proved_not_what_joined_says() {
        let k = keys();
        let plan = JoinPlan::first_join(
            &invite(Some(k.mesh_id())),
            DeviceInfo::default(),
            StaticSecret::from_bytes([9; 32]),
        );
        let (host, request) = handshake(&plan).unwrap();
        assert!(matches!(request.proof, JoinProof::Invite { .. }));
        let cred = plan.credential(&host, &joined());
        assert_eq!(cred.mesh_id, k.mesh_id());
        assert_eq!(cred.device_key, None);
        // The rejoin proves the same device key and expects the same mesh.
        let again = JoinPlan::rejoin(&cred, [0; 32]).unwrap();
        assert_eq!(again.device_secret, StaticSecret::from_bytes([9; 32]));
        assert_eq!(
            again.expectation(),
            &HostExpectation::Pinned {
                mesh_id: k.mesh_id().into()
            }
        );
        let (_, request) = handshake(&again).unwrap();
        assert_eq!(
            request.proof,
            JoinProof::Device {
                device_id: "d1".into()
            }
        );
    }

    #[test]
    fn an_invite_for_another_mesh_sends_nothing() {
        let other = invite(Some("aaaaaaaaaaaaaaaaaaaaaaaaaa"));
        let plan = JoinPlan::first_join(
            &other,
            DeviceInfo::default(),
            StaticSecret::from_bytes([9; 32]),
        );
        assert!(matches!(
            handshake(&plan),
            Err(HandshakeError::HostNotAuthenticated { .. })
        ));
        // A link without an id trusts the first host and reports it for pinning.
        let plan = JoinPlan::first_join(
            &invite(None),
            DeviceInfo::default(),
            StaticSecret::from_bytes([9; 32]),
        );
        assert!(handshake(&plan).unwrap().0.first_use);
    }

    #[test]
    fn a_record_of_an_earlier_version_rejoins_with_its_bearer_key_and_a_new_device_key() {
        let text = r#"{"mesh_id":"m1","mesh_name":"Home","device_id":"d1","device_key":"k"}"#;
        let old: DeviceCredential = serde_json::from_str(text).unwrap();
        let plan = JoinPlan::rejoin(&old, [5; 32]).unwrap();
        assert_eq!(plan.device_secret, StaticSecret::from_bytes([5; 32]));
        assert!(plan.is_rejoin());
        assert!(
            matches!(&plan.proof, JoinProof::DeviceKey { device_key, .. } if device_key == "k")
        );
    }

    #[test]
    fn unusable_records_say_why() {
        let mut c: DeviceCredential =
            serde_json::from_str(r#"{"mesh_id":"m1","mesh_name":"Home","device_id":"d1"}"#)
                .unwrap();
        assert_eq!(
            JoinPlan::rejoin(&c, [0; 32]).err(),
            Some(CredentialError::NoSecret)
        );
        c.device_secret = Some("too-short".into());
        assert_eq!(
            JoinPlan::rejoin(&c, [0; 32]).err(),
            Some(CredentialError::BadSecret)
        );
    }

    #[test]
    fn the_stored_format_reads_back() {
        let text = r#"{"mesh_id":"m1","mesh_name":"Home","device_id":"d1","device_secret":"CQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQk","endpoints":["ws://a","wss://r"]}"#;
        let c: DeviceCredential = serde_json::from_str(text).unwrap();
        assert_eq!(c.endpoints, ["ws://a", "wss://r"]);
        assert_eq!(serde_json::to_string(&c).unwrap(), text);
        assert_eq!(
            c.static_secret().unwrap(),
            Some(StaticSecret::from_bytes([9; 32]))
        );
        assert!(c.was_reached_through(["ws://x", "wss://r"]));
        assert!(!c.was_reached_through(["ws://x"]));
    }

    #[test]
    fn remembered_endpoints_merge_newest_first_and_stay_bounded() {
        let mut older: DeviceCredential =
            serde_json::from_str(r#"{"mesh_id":"m1","mesh_name":"Home","device_id":"d1"}"#)
                .unwrap();
        older.endpoints = (0..20).map(|i| format!("ws://old{i}")).collect();
        let mut newer = older.clone();
        newer.endpoints = vec!["ws://new".into(), "ws://old3".into()];
        newer.remember_endpoints_of(&older);
        assert_eq!(newer.endpoints.len(), MAX_REMEMBERED_ENDPOINTS);
        assert_eq!(newer.endpoints[..3], ["ws://new", "ws://old3", "ws://old0"]);
    }

    #[test]
    fn debug_hides_the_secrets() {
        let c: DeviceCredential = serde_json::from_str(
            r#"{"mesh_id":"m1","mesh_name":"Home","device_id":"d1","device_secret":"SECRET","device_key":"SECRET"}"#,
        )
        .unwrap();
        assert!(!format!("{c:?}").contains("SECRET"));
        let plan = JoinPlan::first_join(
            &invite(None),
            DeviceInfo::default(),
            StaticSecret::from_bytes([9; 32]),
        );
        assert!(!format!("{plan:?}").contains("ATM-"));
    }
}
