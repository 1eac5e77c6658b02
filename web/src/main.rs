//! Entry point of the Atmosphere web app (built by trunk into `dist/`, served by
//! `atmosphere serve`).

mod api;
mod app;
mod host_panel;
mod join_page;
mod qr;
mod storage;
mod ws;

fn main() {
    leptos::mount::mount_to_body(app::App);
}
