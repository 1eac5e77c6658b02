//! The relay's control protocol (host ↔ relay), its close codes and its `GET /health` answer
//! ([`RelayHealth`]).
//!
//! The relay is a dumb splice: it never reads mesh traffic. The only messages it speaks are
//! the few below, on the host's control socket `GET /mesh/{mesh_id}/host`:
//!
//! 1. relay → host [`RelayMsg::Challenge`] with a fresh random nonce and the relay's name
//!    (the authority hosts dial it by);
//! 2. the host checks that name against the URL it dialed ([`check_relay_name`]: a relay
//!    that forwards another relay's challenge is refused), then answers
//!    [`HostMsg::Register`], built by [`sign`]: its Ed25519 public key and a signature over
//!    [`registration_message`] (domain-separated, bound to the relay's name, the mesh id
//!    and that nonce, so a captured signature is useless against the next challenge or at
//!    another relay);
//! 3. relay → host [`RelayMsg::Registered`] once [`verify`] accepted the answer: the
//!    signature holds (`verify_strict`) and `mesh_id == mesh_id_from_public_key(public_key)`
//!    (self-certifying ids: no database);
//! 4. for every member that dials `GET /mesh/{mesh_id}`, relay → host [`RelayMsg::Session`];
//!    the host dials `GET /mesh/{mesh_id}/session/{session_id}` with
//!    `Authorization: Bearer <secret>` and the relay splices the two sockets.
//!
//! 5. once registered, the host may ask the relay to dial its public endpoint back:
//!    [`HostMsg::DialBack`] → [`RelayMsg::DialBackResult`] (the protocol, its checks and
//!    limits are `crate::dial_back`).
//!
//! Every refusal closes the WebSocket with one of the [`close`] codes and a reason.
//!
//! Both ends of the registration live here, as one [`sign`] (host) and one [`verify`]
//! (relay), so the signed bytes and their checks cannot drift apart; the relay and the host
//! link only move the messages.

use crate::dial_back::DialBackResult;
use crate::mesh_id::mesh_id_from_public_key;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

/// Domain separator of the registration signature (versioned; v2 names the relay).
pub const REGISTRATION_DOMAIN: &[u8] = b"atmosphere-relay-v2";

/// Largest control frame either side accepts (bytes). Control messages are tiny.
pub const MAX_CONTROL_FRAME_BYTES: usize = 16 * 1024;

/// Bytes of randomness in a challenge nonce.
pub const NONCE_BYTES: usize = 32;

/// Largest challenge nonce a host signs, in bytes. The relay sends [`NONCE_BYTES`]; the
/// bound only keeps a misbehaving relay from making a host sign arbitrary amounts of data.
pub const MAX_NONCE_BYTES: usize = 1024;

/// Longest relay name (an authority: host and optional port) a host accepts.
pub const MAX_RELAY_NAME_BYTES: usize = 255;

/// The exact bytes a host signs to register `mesh_id` at the relay named `relay` against
/// challenge `nonce`: `"atmosphere-relay-v2" ‖ 0x00 ‖ relay ‖ 0x00 ‖ mesh_id ‖ 0x00 ‖ nonce`,
/// where `relay` is the challenge's name exactly as sent. The zero separators keep the
/// fields unambiguous (neither a name nor a mesh id holds a zero byte); the domain string
/// keeps the signature from meaning anything else.
pub fn registration_message(relay: &str, mesh_id: &str, nonce: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(
        REGISTRATION_DOMAIN.len() + relay.len() + mesh_id.len() + nonce.len() + 3,
    );
    m.extend_from_slice(REGISTRATION_DOMAIN);
    m.push(0);
    m.extend_from_slice(relay.as_bytes());
    m.push(0);
    m.extend_from_slice(mesh_id.as_bytes());
    m.push(0);
    m.extend_from_slice(nonce);
    m
}

