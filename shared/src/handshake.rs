//! The mesh handshake: one sans-IO Noise session per member session, on every path (local,
//! public, relay); its result is the [`SecureChannel`] of [`crate::channel`]. A member checks that it talks to the host that holds the
//! mesh key *before* it sends any credential, and everything after the handshake is
//! encrypted end to end, so a relay, an on-path attacker or the endpoint of a crafted link
//! learns nothing usable and cannot answer `joined`.
//!
//! Like [`racing`](crate::racing), nothing here touches a socket, a clock or an entropy
//! source: the shells (the host's session handler, the native `join`, the browser) move the
//! bytes, keep the deadline (the whole handshake within
//! [`HANDSHAKE_TIMEOUT_MS`](crate::wire::HANDSHAKE_TIMEOUT_MS), 10 s, as today) and hand
//! in 32 fresh random bytes per handshake ([`Entropy`]). All cryptography is `snow` (Noise),
//! `ed25519-dalek` and `sha2`; nothing is hand-rolled.
//!
//! ## The protocol
//!
//! Noise `Noise_XX_25519_ChaChaPoly_BLAKE2s` ([`NOISE_PARAMS`]), prologue
//! `"atmosphere-mesh-v1"` ([`PROLOGUE`]; a later incompatible version changes it, and a
//! mismatch fails the first encrypted message). The client (member) is the initiator. Every
//! handshake message and every transport message is one WebSocket **binary** frame.
//!
//! | # | direction | Noise tokens | payload (encrypted except in 1) | size |
//! | --- | --- | --- | --- | --- |
//! | 1 | client → host | `e` | empty | exactly 32 bytes |
//! | 2 | host → client | `e, ee, s, es` | the host certificate (96 bytes) | exactly 192 bytes |
//! | 3 | client → host | `s, se` | the join request (JSON, ≤ [`MAX_JOIN_REQUEST_BYTES`]) | 64 + the request's length (≤ 4160) |
//! | then | both | transport ([`crate::channel`]: `seq ‖ ciphertext(ack ‖ body)`) | one mesh JSON message (`ServerMsg`, `ClientMsg`) | 32 to 65535 bytes |
//!
//! **The host certificate** (message 2) is `ed25519_public (32) ‖ signature (64)`: the host's
//! Ed25519 public key (the one its mesh id is derived from, see [`crate::mesh_id`]) and its
//! Ed25519 signature over `"atmosphere-noise-static-v1" ‖ 0x00 ‖ x25519_static_public`
//! ([`certificate_message`]). It says "this X25519 key speaks for mesh M". It is the same for
//! every handshake (the host signs once at startup), and it cannot be replayed: in XX the
//! host's static key is authenticated by the `es` Diffie-Hellman of this very handshake, so
//! only whoever holds the X25519 secret the certificate names can produce a message 2 that
//! decrypts (the libp2p Noise handshake binds its identity key the same way).
//!
//! **The host's X25519 static key** is derived from its Ed25519 secret key, so the host
//! stores no new key: `x25519_secret = SHA-256("atmosphere-noise-static-key-v1" ‖ 0x00 ‖
//! ed25519_secret)` ([`HostKeys::from_signing_key`]). The 32-byte Ed25519 secret is uniformly
//! random, so one SHA-256 under a domain string is a sound key derivation; the two keys are
//! never used for the same purpose.
//!
//! **The join request** (message 3) is the JSON [`JoinRequest`]: the path the socket was
//! opened on and one of three proofs ([`JoinProof`]): an invite token and the device's
//! description (first join); a device id (rejoin: the device is authenticated by its Noise
//! static key, which the host stored at its first join, so the device's secret never
//! crosses the network); or a device id and the bearer `device_key` of earlier versions
//! (legacy rejoin, checked against the stored hash as before).
//!
//! **The device's static key** is an X25519 key pair the client generates at its first join
//! ([`StaticSecret::from_bytes`] with 32 random bytes) and keeps with its credential; the host
//! learns its public half from message 3 ([`HostJoin::device_key`]).
//!
//! After message 3 the host answers through the channel with the existing `joined` or
//! `error` ([`crate::wire::ServerMsg`]), then the live session runs as before, each JSON
//! message sealed into one numbered binary frame ([`crate::channel`]).
//!
//! ## What each side checks
//!
//! - Host, message 1: exactly 32 bytes. Message 3: size, the AEAD tags (a client that does
//!   not hold the static key it sends cannot produce it), then the JSON shape. Then the
//!   shell checks the credential against its database: the invite, or that the device id's
//!   stored static key equals [`HostJoin::device_key`] (or the legacy key's hash).
//! - Client, message 2: exactly 192 bytes; the AEAD tags (proof that the sender holds the
//!   X25519 static key in the message); the certificate's signature over exactly that key;
//!   the mesh id of the certificate's Ed25519 key against [`HostExpectation`]. Only if all
//!   pass is message 3 written: a host that fails any check never sees the credential.
//!
//! ## What others learn
//!
//! - A passive relay or network observer sees two ephemeral keys, the host's static X25519
//!   key and certificate (encrypted under `ee`, so only the client learns them), and
//!   ciphertext: no token, no device id, no device key, no message text.
//! - An active attacker on the path, or the endpoint named by a crafted link, cannot get a
//!   client past message 2 without the mesh's Ed25519 key: with its own Ed25519 key the mesh
//!   id is wrong ([`HandshakeError::HostNotAuthenticated`]); with a real host's certificate
//!   but its own static key the signature does not cover its key
//!   ([`HandshakeError::BadCertificate`]); with the real host's static public key but not
//!   its secret the message does not decrypt ([`HandshakeError::Decrypt`]). It never
//!   receives message 3 and cannot answer `joined`.
//! - Forwarding messages unchanged to the real host only connects the client to the real
//!   host; the attacker cannot read or alter the channel (any change fails
//!   [`SecureChannel::open`](crate::channel::SecureChannel::open)).
//! - Before the channel exists, a client may still receive plaintext text frames (the
//!   relay's `host_offline`, `rate_limited`, `timeout`). They are unauthenticated: a shell
//!   must treat them as not final whatever their code, and must never forget a stored
//!   credential because of one. Only an `error` opened from the [`SecureChannel`] is the
//!   host's word.
//!
//! A device that registers a weak (small-order) X25519 key only makes itself impersonable,
//! which it could do anyway by giving its secret away; honest clients derive their key from
//! 32 random bytes, so the host does not filter such keys.
//!
//! ## Randomness
//!
//! Each side needs one fresh ephemeral key per handshake. `snow` would draw it from
//! `getrandom`; instead the shell passes 32 bytes from its platform's CSPRNG ([`Entropy`]:
//! `rand::rngs::OsRng` natively, `crypto.getRandomValues` in the browser), and `snow`
//! gets exactly those bytes once (a second draw is an error, never a repeat). That keeps this
//! crate free of I/O like the rest of `shared` (no `getrandom` backend to configure for
//! `wasm32-unknown-unknown`) and makes the tests deterministic. Reusing [`Entropy`] across
//! handshakes would reuse an ephemeral key: the type is neither `Clone` nor `Copy`.
//!
//! ## Driving it
//!
//! ```
//! use atmosphere_shared::handshake::*;
//! use atmosphere_shared::wire::DeviceInfo;
//! use atmosphere_shared::PathKind;
//!
//! // Host: once at startup, from its Ed25519 mesh key.
//! let mesh_key = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
//! let keys = HostKeys::from_signing_key(&mesh_key);
//!
//! // Client: what the invite says (its mesh id), what it asks, its new device key.
//! let expect = HostExpectation::MeshId(keys.mesh_id().to_string());
//! let request = JoinRequest {
//!     path: PathKind::Local,
//!     proof: JoinProof::Invite {
//!         token: "ATM-HAEQDDBYEJ9FCA91ABJEK9GC76VZTCRG".into(),
//!         device: DeviceInfo { name: "Pixel 8".into(), platform: "browser".into() },
//!     },
//! };
//! let device = StaticSecret::from_bytes([9; 32]); // 32 random bytes in real life
//! let (client, msg1) = ClientHandshake::start(expect, &request, &device, Entropy::new([1; 32])).unwrap();
//!
//! let host = HostHandshake::new(&keys, Entropy::new([2; 32]));
//! let (host, msg2) = host.read_client_hello(&msg1).unwrap();
//! let done = client.read_host_hello(&msg2).unwrap(); // the host is authenticated here
//! assert_eq!(done.host.mesh_id, keys.mesh_id());
//! let join = host.read_join(&done.message).unwrap();
//! assert_eq!(join.request.unwrap(), request); // the shell checks it against its database
//! assert_eq!(join.device_key, device.public_key());
//!
//! let (mut host_ch, mut client_ch) = (join.channel, done.channel);
//! let frame = host_ch.seal(br#"{"type":"joined","...":"..."}"#).unwrap();
//! assert_eq!(client_ch.open(&frame).unwrap().unwrap(), br#"{"type":"joined","...":"..."}"#);
//! ```

