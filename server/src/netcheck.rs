//! `atmosphere netcheck`: one discovery round (the same code `serve` runs in the
//! background) plus a relay reachability check, printed as a table or as one JSON object.
//!
//! `--json` prints one [`Report`] (its shape, with every key, is in
//! [`atmosphere_shared::netcheck`]).
//!
//! The exit code is 0 whatever the network says: netcheck reports, it does not judge.

use crate::dial::{dial, DialError, DialOptions};
use crate::discovery::{self, DiscoveryConfig};
use atmosphere_shared::netcheck::{RelayCheck, RelayStatus, Report};
use std::net::IpAddr;
use std::process::ExitCode;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite;

const JSON_HELP: &str = "\
With --json, prints one JSON object:
  {\"local_ip\", \"local_ips\": [..], \"public_ip\", \"stun_source\", \"is_behind_nat\",
   \"mapping_varies\" (null with fewer than two answers), \"cgnat\", \"cgnat_hop\", \"hint\",
   \"path\": {\"target\": \"ip:port\", \"hops\": [{\"ttl\", \"addr\", \"destination\"}], \"error\"}
     (a short traceroute toward the first STUN server that answered; null without one),
   \"endpoints\": {\"local\", \"public\", \"relay\"},
   \"probes\": [{\"server\": \"stun:host:port\", \"mapped\": \"ip:port\", \"rtt_ms\", \"error\"}],
   \"relay\": {\"url\", \"status\": \"reachable|unreachable|not_configured|invalid\", \"error\",
             \"http_status\", \"connect_ms\", \"handshake_ms\"},
   \"port_mapping\": [{\"protocol\": \"upnp|pcp|nat-pmp\", \"available\", \"gateway\", \"external_ip\",
     \"error\"}] (each protocol probed, nothing kept; [] with --no-port-mapping),
   \"checked_at\": RFC 3339}
Missing values are null. The exit code is 0 whatever the network says.";

/// `atmosphere netcheck` flags.
#[derive(Debug, clap::Args)]
#[command(after_long_help = JSON_HELP)]
pub struct Args {
    #[command(flatten)]
    pub stun: crate::discovery::StunArgs,

    /// Relay to check: a TCP connect and a WebSocket handshake to this ws:// or wss:// URL
    /// (wss:// trusts the same roots as `serve`, including ATMOSPHERE_RELAY_CA).
    #[arg(long, value_name = "URL", env = "ATMOSPHERE_RELAY_URL")]
    pub relay_url: Option<String>,

    /// Print one JSON object instead of the table (shape in --help).
    #[arg(long)]
    pub json: bool,

    /// Deadline in milliseconds for the STUN round (all servers in parallel, with
    /// retransmits) and, separately, for the relay check (100..=60000). The path probe
    /// toward the STUN server that answered follows STUN and has its own 1.5 s limit.
    #[arg(long, value_name = "MS", default_value_t = 2000,
          value_parser = clap::value_parser!(u64).range(100..=60000))]
    pub timeout_ms: u64,

    /// Port the host listens on, used for the endpoints and the port-forward hint.
    #[arg(long, value_name = "PORT", default_value_t = 11451)]
    pub port: u16,

    /// Advertise this local IP instead of the default route's address.
    #[arg(long, value_name = "IP")]
    pub local_ip: Option<IpAddr>,

    /// Port a router forwards to this host, for the public endpoint (default: --port).
    #[arg(long, value_name = "PORT")]
    pub public_port: Option<u16>,

    #[command(flatten)]
    pub port_mapping: crate::port_mapping::PortMappingArgs,
}

fn ms(d: Duration) -> u64 {
    d.as_millis().min(u64::MAX as u128) as u64
}

/// The first `max` bytes of `s` or fewer, cut on a character boundary (never inside a
/// multi-byte character).
fn truncate_chars(s: &str, max: usize) -> &str {
    let mut cut = max.min(s.len());
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    &s[..cut]
}

