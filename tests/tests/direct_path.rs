//! The direct path end to end on loopback with real processes: `atmosphere relay` (with its
//! STUN responder), `atmosphere serve --relay-url … --udp-port …` with its ICE candidates
//! kept to 127.0.0.1, and two `atmosphere join` members that reach the host through the
//! relay only (the invite's local and public endpoints are black holes). Each member
//! upgrades to a WebRTC DataChannel (`path` relay → local: loopback host candidates), and
//! numbered messages sent both ways while the sessions move arrive exactly once, in order.

use atmosphere_shared::api::TokenRequest;
use atmosphere_shared::{Endpoints, Invite};
use atmosphere_tests::coturn::free_udp_port;
use atmosphere_tests::{bin_path, BlackHole, Host, Relay};
use serde_json::Value;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Messages each member sends while its session moves onto the direct path.
const COUNT: usize = 150;

/// An invite whose local and public paths are black holes and whose relay path is real.
async fn relay_only_link(host: &Host, holes: &(BlackHole, BlackHole)) -> String {
    let inv = host.mint(&TokenRequest::unlimited()).await;
    let relay = inv.endpoints.relay.clone().expect("relay endpoint");
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

/// A `join --json` that stays in the mesh, its candidates kept to loopback.
struct Member {
    child: Child,
    lines: mpsc::Receiver<Value>,
    seen: Vec<Value>,
}

impl Member {
    fn start(link: &str, name: &str) -> Member {
        let mut child = Command::new(bin_path())
            .args(["join", "--json", "--name", name, link])
            .env("ATMOSPHERE_STUN_SERVERS", "none")
            .env("ATMOSPHERE_UDP_CANDIDATE_IP", "127.0.0.1")
            .env_remove("ATMOSPHERE_DEVICE_FILE")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let v: Value = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("not JSON ({e}): {line:?}"));
                if tx.send(v).is_err() {
                    break;
                }
            }
        });
        Member {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits for a line matching `pred` (keeping every line seen).
    fn wait_for(&mut self, what: &str, within: Duration, pred: impl Fn(&Value) -> bool) -> Value {
        if let Some(v) = self.seen.iter().find(|v| pred(v)) {
            return v.clone();
        }
        let start = Instant::now();
        loop {
            let left = within.saturating_sub(start.elapsed());
            match self.lines.recv_timeout(left) {
                Ok(v) => {
                    self.seen.push(v.clone());
                    if pred(&v) {
                        return v;
                    }
                }
                Err(_) => panic!("no {what} within {within:?}; lines: {:#?}", self.seen),
            }
        }
    }

    fn bodies(&mut self) -> Vec<String> {
        while let Ok(v) = self.lines.try_recv() {
            self.seen.push(v);
        }
        self.seen
            .iter()
            .filter(|v| v["event"] == "message")
            .filter_map(|v| v["body"].as_str().map(str::to_string))
            .collect()
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_that_joined_over_the_relay_move_onto_a_direct_path_without_losing_a_message() {
    let (relay, relay_stun) = Relay::start_with_stun().await;
    let udp = free_udp_port().to_string();
    let host = Host::start_with(
        &[
            "--relay-url",
            &relay.url(),
            "--relay-stun",
            &relay_stun,
            "--udp-port",
            &udp,
            "--udp-candidate-ip",
            "127.0.0.1",
        ],
        &[],
    )
    .await;
    host.wait_relay_connected(Duration::from_secs(20)).await;
    let holes = (BlackHole::start().await, BlackHole::start().await);
    let link = relay_only_link(&host, &holes).await;

    // The host's event feed, read from before anyone joins.
    let mut feed = host
        .admin(reqwest::Method::GET, "/api/events")
        .send()
        .await
        .unwrap();
    let (feed_tx, feed_rx) = tokio::sync::watch::channel(String::new());
    tokio::spawn(async move {
        while let Ok(Some(chunk)) = feed.chunk().await {
            feed_tx.send_modify(|s| s.push_str(&String::from_utf8_lossy(&chunk)));
        }
    });

    let mut a = Member::start(&link, "alpha");
    let mut b = Member::start(&link, "beta");
    for m in [&mut a, &mut b] {
        let c = m.wait_for("connected", Duration::from_secs(20), |v| {
            v["event"] == "connected"
        });
        assert_eq!(c["path"], "relay", "{c}");
    }
    // Both online (each sees the other) before the numbered messages start.
    a.wait_for("beta online", Duration::from_secs(20), |v| {
        v.to_string().contains("beta")
    });

    // Numbered messages both ways, spread over the upgrade (which starts at `joined`).
    let mut a_in = a.child.stdin.take().unwrap();
    let mut b_in = b.child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || {
        for i in 1..=COUNT {
            writeln!(a_in, "a-{i}").unwrap();
            writeln!(b_in, "b-{i}").unwrap();
            std::thread::sleep(Duration::from_millis(20));
        }
        (a_in, b_in)
    });

    for m in [&mut a, &mut b] {
        let p = m.wait_for("path", Duration::from_secs(20), |v| v["event"] == "path");
        assert_eq!(p["from"], "relay", "{p}");
        assert_eq!(
            p["to"], "local",
            "loopback host candidates make a local path: {p}"
        );
        assert!(p["after_ms"].as_u64().is_some(), "{p}");
    }
    let _stdins = writer.join().unwrap();

    for (m, from) in [(&mut a, "b"), (&mut b, "a")] {
        let last = format!("{from}-{COUNT}");
        m.wait_for("the last message", Duration::from_secs(20), |v| {
            v["event"] == "message" && v["body"] == last.as_str()
        });
        let got = m.bodies();
        let want: Vec<String> = (1..=COUNT).map(|i| format!("{from}-{i}")).collect();
        assert_eq!(got, want, "every message exactly once, in order");
    }

    // The host's device list shows the current path of both.
    let devices = host.get_json("/api/mesh/devices").await;
    let list = devices["devices"].as_array().cloned().unwrap_or_default();
    for name in ["alpha", "beta"] {
        let d = list
            .iter()
            .find(|d| d["name"] == name)
            .unwrap_or_else(|| panic!("{name} missing: {devices}"));
        assert_eq!(d["path"], "local", "{d}");
        assert_eq!(d["online"], true, "{d}");
    }
    // ... and /api/events announced both moves.
    let mut feed_rx = feed_rx;
    let moves = tokio::time::timeout(
        Duration::from_secs(10),
        feed_rx.wait_for(|s| s.matches("path_changed").count() >= 2),
    )
    .await
    .map(|_| ());
    let events = feed_rx.borrow().clone();
    assert!(moves.is_ok(), "no two path_changed events: {events}");
    for line in events.lines().filter(|l| l.contains("path_changed")) {
        let ev: Value = serde_json::from_str(line.trim_start_matches("data:").trim()).unwrap();
        assert_eq!(
            (&ev["from"], &ev["to"]),
            (&"relay".into(), &"local".into()),
            "{ev}"
        );
    }
    let log = host.proc.output();
    assert!(
        log.contains("relay → local after"),
        "the host logs the change:\n{log}"
    );
}