use crate::channel::SecureChannel;
use crate::mesh_id::mesh_id_from_public_key;
use crate::path::PathKind;
use crate::wire::{DeviceInfo, MAX_FRAME_BYTES};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use snow::params::{CipherChoice, DHChoice, HashChoice};
use snow::resolvers::{CryptoResolver, DefaultResolver};
use snow::types::{Cipher, Dh, Hash, Random};
use snow::{Builder, HandshakeState};
use std::cell::Cell;
use std::fmt;

/// The Noise protocol name of the mesh handshake.
pub const NOISE_PARAMS: &str = "Noise_XX_25519_ChaChaPoly_BLAKE2s";
/// The Noise prologue: binds the handshake to this protocol and version.
pub const PROLOGUE: &[u8] = b"atmosphere-mesh-v1";
/// Domain string of the host certificate's signed message.
pub const CERTIFICATE_CONTEXT: &[u8] = b"atmosphere-noise-static-v1";
/// Domain string of the derivation of the host's X25519 static key.
pub const STATIC_KEY_CONTEXT: &[u8] = b"atmosphere-noise-static-key-v1";

/// Largest Noise message (handshake or transport), fixed by the Noise specification.
pub const MAX_NOISE_MESSAGE_BYTES: usize = 65_535;
/// Bytes an AEAD tag adds to every encrypted payload.
pub const TAG_BYTES: usize = 16;
/// Largest join request (message 3 payload) a host reads. A real one is a few hundred bytes.
pub const MAX_JOIN_REQUEST_BYTES: usize = 4096;

