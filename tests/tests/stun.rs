//! The host's network discovery against a real STUN server (coturn) on loopback: what
//! `GET /api/network` shows and what a minted invite carries. Hosts here always get
//! `--stun-server` with a loopback server (the harness also sets
//! `ATMOSPHERE_STUN_SERVERS=none`), never the public defaults.

use atmosphere_shared::api::TokenRequest;
use atmosphere_tests::coturn::{silent_udp, Coturn};
use atmosphere_tests::Host;
use serde_json::Value;
use std::time::{Duration, Instant};

/// Polls `GET /api/network` until the first discovery round has published.
async fn network_when_ready(host: &Host) -> Value {
    let start = Instant::now();
    loop {
        let j = host.get_json("/api/network").await;
        if !j["updated_at"].is_null() || start.elapsed() > Duration::from_secs(10) {
            return j;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn public_ip_and_stun_source_reach_the_api_and_the_invite() {
    let stun = Coturn::start();
    let host = Host::start_with(&["--stun-server", &stun.server_arg()], &[]).await;

    let net = network_when_ready(&host).await;
    assert_eq!(net["public_ip"], "127.0.0.1", "{net:#}");
    assert_eq!(net["stun_source"], stun.stun_source(), "{net:#}");
    assert_eq!(net["local_ip"], "127.0.0.1", "{net:#}");
    let probes = net["probes"].as_array().expect("probes");
    assert_eq!(probes.len(), 1, "{net:#}");
    assert!(
        probes[0]["mapped"]
            .as_str()
            .is_some_and(|m| m.starts_with("127.0.0.1:")),
        "{net:#}"
    );
    assert!(probes[0]["rtt_ms"].is_u64(), "{net:#}");

    let invite = host.mint(&TokenRequest::unlimited()).await;
    assert_eq!(invite.network_info.public_ip.as_deref(), Some("127.0.0.1"));
    assert_eq!(invite.network_info.stun_source, Some(stun.stun_source()));
    assert_eq!(invite.network_info.local_ip.as_deref(), Some("127.0.0.1"));
    assert!(
        !invite.network_info.is_behind_nat,
        "the mapped IP is one of the host's own"
    );
    let want_public = format!("ws://127.0.0.1:{}", host.port);
    assert_eq!(
        invite.endpoints.public.as_deref(),
        Some(want_public.as_str())
    );
}

#[tokio::test]
async fn two_servers_both_answer_and_the_mapping_does_not_vary() {
    let (a, b) = (Coturn::start(), Coturn::start());
    let host = Host::start_with(
        &[
            "--stun-server",
            &a.server_arg(),
            "--stun-server",
            &b.server_arg(),
        ],
        &[],
    )
    .await;

    // The first answer publishes early; wait for the round to list both probes.
    let start = Instant::now();
    let net = loop {
        let j = network_when_ready(&host).await;
        let answered = j["probes"]
            .as_array()
            .map_or(0, |p| p.iter().filter(|p| p["mapped"].is_string()).count());
        if answered == 2 || start.elapsed() > Duration::from_secs(10) {
            break j;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let probes = net["probes"].as_array().unwrap();
    assert_eq!(probes.len(), 2, "{net:#}");
    let servers: Vec<&str> = probes
        .iter()
        .map(|p| p["server"].as_str().unwrap())
        .collect();
    assert!(
        servers.contains(&a.stun_source().as_str()) && servers.contains(&b.stun_source().as_str()),
        "{net:#}"
    );
    assert!(
        probes
            .iter()
            .all(|p| p["mapped"].is_string() && p["error"].is_null()),
        "{net:#}"
    );
    assert_eq!(net["mapping_varies"], false, "{net:#}");
    assert_eq!(net["public_ip"], "127.0.0.1");
}

#[tokio::test]
async fn unreachable_stun_server_leaves_public_null_and_minting_is_fast() {
    // A socket that swallows requests and never answers: the STUN round runs to its deadline.
    let (_swallow, silent) = silent_udp();
    let host = Host::start_with(&["--stun-server", &silent.to_string()], &[]).await;

    // Mint at once, while the first round may still be waiting on the dead server.
    let start = Instant::now();
    let invite = host.mint(&TokenRequest::unlimited()).await;
    let took = start.elapsed();
    // The host's STUN deadline is a couple of seconds at most; a loose bound, not a perf test.
    assert!(
        took < Duration::from_secs(4),
        "minting waited {took:?} on a dead STUN server"
    );
    assert_eq!(invite.network_info.public_ip, None);
    assert_eq!(invite.network_info.stun_source, None);
    assert_eq!(
        invite.endpoints.public, None,
        "a public endpoint is never invented"
    );
    assert!(
        invite.endpoints.local.is_some(),
        "the local path is still offered"
    );

    let net = network_when_ready(&host).await;
    assert_eq!(net["public_ip"], Value::Null, "{net:#}");
    let err = net["probes"][0]["error"].as_str().unwrap_or("");
    assert!(
        err.contains("no answer"),
        "the dead server is named with its error: {net:#}"
    );
}