/// The name of the relay at `url` (`ws://`, `wss://`, `http://` or `https://`): its
/// authority as a URL parser normalises it, i.e. the lowercase (IDNA) host and `:port` only
/// when the port is not the scheme's default. `wss://Relay.Example:443/x` names
/// `relay.example`; `ws://127.0.0.1:8080` names `127.0.0.1:8080`. `None` for anything else.
pub fn relay_name(url: &str) -> Option<String> {
    let u = url::Url::parse(url.trim()).ok()?;
    if !matches!(u.scheme(), "ws" | "wss" | "http" | "https") {
        return None;
    }
    let host = u.host_str().filter(|h| !h.is_empty())?;
    Some(match u.port() {
        Some(p) => format!("{host}:{p}"),
        None => host.to_string(),
    })
}

/// The STUN port a relay answers on unless told otherwise (`relay --stun-port`, RFC 5389's
/// default port).
pub const DEFAULT_RELAY_STUN_PORT: u16 = 3478;

/// The web origin of the relay at `url`, where it serves the web app at `/join`: `https://`
/// for a `wss://` (or `https://`) relay, `http://` for `ws://` (or `http://`), then the host
/// and `:port` when it is not the scheme's default. The URL's path is not part of it
/// (`wss://relay.example/base` → `https://relay.example`). `None` for anything else.
pub fn relay_web_origin(url: &str) -> Option<String> {
    let u = url::Url::parse(url.trim()).ok()?;
    let scheme = match u.scheme() {
        "wss" | "https" => "https",
        "ws" | "http" => "http",
        _ => return None,
    };
    Some(format!("{scheme}://{}", relay_name(url)?))
}

/// The relay's STUN server as a host hands it to browsers for ICE: `stun:HOST:PORT` with
/// the host of the relay URL `url` (IPv6 in brackets) and `port`. `None` when `url` is not a
/// relay URL.
pub fn relay_stun_url(url: &str, port: u16) -> Option<String> {
    let u = url::Url::parse(url.trim()).ok()?;
    if !matches!(u.scheme(), "ws" | "wss" | "http" | "https") {
        return None;
    }
    // `host_str` keeps an IPv6 literal's brackets, which the `stun:` URI form wants too.
    let host = u.host_str().filter(|h| !h.is_empty())?;
    Some(format!("stun:{host}:{port}"))
}

/// Why a host refuses a challenge's relay name ([`check_relay_name`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RelayNameError {
    /// The URL the host dialed is not a relay URL.
    #[error("{0:?} is not a ws://, wss://, http:// or https:// URL")]
    BadUrl(String),
    /// The name is empty, too long, or not an authority (`host[:port]`).
    #[error("the relay's name {0:?} is not a host[:port]")]
    Malformed(String),
    /// The relay names another relay: it forwarded someone else's challenge, or it is
    /// configured with another public URL than the one this host dials.
    #[error("the relay names itself {named:?}, but this host dialed {dialed:?}")]
    OtherRelay { named: String, dialed: String },
}

/// The host's check of a challenge's relay name: `named`, read as an authority of the
/// scheme of `dialed_url` (so `relay.example:443` is `relay.example` under `wss://`), must be
/// [`relay_name`]`(dialed_url)`.
pub fn check_relay_name(dialed_url: &str, named: &str) -> Result<(), RelayNameError> {
    let dialed =
        relay_name(dialed_url).ok_or_else(|| RelayNameError::BadUrl(dialed_url.to_string()))?;
    let malformed = || RelayNameError::Malformed(named.to_string());
    let is_authority_char =
        |c: char| c.is_ascii_alphanumeric() || "-._~:[]%!$&'()*+,;=".contains(c);
    if named.is_empty()
        || named.len() > MAX_RELAY_NAME_BYTES
        || !named.chars().all(is_authority_char)
    {
        return Err(malformed());
    }
    let scheme = dialed_url
        .trim()
        .split_once("://")
        .map(|(s, _)| s)
        .unwrap_or("ws");
    let as_named = relay_name(&format!("{scheme}://{named}/")).ok_or_else(malformed)?;
    if as_named == dialed {
        Ok(())
    } else {
        Err(RelayNameError::OtherRelay {
            named: named.to_string(),
            dialed,
        })
    }
}

/// Standard base64 (with padding), the encoding of keys, signatures and nonces here.
pub fn b64_encode(bytes: &[u8]) -> String {
    data_encoding::BASE64.encode(bytes)
}