/// X25519 key length.
const KEY_BYTES: usize = 32;
/// The host certificate: Ed25519 public key ‖ signature.
pub const CERTIFICATE_BYTES: usize = 32 + 64;
/// Message 1: the client's ephemeral key, no payload.
pub const CLIENT_HELLO_BYTES: usize = KEY_BYTES;
/// Message 2: ephemeral key, encrypted static key, encrypted certificate.
pub const HOST_HELLO_BYTES: usize =
    KEY_BYTES + (KEY_BYTES + TAG_BYTES) + (CERTIFICATE_BYTES + TAG_BYTES);
/// Message 3 without its payload: encrypted static key and the payload's tag.
const JOIN_OVERHEAD_BYTES: usize = (KEY_BYTES + TAG_BYTES) + TAG_BYTES;

// The transport limit fits the WebSocket frame limit both sides already enforce.
const _: () = assert!(MAX_NOISE_MESSAGE_BYTES <= MAX_FRAME_BYTES);

/// The three handshake messages, for error reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Message 1, client → host: the client's ephemeral key.
    ClientHello,
    /// Message 2, host → client: the host's keys and certificate.
    HostHello,
    /// Message 3, client → host: the client's static key and join request.
    Join,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Step::ClientHello => "message 1 (client hello)",
            Step::HostHello => "message 2 (host hello)",
            Step::Join => "message 3 (join request)",
        })
    }
}

/// Why a handshake failed. Every error ends the handshake (the state is consumed); the
/// shell closes the socket.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    /// The message has the wrong size for its step: truncated, padded, or a different
    /// message than the one expected here (out of order).
    #[error("{step} must be {expected} bytes, got {got}")]
    Malformed {
        step: Step,
        expected: String,
        got: usize,
    },
    /// The message is larger than its step allows.
    #[error("{step} of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge { step: Step, len: usize, max: usize },
    /// An AEAD tag did not verify: the message was altered, belongs to another handshake,
    /// uses another prologue, or the sender does not hold the static key it sent.
    #[error("{step} did not decrypt: altered, from another handshake, or sent by a party without the key it claims")]
    Decrypt { step: Step },
    /// The host's certificate is not a valid signature over the static key of this
    /// handshake (wrong size, a weak or invalid Ed25519 key, a bad signature, or a
    /// certificate issued for another static key).
    #[error("the host's certificate is invalid: {reason}")]
    BadCertificate { reason: String },
    /// The host proved a mesh key, but not the expected one: the client sends nothing.
    #[error("the host is not the mesh {expected} ({source_of_expectation}); it proved mesh {got}")]
    HostNotAuthenticated {
        expected: String,
        got: String,
        /// Where the expectation came from: `"the invite"` or `"the pinned mesh"`.
        source_of_expectation: &'static str,
    },
    /// Message 3 decrypted but is not a join request (only the host reports this; it has
    /// a channel then and answers `bad_request` through it, see [`HostJoin::request`]).
    #[error("the join request is not valid: {reason}")]
    BadJoinRequest { reason: String },
    /// The shell's [`Entropy`] was rejected or `snow` failed internally. Not caused by the
    /// peer.
    #[error("the Noise library failed: {reason}")]
    Internal { reason: String },
}

