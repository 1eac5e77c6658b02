//! The QR link as a phone's browser opens it, on the simulated network of `docs/NETNS.md`:
//! headless Chromium runs *inside* the phone's namespace (chromedriver too; the test talks
//! to it through a connector that dials inside the namespace) and opens the invite's
//! `join_url` exactly as minted.
//!
//! The relay has TLS with a certificate this test makes; only the test's Chromium is told to
//! trust its key (`--ignore-certificate-errors-spki-list`), the host through
//! `ATMOSPHERE_RELAY_CA`. So `join_url` is `https://203.0.113.20:8080/join#…`, a page every
//! phone can load; from an https page the browser refuses `ws://`, and the first connection
//! goes over the relay. Then the page offers a WebRTC DataChannel inside the session and
//! moves onto it when the networks allow (Chromium's mDNS hiding of its LAN addresses stays
//! on, as on real phones).
//!
//! | phone | network | ends |
//! | --- | --- | --- |
//! | phone on the home Wi-Fi | same LAN as the host | `local` |
//! | cellular phone | home router forwards tcp+udp 11451 | `public` |
//! | cellular phone | both behind endpoint-independent NATs, no forward | `punched` |
//! | cellular phone | host behind a symmetric NAT | `relay`, and the page says why |
//!
//! On a direct row the session is shown to work on the direct path: a member who joins
//! later appears on the page (the host's frame arrives on the DataChannel) and the page's
//! message reaches that member. The roaming test cuts UDP on the phone's router mid-session:
//! the page falls back to the relay (messages keep flowing), then returns to the direct
//! path once UDP is back.
//!
//! Each row prints `NETNS-RESULT browser <row> after_ms=<n>`: the time from the first
//! `joined` to the direct path, as the page shows it ("relay → local after 420 ms").
//!
//! Needs root, Chromium, chromedriver and the web bundle (`trunk build --release`); fails
//! with a message saying what is missing, never skips.

use atmosphere_shared::link::Invite as Link;
use atmosphere_tests::browser::{web_dist, Browser, Screen};
use atmosphere_tests::netns::*;
use std::time::{Duration, Instant};

/// How long the page may take to show a state.
const UI: Duration = Duration::from_secs(30);

/// One row of the table: who opens the link, on which network, and the path it ends on.
struct Row {
    name: &'static str,
    phone: Node,
    builder: fn(TopologyBuilder) -> TopologyBuilder,
    ends: &'static str,
}

/// A row's running network, host and page. Holds the suite's lock: one row at a time, like
/// the other namespace suites.
struct Session {
    topo: Topology,
    host: NsHost,
    phone: Browser,
    _serial: tokio::sync::MutexGuard<'static, ()>,
}

/// One row at a time (an async lock: it is held across the browser's awaits).
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Builds the row's network (relay with TLS), starts coturn, the relay and the host, mints
/// an invite, opens its `join_url` in a browser on the row's phone and waits until the
/// page is connected (over the relay: the page is https).
async fn open(row: &Row) -> Session {
    let serial = SERIAL.lock().await;
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
    phone
        .wait_text("#headline", UI, |t| t.starts_with("Connected via"))
        .await;
    // From an https page the ws:// endpoints are refused by the browser, and say so
    // (`public` only where the relay's dial-back reached it: without a forward the invite
    // leaves it out).
    let paths: &[&str] = match invite.endpoints.public {
        Some(_) => &["local", "public"],
        None => &["local"],
    };
    for &path in paths {
        let shown = phone
            .text(&format!(".path-row[data-path={path}]"))
            .await
            .unwrap_or_default();
        assert!(
            shown.contains("blocked by the browser"),
            "the {path} row says why it was not used: {shown:?}"
        );
    }
    Session {
        topo,
        host,
        phone,
        _serial: serial,
    }
}

/// Waits until the page's headline names `path`; returns the page's path log.
async fn wait_path(phone: &Browser, path: &str) -> String {
    let want = format!("Connected via {path}");
    phone.wait_text("#headline", UI, |t| t == want).await;
    phone.text("#path-log").await.unwrap_or_default()
}

/// The `after_ms` of the log line `from → to after N ms`.
fn after_ms(log: &str, from: &str, to: &str) -> Option<u64> {
    let needle = format!("{from} → {to} after ");
    let rest = &log[log.find(&needle)? + needle.len()..];
    rest.split(' ').next()?.parse().ok()
}