/// Decodes standard base64; `None` on any malformed input.
pub fn b64_decode(s: &str) -> Option<Vec<u8>> {
    data_encoding::BASE64.decode(s.as_bytes()).ok()
}

/// Decodes the nonce of a [`RelayMsg::Challenge`] as a host accepts it: base64 of 1 to
/// [`MAX_NONCE_BYTES`] bytes; `None` otherwise.
pub fn decode_nonce(nonce: &str) -> Option<Vec<u8>> {
    b64_decode(nonce).filter(|n| !n.is_empty() && n.len() <= MAX_NONCE_BYTES)
}

/// The host's answer to a challenge of the relay named `relay` (the challenge's name,
/// already checked with [`check_relay_name`]): registers `mesh_id` with `signing_key`,
/// signing [`registration_message`]`(relay, mesh_id, nonce)`. `nonce` is the challenge's
/// decoded nonce ([`decode_nonce`]).
pub fn sign(signing_key: &SigningKey, relay: &str, mesh_id: &str, nonce: &[u8]) -> HostMsg {
    let signature = signing_key.sign(&registration_message(relay, mesh_id, nonce));
    HostMsg::Register {
        public_key: b64_encode(&signing_key.verifying_key().to_bytes()),
        signature: b64_encode(&signature.to_bytes()),
    }
}

/// Why [`verify`] refused a registration. The relay closes the control socket with the code
/// named on each variant.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegisterError {
    /// `public_key` is not standard base64 (4400).
    #[error("public_key is not base64")]
    KeyNotBase64,
    /// `public_key` does not decode to 32 bytes (4400).
    #[error("public_key must be 32 bytes, not {got}")]
    KeyLength { got: usize },
    /// `signature` is not standard base64 (4400).
    #[error("signature is not base64")]
    SignatureNotBase64,
    /// `signature` does not decode to 64 bytes (4400).
    #[error("signature must be 64 bytes, not {got}")]
    SignatureLength { got: usize },
    /// The key does not derive the mesh id in the path: someone else's mesh (4403).
    #[error("this key does not own the mesh id")]
    NotThisMesh,
    /// The 32 bytes are not an Ed25519 public key (4400).
    #[error("public_key is not a valid Ed25519 key")]
    InvalidKey,
    /// The signature is not over this relay's name, this mesh id and this challenge, e.g.
    /// replayed, or made for another relay (4401).
    #[error("signature does not verify against this challenge")]
    BadSignature,
    /// The host sent another message before registering (4400).
    #[error("expected a register message")]
    NotRegister,
}

/// The relay's check of a host's answer to the challenge (`relay`, `nonce`) it sent on
/// `/mesh/{mesh_id}/host`. On success, the host's key (which derives `mesh_id`).
///
/// The checks run in this order, so each refusal names the first thing wrong: both fields
/// decode to the right lengths, the key derives `mesh_id`, the key is a valid point, and
/// the signature verifies strictly (no malleable or small-order forms).
pub fn verify(
    relay: &str,
    mesh_id: &str,
    nonce: &[u8],
    msg: &HostMsg,
) -> Result<VerifyingKey, RegisterError> {
    let HostMsg::Register {
        public_key,
        signature,
    } = msg
    else {
        return Err(RegisterError::NotRegister);
    };
    let key = b64_decode(public_key).ok_or(RegisterError::KeyNotBase64)?;
    let key: [u8; 32] = key
        .as_slice()
        .try_into()
        .map_err(|_| RegisterError::KeyLength { got: key.len() })?;
    let sig = b64_decode(signature).ok_or(RegisterError::SignatureNotBase64)?;
    let sig: [u8; 64] = sig
        .as_slice()
        .try_into()
        .map_err(|_| RegisterError::SignatureLength { got: sig.len() })?;
    // Self-certifying id: only the holder of the key whose hash is this id may register it.
    if mesh_id_from_public_key(&key) != mesh_id {
        return Err(RegisterError::NotThisMesh);
    }
    let key = VerifyingKey::from_bytes(&key).map_err(|_| RegisterError::InvalidKey)?;
    key.verify_strict(
        &registration_message(relay, mesh_id, nonce),
        &Signature::from_bytes(&sig),
    )
    .map_err(|_| RegisterError::BadSignature)?;
    Ok(key)
}