/// 32 fresh bytes from the platform's CSPRNG, for one handshake's ephemeral key. Neither
/// `Clone` nor `Copy`: one [`Entropy`] is spent by one handshake.
pub struct Entropy([u8; 32]);

impl Entropy {
    /// Wraps 32 bytes that must come from a CSPRNG, fresh for this handshake
    /// (`rand::random::<[u8; 32]>()`, `getrandom::fill`, `crypto.getRandomValues`).
    pub fn new(bytes: [u8; 32]) -> Entropy {
        Entropy(bytes)
    }
}

impl fmt::Debug for Entropy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Entropy(<redacted>)")
    }
}

/// An X25519 static secret key: the host's (derived, [`HostKeys`]) or a device's (32
/// random bytes, kept with its credential).
#[derive(Clone, PartialEq, Eq)]
pub struct StaticSecret([u8; 32]);

impl StaticSecret {
    /// The key from its 32 bytes. Any 32 bytes are a valid X25519 secret (it is clamped
    /// when used); a device draws them from a CSPRNG once, at its first join.
    pub fn from_bytes(bytes: [u8; 32]) -> StaticSecret {
        StaticSecret(bytes)
    }

    /// The 32 bytes, to store with the device's credential.
    pub fn to_bytes(&self) -> [u8; 32] {
        self.0
    }

    /// The public half (X25519 of the base point), computed by `snow`'s own Curve25519.
    pub fn public_key(&self) -> StaticPublic {
        let builder = Builder::with_resolver(noise_params(), Box::new(Resolver::new(self.0)));
        match builder.generate_keypair() {
            Ok(kp) => {
                let mut public = [0u8; KEY_BYTES];
                public.copy_from_slice(&kp.public[..KEY_BYTES]);
                StaticPublic(public)
            }
            // The resolver hands out exactly these 32 bytes and snow's 25519 is built in;
            // this cannot fail.
            Err(e) => unreachable!("X25519 public key derivation failed: {e}"),
        }
    }
}

impl fmt::Debug for StaticSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("StaticSecret(<redacted>)")
    }
}

/// An X25519 static public key: how the host knows a device across sessions. Shown and
/// stored as URL-safe base64 without padding (43 characters), like device keys.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct StaticPublic(pub [u8; 32]);

impl fmt::Display for StaticPublic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&data_encoding::BASE64URL_NOPAD.encode(&self.0))
    }
}

impl fmt::Debug for StaticPublic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StaticPublic({self})")
    }
}

impl std::str::FromStr for StaticPublic {
    type Err = String;

    /// Parses the [`Display`](fmt::Display) form.
    fn from_str(s: &str) -> Result<StaticPublic, String> {
        let bytes = data_encoding::BASE64URL_NOPAD
            .decode(s.as_bytes())
            .map_err(|e| format!("not URL-safe base64: {e}"))?;
        <[u8; 32]>::try_from(bytes.as_slice())
            .map(StaticPublic)
            .map_err(|_| format!("a static key is 32 bytes, got {}", bytes.len()))
    }
}

/// The bytes the host certificate signs: `"atmosphere-noise-static-v1" ‖ 0x00 ‖ key`.
pub fn certificate_message(x25519_static_public: &[u8; 32]) -> Vec<u8> {
    let mut m = Vec::with_capacity(CERTIFICATE_CONTEXT.len() + 1 + KEY_BYTES);
    m.extend_from_slice(CERTIFICATE_CONTEXT);
    m.push(0);
    m.extend_from_slice(x25519_static_public);
    m
}

