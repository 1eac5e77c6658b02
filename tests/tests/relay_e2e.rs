//! The relay path end to end with real processes on 127.0.0.1: `atmosphere serve
//! --relay-url` registers with `atmosphere relay`, and `atmosphere join` reaches the host
//! through it when the direct paths are black holes. Also: the host survives a relay restart.

use atmosphere_shared::api::TokenRequest;
use atmosphere_shared::{Endpoints, Invite};
use atmosphere_tests::{bin_path, BlackHole, Host, Relay};
use std::process::Command;
use std::time::{Duration, Instant};

/// Runs `atmosphere join --once --json LINK` (blocking, in a thread) and returns its
/// exit status and JSON events.
async fn join(
    link: String,
    name: &str,
    extra_env: Vec<(String, String)>,
) -> (i32, Vec<serde_json::Value>, String) {
    let name = name.to_string();
    tokio::task::spawn_blocking(move || {
        let mut cmd = Command::new(bin_path());
        cmd.args(["join", "--once", "--json", "--name", &name, &link])
            .env("ATMOSPHERE_STUN_SERVERS", "none")
            .env_remove("ATMOSPHERE_RELAY_URL");
        for (k, v) in extra_env {
            cmd.env(k, v);
        }
        let out = cmd.output().expect("run atmosphere join");
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        let events = stdout
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        let all = format!("{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
        (out.status.code().unwrap_or(-1), events, all)
    })
    .await
    .unwrap()
}

/// An invite whose local and public paths are black holes and whose relay path is real.
async fn relay_only_link(host: &Host, holes: &(BlackHole, BlackHole)) -> String {
    let inv = host.mint(&TokenRequest::unlimited()).await;
    let relay = inv
        .endpoints
        .relay
        .clone()
        .expect("the invite carries the relay endpoint");
    Invite::v2(
        inv.token,
        inv.mesh_name,
        Endpoints {
            local: Some(holes.0.url()),
            public: Some(holes.1.url()),
            relay: Some(relay),
        },
    )
    .to_v2_link()
}

fn assert_connected_via_relay(code: i32, events: &[serde_json::Value], out: &str) {
    assert_eq!(code, 0, "join failed:\n{out}");
    let connected = events
        .iter()
        .find(|e| e["event"] == "connected")
        .unwrap_or_else(|| panic!("no connected event:\n{out}"));
    assert_eq!(connected["path"], "relay", "{out}");
}

async fn device_paths(host: &Host) -> Vec<(String, String)> {
    let mesh = host.get_json("/api/mesh").await;
    mesh["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["name"].as_str().unwrap_or("").to_string(),
                d["path"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

#[tokio::test]
async fn join_connects_via_relay_when_direct_paths_are_black_holes() {
    let relay = Relay::start(&[]).await;
    let host = Host::start_with(&["--relay-url", &relay.url()], &[]).await;
    host.wait_relay_connected(Duration::from_secs(20)).await;
    let holes = (BlackHole::start().await, BlackHole::start().await);
    let link = relay_only_link(&host, &holes).await;

    let (code, events, out) = join(link, "relay-phone", vec![]).await;
    assert_connected_via_relay(code, &events, &out);
    let devices = device_paths(&host).await;
    assert!(
        devices
            .iter()
            .any(|(n, p)| n == "relay-phone" && p == "relay"),
        "the host does not list the device with path relay: {devices:?}"
    );
    let h = relay.health().await;
    assert_eq!(h["meshes"], 1, "{h}");
}

#[tokio::test]
async fn host_reconnects_after_relay_restart_and_joins_work_again() {
    let mut relay = Relay::start(&[]).await;
    let host = Host::start_with(&["--relay-url", &relay.url()], &[]).await;
    host.wait_relay_connected(Duration::from_secs(20)).await;
    let holes = (BlackHole::start().await, BlackHole::start().await);

    relay.restart().await;
    // The fresh relay knows no host until the link re-registers by itself.
    let start = Instant::now();
    loop {
        if relay.health().await["meshes"] == 1 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "host never re-registered:\n{}",
            host.proc.output()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    host.wait_relay_connected(Duration::from_secs(20)).await;

    let link = relay_only_link(&host, &holes).await;
    let (code, events, out) = join(link, "after-restart", vec![]).await;
    assert_connected_via_relay(code, &events, &out);
    assert!(device_paths(&host)
        .await
        .iter()
        .any(|(n, p)| n == "after-restart" && p == "relay"));
}