/// Messages the relay sends on a host control socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum RelayMsg {
    /// First frame: sign this nonce (base64 of [`NONCE_BYTES`] random bytes) for the relay
    /// named `relay` (an authority, `host[:port]`, see [`check_relay_name`]).
    Challenge { nonce: String, relay: String },
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
    /// The answer to a [`HostMsg::DialBack`] (`crate::dial_back`).
    DialBackResult(DialBackResult),
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
    /// Once registered: dial this control socket's source address on `port` and fetch
    /// `/dial-back/{nonce}` (`crate::dial_back`). There is deliberately no address field,
    /// and a request with any field beyond these is refused.
    DialBack(DialBackRequest),
}

/// The fields of [`HostMsg::DialBack`]: exactly these two.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DialBackRequest {
    /// The host's public TCP port (1..=65535).
    pub port: u16,
    /// 32 lowercase hex characters (`dial_back::format_nonce`).
    pub nonce: String,
}

/// Answer of the relay's open `GET /health`. The fields are in the order the relay sends
/// them (alphabetical).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayHealth {
    /// Open WebSockets of every kind.
    pub connections: u64,
    /// Hosts registered now.
    pub meshes: u64,
    /// Sessions waiting for their host or spliced.
    pub sessions: u64,
    /// Always `ok` (a relay that answers is up).
    pub status: String,
    /// Seconds since the relay started.
    pub uptime_secs: u64,
}

/// WebSocket close codes the relay uses (4000–4999 is the application range). The table is
/// also in `docs/RELAY.md`.
///
/// | code | constant | when |
/// | --- | --- | --- |
/// | 4400 | [`BAD_REQUEST`](close::BAD_REQUEST) | malformed mesh id or control message |
/// | 4401 | [`BAD_SIGNATURE`](close::BAD_SIGNATURE) | registration signature does not verify (e.g. replayed, or signed for another relay name) |
/// | 4403 | [`MESH_MISMATCH`](close::MESH_MISMATCH) | the key does not derive this mesh id, or another key holds the mesh |
/// | 4404 | [`HOST_OFFLINE`](close::HOST_OFFLINE) | no host registered for the mesh (member socket) |
/// | 4408 | [`TIMEOUT`](close::TIMEOUT) | handshake, host-accept, host-answer or idle deadline passed |
/// | 4409 | [`REPLACED`](close::REPLACED) | a newer control socket with the same key took over the mesh |
/// | 4413 | [`TOO_LARGE`](close::TOO_LARGE) | a frame or message over the relay's size limit |
/// | 4429 | [`TOO_MANY`](close::TOO_MANY) | too many connections from this IP, sessions for this mesh, or unanswered sessions of this mesh from this IP |
/// | 1001 | (going away) | the other side of a spliced session disconnected without a close frame, or the relay is shutting down |
///
/// Data sockets are refused before their upgrade, with the HTTP status of the same refusal
/// (400, 401, 404, or 429 for a source with too many failed proofs) and a JSON
/// `{"error":…,"message":…}` body (`api::ApiError`) whose `error` is the refusal's label.
pub mod close {
    /// Malformed request: mesh id, control message or session path.
    pub const BAD_REQUEST: u16 = 4400;
    /// Signature or data-socket proof did not verify.
    pub const BAD_SIGNATURE: u16 = 4401;
    /// The presented key does not own this mesh id.
    pub const MESH_MISMATCH: u16 = 4403;
    /// No host registered for this mesh (or unknown session).
    pub const HOST_OFFLINE: u16 = 4404;
    /// A deadline passed (handshake, host accept, host answer, idle).
    pub const TIMEOUT: u16 = 4408;
    /// This control socket was replaced by a newer one with the same key.
    pub const REPLACED: u16 = 4409;
    /// A frame or message exceeded the size limit.
    pub const TOO_LARGE: u16 = 4413;
    /// Too many connections from one IP, sessions for one mesh, or unanswered sessions of
    /// one mesh from one IP.
    pub const TOO_MANY: u16 = 4429;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The relay name of these tests.
    const R: &str = "relay.example";

