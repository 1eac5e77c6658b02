//! Section 5: the host's memory, idle and with 1,000 joined devices connected.
//!
//! One invite with `max_uses: null`; 1,000 WebSockets to `ws://127.0.0.1:PORT/` each send the
//! mesh protocol's `join` with it and wait for `joined`. Every device keeps reading (as a real
//! client would: presence updates for each later join arrive on every open socket), and the
//! host's RSS is read from `/proc/PID/status` once all are in. Devices dial from 25 per
//! loopback source address, under the host's default per-address connection limit.

use crate::report::{kib, Report};
use crate::util::{dial_from, rss_kib};
use anyhow::{bail, Context, Result};
use atmosphere_shared::api::TokenRequest;
use atmosphere_shared::wire::{DeviceInfo, JoinCredential, ServerMsg};
use atmosphere_shared::PathKind;
use atmosphere_tests::Host;
use futures_util::{SinkExt, StreamExt};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

/// Joins one device and returns a task that keeps reading its socket until aborted.
async fn join_device(url: String, token: String, i: usize) -> Result<tokio::task::JoinHandle<()>> {
    // The host allows 32 open mesh sockets per source address (`--max-conns-per-ip`), as a
    // home network would never need more; 1,000 phones have many addresses, so the devices
    // come from 127.0.1.1, 127.0.1.2, … (25 each) and the host keeps its default limits.
    let group = i / 25;
    let src = Ipv4Addr::new(127, 0, 1 + (group / 250) as u8, 1 + (group % 250) as u8);
    let mut ws = dial_from(src, &url).await?;
    let join = JoinCredential::Token {
        token,
        device: DeviceInfo {
            name: format!("bench-device-{i}"),
            platform: "bench".into(),
        },
    };
    ws.send(Message::text(join.join_frame(PathKind::Local)))
        .await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let m = tokio::time::timeout_at(deadline.into(), ws.next())
            .await
            .context("no joined within 30 s")?
            .context("host closed the socket")??;
        if let Message::Text(t) = m {
            match serde_json::from_str::<ServerMsg>(t.as_str()) {
                Ok(ServerMsg::Joined(_)) => break,
                Ok(ServerMsg::Error { code, message }) => {
                    bail!("host refused join: {code}: {message}")
                }
                _ => continue,
            }
        }
    }
    // Keep the device connected and reading (answering the host's keepalive pings).
    Ok(tokio::spawn(async move {
        while let Some(Ok(_)) = ws.next().await {}
    }))
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
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle = rss_kib(pid)? as f64;

    let started = Instant::now();
    let url = host.ws_url();
    let results: Vec<Result<tokio::task::JoinHandle<()>>> = futures_util::stream::iter(0..devices)
        .map(|i| join_device(url.clone(), inv.token.clone(), i))
        .buffer_unordered(32)
        .collect()
        .await;
    let join_secs = started.elapsed().as_secs_f64();
    let mut readers = Vec::new();
    let mut errors = Vec::new();
    for r in results {
        match r {
            Ok(t) => readers.push(t),
            Err(e) => errors.push(format!("{e:#}")),
        }
    }
    // Let the presence fan-out settle before reading memory.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let loaded = rss_kib(pid)? as f64;
    let health = host.get_json("/health").await;
    let online = health["members_online"].as_u64();
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
        format!("Host RSS with {devices} joined devices connected"),
        "— (reported)",
        format!(
            "{} ({} per device over idle); {} joined in {join_secs:.1} s{}{}",
            kib(loaded),
            kib((loaded - idle) / readers.len().max(1) as f64),
            readers.len(),
            online
                .map(|n| format!(", host lists {n} online"))
                .unwrap_or_default(),
            if errors.is_empty() {
                String::new()
            } else {
                format!("; {} joins failed, e.g. {:?}", errors.len(), first_errors)
            }
        ),
        None,
    );
    rep.raw(
        "host",
        serde_json::json!({"idle_rss_kib": idle, "loaded_rss_kib": loaded, "joined": readers.len(),
                           "join_secs": join_secs, "errors": errors}),
    );
    for r in readers {
        r.abort();
    }
    drop(host);
    Ok(())
}
