//! `atmosphere netcheck` as a person runs it, against a real coturn STUN server on
//! loopback. Every run names its STUN servers (flag or env): never the public defaults.

use atmosphere_tests::coturn::{has_ipv6_loopback, silent_udp, Coturn};
use atmosphere_tests::{bin_path, free_port};
use serde_json::Value;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// Runs `atmosphere netcheck ARGS` with `ATMOSPHERE_STUN_SERVERS=stun_env` (so even a run
/// without `--stun-server` stays on loopback) and no relay from the environment.
fn netcheck(args: &[&str], stun_env: &str) -> Output {
    Command::new(bin_path())
        .arg("netcheck")
        .args(args)
        .env("ATMOSPHERE_STUN_SERVERS", stun_env)
        .env("ATMOSPHERE_NO_PORT_MAPPING", "1")
        .env_remove("ATMOSPHERE_RELAY_URL")
        .env("RUST_LOG", "warn")
        .output()
        .expect("run atmosphere netcheck")
}

fn json_of(out: &Output) -> Value {
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "netcheck should exit 0\nstdout: {text}\nstderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "--json prints one JSON object: {text}");
    serde_json::from_str(lines[0]).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

#[test]
fn json_reports_the_probe_with_rtt_and_mapped_address() {
    let stun = Coturn::start();
    let out = netcheck(
        &[
            "--json",
            "--stun-server",
            &stun.server_arg(),
            "--local-ip",
            "127.0.0.1",
        ],
        "none",
    );
    let j = json_of(&out);
    let probes = j["probes"].as_array().expect("probes array");
    assert_eq!(probes.len(), 1, "{j:#}");
    let p = &probes[0];
    assert_eq!(p["server"], stun.stun_source(), "{j:#}");
    assert!(p["rtt_ms"].is_u64(), "an answered probe has an RTT: {j:#}");
    assert!(p["error"].is_null(), "{j:#}");
    let mapped: std::net::SocketAddr = p["mapped"]
        .as_str()
        .expect("mapped")
        .parse()
        .expect("ip:port");
    assert_eq!(
        mapped.ip().to_string(),
        "127.0.0.1",
        "coturn sees us on loopback"
    );
    assert_ne!(mapped.port(), 0);
    assert_eq!(j["public_ip"], "127.0.0.1", "{j:#}");
    assert_eq!(j["stun_source"], stun.stun_source(), "{j:#}");
    assert_eq!(
        j["is_behind_nat"], false,
        "127.0.0.1 is one of our own addresses: {j:#}"
    );
    assert_eq!(j["local_ip"], "127.0.0.1");
    assert_eq!(j["endpoints"]["local"], "ws://127.0.0.1:11451");
    assert_eq!(j["endpoints"]["public"], "ws://127.0.0.1:11451");
    assert_eq!(
        j["mapping_varies"],
        Value::Null,
        "one answer cannot tell: {j:#}"
    );
    assert_eq!(j["cgnat"], false);
    assert_eq!(j["relay"]["status"], "not_configured", "{j:#}");
    assert!(j["local_ips"].is_array());
    assert!(
        j["checked_at"].as_str().is_some_and(|t| t.ends_with('Z')),
        "{j:#}"
    );
}

#[test]
fn two_servers_from_one_socket_see_the_same_mapping() {
    let (a, b) = (Coturn::start(), Coturn::start());
    let out = netcheck(
        &[
            "--json",
            "--stun-server",
            &a.server_arg(),
            "--stun-server",
            &b.server_arg(),
        ],
        "none",
    );
    let j = json_of(&out);
    let probes = j["probes"].as_array().unwrap();
    assert_eq!(probes.len(), 2, "{j:#}");
    assert!(
        probes.iter().all(|p| p["mapped"].is_string()),
        "both answer: {j:#}"
    );
    assert_eq!(
        probes[0]["mapped"], probes[1]["mapped"],
        "one socket → one mapping: {j:#}"
    );
    assert_eq!(j["mapping_varies"], false, "{j:#}");
    let src = j["stun_source"].as_str().unwrap();
    assert!(src == a.stun_source() || src == b.stun_source(), "{src}");
}

#[test]
fn unreachable_server_is_reported_and_exit_is_zero() {
    let (_swallow, silent) = silent_udp();
    let refused = format!("127.0.0.1:{}", atmosphere_tests::coturn::free_udp_port());
    let start = Instant::now();
    let out = netcheck(
        &[
            "--json",
            "--timeout-ms",
            "800",
            "--stun-server",
            &silent.to_string(),
            "--stun-server",
            &refused,
        ],
        "none",
    );
    let took = start.elapsed();
    let j = json_of(&out);
    assert!(
        took < Duration::from_secs(5),
        "bounded by --timeout-ms, took {took:?}"
    );
    assert_eq!(j["public_ip"], Value::Null, "{j:#}");
    assert_eq!(j["stun_source"], Value::Null);
    assert_eq!(
        j["endpoints"]["public"],
        Value::Null,
        "never invented: {j:#}"
    );
    for p in j["probes"].as_array().unwrap() {
        assert!(p["mapped"].is_null(), "{j:#}");
        let err = p["error"].as_str().expect("an error per dead server");
        assert!(err.contains("no answer within 800 ms"), "{err}");
    }
    assert!(
        j["hint"]
            .as_str()
            .unwrap_or("")
            .contains("No STUN server answered"),
        "{j:#}"
    );
}

#[test]
fn env_list_is_used_and_none_disables_stun() {
    let stun = Coturn::start();
    let j = json_of(&netcheck(&["--json"], &stun.server_arg()));
    assert_eq!(
        j["stun_source"],
        stun.stun_source(),
        "ATMOSPHERE_STUN_SERVERS is honoured: {j:#}"
    );

    let j = json_of(&netcheck(&["--json"], "none"));
    assert_eq!(
        j["probes"].as_array().unwrap().len(),
        0,
        "none disables STUN: {j:#}"
    );
    assert_eq!(j["public_ip"], Value::Null);
    assert_eq!(
        j["hint"],
        Value::Null,
        "no STUN is not a failure to warn about: {j:#}"
    );
}

#[test]
fn readable_table_names_every_section() {
    let stun = Coturn::start();
    let (_swallow, silent) = silent_udp();
    let relay = format!("ws://127.0.0.1:{}", free_port());
    let out = netcheck(
        &[
            "--timeout-ms",
            "600",
            "--stun-server",
            &stun.server_arg(),
            "--stun-server",
            &silent.to_string(),
            "--relay-url",
            &relay,
        ],
        "none",
    );
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(out.status.code(), Some(0), "{text}");
    for want in [
        "advertised local IP",
        "interface addresses",
        &format!("127.0.0.1 (from {})", stun.stun_source()),
        &format!("stun:{silent}"),
        "no answer within 600 ms",
        "NAT mapping",
        "carrier-grade NAT",
        &relay,
        "unreachable",
    ] {
        assert!(text.contains(want), "table lacks {want:?}:\n{text}");
    }
    assert!(text.contains(" ms"), "RTT shown:\n{text}");
}

#[test]
fn relay_unreachable_is_reported_with_the_error() {
    let relay = format!("ws://127.0.0.1:{}", free_port());
    let j = json_of(&netcheck(&["--json", "--relay-url", &relay], "none"));
    assert_eq!(j["relay"]["url"], relay.as_str());
    assert_eq!(j["relay"]["status"], "unreachable", "{j:#}");
    assert!(
        j["relay"]["error"]
            .as_str()
            .unwrap()
            .contains("TCP connect"),
        "{j:#}"
    );

    let j = json_of(&netcheck(
        &["--json", "--relay-url", "http://not-a-ws-url"],
        "none",
    ));
    assert_eq!(j["relay"]["status"], "invalid", "{j:#}");
}

#[test]
fn help_explains_flags_and_env() {
    let out = Command::new(bin_path())
        .args(["netcheck", "--help"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for want in [
        "--stun-server",
        "ATMOSPHERE_STUN_SERVERS",
        "--relay-url",
        "ATMOSPHERE_RELAY_URL",
        "--json",
        "--timeout-ms",
        "probes",
    ] {
        assert!(text.contains(want), "--help lacks {want}:\n{text}");
    }
}

#[test]
fn ipv6_server_and_mixed_families() {
    if !has_ipv6_loopback() {
        eprintln!("skipped: this machine has no ::1");
        return;
    }
    let v6 = Coturn::start_on("::1".parse().unwrap());
    let v4 = Coturn::start();
    assert!(
        v6.stun_source().starts_with("stun:[::1]:"),
        "{}",
        v6.stun_source()
    );

    let j = json_of(&netcheck(
        &["--json", "--stun-server", &v6.server_arg()],
        "none",
    ));
    assert_eq!(j["public_ip"], "::1", "XOR-MAPPED-ADDRESS over IPv6: {j:#}");
    assert_eq!(j["stun_source"], v6.stun_source());
    let mapped: std::net::SocketAddr = j["probes"][0]["mapped"].as_str().unwrap().parse().unwrap();
    assert!(mapped.is_ipv6(), "{j:#}");
    assert!(
        j["endpoints"]["public"]
            .as_str()
            .unwrap()
            .starts_with("ws://[::1]:"),
        "IPv6 endpoint in brackets: {j:#}"
    );

    let j = json_of(&netcheck(
        &[
            "--json",
            "--stun-server",
            &v6.server_arg(),
            "--stun-server",
            &v4.server_arg(),
        ],
        "none",
    ));
    let probes = j["probes"].as_array().unwrap();
    assert!(
        probes.iter().all(|p| p["mapped"].is_string()),
        "both families answer: {j:#}"
    );
    assert_eq!(j["public_ip"], "127.0.0.1", "IPv4 answer preferred: {j:#}");
    assert_eq!(
        j["mapping_varies"],
        Value::Null,
        "one answer per family cannot be compared: {j:#}"
    );
}
