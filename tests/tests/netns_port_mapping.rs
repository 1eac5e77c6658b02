//! Automatic port mapping against a real router daemon: Debian's miniupnpd (nftables build)
//! on the home router of the namespace topology (`tests/src/netns.rs`), with an unreserved
//! WAN address (11.11.0.2) that exists only inside the test's namespaces.
//!
//! - UPnP: the host maps TCP and UDP 11451 on its own, a phone on cellular joins via `public`
//!   with no manual port forward, and SIGTERM on the host removes the mapping (miniupnpd's
//!   lease and nft rules are gone).
//! - PCP and NAT-PMP against the same daemon with UPnP off, the host told which protocol.
//!
//! Needs root; fails (never skips) without it. Each run prints a `NETNS-RESULT` line with the
//! time from host start to `mapped`.

use atmosphere_tests::netns::*;
use serde_json::Value;
use std::time::{Duration, Instant};

/// Polls `/api/network` until `port_mapping.state` is `mapped`; returns it and the time.
fn wait_mapped(topo: &Topology, host: &NsHost, since: Instant) -> (Value, Duration) {
    loop {
        let net = topo.host_api(host, "/api/network");
        if net["port_mapping"]["state"] == "mapped" {
            return (net, since.elapsed());
        }
        if since.elapsed() > Duration::from_secs(30) {
            panic!(
                "no mapping after 30 s: {:#}\nhost log:\n{}",
                net["port_mapping"],
                topo.output(host.proc)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The phone on cellular joins with `invite`'s link; it must connect via `public`.
fn join_from_cellular_via_public(topo: &mut Topology, invite: &Invite) -> TimedEvent {
    let out = topo.join(
        Node::Phone,
        &invite.token.qr_data,
        &["--name", "phone", "--attempt-timeout-ms", "10000"],
        Duration::from_secs(40),
    );
    let c = out
        .connected()
        .unwrap_or_else(|| panic!("join never connected:\n{}", out.transcript()));
    assert_eq!(c.json["path"], "public", "{}", out.transcript());
    c.clone()
}

/// Polls `/api/network` until the relay's dial-back found `public` reachable; returns the
/// verdict and the time.
fn wait_reachable(
    topo: &Topology,
    host: &NsHost,
    public: &str,
    since: Instant,
) -> (Value, Duration) {
    loop {
        let net = topo.host_api(host, "/api/network");
        let r = &net["reachability"];
        if r["state"] == "reachable" && r["endpoint"] == public {
            return (r.clone(), since.elapsed());
        }
        if r["state"] == "unreachable" || since.elapsed() > Duration::from_secs(30) {
            panic!(
                "the mapped endpoint {public} was not verified reachable: {r:#}\nhost log:\n{}",
                topo.output(host.proc)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Starts a host with a relay (and `extra` flags) behind a miniupnpd router serving `serve`,
/// waits for the mapping, checks it, waits for the relay's dial-back to verify the mapped
/// endpoint, has a cellular phone join via `public`, then stops the host and checks the
/// mapping is gone. `protocol` is the JSON name expected.
fn map_join_and_remove(scenario: &str, serve: MiniUpnpd, extra: &[&str], protocol: &str) {
    let _g = serial();
    let mut topo = TopologyBuilder::new(scenario).miniupnpd(serve).build();
    topo.start_stun();
    topo.start_relay();
    topo.start_miniupnpd();
    assert_eq!(
        topo.miniupnpd_leases().trim(),
        "",
        "no mapping before the host runs"
    );

    let t0 = Instant::now();
    let host = topo.start_host_with(true, extra);
    let (net, took) = wait_mapped(&topo, &host, t0);
    eprintln!(
        "NETNS-RESULT scenario=port-mapping-{protocol} start_to_mapped_ms={}",
        took.as_millis()
    );
    let pm = &net["port_mapping"];
    assert_eq!(pm["protocol"], protocol, "{pm:#}");
    assert_eq!(pm["external_ip"], UPNP_WAN_IP, "{pm:#}");
    assert_eq!(pm["tcp_port"], HOST_PORT, "{pm:#}");
    assert_eq!(pm["udp_port"], HOST_PORT, "{pm:#}");
    assert!(pm["expires_at"].is_string(), "{pm:#}");
    let leases = topo.miniupnpd_leases();
    assert!(
        leases.contains(&format!("TCP:{HOST_PORT}:{HOST_IP}:{HOST_PORT}"))
            && leases.contains(&format!("UDP:{HOST_PORT}:{HOST_IP}:{HOST_PORT}")),
        "miniupnpd holds no TCP+UDP mapping for the host:\n{leases}"
    );

    // The mapping is the public endpoint: invites carry it, a phone on cellular uses it.
    let public = format!("ws://{UPNP_WAN_IP}:{HOST_PORT}");
    assert_eq!(net["endpoints"]["public"], public.as_str(), "{net:#}");
    // No manual forward exists: only the mapping can make the relay's dial-back succeed.
    let (verdict, took) = wait_reachable(&topo, &host, &public, t0);
    eprintln!(
        "NETNS-RESULT scenario=port-mapping-{protocol} start_to_reachable_ms={} detail={:?}",
        took.as_millis(),
        verdict["detail"]
    );
    let invite = topo.mint(&host, None);
    assert_eq!(
        invite.token.endpoints.public.as_deref(),
        Some(public.as_str()),
        "{:#}",
        invite.raw
    );
    let c = join_from_cellular_via_public(&mut topo, &invite);
    eprintln!(
        "NETNS-RESULT scenario=port-mapping-{protocol}-join path=public elapsed_ms={}",
        c.json["elapsed_ms"]
    );

    // A clean stop removes the mapping from the router.
    let t1 = Instant::now();
    topo.terminate(host.proc);
    let stopped = t1.elapsed();
    assert!(
        stopped < Duration::from_secs(3),
        "the host took {stopped:?} to stop"
    );
    let leases = topo.miniupnpd_leases();
    assert!(
        !leases.contains(HOST_IP),
        "the mapping outlived the host:\n{leases}\nhost log:\n{}",
        topo.output(host.proc)
    );
    let rules = topo.router_ruleset();
    assert!(
        !rules.contains("dnat ip to 192.168.1.10"),
        "miniupnpd's DNAT rule outlived the host:\n{rules}"
    );
    assert!(
        topo.output(host.proc).contains("port mappings removed"),
        "{}",
        topo.output(host.proc)
    );
}

#[test]
fn upnp_maps_the_host_a_cellular_phone_joins_via_public_and_sigterm_unmaps() {
    map_join_and_remove(
        "upnp",
        MiniUpnpd {
            upnp: true,
            nat_pmp_pcp: false,
        },
        &[],
        "upnp",
    );
}

#[test]
fn pcp_maps_the_host_and_a_cellular_phone_joins_via_public() {
    map_join_and_remove(
        "pcp",
        MiniUpnpd {
            upnp: false,
            nat_pmp_pcp: true,
        },
        &["--port-mapping-protocol", "pcp"],
        "pcp",
    );
}

#[test]
fn nat_pmp_maps_the_host_and_a_cellular_phone_joins_via_public() {
    map_join_and_remove(
        "natpmp",
        MiniUpnpd {
            upnp: false,
            nat_pmp_pcp: true,
        },
        &["--port-mapping-protocol", "nat-pmp"],
        "nat-pmp",
    );
}

#[test]
fn a_new_lan_address_is_mapped_again_and_a_cellular_phone_still_joins_via_public() {
    const NEW_IP: &str = "192.168.1.11";
    let _g = serial();
    let mut topo = TopologyBuilder::new("remap")
        .miniupnpd(MiniUpnpd {
            upnp: true,
            nat_pmp_pcp: false,
        })
        .build();
    topo.start_stun();
    topo.start_miniupnpd();
    let host = topo.start_host_with(false, &[]);
    wait_mapped(&topo, &host, Instant::now());
    assert!(
        topo.miniupnpd_leases()
            .contains(&format!("TCP:{HOST_PORT}:{HOST_IP}:{HOST_PORT}")),
        "{}",
        topo.miniupnpd_leases()
    );

    // The host's DHCP lease changes. The router must now forward to the new address; the
    // host notices on its next read of the default route (every 5 s) and maps again.
    topo.move_host_address(NEW_IP);
    let t = Instant::now();
    let to_new = |proto: &str| {
        topo.miniupnpd_leases()
            .lines()
            .find(|l| {
                l.starts_with(&format!("{proto}:"))
                    && l.contains(&format!(":{NEW_IP}:{HOST_PORT}:"))
            })
            .map(|l| l.split(':').nth(1).unwrap().parse::<u16>().unwrap())
    };
    let (tcp, udp) = loop {
        if let (Some(tcp), Some(udp)) = (to_new("TCP"), to_new("UDP")) {
            break (tcp, udp);
        }
        assert!(
            t.elapsed() < Duration::from_secs(45),
            "no mapping to the new address after 45 s:\n{}\nhost log:\n{}",
            topo.miniupnpd_leases(),
            topo.output(host.proc)
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    eprintln!(
        "NETNS-RESULT scenario=port-mapping-remap address_change_to_mapped_ms={} tcp={tcp} udp={udp}",
        t.elapsed().as_millis()
    );
    // The old mapping still holds port 11451 when the router refuses to delete a mapping
    // of an address the host no longer has (miniupnpd's secure mode); it lapses with its
    // lease. The new one then gets another external port, and that is what is advertised.
    let public = format!("ws://{UPNP_WAN_IP}:{tcp}");
    let net = loop {
        let net = topo.host_api(&host, "/api/network");
        if net["endpoints"]["public"] == public.as_str() {
            break net;
        }
        assert!(
            t.elapsed() < Duration::from_secs(50),
            "the public endpoint did not follow the new mapping: {net:#}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(net["port_mapping"]["state"], "mapped", "{net:#}");
    assert_eq!(net["port_mapping"]["tcp_port"], tcp, "{net:#}");
    assert_eq!(net["port_mapping"]["udp_port"], udp, "{net:#}");

    let invite = topo.mint(&host, None);
    join_from_cellular_via_public(&mut topo, &invite);
}

#[test]
fn a_router_that_starts_mapping_later_makes_public_reachable_and_back_in_invites() {
    let _g = serial();
    let mut topo = TopologyBuilder::new("late")
        .miniupnpd(MiniUpnpd {
            upnp: false,
            nat_pmp_pcp: true,
        })
        .build();
    topo.start_stun();
    topo.start_relay();
    // The router's mapping daemon is not running yet: nothing maps, nothing is forwarded.
    let host = topo.start_host_with(true, &["--port-mapping-protocol", "pcp"]);
    let net = topo.wait_host_ready(&host, Duration::from_secs(30));
    let public = format!("ws://{UPNP_WAN_IP}:{HOST_PORT}");
    assert_eq!(net["port_mapping"]["state"], "unavailable", "{net:#}");
    assert_eq!(net["reachability"]["state"], "unreachable", "{net:#}");
    assert_eq!(net["reachability"]["endpoint"], public.as_str(), "{net:#}");
    assert_eq!(topo.mint(&host, None).token.endpoints.public, None);

    // The daemon starts; the host's retry maps the port STUN already named, so the public
    // endpoint string does not change: the mapping itself must trigger the new check.
    topo.start_miniupnpd();
    let t = Instant::now();
    loop {
        let net = topo.host_api(&host, "/api/network");
        if net["reachability"]["state"] == "reachable" {
            assert_eq!(net["port_mapping"]["state"], "mapped", "{net:#}");
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(90),
            "the late mapping was never verified: {net:#}\nhost log:\n{}",
            topo.output(host.proc)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!(
        "NETNS-RESULT scenario=port-mapping-late daemon_start_to_reachable_ms={}",
        t.elapsed().as_millis()
    );
    let invite = topo.mint(&host, None);
    assert_eq!(
        invite.token.endpoints.public.as_deref(),
        Some(public.as_str())
    );
}

#[test]
fn netcheck_lists_what_the_router_offers_and_leaves_no_mapping() {
    let _g = serial();
    let mut topo = TopologyBuilder::new("pmcheck")
        .miniupnpd(MiniUpnpd {
            upnp: true,
            nat_pmp_pcp: true,
        })
        .build();
    topo.start_stun();
    topo.start_miniupnpd();
    let out = topo.run_atmosphere(
        Node::HomeHost,
        &["netcheck", "--json", "--stun-server", STUN_ADDR],
        Duration::from_secs(30),
    );
    assert!(out.success(), "{}\n{}", out.stdout, out.stderr);
    let report: Value = serde_json::from_str(out.stdout.trim()).expect("netcheck JSON");
    let probes = report["port_mapping"]
        .as_array()
        .expect("port_mapping list");
    let protocols: Vec<&str> = probes
        .iter()
        .map(|p| p["protocol"].as_str().unwrap())
        .collect();
    assert_eq!(protocols, ["upnp", "pcp", "nat-pmp"], "{report:#}");
    for p in probes {
        assert_eq!(p["available"], true, "{p:#}");
        assert_eq!(p["external_ip"], UPNP_WAN_IP, "{p:#}");
    }
    assert_eq!(
        topo.miniupnpd_leases().trim(),
        "",
        "netcheck must not keep a mapping"
    );

    // The table has a row per protocol; --no-port-mapping skips the probes.
    let table = topo.run_atmosphere(
        Node::HomeHost,
        &["netcheck", "--stun-server", STUN_ADDR],
        Duration::from_secs(30),
    );
    for label in ["UPnP", "PCP", "NAT-PMP"] {
        assert!(
            table
                .stdout
                .lines()
                .any(|l| l.trim_start().starts_with(label) && l.contains("available")),
            "no {label} row:\n{}",
            table.stdout
        );
    }
    let off = topo.run_atmosphere(
        Node::HomeHost,
        &[
            "netcheck",
            "--json",
            "--no-port-mapping",
            "--stun-server",
            STUN_ADDR,
        ],
        Duration::from_secs(30),
    );
    let report: Value = serde_json::from_str(off.stdout.trim()).expect("netcheck JSON");
    assert_eq!(report["port_mapping"], serde_json::json!([]), "{report:#}");
    assert_eq!(topo.miniupnpd_leases().trim(), "");
}