/// The paths of the host's online devices.
fn host_paths(topo: &Topology, host: &NsHost) -> Vec<String> {
    let devices = topo.host_api(host, "/api/mesh/devices");
    devices["devices"]
        .as_array()
        .map(|d| {
            d.iter()
                .filter(|d| d["online"] == true)
                .map(|d| d["path"].as_str().unwrap_or("").to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// Waits until the host lists exactly these online paths (sorted).
async fn wait_host_paths(topo: &Topology, host: &NsHost, mut want: Vec<&str>) {
    want.sort_unstable();
    let start = Instant::now();
    loop {
        let mut paths = host_paths(topo, host);
        paths.sort_unstable();
        if paths == want {
            return;
        }
        assert!(
            start.elapsed() < UI,
            "the host lists online paths {paths:?}, expected {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The session works on the current path both ways: a member who joins now (the native
/// `join`, from the home Wi-Fi) appears on the page, and the page's message reaches it.
async fn exchange(s: &mut Session, text: &str) -> BackgroundJoin {
    let members = || async {
        s.phone
            .js("return document.querySelectorAll('.members li.member:not(.me)').length;")
            .await
            .as_u64()
            .unwrap_or(0)
    };
    let before = members().await;
    let link = s.topo.mint(&s.host, None).token.join_url;
    let other = s.topo.join_background(Node::HomePhone, &link, &[]);
    other
        .wait_for(UI, |e| e["event"] == "connected")
        .unwrap_or_else(|| panic!("the native member did not join:\n{}", other.transcript()));
    let start = Instant::now();
    while members().await <= before {
        assert!(
            start.elapsed() < UI,
            "the new member never appeared on the page:\n{}",
            s.phone.body_text().await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    send_and_expect(s, &other, text).await;
    other
}

/// The page sends `text`; `other` receives it.
async fn send_and_expect(s: &Session, other: &BackgroundJoin, text: &str) {
    s.phone.type_into("#message", text).await;
    s.phone.click("#send").await;
    other
        .wait_for(UI, |e| e["event"] == "message" && e["body"] == text)
        .unwrap_or_else(|| {
            panic!(
                "the page's message {text:?} did not arrive:\n{}",
                other.transcript()
            )
        });
}

/// A row that ends on a direct path: relay first, then `row.ends`, shown on the page and
/// in the host's device list, and the session works there.
async fn direct_row(row: Row) {
    let mut s = open(&row).await;
    let log = wait_path(&s.phone, row.ends).await;
    s.phone.screenshot("direct").await;
    let ms = after_ms(&log, "relay", row.ends)
        .unwrap_or_else(|| panic!("the page logs the change to {}: {log:?}", row.ends));
    println!("NETNS-RESULT browser {} after_ms={ms}", row.name);
    wait_host_paths(&s.topo, &s.host, vec![row.ends]).await;
    let _other = exchange(&mut s, &format!("hello over {}", row.ends)).await;
    // Still direct after the traffic.
    wait_path(&s.phone, row.ends).await;
    s.phone.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_wifi_phone_opens_the_join_url_and_moves_to_local() {
    direct_row(Row {
        name: "bwifi",
        phone: Node::HomePhone,
        builder: |b| b,
        ends: "local",
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cellular_phone_with_tcp_and_udp_forward_moves_to_public() {
    direct_row(Row {
        name: "bfwd",
        phone: Node::Phone,
        builder: |b| b.port_forward(true).udp_forward(true),
        ends: "public",
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cellular_phone_and_host_behind_nats_punch_a_direct_path() {
    direct_row(Row {
        name: "bpunch",
        phone: Node::Phone,
        builder: |b| b,
        ends: "punched",
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_behind_symmetric_nat_stays_on_the_relay_and_the_page_says_why() {
    let row = Row {
        name: "bsym",
        phone: Node::Phone,
        builder: |b| b.host_symmetric_nat(true),
        ends: "relay",
    };
    let mut s = open(&row).await;
    let why = s
        .phone
        .wait_text("#why-relay", UI, |t| t.contains("staying on the relay"))
        .await;
    s.phone.screenshot("relay-why").await;
    println!("NETNS-RESULT browser {} why={why:?}", row.name);
    assert!(
        why.contains("symmetric NAT"),
        "the page names the host's symmetric NAT: {why:?}"
    );
    let headline = s.phone.text("#headline").await.unwrap_or_default();
    assert_eq!(
        headline,
        "Connected via relay",
        "{}",
        s.phone.body_text().await
    );
    wait_host_paths(&s.topo, &s.host, vec!["relay"]).await;
    let _other = exchange(&mut s, "hello over the relay").await;
    s.phone.close().await;
}

/// Roaming: UDP dies on the phone's router mid-session → the page is back on the relay
/// within 2 s, the message sent into the dead path arrives (resent on the relay) and
/// later ones too; UDP returns → direct again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn punched_path_cut_mid_session_falls_back_to_the_relay_and_returns() {
    let row = Row {
        name: "broam",
        phone: Node::Phone,
        builder: |b| b,
        ends: "punched",
    };
    let mut s = open(&row).await;
    wait_path(&s.phone, "punched").await;
    let other = exchange(&mut s, "before the cut").await;

    let cut_at = Instant::now();
    s.topo.nft(
        Node::CellRouter,
        "table ip atm_roam {\n  chain cut {\n    type filter hook forward priority -10; policy accept;\n    meta l4proto udp drop\n  }\n}\n",
    );
    // Sent while the page still believes in the direct path: it goes out on the dead
    // DataChannel, and only the fallback's resend on the relay can deliver it.
    s.phone.type_into("#message", "in flight at the cut").await;
    s.phone.click("#send").await;
    let log = wait_path(&s.phone, "relay").await;
    println!(
        "NETNS-RESULT browser roam fallback_ms={} log={log:?}",
        cut_at.elapsed().as_millis()
    );
    assert!(
        log.contains("punched → relay after"),
        "the page logs the fallback: {log:?}"
    );
    other
        .wait_for(UI, |e| {
            e["event"] == "message" && e["body"] == "in flight at the cut"
        })
        .unwrap_or_else(|| {
            panic!(
                "the message sent at the cut was lost:\n{}",
                other.transcript()
            )
        });
    send_and_expect(&s, &other, "during the cut").await;

    s.topo.nft(Node::CellRouter, "delete table ip atm_roam\n");
    let log = wait_path(&s.phone, "punched").await;
    assert_eq!(
        log.matches("relay → punched after").count(),
        2,
        "back on the punched path: {log:?}"
    );
    send_and_expect(&s, &other, "after the cut").await;
    s.phone.close().await;
}
