//! Top-level view: a plain `location.pathname` switch between the host's JoinPanel (`/`)
//! and the Join page (`/join`). No router crate: two views do not need one.

use crate::host_panel::HostPanel;
use crate::join_page::JoinPage;
use leptos::prelude::*;

/// True for the Join page's paths (`/join`, `/join/`, `/join.html`).
pub fn is_join_path(path: &str) -> bool {
    let p = path.trim_end_matches('/');
    p == "/join" || p == "/join.html"
}

/// The whole app.
#[component]
pub fn App() -> impl IntoView {
    let path = web_sys::window()
        .and_then(|w| w.location().pathname().ok())
        .unwrap_or_default();
    if is_join_path(&path) {
        view! { <JoinPage/> }.into_any()
    } else {
        view! { <HostPanel/> }.into_any()
    }
}