/// The host's X25519 static secret, derived from its Ed25519 secret key:
/// SHA-256(`"atmosphere-noise-static-key-v1"` ‖ 0x00 ‖ ed25519 secret).
pub fn derive_host_static(mesh_key: &SigningKey) -> StaticSecret {
    let mut h = Sha256::new();
    h.update(STATIC_KEY_CONTEXT);
    h.update([0u8]);
    h.update(mesh_key.to_bytes());
    StaticSecret(h.finalize().into())
}

/// What a host needs for every handshake: its X25519 static key (derived from the mesh
/// key) and the certificate binding it to the mesh. Built once at startup; cheap to share.
#[derive(Clone)]
pub struct HostKeys {
    static_secret: StaticSecret,
    static_public: StaticPublic,
    certificate: [u8; CERTIFICATE_BYTES],
    mesh_id: String,
}

impl HostKeys {
    /// The keys of the host whose mesh key is `mesh_key`: the derived static key
    /// ([`derive_host_static`]) and its certificate, signed once here.
    pub fn from_signing_key(mesh_key: &SigningKey) -> HostKeys {
        let static_secret = derive_host_static(mesh_key);
        let static_public = static_secret.public_key();
        let signature = mesh_key.sign(&certificate_message(&static_public.0));
        let verifying = mesh_key.verifying_key();
        HostKeys {
            certificate: certificate_bytes(&verifying, &signature),
            mesh_id: mesh_id_from_public_key(&verifying.to_bytes()),
            static_secret,
            static_public,
        }
    }

    /// The mesh id these keys prove.
    pub fn mesh_id(&self) -> &str {
        &self.mesh_id
    }

    /// The host's X25519 static public key.
    pub fn static_public(&self) -> StaticPublic {
        self.static_public
    }

    /// The certificate message 2 carries.
    pub fn certificate(&self) -> &[u8; CERTIFICATE_BYTES] {
        &self.certificate
    }
}

impl fmt::Debug for HostKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HostKeys")
            .field("mesh_id", &self.mesh_id)
            .field("static_public", &self.static_public)
            .finish_non_exhaustive()
    }
}

fn certificate_bytes(key: &VerifyingKey, signature: &Signature) -> [u8; CERTIFICATE_BYTES] {
    let mut c = [0u8; CERTIFICATE_BYTES];
    c[..32].copy_from_slice(key.as_bytes());
    c[32..].copy_from_slice(&signature.to_bytes());
    c
}

/// Checks a certificate against the static key the handshake authenticated; returns the
/// Ed25519 key it names.
fn verify_certificate(cert: &[u8], remote_static: &[u8]) -> Result<VerifyingKey, HandshakeError> {
    let bad = |reason: &str| HandshakeError::BadCertificate {
        reason: reason.to_string(),
    };
    let cert: &[u8; CERTIFICATE_BYTES] = cert.try_into().map_err(|_| {
        bad(&format!(
            "it is {} bytes, not {CERTIFICATE_BYTES}",
            cert.len()
        ))
    })?;
    let remote: &[u8; KEY_BYTES] = remote_static
        .try_into()
        .map_err(|_| bad("the handshake has no 32-byte static key"))?;
    let mut key_bytes = [0u8; 32];
    key_bytes.copy_from_slice(&cert[..32]);
    let key = VerifyingKey::from_bytes(&key_bytes)
        .map_err(|_| bad("its Ed25519 public key is not a valid point"))?;
    if key.is_weak() {
        return Err(bad("its Ed25519 public key is weak (small order)"));
    }
    let mut sig = [0u8; 64];
    sig.copy_from_slice(&cert[32..]);
    key.verify_strict(&certificate_message(remote), &Signature::from_bytes(&sig))
        .map_err(|_| bad("its signature does not cover this handshake's static key"))?;
    Ok(key)
}

/// Whom a client expects to answer, checked after message 2, before any credential leaves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostExpectation {
    /// The mesh id an invite names (its link parameter, or the relay URL `…/mesh/{id}`).
    MeshId(String),
    /// The mesh id this device pinned at its first join (a rejoin).
    Pinned { mesh_id: String },
    /// An old link that names no mesh: accept whichever mesh the host proves and report it
    /// ([`HostIdentity::first_use`]) so the shell pins it for every later rejoin.
    TrustOnFirstUse,
}