/// Checks that a relay answers: a TCP connect, then the TLS and WebSocket handshake, with
/// the same dial (and the same `ATMOSPHERE_RELAY_CA` trust) `serve` uses for its relay
/// link, all inside `timeout`. A server that answers the upgrade with another HTTP status
/// is reachable (it is there and speaks HTTP); the status says what it answered.
pub async fn check_relay(relay_url: Option<&str>, timeout: Duration) -> RelayCheck {
    let Some(raw) = relay_url.map(str::trim).filter(|u| !u.is_empty()) else {
        return RelayCheck::not_configured();
    };
    if raw.len() > 2048 {
        return RelayCheck::failed(
            truncate_chars(raw, 64),
            RelayStatus::Invalid,
            "the relay URL is longer than 2048 bytes".into(),
            None,
        );
    }
    let start = Instant::now();
    let options = DialOptions {
        deadline: timeout,
        ..DialOptions::default()
    };
    let reachable = |status: u16, error: Option<String>, connected_after: Duration| RelayCheck {
        url: Some(raw.to_string()),
        status: RelayStatus::Reachable,
        error,
        http_status: Some(status),
        connect_ms: Some(ms(connected_after)),
        handshake_ms: Some(ms(start.elapsed())),
    };
    match dial(raw, &options).await {
        Ok(d) => {
            let mut ws = d.socket;
            tokio::spawn(async move {
                let _ = ws.close(None).await;
            });
            reachable(d.status, None, d.connected_after)
        }
        Err(DialError::Handshake {
            source: tungstenite::Error::Http(resp),
            connected_after,
        }) => reachable(
            resp.status().as_u16(),
            Some(format!(
                "the server answered the WebSocket upgrade with HTTP {}",
                resp.status()
            )),
            connected_after,
        ),
        Err(DialError::BadUrl(why)) => RelayCheck::failed(
            raw,
            RelayStatus::Invalid,
            format!("bad relay URL: {why}"),
            None,
        ),
        Err(e) => {
            let connect_ms = e.connected_after().map(ms);
            RelayCheck::failed(raw, RelayStatus::Unreachable, e.to_string(), connect_ms)
        }
    }
}

/// Runs the check and prints the report; exit 0.
pub async fn run(args: Args) -> ExitCode {
    let timeout = Duration::from_millis(args.timeout_ms);
    let mut cfg = DiscoveryConfig::new(args.port, args.stun.servers());
    cfg.stun_deadline = timeout;
    cfg.local_ip = args.local_ip;
    cfg.public_port = args.public_port;
    let protocols = args.port_mapping.protocols();
    let (snap, relay, port_mapping) = tokio::join!(
        discovery::discover_once(&cfg),
        check_relay(args.relay_url.as_deref(), timeout),
        crate::port_mapping::probe(&protocols)
    );
    let mut report = Report::new(snap, relay);
    report.port_mapping = port_mapping;
    if args.json {
        match serde_json::to_string(&report) {
            Ok(s) => println!("{s}"),
            Err(e) => {
                eprintln!("cannot encode the report: {e}");
                return ExitCode::from(1);
            }
        }
    } else {
        print!("{}", render_table(&report, cfg.stun_servers.is_empty()));
    }
    ExitCode::SUCCESS
}

