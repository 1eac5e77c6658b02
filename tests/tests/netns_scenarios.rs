//! The original design's scenario table on a real (simulated) network: Linux network
//! namespaces with NAT routers (nftables), a real coturn STUN server and a real
//! `atmosphere relay` on a documentation-range "internet". See `docs/NETNS.md` for the
//! topology and how to run.
//!
//! Needs root (CI runs as root). Without root or namespace support every test FAILS with a
//! clear message — it never skips. The scenarios run one at a time (a global lock).
//!
//! Each scenario prints its measured connect time (`elapsed_ms` of the `connected` event)
//! as a `NETNS-RESULT` line; `cargo test -- --nocapture` shows them.

use atmosphere_tests::netns::*;
use serde_json::Value;
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::time::Duration;

/// Per-attempt deadline passed to `join` in the scenarios that must connect: long, so a
/// client that waited for a dead path's timeout instead of staggering past it would stand out.
const LONG_ATTEMPT_MS: &str = "10000";

fn report(scenario: &str, out: &JoinOutcome) {
    let c = out
        .connected()
        .map(|e| e.json.clone())
        .unwrap_or(Value::Null);
    eprintln!(
        "NETNS-RESULT scenario={scenario} path={} elapsed_ms={} wall_ms={}",
        c["path"],
        c["elapsed_ms"],
        out.wall.as_millis()
    );
}

/// Asserts `join` connected over `path` and exited 0.
fn assert_connected(out: &JoinOutcome, path: &str) -> Value {
    let c = out.connected().unwrap_or_else(|| {
        panic!(
            "join never connected (expected via {path}):\n{}",
            out.transcript()
        )
    });
    assert_eq!(
        c.json["path"],
        path,
        "connected over the wrong path:\n{}",
        out.transcript()
    );
    assert_eq!(c.json["mesh_name"], "Home Mesh", "{}", out.transcript());
    assert!(
        c.json["elapsed_ms"].is_u64(),
        "connected without elapsed_ms:\n{}",
        out.transcript()
    );
    assert_eq!(
        out.code(),
        Some(0),
        "join --once must exit 0 after connecting:\n{}",
        out.transcript()
    );
    c.json.clone()
}

/// STUN through the home router's NAT (coturn's own client, no atmosphere code involved):
/// the mapped address must be the router's outside address. `turnutils_stunclient` ships
/// with coturn.
fn stun_mapped(topo: &Topology, node: Node) -> String {
    let out = topo.run(
        node,
        Path::new("turnutils_stunclient"),
        &["-p", "3478", STUN_IP],
        Duration::from_secs(10),
    );
    let line = out
        .stdout
        .lines()
        .find(|l| l.contains("reflexive addr"))
        .unwrap_or_else(|| {
            panic!(
                "no STUN answer from {node:?}:\n{}\n{}",
                out.stdout, out.stderr
            )
        });
    line.rsplit(' ')
        .next()
        .unwrap()
        .rsplit_once(':')
        .unwrap()
        .0
        .to_string()
}