impl HostExpectation {
    /// Checks the proven mesh id; `Ok(first_use)`.
    fn check(&self, got: &str) -> Result<bool, HandshakeError> {
        let (expected, source) = match self {
            HostExpectation::TrustOnFirstUse => return Ok(true),
            HostExpectation::MeshId(id) => (id, "the invite"),
            HostExpectation::Pinned { mesh_id } => (mesh_id, "the pinned mesh"),
        };
        if expected.eq_ignore_ascii_case(got) {
            Ok(false)
        } else {
            Err(HandshakeError::HostNotAuthenticated {
                expected: expected.clone(),
                got: got.to_string(),
                source_of_expectation: source,
            })
        }
    }
}

/// The host a client authenticated in message 2.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostIdentity {
    /// The mesh id of the host's Ed25519 key (what a rejoin pins).
    pub mesh_id: String,
    /// The host's Ed25519 public key.
    pub public_key: [u8; 32],
    /// The host's X25519 static public key of this handshake.
    pub static_key: StaticPublic,
    /// True when the expectation was [`HostExpectation::TrustOnFirstUse`]: the shell should
    /// pin [`HostIdentity::mesh_id`] now.
    pub first_use: bool,
}

/// How a member proves it may join (the `"type"`-tagged part of a [`JoinRequest`]).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum JoinProof {
    /// First join through an invite: its token and the device's description. The host
    /// stores the device with the static key of this handshake.
    Invite { token: String, device: DeviceInfo },
    /// Rejoin of a device enrolled with a static key: the handshake already proved the key;
    /// the host checks it is the one stored for `device_id`.
    Device { device_id: String },
    /// Rejoin with the bearer key earlier versions handed out (checked against its hash).
    DeviceKey {
        device_id: String,
        device_key: String,
    },
}

/// Names the proof and the device, never the token or the key (they end up in logs).
impl fmt::Debug for JoinProof {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JoinProof::Invite { device, .. } => f
                .debug_struct("Invite")
                .field("token", &"<redacted>")
                .field("device", device)
                .finish(),
            JoinProof::Device { device_id } => f
                .debug_struct("Device")
                .field("device_id", device_id)
                .finish(),
            JoinProof::DeviceKey { device_id, .. } => f
                .debug_struct("DeviceKey")
                .field("device_id", device_id)
                .field("device_key", &"<redacted>")
                .finish(),
        }
    }
}

/// The payload of message 3: `{"type":…, <proof fields>, "path":…}`, e.g.
/// `{"type":"device","device_id":"f446faf7bb60225a","path":"relay"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinRequest {
    #[serde(flatten)]
    pub proof: JoinProof,
    /// The path the socket was opened on, as the client sees it (the host believes it for
    /// direct sockets only; a relayed socket's path is `relay`).
    pub path: PathKind,
}

impl JoinRequest {
    /// Parses a message 3 payload.
    pub fn parse(bytes: &[u8]) -> Result<JoinRequest, HandshakeError> {
        if bytes.len() > MAX_JOIN_REQUEST_BYTES {
            return Err(HandshakeError::TooLarge {
                step: Step::Join,
                len: bytes.len(),
                max: MAX_JOIN_REQUEST_BYTES,
            });
        }
        serde_json::from_slice(bytes).map_err(|e| {
            let mut reason = e.to_string();
            reason.truncate(200);
            HandshakeError::BadJoinRequest { reason }
        })
    }

    fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("JoinRequest always serialises")
    }
}

/// The client's side, between message 1 and message 2.
pub struct ClientHandshake {
    state: HandshakeState,
    expectation: HostExpectation,
    request: Vec<u8>,
}

/// A finished client handshake: the host it authenticated, message 3 to send, and the
/// channel for everything after (the host's `joined` or `error` comes through it).
pub struct ClientDone {
    pub host: HostIdentity,
    /// Message 3 (carries the encrypted join request): send it as one binary frame.
    pub message: Vec<u8>,
    pub channel: SecureChannel,
}

impl ClientHandshake {
    /// Starts a handshake that will send `request`, proving `device` as this device's
    /// static key, if the host meets `expectation`. Returns message 1 to send.
    pub fn start(
        expectation: HostExpectation,
        request: &JoinRequest,
        device: &StaticSecret,
        entropy: Entropy,
    ) -> Result<(ClientHandshake, Vec<u8>), HandshakeError> {
        let request = request.to_bytes();
        if request.len() > MAX_JOIN_REQUEST_BYTES {
            return Err(HandshakeError::TooLarge {
                step: Step::Join,
                len: request.len(),
                max: MAX_JOIN_REQUEST_BYTES,
            });
        }
        let mut state = builder(entropy)
            .local_private_key(&device.0)
            .and_then(|b| b.build_initiator())
            .map_err(internal)?;
        let msg1 = write(&mut state, &[], CLIENT_HELLO_BYTES)?;
        Ok((
            ClientHandshake {
                state,
                expectation,
                request,
            },
            msg1,
        ))
    }

