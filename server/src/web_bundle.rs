//! The built web app (trunk's `dist/`) as both the host and the relay find it. One
//! resolution rule ([`resolve_web_dir`]), so `serve` and `relay` pick the same bundle; each
//! serves it its own way (the host: its UI with an SPA fallback, `serve::web`; the relay:
//! only `/join` and the bundle's files, `relay::web`).
//!
//! The bundle is not embedded in the binary: it is built by trunk, a separate tool, and a
//! binary that carried it would need a web build before every `cargo build`. A deployment
//! ships `dist/` next to the binary or names it with `--web-dir`.

use axum::http::{header, HeaderMap, HeaderValue};
use std::path::{Path, PathBuf};

/// The headers every page and answer of ours carries, host and relay alike: no sniffing, no
/// referrer (the invite is in the fragment, which browsers never send, but the page has no
/// reason to name itself to anyone), no framing.
pub fn insert_security_headers(h: &mut HeaderMap) {
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
}

/// Picks the web app directory: `flag` (`--web-dir`), else `./dist`, else `dist/` at the
/// workspace root the binary was built in (`target/<profile>/atmosphere` → `../../dist`).
/// Returns `None` when no candidate holds an `index.html`.
pub fn resolve_web_dir(flag: Option<&Path>) -> Option<PathBuf> {
    if let Some(p) = flag {
        return p.join("index.html").is_file().then(|| p.to_path_buf());
    }
    let mut candidates = vec![PathBuf::from("dist")];
    if let Ok(exe) = std::env::current_exe() {
        if let Some(root) = exe
            .parent()
            .and_then(|p| p.parent())
            .and_then(|p| p.parent())
        {
            candidates.push(root.join("dist"));
        }
    }
    candidates
        .into_iter()
        .find(|p| p.join("index.html").is_file())
}

/// Logs which bundle `who` (`"host"`, `"relay"`) serves, or why it serves none.
pub fn log_choice(who: &str, found: Option<&Path>, flag: Option<&Path>) {
    match (found, flag) {
        (None, Some(d)) => tracing::warn!(
            "--web-dir {} has no index.html; the {who} serves a page that explains how to build the web app",
            d.display()
        ),
        (None, None) => tracing::warn!(
            "no web app build found (run `trunk build --release`); the {who} serves a page that explains how to build it"
        ),
        (Some(d), _) => tracing::info!(dir = %d.display(), "the {who} serves the web app"),
    }
}