/// A TCP connection from `from` to `addr`, answered by a listener in `to` on `listen`;
/// returns the peer address the listener saw, or the connect error.
fn tcp_probe(
    topo: &Topology,
    from: Node,
    addr: &str,
    to: Node,
    listen: &str,
) -> Result<String, String> {
    let listener = in_netns(topo.ns(to), || TcpListener::bind(listen))
        .unwrap()
        .unwrap();
    listener.set_nonblocking(true).unwrap();
    let target: std::net::SocketAddr = addr.parse().unwrap();
    let conn = in_netns(topo.ns(from), move || {
        TcpStream::connect_timeout(&target, Duration::from_millis(1500))
    })
    .unwrap();
    match conn {
        Ok(_s) => {
            for _ in 0..100 {
                if let Ok((_, peer)) = listener.accept() {
                    return Ok(peer.ip().to_string());
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            Err("connected but the listener saw nothing".into())
        }
        Err(e) => Err(e.to_string()),
    }
}

#[test]
fn topology_nat_port_forward_and_stun_behave_like_real_routers() {
    let _g = serial();
    let mut topo = TopologyBuilder::new("topo").port_forward(true).build();
    topo.start_stun();
    // STUN from the host sees the home router's WAN; from the phone, the cell router's.
    assert_eq!(stun_mapped(&topo, Node::HomeHost), HOME_WAN_IP);
    assert_eq!(stun_mapped(&topo, Node::Phone), CELL_WAN_IP);
    // The port forward reaches the host, and the host sees the cell router's address (NAT).
    let seen = tcp_probe(
        &topo,
        Node::Phone,
        &format!("{HOME_WAN_IP}:{HOST_PORT}"),
        Node::HomeHost,
        "0.0.0.0:11451",
    );
    assert_eq!(seen.as_deref(), Ok(CELL_WAN_IP));
    // The LAN address is not reachable from cellular (the internet black-holes it)...
    let lan = tcp_probe(
        &topo,
        Node::Phone,
        &format!("{HOST_IP}:{HOST_PORT}"),
        Node::HomeHost,
        "0.0.0.0:11451",
    );
    assert!(
        lan.is_err(),
        "the host's LAN address must not be reachable from cellular: {lan:?}"
    );
    // ...but is from the home Wi-Fi, without NAT.
    let home = tcp_probe(
        &topo,
        Node::HomePhone,
        &format!("{HOST_IP}:{HOST_PORT}"),
        Node::HomeHost,
        "0.0.0.0:11451",
    );
    assert_eq!(home.as_deref(), Ok(HOME_PHONE_IP));
    // A process can only start inside its own namespace: the guard checks it.
    let who = topo.run(
        Node::HomeHost,
        Path::new("ip"),
        &["netns", "identify"],
        Duration::from_secs(5),
    );
    assert_eq!(who.stdout.trim(), topo.ns(Node::HomeHost));
    let refused = topo.guard_probe(Node::HomeHost, Node::Phone);
    assert_eq!(
        refused.status.and_then(|s| s.code()),
        Some(GUARD_EXIT),
        "guard let a process start in the wrong namespace: {refused:?}"
    );
    assert!(refused.stderr.contains("refusing"), "{refused:?}");
    assert!(topo.guard_probe(Node::Phone, Node::Phone).success());
}

#[test]
fn topology_without_forward_black_holes_and_cgnat_maps_to_carrier_address() {
    let _g = serial();
    let mut topo = TopologyBuilder::new("topocg")
        .host_behind_cgnat(true)
        .build();
    topo.start_stun();
    assert_eq!(stun_mapped(&topo, Node::HomeHost), CGNAT_OUTSIDE_IP);
    let public = tcp_probe(
        &topo,
        Node::Phone,
        &format!("{CGNAT_OUTSIDE_IP}:{HOST_PORT}"),
        Node::HomeHost,
        "0.0.0.0:11451",
    );
    assert!(
        public.is_err(),
        "no port forward: the public address must not reach the host: {public:?}"
    );
}

/// A topology with coturn, optionally the relay, a running host and one minted invite.
struct Scene {
    topo: Topology,
    host: NsHost,
    relay: Option<ProcId>,
    invite: Invite,
    /// `GET /api/network` once discovery finished.
    network: Value,
}

fn scene(name: &str, forward: bool, cgnat: bool, relay: bool, uses: Option<u32>) -> Scene {
    let mut topo = TopologyBuilder::new(name)
        .port_forward(forward)
        .host_behind_cgnat(cgnat)
        .build();
    topo.start_stun();
    let relay = relay.then(|| topo.start_relay());
    let host = topo.start_host(relay.is_some());
    let network = topo.wait_host_ready(&host, Duration::from_secs(30));
    let invite = topo.mint(&host, uses);
    Scene {
        topo,
        host,
        relay,
        invite,
        network,
    }
}

impl Scene {
    fn join(&mut self, from: Node, extra: &[&str]) -> JoinOutcome {
        let link = self.invite.token.qr_data.clone();
        let mut args = vec!["--name", "phone"];
        args.extend_from_slice(extra);
        self.topo.join(from, &link, &args, Duration::from_secs(40))
    }

    /// The invite must carry every path the host really has, with the addresses the
    /// simulated network gives it.
    fn assert_invite_endpoints(&self) {
        let e = &self.invite.token.endpoints;
        let raw = &self.invite.raw;
        assert_eq!(
            e.local.as_deref(),
            Some(format!("ws://{HOST_IP}:{HOST_PORT}").as_str()),
            "local endpoint: {raw:#}"
        );
        let public = format!("ws://{}:{HOST_PORT}", self.topo.host_public_ip());
        if self.topo.has_port_forward() || self.relay.is_none() {
            assert_eq!(
                e.public.as_deref(),
                Some(public.as_str()),
                "the public endpoint must be the router's outside address found by STUN: {raw:#}\nhost log:\n{}",
                self.topo.output(self.host.proc)
            );
        } else {
            // No forward: the relay's dial-back found the public endpoint unreachable, so
            // the invite leaves it out (the snapshot still names it, with the verdict).
            assert_eq!(
                self.network["reachability"]["state"], "unreachable",
                "{:#}",
                self.network
            );
            assert_eq!(self.network["endpoints"]["public"], public.as_str());
            assert_eq!(e.public, None, "public left out of the invite: {raw:#}");
        }
        if self.relay.is_some() {
            let relay = e
                .relay
                .as_deref()
                .unwrap_or_else(|| panic!("no relay endpoint in the invite: {raw:#}"));
            assert!(
                relay.starts_with(&format!("{}/mesh/", Topology::relay_url())),
                "relay endpoint {relay} is not on the configured relay"
            );
        }
    }
}

#[test]
fn phone_on_home_lan_connects_via_local() {
    let _g = serial();
    let mut s = scene("lan", false, false, true, None);
    s.assert_invite_endpoints();
    let out = s.join(Node::HomePhone, &["--attempt-timeout-ms", LONG_ATTEMPT_MS]);
    report("home-lan", &out);
    assert_connected(&out, "local");
}

#[test]
fn phone_on_cellular_with_port_forward_connects_via_public() {
    let _g = serial();
    let mut s = scene("fwd", true, false, true, None);
    s.assert_invite_endpoints();
    let info = &s.invite.token.network_info;
    assert_eq!(
        info.public_ip.as_deref(),
        Some(HOME_WAN_IP),
        "{:#}",
        s.invite.raw
    );
    assert!(
        info.is_behind_nat,
        "the host is behind the home router's NAT: {:#}",
        s.invite.raw
    );
    assert_eq!(s.network["cgnat"], false, "no CGNAT here: {:#}", s.network);
    let out = s.join(Node::Phone, &["--attempt-timeout-ms", LONG_ATTEMPT_MS]);
    report("cellular+forward", &out);
    assert_connected(&out, "public");
    // The LAN address is unreachable from cellular: it was tried and lost (or cancelled).
    assert!(
        out.find("trying", "local").is_some(),
        "{}",
        out.transcript()
    );
}

#[test]
fn phone_on_cellular_without_forward_connects_via_relay_and_never_tries_public() {
    let _g = serial();
    let mut s = scene("relay", false, false, true, None);
    // The dial-back found no forward: the invite has no `public` for the phone to waste an
    // attempt on (before the check existed, the phone tried it and staggered past it).
    s.assert_invite_endpoints();
    let out = s.join(Node::Phone, &["--attempt-timeout-ms", LONG_ATTEMPT_MS]);
    report("cellular+relay", &out);
    let c = assert_connected(&out, "relay");
    assert!(
        out.find("trying", "public").is_none(),
        "public is not in the invite, yet it was tried:\n{}",
        out.transcript()
    );
    let local = out
        .find("trying", "local")
        .unwrap_or_else(|| panic!("local never tried:\n{}", out.transcript()));
    let relay = out
        .find("trying", "relay")
        .unwrap_or_else(|| panic!("relay never tried:\n{}", out.transcript()));
    let connected = out.connected().unwrap();
    // The LAN attempt black-holes from cellular: the client must stagger past it instead
    // of waiting out its 10 s deadline, and the relay must then answer within a second.
    let staggered = relay.at.saturating_sub(local.at);
    assert!(
        staggered < Duration::from_secs(2),
        "relay attempt started {staggered:?} after local: it waited for the dead path\n{}",
        out.transcript()
    );
    let after = connected.at.saturating_sub(relay.at);
    assert!(
        after < Duration::from_secs(1),
        "connected {after:?} after the relay attempt started (expected within a second)\n{}",
        out.transcript()
    );
    assert!(
        c["elapsed_ms"].as_u64().unwrap() < 10_000,
        "{}",
        out.transcript()
    );
}

#[test]
fn host_behind_cgnat_phone_on_cellular_connects_via_relay() {
    let _g = serial();
    let mut s = scene("cgnat", false, true, true, None);
    // STUN sees the carrier NAT's outside address: useless for a port forward.
    assert_eq!(
        s.invite.token.network_info.public_ip.as_deref(),
        Some(CGNAT_OUTSIDE_IP),
        "{:#}",
        s.invite.raw
    );
    let out = s.join(Node::Phone, &["--attempt-timeout-ms", LONG_ATTEMPT_MS]);
    report("cgnat", &out);
    assert_connected(&out, "relay");
}

#[test]
fn host_behind_cgnat_is_flagged_in_network_info_and_netcheck() {
    let _g = serial();
    let s = scene("cgflag", false, true, false, None);
    let netcheck = s.topo.run_atmosphere(
        Node::HomeHost,
        &["netcheck", "--json", "--stun-server", STUN_ADDR],
        Duration::from_secs(30),
    );
    let nc: Value = serde_json::from_str(netcheck.stdout.trim()).unwrap_or(Value::Null);
    assert!(
        s.network["cgnat"] == true || nc["cgnat"] == true,
        "the host is behind carrier-grade NAT (its router's WAN is {CGNAT_HOME_WAN_IP}, in 100.64.0.0/10), \
         but neither GET /api/network nor `netcheck --json` says cgnat: true. The host itself only has \
         {HOST_IP} and STUN reports {CGNAT_OUTSIDE_IP}, so finding the 100.64 hop needs a look at the path \
         (e.g. TTL-limited probes / ICMP time-exceeded, or asking the gateway via NAT-PMP/PCP).\n\
         /api/network = {:#}\nnetcheck = {}\n{}",
        s.network,
        netcheck.stdout,
        netcheck.stderr
    );
    // The person is told why a port forward will not help.
    let hint = s.network["hint"]
        .as_str()
        .unwrap_or_default()
        .to_lowercase();
    assert!(
        hint.contains("carrier") || hint.contains("cgnat"),
        "no CGNAT hint: {:#}",
        s.network
    );
}

#[test]
fn relay_down_no_forward_off_lan_fails_with_every_reason_within_the_deadline() {
    let _g = serial();
    let mut s = scene("down", false, false, true, None);
    s.assert_invite_endpoints();
    // The relay was up when the invite was minted, then goes down.
    let relay = s.relay.unwrap();
    s.topo.kill(relay);
    let out = s.join(Node::Phone, &["--attempt-timeout-ms", "3000"]);
    report("relay-down", &out);
    assert!(
        out.connected().is_none(),
        "nothing can work here:\n{}",
        out.transcript()
    );
    assert_eq!(
        out.code(),
        Some(1),
        "all paths failed must exit 1:\n{}",
        out.transcript()
    );
    // No forward: the dial-back left `public` out of the invite, so it is never tried.
    assert!(
        out.find("trying", "public").is_none(),
        "{}",
        out.transcript()
    );
    for path in ["local", "relay"] {
        let f = out
            .find("failed", path)
            .unwrap_or_else(|| panic!("no failed event for {path}:\n{}", out.transcript()));
        let reason = f.json["reason"].as_str().unwrap_or_default();
        assert!(
            !reason.trim().is_empty(),
            "failed {path} without a reason:\n{}",
            out.transcript()
        );
    }
    // Every attempt has a 3 s deadline and they start 250 ms apart: the client gives up
    // shortly after the last deadline, not much later.
    assert!(
        out.wall < Duration::from_millis(3000 + 2 * 250 + 2500),
        "took {:?} to give up:\n{}",
        out.wall,
        out.transcript()
    );
}

#[test]
fn host_restart_while_phone_is_on_relay_then_device_credential_rejoins() {
    let _g = serial();
    // A single-use invite: after the first join only the device credential can get in.
    let mut s = scene("restart", false, false, true, Some(1));
    let device_file = s.topo.dir().join("phone-device.json");
    let df = device_file.to_str().unwrap().to_string();
    let link = s.invite.token.qr_data.clone();
    let bg = s.topo.join_background(
        Node::Phone,
        &link,
        &[
            "--name",
            "phone",
            "--attempt-timeout-ms",
            LONG_ATTEMPT_MS,
            "--device-file",
            &df,
        ],
    );
    let first = bg
        .wait_for(Duration::from_secs(30), |e| e["event"] == "connected")
        .unwrap_or_else(|| panic!("first join never connected:\n{}", bg.transcript()));
    eprintln!(
        "NETNS-RESULT scenario=restart-first-join path={} elapsed_ms={}",
        first.json["path"], first.json["elapsed_ms"]
    );
    assert_eq!(first.json["path"], "relay", "{}", bg.transcript());
    // `join` stores the credential before it prints `connected`.
    assert!(
        device_file.exists(),
        "join --device-file stored no credential:\n{}",
        bg.transcript()
    );
    // It stays a member: a second later the session is still up.
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        !bg.events().iter().any(|e| e.json["event"] == "error"),
        "the relayed session dropped before the restart:\n{}",
        bg.transcript()
    );

    // The host restarts while the phone is connected through the relay.
    let mut host = s.host;
    s.topo.restart_host(&mut host);
    s.topo.wait_host_ready(&host, Duration::from_secs(30));
    s.host = host;
    std::thread::sleep(Duration::from_millis(500));
    eprintln!("background join after the restart:\n{}", bg.transcript());
    s.topo.kill(bg.id);

    // The invite is used up: without the credential, the host refuses.
    let refused = s.join(Node::Phone, &["--attempt-timeout-ms", LONG_ATTEMPT_MS]);
    assert_eq!(
        refused.code(),
        Some(1),
        "a used-up single-use invite must be refused:\n{}",
        refused.transcript()
    );
    assert!(
        refused
            .events
            .iter()
            .any(|e| e.json["event"] == "error" && e.json["code"] == "token_exhausted"),
        "expected token_exhausted:\n{}",
        refused.transcript()
    );

    // With the device credential, the phone's next join works (through the relay again).
    let again = s.join(
        Node::Phone,
        &[
            "--attempt-timeout-ms",
            LONG_ATTEMPT_MS,
            "--device-file",
            &df,
        ],
    );
    report("restart-rejoin", &again);
    assert_connected(&again, "relay");
    // Still one device, the same one, last seen over the relay (nothing was re-enrolled).
    let mesh = s.topo.host_api(&s.host, "/api/mesh");
    let devices = mesh["devices"].as_array().cloned().unwrap_or_default();
    assert_eq!(
        devices.len(),
        1,
        "the rejoin must reuse the device, not add one: {mesh:#}"
    );
    assert_eq!(devices[0]["path"], "relay", "{mesh:#}");
}