fn yes_no(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

/// The human-readable table.
pub fn render_table(r: &Report, stun_disabled: bool) -> String {
    use std::fmt::Write;
    let mut o = String::new();
    let dash = "-".to_string();
    // The key column fits the longest server name or relay URL, so values line up.
    let width = r
        .probes
        .iter()
        .map(|p| p.server.chars().count())
        .chain(r.relay.url.iter().map(|u| u.chars().count()))
        .chain([22])
        .max()
        .unwrap_or(22)
        .min(60);
    let row = |o: &mut String, k: &str, v: &str| {
        let _ = writeln!(o, "  {k:<width$} {v}");
    };
    let _ = writeln!(o, "Local");
    row(
        &mut o,
        "advertised local IP",
        r.local_ip.as_ref().unwrap_or(&dash),
    );
    row(
        &mut o,
        "interface addresses",
        &if r.local_ips.is_empty() {
            dash.clone()
        } else {
            r.local_ips.join(", ")
        },
    );
    row(
        &mut o,
        "local endpoint",
        r.endpoints.local.as_ref().unwrap_or(&dash),
    );

    let _ = writeln!(o, "STUN");
    if stun_disabled {
        row(&mut o, "(disabled)", "no STUN server configured (none)");
    }
    for p in &r.probes {
        let v = match (&p.mapped, &p.error) {
            (Some(m), _) => format!("{m}  rtt {} ms", p.rtt_ms.unwrap_or(0)),
            (None, Some(e)) => format!("error: {e}"),
            (None, None) => "no answer".into(),
        };
        row(&mut o, &p.server, &v);
    }

    let _ = writeln!(o, "Public");
    let public = match (&r.public_ip, &r.stun_source) {
        (Some(ip), Some(src)) => format!("{ip} (from {src})"),
        (Some(ip), None) => ip.clone(),
        _ => "unknown".into(),
    };
    row(&mut o, "public IP", &public);
    row(
        &mut o,
        "public endpoint",
        r.endpoints.public.as_ref().unwrap_or(&dash),
    );
    row(&mut o, "behind NAT", yes_no(r.is_behind_nat));
    let mapping = match r.mapping_varies {
        Some(true) => "varies by destination (endpoint-dependent NAT)",
        Some(false) => "same for every server (endpoint-independent)",
        None => "unknown (needs two STUN answers)",
    };
    row(&mut o, "NAT mapping", mapping);
    let cgnat = match (&r.cgnat_hop, r.cgnat) {
        (Some(hop), _) => format!("yes (router {hop} on the path is in 100.64.0.0/10)"),
        (None, c) => yes_no(c).to_string(),
    };
    row(&mut o, "carrier-grade NAT", &cgnat);
    if let Some(h) = &r.hint {
        row(&mut o, "hint", h);
    }

    if let Some(p) = &r.path {
        let _ = writeln!(o, "Path to {}", p.target);
        for h in &p.hops {
            let addr = h.addr.as_deref().unwrap_or("* (no answer)");
            let note = if h.destination {
                "  (the STUN server)"
            } else if r.cgnat_hop.as_deref() == h.addr.as_deref() && h.addr.is_some() {
                "  (carrier-grade NAT, 100.64.0.0/10)"
            } else {
                ""
            };
            row(&mut o, &format!("hop {}", h.ttl), &format!("{addr}{note}"));
        }
        if let Some(e) = &p.error {
            row(&mut o, "note", e);
        }
    }

    let _ = writeln!(o, "Relay");
    let relay = match r.relay.status {
        RelayStatus::NotConfigured => {
            "not configured (--relay-url / ATMOSPHERE_RELAY_URL)".to_string()
        }
        RelayStatus::Reachable => {
            let mut s = format!(
                "reachable (HTTP {}, connect {} ms, handshake {} ms)",
                r.relay.http_status.unwrap_or(0),
                r.relay.connect_ms.unwrap_or(0),
                r.relay.handshake_ms.unwrap_or(0)
            );
            if let Some(e) = &r.relay.error {
                let _ = write!(s, ": {e}");
            }
            s
        }
        other => format!(
            "{}: {}",
            other.as_str(),
            r.relay.error.as_deref().unwrap_or("")
        ),
    };
    row(&mut o, r.relay.url.as_deref().unwrap_or("relay"), &relay);

    let _ = writeln!(o, "Port mapping");
    if r.port_mapping.is_empty() {
        row(&mut o, "(off)", "not probed (--no-port-mapping)");
    }
    for p in &r.port_mapping {
        let v = if p.available {
            format!(
                "available: gateway {}, external IP {}",
                p.gateway.as_deref().unwrap_or("?"),
                p.external_ip.as_deref().unwrap_or("?")
            )
        } else {
            format!("unavailable: {}", p.error.as_deref().unwrap_or("no answer"))
        };
        row(&mut o, p.protocol.label(), &v);
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use atmosphere_shared::api::{NetworkSnapshot, PathTrace};

    #[test]
    fn table_shows_the_carrier_nat_hop() {
        use atmosphere_shared::api::PathHop;
        let hop = |ttl: u8, addr: Option<&str>, destination: bool| PathHop {
            ttl,
            addr: addr.map(str::to_string),
            destination,
        };
        let snap = NetworkSnapshot {
            cgnat: true,
            cgnat_hop: Some("100.64.0.1".into()),
            path: Some(PathTrace {
                target: "203.0.113.10:3478".into(),
                hops: vec![
                    hop(1, Some("192.168.1.1"), false),
                    hop(2, Some("100.64.0.1"), false),
                    hop(3, None, false),
                    hop(4, Some("203.0.113.10"), true),
                ],
                error: None,
            }),
            ..Default::default()
        };
        let t = render_table(&Report::new(snap, RelayCheck::not_configured()), false);
        assert!(
            t.contains("yes (router 100.64.0.1 on the path is in 100.64.0.0/10)"),
            "{t}"
        );
        assert!(t.contains("Path to 203.0.113.10:3478"), "{t}");
        assert!(
            t.lines()
                .any(|l| l.contains("hop 2") && l.contains("100.64.0.1  (carrier-grade NAT")),
            "{t}"
        );
        assert!(
            t.lines()
                .any(|l| l.contains("hop 3") && l.contains("no answer")),
            "{t}"
        );
        assert!(
            t.lines()
                .any(|l| l.contains("hop 4") && l.contains("the STUN server")),
            "{t}"
        );
        let json = serde_json::to_value(Report::new(
            NetworkSnapshot::default(),
            RelayCheck::not_configured(),
        ))
        .unwrap();
        assert!(
            json["path"].is_null() && json["cgnat_hop"].is_null(),
            "{json}"
        );
    }

    #[test]
    fn long_urls_are_cut_on_a_character_boundary() {
        // "é" is two bytes: byte 64 falls inside one.
        let url = format!("ws://{}", "é".repeat(1100));
        assert!(!url.is_char_boundary(64));
        let cut = truncate_chars(&url, 64);
        assert_eq!(cut.len(), 63);
        assert!(url.starts_with(cut));
        assert_eq!(truncate_chars("short", 64), "short");
        assert_eq!(truncate_chars("ééé", 1), "");
    }

    #[tokio::test]
    async fn an_over_long_multi_byte_url_is_invalid_not_a_panic() {
        let url = format!("wss://relay.example/a/{}", "🛰".repeat(600));
        assert!(!url.is_char_boundary(64));
        let r = check_relay(Some(&url), Duration::from_secs(1)).await;
        assert_eq!(r.status, RelayStatus::Invalid);
        assert!(url.starts_with(r.url.as_deref().unwrap()));
        assert!(r.url.unwrap().len() <= 64);
    }

    #[tokio::test]
    async fn relay_check_states() {
        assert_eq!(
            check_relay(None, Duration::from_secs(1)).await.status,
            RelayStatus::NotConfigured
        );
        let bad = check_relay(Some("http://x"), Duration::from_secs(1)).await;
        assert_eq!(bad.status, RelayStatus::Invalid);
        assert!(bad.error.unwrap().contains("ws://"));
        // A port nobody listens on: refused, reported, not a panic.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let down = check_relay(
            Some(&format!("ws://127.0.0.1:{port}")),
            Duration::from_secs(2),
        )
        .await;
        assert_eq!(down.status, RelayStatus::Unreachable);
        assert!(down.error.unwrap().contains("TCP connect"));
    }

    #[tokio::test]
    async fn relay_check_real_websocket() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            if let Ok((s, _)) = l.accept().await {
                if let Ok(mut ws) = tokio_tungstenite::accept_async(s).await {
                    use futures_util::StreamExt;
                    while let Some(Ok(_)) = ws.next().await {}
                }
            }
        });
        let ok = check_relay(Some(&format!("ws://{addr}/")), Duration::from_secs(2)).await;
        assert_eq!(ok.status, RelayStatus::Reachable, "{ok:?}");
        assert_eq!(ok.http_status, Some(101));
    }

    #[tokio::test]
    async fn relay_check_black_hole_times_out() {
        let (addr, _keep) = crate::dial::testing::silent_server().await;
        let t = Instant::now();
        let r = check_relay(Some(&format!("ws://{addr}")), Duration::from_millis(300)).await;
        assert!(t.elapsed() < Duration::from_secs(2));
        assert_eq!(r.status, RelayStatus::Unreachable);
        assert!(
            r.error.unwrap().contains("handshake did not finish"),
            "timeout named"
        );
        assert!(r.connect_ms.is_some(), "TCP itself worked");
    }
}
