//! # atmosphere-server
//!
//! The native side of Atmosphere, shipped as one binary, `atmosphere`:
//!
//! - [`serve`]: the host (axum): web UI, invite API, admin auth, mesh WebSocket;
//! - [`session`]: the mesh-session handler every member socket (direct or relayed) goes through;
//! - [`store`]: SQLite persistence (mesh identity, invites, devices);
//! - [`discovery`]: background network discovery (local IPs, STUN, NAT/CGNAT flags);
//! - [`relay`]: the relay server and the host's control link to it;
//! - CLI shells: [`join`], [`token_cmd`], [`inspect`], [`netcheck`].
//!
//! Protocol, link and policy logic live in `atmosphere-shared`; this crate is the I/O shell.

pub mod cli;
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
