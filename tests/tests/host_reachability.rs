//! The host's public-reachability check end to end on loopback: a real `atmosphere relay`
//! (its STUN responder tells the host its "public" address, 127.0.0.1) dials the host's
//! public endpoint back; `/api/network` shows the verdict and new invites leave `public`
//! out while it is `unreachable`.

use atmosphere_shared::api::TokenRequest;
use atmosphere_tests::{free_port, Host, Relay};
use serde_json::Value;
use std::time::{Duration, Instant};

async fn host_with(relay: &Relay, stun: &str, extra: &[&str]) -> Host {
    let url = relay.url();
    let mut args = vec![
        "--relay-url",
        &url,
        "--stun-server",
        stun,
        "--relay-stun",
        "none",
        "--udp-port",
        "0",
    ];
    args.extend_from_slice(extra);
    Host::start_with(&args, &[]).await
}

/// Polls `/api/network` until `reachability.state` is `want`; returns the reachability
/// object and the time it took.
async fn wait_reachability(host: &Host, want: &str, within: Duration) -> (Value, Duration) {
    let start = Instant::now();
    loop {
        let net = host.get_json("/api/network").await;
        if net["reachability"]["state"] == want {
            return (net["reachability"].clone(), start.elapsed());
        }
        assert!(
            start.elapsed() < within,
            "reachability not {want} within {within:?}: {}\n{}",
            net["reachability"],
            host.proc.output()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn the_relay_reaches_a_host_on_its_public_port_and_invites_keep_public() {
    let (relay, stun) = Relay::start_with_stun().await;
    let start = Instant::now();
    let host = host_with(&relay, &stun, &[]).await;
    let (r, _) = wait_reachability(&host, "reachable", Duration::from_secs(20)).await;
    println!(
        "host start → verified reachable: {} ms",
        start.elapsed().as_millis()
    );
    let endpoint = format!("ws://127.0.0.1:{}", host.port);
    assert_eq!(r["endpoint"], endpoint.as_str(), "{r}");
    assert!(r["checked_at"].as_str().is_some(), "{r}");
    let inv = host.mint(&TokenRequest::unlimited()).await;
    assert_eq!(inv.endpoints.public.as_deref(), Some(endpoint.as_str()));
    assert!(inv.endpoints.relay.is_some());
    // The probe route answers only pending nonces.
    let r = reqwest::get(format!(
        "{}/dial-back/00112233445566778899aabbccddeeff",
        host.base()
    ))
    .await
    .unwrap();
    assert_eq!(r.status(), 404);
}

#[tokio::test]
async fn a_public_port_nobody_listens_on_is_unreachable_and_left_out_of_invites() {
    let (relay, stun) = Relay::start_with_stun().await;
    let dead = free_port().to_string();
    let host = host_with(&relay, &stun, &["--public-port", &dead]).await;
    let (r, _) = wait_reachability(&host, "unreachable", Duration::from_secs(20)).await;
    assert_eq!(r["detail"], "connection refused", "{r}");
    assert_eq!(r["endpoint"], format!("ws://127.0.0.1:{dead}").as_str());
    // The snapshot still names the endpoint (the host view explains it is left out)...
    let net = host.get_json("/api/network").await;
    assert_eq!(
        net["endpoints"]["public"],
        format!("ws://127.0.0.1:{dead}").as_str()
    );
    // ...but a new invite does not carry it.
    let inv = host.mint(&TokenRequest::unlimited()).await;
    assert_eq!(inv.endpoints.public, None, "{:?}", inv.endpoints);
    assert!(inv.endpoints.local.is_some() && inv.endpoints.relay.is_some());
    assert!(!inv.qr_data.contains(&dead), "{}", inv.qr_data);
}

#[tokio::test]
async fn with_public_url_or_without_a_relay_nothing_is_checked() {
    let (relay, stun) = Relay::start_with_stun().await;
    let host = host_with(&relay, &stun, &["--public-url", "wss://home.example"]).await;
    host.wait_relay_connected(Duration::from_secs(20)).await;
    let (r, _) = wait_reachability(&host, "unknown", Duration::from_secs(5)).await;
    assert_eq!(r["detail"], "--public-url is set; not checked", "{r}");
    let inv = host.mint(&TokenRequest::unlimited()).await;
    assert_eq!(inv.endpoints.public.as_deref(), Some("wss://home.example"));

    let host = Host::start_with(&["--stun-server", &stun, "--udp-port", "0"], &[]).await;
    let (r, _) = wait_reachability(&host, "unknown", Duration::from_secs(5)).await;
    assert!(r["detail"].as_str().unwrap().contains("no relay"), "{r}");
    let inv = host.mint(&TokenRequest::unlimited()).await;
    assert!(inv.endpoints.public.is_some(), "behaviour as before");
}