    /// Reads message 2, authenticates the host (certificate, then expectation) and only
    /// then writes message 3. On any error nothing is written and the handshake is over.
    pub fn read_host_hello(mut self, msg2: &[u8]) -> Result<ClientDone, HandshakeError> {
        expect_len(Step::HostHello, msg2, HOST_HELLO_BYTES, HOST_HELLO_BYTES)?;
        let cert = read(&mut self.state, Step::HostHello, msg2)?;
        let remote = self.state.get_remote_static().unwrap_or_default();
        let key = verify_certificate(&cert, remote)?;
        let mut static_key = [0u8; KEY_BYTES];
        static_key.copy_from_slice(remote);
        let mesh_id = mesh_id_from_public_key(key.as_bytes());
        let first_use = self.expectation.check(&mesh_id)?;
        let message = write(
            &mut self.state,
            &self.request,
            JOIN_OVERHEAD_BYTES + self.request.len(),
        )?;
        let channel = SecureChannel::from_handshake(self.state).map_err(internal)?;
        Ok(ClientDone {
            host: HostIdentity {
                mesh_id,
                public_key: key.to_bytes(),
                static_key: StaticPublic(static_key),
                first_use,
            },
            message,
            channel,
        })
    }
}

/// The host's side, before message 1.
pub struct HostHandshake {
    state: Result<HandshakeState, HandshakeError>,
    certificate: [u8; CERTIFICATE_BYTES],
}

/// The host's side between message 2 and message 3.
pub struct HostAwaitingJoin {
    state: HandshakeState,
}

/// A finished host handshake: who the client is (its static key), what it asks, and the
/// channel to answer through.
pub struct HostJoin {
    /// The join request, or why message 3's payload is not one: answer `bad_request`
    /// through [`HostJoin::channel`] then.
    pub request: Result<JoinRequest, HandshakeError>,
    /// The device's X25519 static key, proven by this handshake: store it at a first join;
    /// on a [`JoinProof::Device`] rejoin, compare it with the stored one.
    pub device_key: StaticPublic,
    pub channel: SecureChannel,
}

impl HostHandshake {
    /// A handshake for one member socket.
    pub fn new(keys: &HostKeys, entropy: Entropy) -> HostHandshake {
        let state = builder(entropy)
            .local_private_key(&keys.static_secret.0)
            .and_then(|b| b.build_responder())
            .map_err(internal);
        HostHandshake {
            state,
            certificate: keys.certificate,
        }
    }

    /// Reads message 1 and returns message 2 (the host's keys and certificate) to send.
    pub fn read_client_hello(
        self,
        msg1: &[u8],
    ) -> Result<(HostAwaitingJoin, Vec<u8>), HandshakeError> {
        let mut state = self.state?;
        expect_len(
            Step::ClientHello,
            msg1,
            CLIENT_HELLO_BYTES,
            CLIENT_HELLO_BYTES,
        )?;
        read(&mut state, Step::ClientHello, msg1)?;
        let msg2 = write(&mut state, &self.certificate, HOST_HELLO_BYTES)?;
        Ok((HostAwaitingJoin { state }, msg2))
    }
}

impl HostAwaitingJoin {
    /// Reads message 3: the client's static key and its join request. Returns the channel
    /// even when the request does not parse, so the host can say why (`bad_request`).
    pub fn read_join(mut self, msg3: &[u8]) -> Result<HostJoin, HandshakeError> {
        expect_len(
            Step::Join,
            msg3,
            JOIN_OVERHEAD_BYTES,
            JOIN_OVERHEAD_BYTES + MAX_JOIN_REQUEST_BYTES,
        )?;
        let payload = read(&mut self.state, Step::Join, msg3)?;
        let remote = self.state.get_remote_static().unwrap_or_default();
        let device_key = <[u8; KEY_BYTES]>::try_from(remote)
            .map(StaticPublic)
            .map_err(|_| internal("no client static key after message 3"))?;
        Ok(HostJoin {
            request: JoinRequest::parse(&payload),
            device_key,
            channel: SecureChannel::from_handshake(self.state).map_err(internal)?,
        })
    }
}

