//! The direct path (WebRTC) with the native `join` on the simulated network of
//! `docs/NETNS.md`: a phone on cellular data joins the home host over the relay, then:
//!
//! - both behind endpoint-independent NATs (nftables masquerade, no forward, routers drop
//!   new inbound) → the session moves onto a hole-punched DataChannel (`punched`);
//! - the host behind a symmetric NAT (`masquerade random`) → it stays on the relay and says
//!   why (the symmetric NAT);
//! - roaming: UDP dropped at the phone's router mid-session → messages carry on over the
//!   relay, none lost, in order; UDP back → direct again.
//!
//! The relay answers STUN on 203.0.113.20:3478/3479 (its defaults); the host derives that
//! from `--relay-url` (the `--relay-stun` default) for its NAT check and hands it to the
//! member in `joined`. Needs root; the scenarios run one at a time.

use atmosphere_tests::netns::*;
use serde_json::Value;
use std::time::{Duration, Instant};

/// A phone on cellular data that joined over the relay (the invite's LAN and public
/// endpoints are unreachable from there), staying in the mesh.
fn phone_over_relay(topo: &mut Topology, host: &NsHost) -> BackgroundJoin {
    let link = topo.mint(host, None).token.qr_data;
    let phone = topo.join_background(Node::Phone, &link, &["--name", "cell-phone"]);
    let c = phone
        .wait_for(Duration::from_secs(30), |v| v["event"] == "connected")
        .unwrap_or_else(|| panic!("the phone never connected:\n{}", phone.transcript()));
    assert_eq!(c.json["path"], "relay", "{}", phone.transcript());
    phone
}

fn setup(topo: &mut Topology) -> NsHost {
    topo.start_stun();
    topo.start_relay();
    let host = topo.start_host(true);
    topo.wait_host_ready(&host, Duration::from_secs(30));
    host
}

fn path_event(j: &BackgroundJoin, to: &str, within: Duration) -> Value {
    j.wait_for(within, |v| v["event"] == "path" && v["to"] == to)
        .unwrap_or_else(|| panic!("no path → {to} within {within:?}:\n{}", j.transcript()))
        .json
}

/// The device list's path for `name`.
fn listed_path(topo: &Topology, host: &NsHost, name: &str) -> Value {
    let devices = topo.host_api(host, "/api/mesh/devices");
    devices["devices"]
        .as_array()
        .and_then(|l| l.iter().find(|d| d["name"] == name))
        .map(|d| d["path"].clone())
        .unwrap_or(Value::Null)
}

#[test]
fn both_behind_endpoint_independent_nats_the_session_ends_punched() {
    let _g = serial();
    let mut topo = TopologyBuilder::new("punch").build();
    let host = setup(&mut topo);
    let phone = phone_over_relay(&mut topo, &host);
    let p = path_event(&phone, "punched", Duration::from_secs(30));
    assert_eq!(p["from"], "relay", "{p}");
    eprintln!(
        "NETNS-RESULT scenario=cli-punched path=punched after_ms={}",
        p["after_ms"]
    );
    assert_eq!(listed_path(&topo, &host, "cell-phone"), "punched");
    let log = topo.output(host.proc);
    assert!(
        log.contains("relay → punched after"),
        "the host logs the change:\n{log}"
    );
}

#[test]
fn host_behind_a_symmetric_nat_stays_on_the_relay_and_says_why() {
    let _g = serial();
    let mut topo = TopologyBuilder::new("symm")
        .host_symmetric_nat(true)
        .build();
    let host = setup(&mut topo);
    let phone = phone_over_relay(&mut topo, &host);
    let why = phone
        .wait_for(Duration::from_secs(30), |v| {
            v["event"] == "direct_unavailable"
        })
        .unwrap_or_else(|| panic!("no direct_unavailable:\n{}", phone.transcript()))
        .json;
    let reason = why["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("symmetric NAT") && reason.ends_with("staying on the relay"),
        "the reason names the host's symmetric NAT: {why}"
    );
    assert!(
        !phone.events().iter().any(|e| e.json["event"] == "path"),
        "the session must stay on the relay:\n{}",
        phone.transcript()
    );
    assert_eq!(listed_path(&topo, &host, "cell-phone"), "relay");
    eprintln!("NETNS-RESULT scenario=cli-symmetric path=relay reason={why}");
}

/// Drops every UDP datagram the phone's router forwards (the phone "left the Wi-Fi" as far
/// as the direct path is concerned; TCP to the relay still works).
const DROP_UDP: &str = "table ip atm_roam {\n  chain forward {\n    type filter hook forward priority -10; policy accept;\n    meta l4proto udp drop\n  }\n}\n";
const RESTORE_UDP: &str = "delete table ip atm_roam\n";

