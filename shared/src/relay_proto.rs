//! The relay's control protocol (host ↔ relay) and its close codes.
//!
//! The relay is a dumb splice: it never reads mesh traffic. The only messages it speaks are
//! the few below, on the host's control socket `GET /mesh/{mesh_id}/host`:
//!
//! 1. relay → host [`RelayMsg::Challenge`] with a fresh random nonce;
//! 2. host → relay [`HostMsg::Register`] with its Ed25519 public key and a signature over
//!    [`registration_message`] (domain-separated, bound to the mesh id and that nonce, so a
//!    captured signature is useless against the next challenge);
//! 3. relay → host [`RelayMsg::Registered`]; the relay checked the signature and that
//!    `mesh_id == mesh_id_from_public_key(public_key)` (self-certifying ids: no database);
//! 4. for every member that dials `GET /mesh/{mesh_id}`, relay → host [`RelayMsg::Session`];
//!    the host dials `GET /mesh/{mesh_id}/session/{session_id}` with
//!    `Authorization: Bearer <secret>` and the relay splices the two sockets.
//!
//! Every refusal closes the WebSocket with one of the [`close`] codes and a reason.

use serde::{Deserialize, Serialize};

/// Domain separator of the registration signature (versioned).
pub const REGISTRATION_DOMAIN: &[u8] = b"atmosphere-relay-v1";

/// Largest control frame either side accepts (bytes). Control messages are tiny.
pub const MAX_CONTROL_FRAME_BYTES: usize = 16 * 1024;

/// Bytes of randomness in a challenge nonce.
pub const NONCE_BYTES: usize = 32;

/// The exact bytes a host signs to register `mesh_id` against challenge `nonce`:
/// `"atmosphere-relay-v1" ‖ 0x00 ‖ mesh_id ‖ 0x00 ‖ nonce`. The zero separators keep the
/// fields unambiguous; the domain string keeps the signature from meaning anything else.
pub fn registration_message(mesh_id: &str, nonce: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(REGISTRATION_DOMAIN.len() + mesh_id.len() + nonce.len() + 2);
    m.extend_from_slice(REGISTRATION_DOMAIN);
    m.push(0);
    m.extend_from_slice(mesh_id.as_bytes());
    m.push(0);
    m.extend_from_slice(nonce);
    m
}

/// Standard base64 (with padding), the encoding of keys, signatures and nonces here.
pub fn b64_encode(bytes: &[u8]) -> String {
    data_encoding::BASE64.encode(bytes)
}

/// Decodes standard base64; `None` on any malformed input.
pub fn b64_decode(s: &str) -> Option<Vec<u8>> {
    data_encoding::BASE64.decode(s.as_bytes()).ok()
}

/// Messages the relay sends on a host control socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum RelayMsg {
    /// First frame: sign this nonce (base64 of [`NONCE_BYTES`] random bytes).
    Challenge { nonce: String },
    /// The registration was accepted; members dialing `/mesh/{mesh_id}` now reach this host.
    Registered { mesh_id: String },
    /// A member is waiting: dial `/mesh/{mesh_id}/session/{session_id}` with
    /// `Authorization: Bearer {secret}` before the relay's accept deadline.
    Session {
        session_id: String,
        /// One-time proof for this session's data socket (never logged).
        secret: String,
        /// The member's address as the relay sees it (for the host's logs).
        remote: String,
    },
}

/// Messages a host sends on its control socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum HostMsg {
    /// Answer to the challenge: base64 Ed25519 public key (32 bytes) and base64 signature
    /// (64 bytes) over [`registration_message`].
    Register {
        public_key: String,
        signature: String,
    },
}

/// WebSocket close codes the relay uses (4000–4999 is the application range). The table is
/// also in `docs/RELAY.md`.
///
/// | code | constant | when |
/// | --- | --- | --- |
/// | 4400 | [`BAD_REQUEST`](close::BAD_REQUEST) | malformed mesh id, control message or session path |
/// | 4401 | [`BAD_SIGNATURE`](close::BAD_SIGNATURE) | registration signature does not verify (e.g. replayed), or wrong data-socket secret |
/// | 4403 | [`MESH_MISMATCH`](close::MESH_MISMATCH) | the key does not derive this mesh id, or another key holds the mesh |
/// | 4404 | [`HOST_OFFLINE`](close::HOST_OFFLINE) | no host registered for the mesh (member socket), or unknown/expired session (data socket) |
/// | 4408 | [`TIMEOUT`](close::TIMEOUT) | handshake, host-accept or idle deadline passed |
/// | 4409 | [`REPLACED`](close::REPLACED) | a newer control socket with the same key took over the mesh |
/// | 4413 | [`TOO_LARGE`](close::TOO_LARGE) | a frame or message over the relay's size limit |
/// | 4429 | [`TOO_MANY`](close::TOO_MANY) | too many connections from this IP, or sessions for this mesh |
/// | 1001 | (going away) | the other side of a spliced session disconnected without a close frame, or the relay is shutting down |
pub mod close {
    /// Malformed request: mesh id, control message or session path.
    pub const BAD_REQUEST: u16 = 4400;
    /// Signature or data-socket proof did not verify.
    pub const BAD_SIGNATURE: u16 = 4401;
    /// The presented key does not own this mesh id.
    pub const MESH_MISMATCH: u16 = 4403;
    /// No host registered for this mesh (or unknown session).
    pub const HOST_OFFLINE: u16 = 4404;
    /// A deadline passed (handshake, host accept, idle).
    pub const TIMEOUT: u16 = 4408;
    /// This control socket was replaced by a newer one with the same key.
    pub const REPLACED: u16 = 4409;
    /// A frame or message exceeded the size limit.
    pub const TOO_LARGE: u16 = 4413;
    /// Too many connections from one IP or sessions for one mesh.
    pub const TOO_MANY: u16 = 4429;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_match_the_documented_shapes() {
        let c = serde_json::to_string(&RelayMsg::Challenge {
            nonce: "AA==".into(),
        })
        .unwrap();
        assert_eq!(c, r#"{"type":"challenge","nonce":"AA=="}"#);
        let r: HostMsg =
            serde_json::from_str(r#"{"type":"register","public_key":"k","signature":"s"}"#)
                .unwrap();
        assert_eq!(
            r,
            HostMsg::Register {
                public_key: "k".into(),
                signature: "s".into()
            }
        );
        assert!(serde_json::from_str::<HostMsg>(r#"{"type":"nope"}"#).is_err());
    }

    #[test]
    fn registration_message_binds_mesh_and_nonce() {
        let a = registration_message("abc", &[1, 2]);
        assert_ne!(a, registration_message("abd", &[1, 2]));
        assert_ne!(a, registration_message("abc", &[1, 3]));
        assert!(a.starts_with(REGISTRATION_DOMAIN));
    }

    #[test]
    fn base64_round_trips_and_rejects_garbage() {
        assert_eq!(
            b64_decode(&b64_encode(&[0, 255, 7])).unwrap(),
            vec![0, 255, 7]
        );
        assert!(b64_decode("%%%").is_none());
    }
}