fn noise_params() -> snow::params::NoiseParams {
    NOISE_PARAMS
        .parse()
        .expect("NOISE_PARAMS is a valid Noise protocol name")
}

fn builder(entropy: Entropy) -> Builder<'static> {
    Builder::with_resolver(noise_params(), Box::new(Resolver::new(entropy.0)))
        .prologue(PROLOGUE)
        .expect("a fresh builder takes a prologue")
}

fn internal(e: impl fmt::Display) -> HandshakeError {
    HandshakeError::Internal {
        reason: e.to_string(),
    }
}

/// Checks a handshake message's size before `snow` sees it: over the Noise limit, or over
/// a variable-size step's limit, is "too large"; any other wrong size is "malformed" (a
/// truncated or padded message, or another step's message: out of order).
fn expect_len(step: Step, msg: &[u8], min: usize, max: usize) -> Result<(), HandshakeError> {
    let len = msg.len();
    if len > MAX_NOISE_MESSAGE_BYTES || (min != max && len > max) {
        return Err(HandshakeError::TooLarge { step, len, max });
    }
    if len < min || len > max {
        return Err(malformed(step, min, max, len));
    }
    Ok(())
}

fn malformed(step: Step, min: usize, max: usize, got: usize) -> HandshakeError {
    let expected = if min == max {
        format!("exactly {min}")
    } else {
        format!("{min} to {max}")
    };
    HandshakeError::Malformed {
        step,
        expected,
        got,
    }
}

/// Writes a handshake message of `len` bytes. (`snow` wants room for a tag even where the
/// payload is not encrypted yet, as in message 1.)
fn write(
    state: &mut HandshakeState,
    payload: &[u8],
    len: usize,
) -> Result<Vec<u8>, HandshakeError> {
    let mut out = vec![0u8; len + TAG_BYTES];
    let n = state.write_message(payload, &mut out).map_err(internal)?;
    out.truncate(n);
    Ok(out)
}

/// Reads a handshake message (size already checked); returns its payload.
fn read(state: &mut HandshakeState, step: Step, msg: &[u8]) -> Result<Vec<u8>, HandshakeError> {
    let mut payload = vec![0u8; msg.len()];
    match state.read_message(msg, &mut payload) {
        Ok(n) => {
            payload.truncate(n);
            Ok(payload)
        }
        Err(snow::Error::Decrypt) => Err(HandshakeError::Decrypt { step }),
        Err(snow::Error::Input) => Err(HandshakeError::Malformed {
            step,
            expected: "a valid Noise message".into(),
            got: msg.len(),
        }),
        Err(e) => Err(internal(e)),
    }
}

/// `snow`'s default primitives, with the shell's [`Entropy`] as the only randomness: the
/// first 32-byte draw gets it, any other draw fails (never repeats it).
struct Resolver {
    entropy: Cell<Option<[u8; 32]>>,
}

impl Resolver {
    fn new(bytes: [u8; 32]) -> Resolver {
        Resolver {
            entropy: Cell::new(Some(bytes)),
        }
    }
}

impl CryptoResolver for Resolver {
    fn resolve_rng(&self) -> Option<Box<dyn Random>> {
        Some(Box::new(OneDraw(self.entropy.take())))
    }

    fn resolve_dh(&self, choice: &DHChoice) -> Option<Box<dyn Dh>> {
        DefaultResolver.resolve_dh(choice)
    }

    fn resolve_hash(&self, choice: &HashChoice) -> Option<Box<dyn Hash>> {
        // Only the hash of NOISE_PARAMS: naming it here lets the linker drop BLAKE2b, which
        // `snow`'s blake2 feature also brings (smaller web bundle).
        match choice {
            HashChoice::Blake2s => DefaultResolver.resolve_hash(&HashChoice::Blake2s),
            _ => None,
        }
    }

    fn resolve_cipher(&self, choice: &CipherChoice) -> Option<Box<dyn Cipher>> {
        DefaultResolver.resolve_cipher(choice)
    }
}

/// A random source that yields the shell's 32 bytes exactly once.
struct OneDraw(Option<[u8; 32]>);

impl Random for OneDraw {
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), snow::Error> {
        match self.0.take() {
            Some(bytes) if dest.len() == bytes.len() => {
                dest.copy_from_slice(&bytes);
                Ok(())
            }
            _ => Err(snow::Error::Rng),
        }
    }
}

#[cfg(test)]
mod tests;