/// The message bodies `j` printed, in order.
fn bodies(j: &BackgroundJoin) -> Vec<String> {
    j.events()
        .iter()
        .filter(|e| e.json["event"] == "message")
        .filter_map(|e| e.json["body"].as_str().map(str::to_string))
        .collect()
}

#[test]
fn roaming_the_direct_path_dies_messages_carry_on_over_the_relay_then_direct_again() {
    let _g = serial();
    let mut topo = TopologyBuilder::new("roam").build();
    let host = setup(&mut topo);
    // A second member on the home Wi-Fi (local WebSocket) receives what the phone sends.
    let home_link = topo.mint(&host, None).token.qr_data;
    let mut home = topo.join_background(Node::HomePhone, &home_link, &["--name", "home-phone"]);
    home.wait_for(Duration::from_secs(30), |v| v["event"] == "connected")
        .unwrap_or_else(|| panic!("home phone never connected:\n{}", home.transcript()));
    let mut phone = phone_over_relay(&mut topo, &host);
    path_event(&phone, "punched", Duration::from_secs(30));
    home.wait_for(Duration::from_secs(10), |v| {
        v.to_string().contains("cell-phone")
    })
    .expect("the home phone sees the cell phone");

    // The direct path dies; both members keep sending numbered messages through it.
    topo.nft(Node::CellRouter, DROP_UDP);
    let dropped = Instant::now();
    const N: usize = 40;
    for i in 1..=N {
        phone.send_line(&format!("p-{i}"));
        home.send_line(&format!("h-{i}"));
        std::thread::sleep(Duration::from_millis(50));
    }
    let back_at = phone
        .wait_for(Duration::from_secs(10), |v| {
            v["event"] == "path" && v["to"] == "relay"
        })
        .unwrap_or_else(|| panic!("no fallback to the relay:\n{}", phone.transcript()));
    let back = back_at.json.clone();
    // From the drop to the fallback line, on the phone's clock.
    let fell_back_ms = back_at
        .at
        .saturating_sub(dropped.duration_since(phone.start))
        .as_millis();
    assert_eq!(back["from"], "punched", "{back}");
    for (j, from) in [(&home, "p"), (&phone, "h")] {
        let last = format!("{from}-{N}");
        j.wait_for(Duration::from_secs(15), |v| {
            v["event"] == "message" && v["body"] == last.as_str()
        })
        .unwrap_or_else(|| panic!("{last} never arrived:\n{}", j.transcript()));
        let want: Vec<String> = (1..=N).map(|i| format!("{from}-{i}")).collect();
        assert_eq!(bodies(j), want, "every message once, in order");
    }
    assert_eq!(listed_path(&topo, &host, "cell-phone"), "relay");

    // UDP is back: a later attempt punches again.
    topo.nft(Node::CellRouter, RESTORE_UDP);
    let again = phone
        .wait_for(Duration::from_secs(60), |v| {
            v["event"] == "path"
                && v["from"] == "relay"
                && v["to"] == "punched"
                && v["after_ms"].as_u64() > back["after_ms"].as_u64()
        })
        .unwrap_or_else(|| panic!("never direct again:\n{}", phone.transcript()));
    eprintln!(
        "NETNS-RESULT scenario=cli-roaming fallback_after_drop_ms={fell_back_ms} reason={} direct_again_after_ms={}",
        back["reason"], again.json["after_ms"]
    );
    assert_eq!(listed_path(&topo, &host, "cell-phone"), "punched");
}

/// Not a check: the figures of docs/BENCHMARKS.md ("Direct path (WebRTC)"). 20 fresh
/// phones join over the relay one after another; prints each one's time from `joined` to
/// `punched` and how many of the 20 got there.
/// `cargo test -p atmosphere-tests --test netns_direct -- --ignored --nocapture`
#[test]
#[ignore]
fn bench_punched_20_tries() {
    let _g = serial();
    let mut topo = TopologyBuilder::new("bench").build();
    let host = setup(&mut topo);
    let mut times = Vec::new();
    let mut ended = Vec::new();
    for i in 0..20 {
        let link = topo.mint(&host, None).token.qr_data;
        let name = format!("bench-{i}");
        let phone = topo.join_background(Node::Phone, &link, &["--name", &name]);
        let outcome = phone.wait_for(Duration::from_secs(20), |v| {
            v["event"] == "path" || v["event"] == "direct_unavailable"
        });
        match outcome {
            Some(e) if e.json["event"] == "path" => {
                times.push(e.json["after_ms"].as_u64().unwrap_or(0));
                ended.push(e.json["to"].as_str().unwrap_or("?").to_string());
            }
            other => ended.push(format!("{:?}", other.map(|e| e.json))),
        }
        topo.kill(phone.id);
    }
    let punched = ended.iter().filter(|e| *e == "punched").count();
    times.sort_unstable();
    eprintln!(
        "NETNS-RESULT bench=cli-punched tries=20 punched={punched} after_ms={times:?} ended={ended:?}"
    );
}

