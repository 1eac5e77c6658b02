//! Section 5: the host's memory, idle and with 10,000 joined devices connected.
//!
//! One invite with `max_uses: null`; each device dials `ws://127.0.0.1:PORT/`, joins with the
//! real handshake ([`Member::join`]) and then keeps reading its socket, as a real client
//! would: every later join is announced to every member online (so joining N members makes
//! the host send O(N²) `peer_joined` frames), and a member that stops reading is dropped by
//! the host as stalled. The host's RSS is read from `/proc/PID/status` at steps (1,000,
//! 2,000, 5,000, … devices), each once the host has gone quiet (its presence fan-out done).
//!
//! Devices dial from 25 per loopback source address (127.0.1.1, 127.0.1.2, …), under the
//! host's default per-address connection limit, so the host runs with its defaults. Their
//! sockets have small buffers (4 KiB read, no write buffering) so that 10,000 in-process
//! clients are affordable; the devices do not open what they read (the host's cost is the
//! same either way).

use crate::member::Member;
use crate::report::{kib, Report};
use crate::util::{rss_kib, wait_quiet};
use anyhow::{Context, Result};
use atmosphere_shared::api::TokenRequest;
use atmosphere_shared::Invite;
use atmosphere_tests::Host;
use futures_util::StreamExt;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// The goal of issue 11 for the host's RSS per connected device.
const GOAL_KIB_PER_DEVICE: f64 = 32.0;

/// Joins device `i` and returns the task that keeps draining its socket until aborted.
async fn join_device(url: String, invite: Invite, i: usize) -> Result<tokio::task::JoinHandle<()>> {
    // The host allows 32 open mesh sockets per source address (`--max-conns-per-ip`); 10,000
    // phones have many addresses, so the devices come from 127.0.1.1, 127.0.1.2, … (25 each).
    let group = i / 25;
    let src = Ipv4Addr::new(127, 0, 1 + (group / 250) as u8, 1 + (group % 250) as u8);
    let config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0);
    let m = Member::join(src, &url, config, &invite, &format!("bench-device-{i}"))
        .await
        .with_context(|| format!("device {i}"))?;
    let mut ws = m.ws;
    // Keep the device connected and reading (answering the host's keepalive pings).
    Ok(tokio::spawn(async move {
        while let Some(Ok(_)) = ws.next().await {}
    }))
}

/// The device counts at which the host's RSS is read, ending at `devices`.
fn steps(devices: usize) -> Vec<usize> {
    let mut s: Vec<usize> = [1000, 2000, 5000, 10_000, 20_000]
        .into_iter()
        .filter(|&n| n < devices)
        .collect();
    s.push(devices);
    s
}

/// Runs section 5 with `devices` joined devices.
pub async fn run(rep: &mut Report, devices: usize) -> Result<()> {
    let host = Host::start().await;
    let pid = host.proc.child.id();
    let inv = host
        .mint(&TokenRequest {
            label: Some("bench devices".into()),
            ..TokenRequest::unlimited()
        })
        .await;
    let invite = Invite::parse(&inv.qr_data).context("parsing the minted invite")?;
    wait_quiet(pid, Duration::from_secs(10)).await?;
    let idle = rss_kib(pid)? as f64;

    let started = Instant::now();
    let url = host.ws_url();
    let mut readers = Vec::new();
    let mut errors = Vec::new();
    let mut points: Vec<(usize, f64, f64)> = Vec::new(); // (devices, RSS KiB, seconds)
    let mut join_secs = 0.0;
    for target in steps(devices) {
        let from = readers.len() + errors.len();
        let mut joining = futures_util::stream::iter(from..target)
            .map(|i| join_device(url.clone(), invite.clone(), i))
            .buffer_unordered(32);
        while let Some(r) = joining.next().await {
            match r {
                Ok(t) => readers.push(t),
                Err(e) => errors.push(format!("{e:#}")),
            }
        }
        join_secs = started.elapsed().as_secs_f64();
        // Let the presence fan-out finish before reading memory.
        let settle = wait_quiet(pid, Duration::from_secs(120)).await?;
        let rss = rss_kib(pid)? as f64;
        eprintln!(
            "  {} devices joined ({} failed) in {join_secs:.1} s; quiet after {:.1} s more; host RSS {} ({:.1} KiB per device over idle)",
            readers.len(),
            errors.len(),
            settle.as_secs_f64(),
            kib(rss),
            (rss - idle) / readers.len().max(1) as f64
        );
        points.push((readers.len(), rss, join_secs));
    }
    let health = host.get_json("/health").await;
    let online = health["members_online"].as_u64();
    let (n, loaded, _) = points.last().copied().unwrap_or((0, idle, 0.0));
    let per_device = (loaded - idle) / n.max(1) as f64;
    // The slope between the first and the last step leaves out what the first joins cost
    // once (allocator arenas, the database's page cache warming up).
    let slope = match (points.first(), points.last()) {
        (Some(a), Some(b)) if b.0 > a.0 => Some((b.1 - a.1) / (b.0 - a.0) as f64),
        _ => None,
    };
    rep.fig(
        5,
        "Host RSS, idle (STUN disabled, one invite minted)",
        "— (reported)",
        kib(idle),
        None,
    );
    let mut first_errors = errors.clone();
    first_errors.truncate(3);
    rep.fig(
        5,
        format!("Host RSS per connected device, {devices} devices joined (handshake, sealed presence)"),
        format!("≤ {GOAL_KIB_PER_DEVICE:.0} KiB per device"),
        format!(
            "{per_device:.1} KiB per device over idle: {} with {n} connected{}; steps {}; {n} joined in {join_secs:.0} s{}{}",
            kib(loaded),
            slope
                .map(|s| format!(" (slope {s:.1} KiB per device from the first step)"))
                .unwrap_or_default(),
            points
                .iter()
                .map(|(d, r, _)| format!("{d}: {}", kib(*r)))
                .collect::<Vec<_>>()
                .join(", "),
            online
                .map(|o| format!(", host lists {o} online"))
                .unwrap_or_default(),
            if errors.is_empty() {
                String::new()
            } else {
                format!("; {} joins failed, e.g. {:?}", errors.len(), first_errors)
            }
        ),
        Some(errors.is_empty() && per_device <= GOAL_KIB_PER_DEVICE),
    );
    rep.raw(
        "host",
        serde_json::json!({"idle_rss_kib": idle, "joined": n, "join_secs": join_secs,
                           "steps": points.iter().map(|(d, r, s)| serde_json::json!({"devices": d, "rss_kib": r, "secs": s})).collect::<Vec<_>>(),
                           "members_online": online, "errors": errors}),
    );
    for r in readers {
        r.abort();
    }
    drop(host);
    Ok(())
}
