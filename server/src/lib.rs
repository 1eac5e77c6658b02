//! # atmosphere-server
//!
//! The native side of Atmosphere, shipped as one binary, `atmosphere`:
//!
//! - [`serve`]: the host (axum): web UI, invite API, admin auth, mesh WebSocket;
//! - [`session`]: the mesh-session handler every member socket (direct or relayed) goes through;
//! - [`store`]: SQLite persistence (mesh identity, invites, devices);
//! - [`discovery`]: background network discovery (local IPs, STUN, NAT/CGNAT flags);
//! - [`relay`]: the relay server (`atmosphere relay`); the host's link to it is
//!   [`serve::relay_link`];
//! - [`dial`]: the one way to open a client `ws://`/`wss://` socket (host link, `join`,
//!   `netcheck`), trusting `ATMOSPHERE_RELAY_CA`;
//! - CLI shells: [`join`], [`token_cmd`], [`inspect`], [`netcheck`], dispatched by [`cli`];
//! - shared plumbing: [`http`] (the accept loop with header deadlines and optional TLS),
//!   [`limits`] (per-IP connection caps), [`ws`] (one socket shape for the session handler).
//!
//! Protocol, link and policy logic live in `atmosphere-shared`; this crate is the I/O shell.

pub mod cli;
pub mod dial;
pub mod discovery;
pub mod http;
pub mod inspect;
pub mod join;
pub mod limits;
pub mod netcheck;
pub mod relay;
pub mod serve;
pub mod session;
pub mod store;
pub mod token_cmd;
pub mod ws;