    #[test]
    fn web_origin_follows_the_relay_scheme_and_drops_the_path() {
        assert_eq!(
            relay_web_origin("wss://Relay.Example/base").as_deref(),
            Some("https://relay.example")
        );
        assert_eq!(
            relay_web_origin("wss://relay.example:8443").as_deref(),
            Some("https://relay.example:8443")
        );
        assert_eq!(
            relay_web_origin("ws://198.51.100.7:8080/x?y").as_deref(),
            Some("http://198.51.100.7:8080")
        );
        assert_eq!(
            relay_web_origin("wss://relay.example:443").as_deref(),
            Some("https://relay.example")
        );
        assert_eq!(relay_web_origin("ftp://relay.example"), None);
        assert_eq!(relay_web_origin("not a url"), None);
    }

    #[test]
    fn stun_url_takes_the_relay_host_and_the_given_port() {
        assert_eq!(
            relay_stun_url("wss://relay.example:8443/p", 3478).as_deref(),
            Some("stun:relay.example:3478")
        );
        assert_eq!(
            relay_stun_url("ws://[2001:db8::1]:8080", 3479).as_deref(),
            Some("stun:[2001:db8::1]:3479")
        );
        assert_eq!(relay_stun_url("mailto:x@y", 3478), None);
    }

    #[test]
    fn messages_match_the_documented_shapes() {
        let c = serde_json::to_string(&RelayMsg::Challenge {
            nonce: "AA==".into(),
            relay: "relay.example".into(),
        })
        .unwrap();
        assert_eq!(
            c,
            r#"{"type":"challenge","nonce":"AA==","relay":"relay.example"}"#
        );
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
    fn dial_back_messages_match_the_documented_shapes_and_carry_no_address() {
        let n = "00112233445566778899aabbccddeeff";
        let req = HostMsg::DialBack(DialBackRequest {
            port: 11451,
            nonce: n.into(),
        });
        let json = format!(r#"{{"type":"dial_back","port":11451,"nonce":"{n}"}}"#);
        assert_eq!(serde_json::to_string(&req).unwrap(), json);
        assert_eq!(serde_json::from_str::<HostMsg>(&json).unwrap(), req);
        // A host that tries to name another address is refused at parse time.
        for smuggled in [
            format!(r#"{{"type":"dial_back","port":1,"nonce":"{n}","ip":"127.0.0.2"}}"#),
            format!(r#"{{"type":"dial_back","port":1,"nonce":"{n}","address":"x:1"}}"#),
        ] {
            assert!(
                serde_json::from_str::<HostMsg>(&smuggled).is_err(),
                "{smuggled}"
            );
        }
        assert!(serde_json::from_str::<HostMsg>(
            r#"{"type":"dial_back","port":70000,"nonce":"x"}"#
        )
        .is_err());
        let res = RelayMsg::DialBackResult(DialBackResult {
            nonce: n.into(),
            reachable: true,
            detail: "answered HTTP 200 with the nonce".into(),
            retry_in_secs: None,
        });
        let json = format!(
            r#"{{"type":"dial_back_result","nonce":"{n}","reachable":true,"detail":"answered HTTP 200 with the nonce"}}"#
        );
        assert_eq!(serde_json::to_string(&res).unwrap(), json);
        assert_eq!(serde_json::from_str::<RelayMsg>(&json).unwrap(), res);
        // A dial_back is not a registration.
        assert_eq!(verify(R, "m", b"n", &req), Err(RegisterError::NotRegister));
    }

    #[test]
    fn registration_message_binds_mesh_and_nonce() {
        let a = registration_message(R, "abc", &[1, 2]);
        assert_ne!(a, registration_message(R, "abd", &[1, 2]));
        assert_ne!(a, registration_message(R, "abc", &[1, 3]));
        assert!(a.starts_with(REGISTRATION_DOMAIN));
    }

    fn key(n: u8) -> SigningKey {
        SigningKey::from_bytes(&[n; 32])
    }

    fn mesh_of(k: &SigningKey) -> String {
        mesh_id_from_public_key(&k.verifying_key().to_bytes())
    }

    fn with_signature(msg: &HostMsg, signature: String) -> HostMsg {
        let HostMsg::Register { public_key, .. } = msg.clone() else {
            unreachable!()
        };
        HostMsg::Register {
            public_key,
            signature,
        }
    }

    #[test]
    fn sign_then_verify_round_trips() {
        let k = key(7);
        let mesh = mesh_of(&k);
        let nonce = [9u8; NONCE_BYTES];
        let msg = sign(&k, R, &mesh, &nonce);
        assert_eq!(verify(R, &mesh, &nonce, &msg), Ok(k.verifying_key()));
        // The wire form is the documented one.
        let json = serde_json::to_value(&msg).unwrap();
        assert_eq!(json["type"], "register");
        assert_eq!(
            b64_decode(json["public_key"].as_str().unwrap()).unwrap(),
            k.verifying_key().to_bytes()
        );
        assert_eq!(
            b64_decode(json["signature"].as_str().unwrap())
                .unwrap()
                .len(),
            64
        );
    }

    #[test]
    fn signature_is_over_the_documented_bytes() {
        // Wire compatibility: the signed bytes are exactly `registration_message`.
        let k = key(3);
        let mesh = mesh_of(&k);
        let HostMsg::Register { signature, .. } = sign(&k, R, &mesh, b"n") else {
            unreachable!()
        };
        let expected = k.sign(&registration_message(R, &mesh, b"n")).to_bytes();
        assert_eq!(b64_decode(&signature).unwrap(), expected);
    }

    #[test]
    fn verify_names_what_is_wrong() {
        let k = key(7);
        let mesh = mesh_of(&k);
        let nonce = [1u8; NONCE_BYTES];
        let msg = sign(&k, R, &mesh, &nonce);

        // A signature over another challenge (a replay) or another mesh id.
        assert_eq!(
            verify(R, &mesh, &[2u8; NONCE_BYTES], &msg),
            Err(RegisterError::BadSignature)
        );
        let other = key(8);
        let other_mesh = mesh_of(&other);
        let for_other_mesh = sign(&k, R, &other_mesh, &nonce);
        assert_eq!(
            verify(
                R,
                &mesh,
                &nonce,
                &with_signature(&msg, {
                    let HostMsg::Register { signature, .. } = for_other_mesh else {
                        unreachable!()
                    };
                    signature
                })
            ),
            Err(RegisterError::BadSignature)
        );
        // The right key, presented for a mesh it does not derive.
        assert_eq!(
            verify(R, &other_mesh, &nonce, &msg),
            Err(RegisterError::NotThisMesh)
        );
        // A squatter: a correct signature by the wrong key.
        assert_eq!(
            verify(R, &mesh, &nonce, &sign(&other, R, &mesh, &nonce)),
            Err(RegisterError::NotThisMesh)
        );
        // One flipped bit of the signature.
        let HostMsg::Register { signature, .. } = msg.clone() else {
            unreachable!()
        };
        let mut bytes = b64_decode(&signature).unwrap();
        bytes[10] ^= 1;
        assert_eq!(
            verify(R, &mesh, &nonce, &with_signature(&msg, b64_encode(&bytes))),
            Err(RegisterError::BadSignature)
        );
        // Encoding and length errors.
        assert_eq!(
            verify(R, &mesh, &nonce, &with_signature(&msg, "%%%".into())),
            Err(RegisterError::SignatureNotBase64)
        );
        assert_eq!(
            verify(
                R,
                &mesh,
                &nonce,
                &with_signature(&msg, b64_encode(&[0; 63]))
            ),
            Err(RegisterError::SignatureLength { got: 63 })
        );
        let HostMsg::Register { signature, .. } = msg.clone() else {
            unreachable!()
        };
        let bad_key = |public_key: String| HostMsg::Register {
            public_key,
            signature: signature.clone(),
        };
        assert_eq!(
            verify(R, &mesh, &nonce, &bad_key("not base64!".into())),
            Err(RegisterError::KeyNotBase64)
        );
        assert_eq!(
            verify(R, &mesh, &nonce, &bad_key(b64_encode(&[0; 31]))),
            Err(RegisterError::KeyLength { got: 31 })
        );
    }

    #[test]
    fn verify_rejects_bytes_that_are_no_key() {
        // 32 bytes that are not a point on the curve, for the mesh id they hash to.
        let not_a_point = (0u8..=255)
            .map(|b| {
                let mut k = [0xffu8; 32];
                k[0] = b;
                k
            })
            .find(|k| VerifyingKey::from_bytes(k).is_err())
            .expect("some 0xff.. encoding is not a point");
        let mesh = mesh_id_from_public_key(&not_a_point);
        let msg = HostMsg::Register {
            public_key: b64_encode(&not_a_point),
            signature: b64_encode(&[0; 64]),
        };
        assert_eq!(verify(R, &mesh, b"n", &msg), Err(RegisterError::InvalidKey));
    }

    #[test]
    fn challenge_nonces_are_bounded() {
        assert_eq!(decode_nonce(&b64_encode(&[5; 32])), Some(vec![5; 32]));
        assert_eq!(decode_nonce(""), None);
        assert_eq!(decode_nonce("%%%"), None);
        assert_eq!(
            decode_nonce(&b64_encode(&vec![0; MAX_NONCE_BYTES + 1])),
            None
        );
    }

    #[test]
    fn base64_round_trips_and_rejects_garbage() {
        assert_eq!(
            b64_decode(&b64_encode(&[0, 255, 7])).unwrap(),
            vec![0, 255, 7]
        );
        assert!(b64_decode("%%%").is_none());
    }

    #[test]
    fn registration_message_binds_the_relay() {
        // The signed bytes name the relay: a signature made for one relay does not verify
        // at another.
        let a = registration_message("a.example", "abc", &[1]);
        assert_ne!(a, registration_message("b.example", "abc", &[1]));
        assert_eq!(a, b"atmosphere-relay-v2\0a.example\0abc\0\x01".to_vec());
        let k = key(5);
        let mesh = mesh_of(&k);
        let nonce = [4u8; NONCE_BYTES];
        let for_a = sign(&k, "a.example", &mesh, &nonce);
        assert_eq!(
            verify("b.example", &mesh, &nonce, &for_a),
            Err(RegisterError::BadSignature)
        );
        assert!(verify("a.example", &mesh, &nonce, &for_a).is_ok());
    }

    #[test]
    fn relay_names_are_normalised_authorities() {
        assert_eq!(
            relay_name("wss://Relay.Example:443/x").as_deref(),
            Some("relay.example")
        );
        assert_eq!(
            relay_name("ws://127.0.0.1:8080").as_deref(),
            Some("127.0.0.1:8080")
        );
        assert_eq!(
            relay_name("ws://relay.example:80/").as_deref(),
            Some("relay.example")
        );
        assert_eq!(
            relay_name("wss://[::1]:8443").as_deref(),
            Some("[::1]:8443")
        );
        assert_eq!(relay_name("ftp://relay.example"), None);
        assert_eq!(relay_name("not a url"), None);
    }

    #[test]
    fn a_host_accepts_only_the_name_of_the_relay_it_dialed() {
        assert_eq!(
            check_relay_name("wss://relay.example", "relay.example"),
            Ok(())
        );
        assert_eq!(
            check_relay_name("wss://relay.example", "Relay.Example:443"),
            Ok(())
        );
        assert_eq!(
            check_relay_name("ws://127.0.0.1:8080/", "127.0.0.1:8080"),
            Ok(())
        );
        // Another relay's challenge, forwarded.
        assert_eq!(
            check_relay_name("wss://evil.example", "relay.example"),
            Err(RelayNameError::OtherRelay {
                named: "relay.example".into(),
                dialed: "evil.example".into()
            })
        );
        // The same host on another port is another relay.
        assert!(matches!(
            check_relay_name("ws://127.0.0.1:8080", "127.0.0.1:8081"),
            Err(RelayNameError::OtherRelay { .. })
        ));
        // Names that would bend the URL, or are not names at all.
        for bad in [
            "",
            "relay.example/x",
            "user@relay.example",
            "a b",
            "relay.example#",
        ] {
            assert_eq!(
                check_relay_name("wss://relay.example", bad),
                Err(RelayNameError::Malformed(bad.into())),
                "{bad:?}"
            );
        }
        assert!(matches!(
            check_relay_name("relay.example", "relay.example"),
            Err(RelayNameError::BadUrl(_))
        ));
    }
}
