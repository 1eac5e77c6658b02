//! Entry point of the Atmosphere web app (built by trunk into `dist/`, served by
//! `atmosphere serve`). Every protocol decision comes from `atmosphere-shared`; these
//! modules are the browser shell around it:
//!
//! - `app`: picks the view from `location.pathname` (`/` host view, `/join` Join page);
//! - `host_panel`: the host view: mint an invite and show its QR code, connectivity,
//!   invites and devices (with *Remove*), live through `GET /api/events`;
//! - `join_page`: the Join page: decode the link, show each path's progress, keep the
//!   credential, then the mesh (members, messages);
//! - `ws`: the browser driver of the shared racing policy and handshake: DOM `WebSocket`s,
//!   timers, and the encrypted session;
//! - `paths`: the session's paths after joining: the relay WebSocket as the standby and the
//!   direct WebRTC path, driven by the shared upgrade policy;
//! - `rtc`: the `RTCPeerConnection` and its DataChannel (the direct path's I/O);
//! - `random`: 32-byte secrets from `crypto.getRandomValues`;
//! - `storage`: the device credential in `localStorage`, the tab's mesh in `sessionStorage`;
//! - `api`: a `fetch` wrapper with deadlines for the host's HTTP API;
//! - `qr`: the QR code as inline SVG.

mod api;
mod app;
mod host_panel;
mod join_page;
mod paths;
mod qr;
mod random;
mod rtc;
mod storage;
mod ws;

fn main() {
    leptos::mount::mount_to_body(app::App);
}
