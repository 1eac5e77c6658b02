//! # atmosphere-server
//!
//! The native side of Atmosphere, shipped as one binary, `atmosphere`:
//!
//! - [`cli`]: the command line (`serve`, `relay`, `token`, `devices`, `join`,
//!   `invite inspect`, `netcheck`) and logging setup;
//! - [`serve`]: the host (axum): web UI, invite API, admin auth, mesh WebSocket;
//! - [`session`]: one member session, direct or relayed: the handshake and the live loop;
//! - [`mesh_socket`]: a member socket before its Noise handshake (plaintext refusals only)
//!   and after it (every message sealed in one binary frame);
//! - [`hub`]: the mesh's live state: presence table, fan-out to members, kicks, the event
//!   feed of `/api/events`;
//! - [`host_metrics`]: the host's counters behind `GET /metrics`;
//! - [`limits`]: per-source limits: live connections per IP (host and relay) and the join
//!   rate limit on failed credentials;
//! - [`store`]: SQLite persistence (mesh identity, invites, devices);
//! - [`data_dir`]: where the data dir is, its file names, private (0700/0600) files, the
//!   check that an existing one is the user's alone;
//! - [`secret`]: random ids and secrets, SHA-256 of secrets, constant-time comparison;
//! - [`clock`]: Unix seconds and RFC 3339 text;
//! - [`printable`]: text other people chose (names, messages, reasons), escaped for
//!   terminals and log lines;
//! - [`discovery`]: background network discovery (local IPs, STUN, NAT/CGNAT flags);
//! - [`rtc`]: the direct path: WebRTC DataChannels over str0m on the host's UDP socket
//!   (answerer) and in the native `join` (offerer), and the host's UDP NAT check;
//! - [`relay`]: the relay server (`atmosphere relay`); the host's link to it is
//!   [`serve::relay_link`];
//! - [`dial`]: the one way to open a client `ws://`/`wss://` socket (host link, `join`,
//!   `netcheck`), trusting `ATMOSPHERE_RELAY_CA`;
//! - [`http`]: the HTTP/1 accept loop (plain or TLS, header deadline) under the host and the
//!   relay;
//! - [`web_bundle`]: where the built web app is (`--web-dir`, `./dist`, the workspace's
//!   `dist/`), for the host and the relay;
//! - [`ws`]: one WebSocket frame type over axum's and tungstenite's sockets, and the close
//!   codes;
//! - [`admin_client`]: the admin API as the CLI calls it (`--data-dir`, `--server`, the
//!   admin secret, errors), for `token` and `devices`;
//! - CLI shells: [`join`], [`token_cmd`], [`devices_cmd`], [`inspect`], [`netcheck`],
//!   dispatched by [`cli`].
//!
//! Protocol, link and policy logic live in `atmosphere-shared`; this crate is the I/O shell.

pub mod admin_client;
pub mod cli;
pub mod clock;
pub mod data_dir;
pub mod devices_cmd;
pub mod dial;
pub mod discovery;
pub mod host_metrics;
pub mod http;
pub mod hub;
pub mod inspect;
pub mod join;
pub mod limits;
pub mod mesh_socket;
pub mod netcheck;
pub mod port_mapping;
pub mod printable;
pub mod relay;
pub mod rtc;
pub mod secret;
pub mod serve;
pub mod session;
pub mod session_paths;
pub mod store;
pub mod token_cmd;
pub mod web_bundle;
pub mod ws;
