//! The relay's dial-back of the host's public endpoint on the simulated internet
//! (`tests/src/netns.rs`): without a port forward the home router drops the relay's
//! connection, so the host is `unreachable` and new invites leave `public` out; with the
//! forward the relay reaches it, `reachable`, and invites keep it.
//!
//! Needs root; runs serially with the other namespace suites. The forward scenario prints
//! the time from host start to a verified `reachable` as `NETNS-RESULT` lines
//! (`cargo test -- --nocapture`).

use atmosphere_tests::netns::*;
use serde_json::Value;
use std::time::{Duration, Instant};

/// Polls `/api/network` until the verdict is `want`; returns the network snapshot.
fn wait_reachability(topo: &Topology, host: &NsHost, want: &str, within: Duration) -> Value {
    let start = Instant::now();
    loop {
        let net = topo.host_api(host, "/api/network");
        if net["reachability"]["state"] == want {
            return net;
        }
        assert!(
            start.elapsed() < within,
            "reachability not {want} within {within:?}: {:#}\nhost log:\n{}",
            net["reachability"],
            topo.output(host.proc)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn without_a_forward_the_host_is_unreachable_and_invites_leave_public_out() {
    let _g = serial();
    let mut topo = TopologyBuilder::new("dbnofwd").port_forward(false).build();
    topo.start_stun();
    topo.start_relay();
    let start = Instant::now();
    let host = topo.start_host(true);
    let net = wait_reachability(&topo, &host, "unreachable", Duration::from_secs(30));
    eprintln!(
        "NETNS-RESULT scenario=dial-back-unreachable host_start_to_unreachable_ms={}",
        start.elapsed().as_millis()
    );
    let public = format!("ws://{HOME_WAN_IP}:{HOST_PORT}");
    let r = &net["reachability"];
    assert_eq!(r["endpoint"], public.as_str(), "{r:#}");
    // The home router's firewall drops unsolicited inbound traffic: the connect times out.
    assert_eq!(r["detail"], "timed out after 3 s", "{r:#}");
    assert_eq!(net["endpoints"]["public"], public.as_str(), "{net:#}");
    let invite = topo.mint(&host, None);
    let e = &invite.token.endpoints;
    assert_eq!(e.public, None, "{:#}", invite.raw);
    assert!(e.local.is_some() && e.relay.is_some(), "{:#}", invite.raw);
}

#[test]
fn with_a_forward_the_host_is_reachable_and_invites_keep_public() {
    let _g = serial();
    let mut topo = TopologyBuilder::new("dbfwd").port_forward(true).build();
    topo.start_stun();
    topo.start_relay();
    let public = format!("ws://{HOME_WAN_IP}:{HOST_PORT}");
    let mut host: Option<NsHost> = None;
    for run in 0..3 {
        // From spawning `serve` (a restart also stops the previous process first, a few
        // milliseconds) to the first verified `reachable`.
        let start = Instant::now();
        match host.as_mut() {
            None => host = Some(topo.start_host(true)),
            Some(h) => topo.restart_host(h),
        }
        let h = host.as_ref().unwrap();
        let net = wait_reachability(&topo, h, "reachable", Duration::from_secs(30));
        eprintln!(
            "NETNS-RESULT scenario=dial-back-reachable run={run} host_start_to_reachable_ms={}",
            start.elapsed().as_millis()
        );
        assert_eq!(net["reachability"]["endpoint"], public.as_str(), "{net:#}");
    }
    let host = host.unwrap();
    let invite = topo.mint(&host, None);
    assert_eq!(
        invite.token.endpoints.public.as_deref(),
        Some(public.as_str()),
        "{:#}",
        invite.raw
    );
}
