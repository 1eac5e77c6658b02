//! `wss://` without a proxy: the relay serves TLS itself from `--tls-cert/--tls-key` (a
//! self-signed certificate made here with rcgen), and hosts, members and `netcheck` trust it
//! through `ATMOSPHERE_RELAY_CA`.

mod relay_common;

use atmosphere_server::dial::{dial, DialOptions};
use atmosphere_shared::api::TokenRequest;
use atmosphere_shared::{Endpoints, Invite};
use atmosphere_tests::{bin_path, BlackHole, Host, Relay};
use futures_util::SinkExt;
use relay_common::*;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

/// A self-signed certificate for `localhost` and `127.0.0.1`, written once per test binary;
/// `ATMOSPHERE_RELAY_CA` points this process's host links at it.
fn cert() -> &'static (PathBuf, PathBuf) {
    static CERT: OnceLock<(PathBuf, PathBuf, tempfile::TempDir)> = OnceLock::new();
    let c = CERT.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let ck = rcgen::generate_simple_self_signed(vec![
            "localhost".to_string(),
            "127.0.0.1".to_string(),
        ])
        .unwrap();
        let cert = dir.path().join("relay.crt");
        let key = dir.path().join("relay.key");
        std::fs::write(&cert, ck.cert.pem()).unwrap();
        std::fs::write(&key, ck.key_pair.serialize_pem()).unwrap();
        // Set before any host link in this process dials (inside get_or_init, once).
        std::env::set_var("ATMOSPHERE_RELAY_CA", &cert);
        (cert, key, dir)
    });
    // Leak-free reference to the two paths.
    static PATHS: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    PATHS.get_or_init(|| (c.0.clone(), c.1.clone()))
}

async fn tls_relay() -> Relay {
    let (cert, key) = cert();
    Relay::start(&[
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ])
    .await
}

#[tokio::test]
async fn host_link_registers_and_members_splice_over_wss() {
    let relay = tls_relay().await;
    assert!(relay.url().starts_with("wss://"));
    let mut host = TestHost::start(&relay.url()).await;

    // A member dialing wss:// with the same trust settings (the shared dial) reaches the host.
    let mut member = dial(&host.member_url(), &DialOptions::default())
        .await
        .unwrap()
        .socket;
    member.send(Message::text("over tls")).await.unwrap();
    let mut h = host.next_session().await;
    assert_eq!(next_data(&mut h).await, Message::text("over tls"));
    h.send(Message::text("back over tls")).await.unwrap();
    assert_eq!(next_data(&mut member).await, Message::text("back over tls"));
}

#[tokio::test]
async fn serve_without_the_ca_reports_the_certificate_problem() {
    let relay = tls_relay().await;
    // A host that does not trust the self-signed certificate must say why it cannot connect.
    let host = Host::start_with(
        &["--relay-url", &relay.url()],
        &[("ATMOSPHERE_RELAY_CA", "")],
    )
    .await;
    let start = Instant::now();
    loop {
        let net = host.get_json("/api/network").await;
        if net["relay"]["state"] == "retrying" {
            let err = net["relay"]["last_error"]
                .as_str()
                .unwrap_or("")
                .to_lowercase();
            assert!(err.contains("certificate"), "{}", net["relay"]);
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{}",
            net["relay"]
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn serve_and_join_use_a_wss_relay_trusted_through_atmosphere_relay_ca() {
    let relay = tls_relay().await;
    let ca = cert().0.to_str().unwrap().to_string();
    let host = Host::start_with(
        &["--relay-url", &relay.url()],
        &[("ATMOSPHERE_RELAY_CA", &ca)],
    )
    .await;
    let start = Instant::now();
    loop {
        let net = host.get_json("/api/network").await;
        if net["relay"]["state"] == "connected" {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{}\n{}",
            net["relay"],
            host.proc.output()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let inv = host.mint(&TokenRequest::unlimited()).await;
    let relay_ep = inv.endpoints.relay.clone().unwrap();
    assert!(relay_ep.starts_with("wss://localhost:"), "{relay_ep}");
    let holes = (BlackHole::start().await, BlackHole::start().await);
    let link = Invite::v2(
        inv.token,
        inv.mesh_name,
        Endpoints {
            local: Some(holes.0.url()),
            public: Some(holes.1.url()),
            relay: Some(relay_ep),
        },
    )
    .to_v2_link();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(bin_path())
            .args(["join", "--once", "--json", "--name", "tls-phone", &link])
            .env("ATMOSPHERE_STUN_SERVERS", "none")
            .env("ATMOSPHERE_RELAY_CA", &ca)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout
            .lines()
            .any(|l| l.contains("\"event\":\"connected\"") && l.contains("\"path\":\"relay\"")),
        "{stdout}"
    );
}

/// `atmosphere netcheck --json --relay-url URL` with `ATMOSPHERE_RELAY_CA=ca` (STUN off);
/// returns the `relay` object of the report.
async fn netcheck_relay(url: String, ca: String) -> serde_json::Value {
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(bin_path())
            .args(["netcheck", "--json", "--relay-url", &url])
            .env("ATMOSPHERE_STUN_SERVERS", "none")
            .env("ATMOSPHERE_NO_PORT_MAPPING", "1")
            .env("ATMOSPHERE_RELAY_CA", ca)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    report["relay"].clone()
}

#[tokio::test]
async fn netcheck_trusts_the_relay_ca_as_serve_does() {
    // The relay `serve` reaches through ATMOSPHERE_RELAY_CA is reachable for netcheck too.
    let relay = tls_relay().await;
    let ca = cert().0.to_str().unwrap().to_string();
    let r = netcheck_relay(relay.url(), ca).await;
    assert_eq!(r["status"], "reachable", "{r}");
    assert!(r["http_status"].is_u64(), "{r}");
    assert!(
        r["connect_ms"].is_u64() && r["handshake_ms"].is_u64(),
        "{r}"
    );
    assert!(
        r["connect_ms"].as_u64() <= r["handshake_ms"].as_u64(),
        "{r}"
    );

    // Without the CA the certificate is the problem, and netcheck says so.
    let r = netcheck_relay(relay.url(), String::new()).await;
    assert_eq!(r["status"], "unreachable", "{r}");
    assert!(
        r["error"]
            .as_str()
            .unwrap_or("")
            .to_lowercase()
            .contains("certificate"),
        "{r}"
    );
    assert!(r["connect_ms"].is_u64(), "TCP itself worked: {r}");
}