/// One message of `size` bytes: `"{tag}-{i:06}-"` padded with `x`.
fn numbered(tag: &str, i: usize, size: usize) -> String {
    let mut body = format!("{tag}-{i:06}-");
    body.extend(std::iter::repeat_n('x', size.saturating_sub(body.len())));
    body
}

/// Not a check: the throughput figures of docs/BENCHMARKS.md ("Direct path (WebRTC)").
/// A member on the home Wi-Fi (local WebSocket) receives; a phone on cellular data sends
/// numbered messages as fast as `join` reads its stdin, once on the punched DataChannel
/// and once with `join --no-direct` (through the relay). Each burst is timed from the first
/// line written to the arrival of the last message at the receiver (the reader's
/// timestamp), and the receiver's count says whether all arrived. The path is
/// phone → host (direct or relay) → home member (LAN WebSocket) in both cases.
/// `cargo test -p atmosphere-tests --test netns_direct -- --ignored --nocapture bench_throughput`
#[test]
#[ignore]
fn bench_throughput_direct_vs_relay() {
    let _g = serial();
    let mut topo = TopologyBuilder::new("tput").build();
    let host = setup(&mut topo);
    let home_link = topo.mint(&host, None).token.qr_data;
    let home = topo.join_background(Node::HomePhone, &home_link, &["--name", "home-phone"]);
    home.wait_for(Duration::from_secs(30), |v| v["event"] == "connected")
        .unwrap_or_else(|| panic!("home phone never connected:\n{}", home.transcript()));
    for (path, extra) in [("punched", &[][..]), ("relay", &["--no-direct"][..])] {
        let name = format!("tput-{path}");
        let link = topo.mint(&host, None).token.qr_data;
        let mut args = vec!["--name", name.as_str()];
        args.extend_from_slice(extra);
        let mut phone = topo.join_background(Node::Phone, &link, &args);
        phone
            .wait_for(Duration::from_secs(30), |v| v["event"] == "connected")
            .unwrap_or_else(|| panic!("the phone never connected:\n{}", phone.transcript()));
        if path == "punched" {
            path_event(&phone, "punched", Duration::from_secs(30));
        }
        home.wait_for(Duration::from_secs(10), |v| {
            v.to_string().contains(name.as_str())
        })
        .expect("the home phone sees the sender");
        for (size, n) in [(100usize, 20_000usize), (16 * 1024, 2_000)] {
            let tag = format!("{path}-{size}");
            let last = numbered(&tag, n, size);
            let ours = |v: &Value| {
                v["event"] == "message"
                    && v["body"]
                        .as_str()
                        .is_some_and(|b| b.starts_with(tag.as_str()))
            };
            let t0 = Instant::now();
            for i in 1..=n {
                phone.send_line(&numbered(&tag, i, size));
            }
            let deadline = Instant::now() + Duration::from_secs(120);
            let arrived = loop {
                if let Some(e) = home.latest(|v| v["event"] == "message" && v["body"] == last) {
                    break Some(e);
                }
                if Instant::now() > deadline {
                    break None;
                }
                std::thread::sleep(Duration::from_millis(100));
            };
            let got = home.count(ours);
            let Some(e) = arrived else {
                eprintln!("NETNS-RESULT bench=throughput path={path} size={size} n={n} arrived={got} last=never");
                continue;
            };
            let secs =
                e.at.saturating_sub(t0.duration_since(home.start))
                    .as_secs_f64();
            eprintln!(
                "NETNS-RESULT bench=throughput path={path} size={size} n={n} arrived={got} secs={secs:.3} msgs_per_s={:.0} mb_per_s={:.2}",
                n as f64 / secs,
                (n * size) as f64 / secs / 1e6
            );
        }
        // Still on the path it was measured on? What else happened (paths, reconnects)?
        let now_on = listed_path(&topo, &host, &name);
        eprintln!("NETNS-RESULT bench=throughput path={path} listed_after={now_on}");
        for (who, j) in [("sender", &phone), ("receiver", &home)] {
            let other: Vec<String> = j
                .events()
                .iter()
                .filter(|e| !matches!(e.json["event"].as_str(), Some("message" | "peer")))
                .map(|e| format!("+{}ms {}", e.at.as_millis(), e.json))
                .collect();
            eprintln!("NETNS-EVENTS {path} {who}: {other:#?}");
        }
        topo.kill(phone.id);
    }
}
