//! The QR link as a phone's browser opens it, on the simulated network of `docs/NETNS.md`:
//! headless Chromium runs *inside* the phone's namespace (chromedriver too; the test talks
//! to it through a connector that dials inside the namespace) and opens the invite's
//! `join_url` exactly as minted.
//!
//! The relay has TLS with a certificate this test makes; only the test's Chromium is told to
//! trust its key (`--ignore-certificate-errors-spki-list`), the host through
//! `ATMOSPHERE_RELAY_CA`. So `join_url` is `https://203.0.113.20:8080/join#…`, a page every
//! phone can load; from an https page the browser refuses `ws://`, and the first connection
//! goes over the relay.
//!
//! Rows (each a [`Row`]; later rows add port forwards and NATs with the builder's options):
//!
//! | phone | network | ends |
//! | --- | --- | --- |
//! | cellular phone | host behind its home NAT, no forward | `relay` |
//! | phone on the home Wi-Fi | same LAN as the host | `relay` (the WebRTC upgrade will make it `local`) |
//!
//! Needs root, Chromium, chromedriver and the web bundle (`trunk build --release`); fails
//! with a message saying what is missing, never skips.

use atmosphere_shared::link::Invite as Link;
use atmosphere_tests::browser::{web_dist, Screen};
use atmosphere_tests::netns::*;
use std::time::Duration;

/// How long the page may take to show a state.
const UI: Duration = Duration::from_secs(30);

/// One row of the table: who opens the link, on which network, and the path it ends on.
struct Row {
    name: &'static str,
    phone: Node,
    builder: fn(TopologyBuilder) -> TopologyBuilder,
    ends: &'static str,
}

/// Builds the row's network (relay with TLS), starts coturn, the relay and the host, mints
/// an invite, opens its `join_url` in a browser on the row's phone and waits for the page
/// to say it is connected over the row's path. Returns what the page and the host showed.
async fn run(row: Row) {
    // One row at a time, like the other namespace suites (an async lock: it is held
    // across the browser's awaits).
    static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    let _serial = SERIAL.lock().await;
    web_dist();
    let mut topo = (row.builder)(TopologyBuilder::new(row.name).relay_tls(true)).build();
    topo.start_stun();
    topo.start_relay();
    let host = topo.start_host(true);
    topo.wait_host_ready(&host, Duration::from_secs(30));
    let invite = topo.mint(&host, None).token;

    // The link every phone can open: the relay's https origin, not the LAN page.
    let relay_origin = format!("https://{RELAY_IP}:{RELAY_PORT}");
    assert!(
        invite
            .join_url
            .starts_with(&format!("{relay_origin}/join#")),
        "join_url is the relay's page: {}",
        invite.join_url
    );
    assert_eq!(
        Link::parse(&invite.join_url).unwrap().token,
        invite.token,
        "join_url carries the invite"
    );
    let lan = invite.lan_join_url.clone().unwrap_or_default();
    assert!(
        lan.starts_with(&format!("http://{HOST_IP}:{HOST_PORT}/join#")),
        "the LAN link is offered too: {lan}"
    );
    assert_eq!(
        invite.network_info.stun_servers.first().map(String::as_str),
        Some(format!("stun:{RELAY_IP}:3478").as_str()),
        "the relay's STUN server comes first: {:?}",
        invite.network_info.stun_servers
    );

    let phone = topo.browser(row.phone, row.name, Screen::Phone).await;
    phone.goto(&invite.join_url).await;
    let headline = phone
        .wait_text("#headline", UI, |t| t.starts_with("Connected via"))
        .await;
    phone.screenshot("connected").await;
    assert_eq!(
        headline,
        format!("Connected via {}", row.ends),
        "{}",
        phone.body_text().await
    );
    // From an https page the ws:// endpoints are refused by the browser, and say so.
    for path in ["local", "public"] {
        let shown = phone
            .text(&format!(".path-row[data-path={path}]"))
            .await
            .unwrap_or_default();
        assert!(
            shown.contains("blocked by the browser"),
            "the {path} row says why it was not used: {shown:?}"
        );
    }
    // The host lists the phone on the same path.
    let devices = topo.host_api(&host, "/api/mesh/devices");
    let paths: Vec<String> = devices["devices"]
        .as_array()
        .map(|d| {
            d.iter()
                .filter(|d| d["online"] == true)
                .map(|d| d["path"].as_str().unwrap_or("").to_string())
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(paths, vec![row.ends.to_string()], "{devices:#}");
    phone.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cellular_phone_opens_the_minted_join_url_and_connects_over_the_relay() {
    run(Row {
        name: "bcell",
        phone: Node::Phone,
        builder: |b| b,
        ends: "relay",
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_wifi_phone_opens_the_minted_join_url_and_connects() {
    run(Row {
        name: "bwifi",
        phone: Node::HomePhone,
        builder: |b| b,
        ends: "relay",
    })
    .await;
}
