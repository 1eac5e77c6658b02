//! # atmosphere-shared
//!
//! The pure, runtime-free core of Atmosphere, used by the native host and CLI (`server/`)
//! and by the browser app (`web/`). It owns:
//!
//! - [`token`]: the invite token format (`ATM-…`, ≥128 bits, typing-tolerant parsing);
//! - [`link`]: the invite link codec (v2, v1 and the web `join` form);
//! - [`api`]: the JSON shapes of the host's HTTP API (invite answer, network snapshot, mesh
//!   view, the error body, the events of `/api/events`);
//! - [`mesh_id`]: the self-certifying mesh id derived from the host's Ed25519 public key;
//! - [`path`]: the path kinds (`local`, `public`, `punched`, `relay`) and their preference order;
//! - [`wire`]: the mesh message table (inside the encrypted channel), the `joined` answer
//!   and presence pages;
//! - [`credential`]: the device credential a member stores to rejoin (CLI file, browser record);
//! - [`racing`]: the fallback/racing policy as a sans-IO state machine;
//! - [`handshake`]: the mesh handshake (Noise XX: members authenticate the host by its mesh
//!   key before sending any credential);
//! - [`channel`]: the end-to-end encrypted channel after it: numbered, acknowledged frames
//!   (in-order delivery, duplicates dropped, bounded reorder and resend buffers) so a session
//!   can move between paths;
//! - [`upgrade`]: the upgrade and roaming policy (relay → a direct WebRTC path and back) as
//!   a sans-IO state machine, the direct-path classifier and the NAT descriptions;
//! - [`join_event`]: every JSON line `atmosphere join --json` prints;
//! - [`relay_proto`]: the relay's control protocol: messages, the registration handshake
//!   (`sign` on the host, `verify` on the relay) and the close codes;
//! - [`netcheck`]: the report `atmosphere netcheck --json` prints (discovery plus relay check);
//! - [`backoff`]: capped exponential reconnect backoff with caller-supplied jitter;
//! - `web_url` (internal): the WHATWG URL parsing the link codec needs, without the `url`
//!   crate's IDNA tables (about 45 KB of the gzipped web bundle).
//!
//! Every wire and API shape here is documented with examples in `docs/PROTOCOL.md`, and a
//! test (`shared/tests/protocol_doc.rs`) parses each example with these types.
//!
//! Nothing here performs I/O, reads a clock, draws randomness or spawns tasks (the shells
//! pass in the time and random bytes), so the same code runs on tokio and in
//! `wasm32-unknown-unknown`, and is tested with virtual time and fixed randomness.

pub mod api;
pub mod backoff;
pub mod channel;
pub mod credential;
pub mod dial_back;
pub mod handshake;
pub mod join_event;
pub mod link;
pub mod mesh_id;
pub mod netcheck;
pub mod path;
pub mod racing;
pub mod relay_proto;
pub mod token;
pub mod upgrade;
mod web_url;
pub mod wire;

pub use link::{Endpoints, Invite, LinkError};
pub use path::PathKind;
pub use token::{Token, TokenError};
