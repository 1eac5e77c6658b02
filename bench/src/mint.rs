//! Section 3: invite minting latency, `POST /api/mesh/token` as an admin client sees it
//! (one keep-alive HTTP connection, one request at a time).
//!
//! Warm: 1,000 mints after 50 unmeasured ones, with STUN disabled and with a STUN server
//! that never answers (discovery has finished by then either way). Cold: the first mint
//! right after the host answers `/health`, on a fresh host whose only STUN server is a
//! loopback UDP socket that reads and drops every request — the worst case for the first
//! discovery, which minting must not wait on for longer than its deadline.

use crate::report::{ms, Report};
use crate::util::{median, percentile};
use anyhow::{bail, Result};
use atmosphere_server::discovery::DEFAULT_STUN_DEADLINE;
use atmosphere_shared::api::TokenRequest;
use atmosphere_tests::Host;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A loopback UDP "STUN server" that reads and drops everything; counts what it got.
struct SilentStun {
    port: u16,
    got: Arc<AtomicU64>,
    _task: tokio::task::JoinHandle<()>,
}

impl SilentStun {
    async fn start() -> Result<SilentStun> {
        let s = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
        let port = s.local_addr()?.port();
        let got = Arc::new(AtomicU64::new(0));
        let g = got.clone();
        let task = tokio::spawn(async move {
            let mut buf = [0u8; 2048];
            while s.recv_from(&mut buf).await.is_ok() {
                g.fetch_add(1, Ordering::Relaxed);
            }
        });
        Ok(SilentStun {
            port,
            got,
            _task: task,
        })
    }
}

/// One timed mint (ms).
async fn mint(client: &reqwest::Client, host: &Host, secret: &str) -> Result<f64> {
    let t = Instant::now();
    let r = client
        .post(format!("{}/api/mesh/token", host.base()))
        .bearer_auth(secret)
        .json(&TokenRequest::unlimited())
        .send()
        .await?;
    let status = r.status();
    let _ = r.bytes().await?;
    if !status.is_success() {
        bail!("mint answered {status}");
    }
    Ok(t.elapsed().as_secs_f64() * 1e3)
}

async fn warm(host: &Host, n: usize) -> Result<Vec<f64>> {
    let client = reqwest::Client::new();
    let secret = host.admin_secret();
    for _ in 0..50 {
        mint(&client, host, &secret).await?;
    }
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        v.push(mint(&client, host, &secret).await?);
    }
    Ok(v)
}

/// Runs section 3 with `cold_runs` fresh hosts for the cold case.
pub async fn run(rep: &mut Report, cold_runs: usize) -> Result<()> {
    let deadline_ms = DEFAULT_STUN_DEADLINE.as_secs_f64() * 1e3;
    let mut raw = serde_json::Map::new();

    // Warm, STUN disabled.
    let host = Host::start().await;
    let v = warm(&host, 1000).await?;
    drop(host);
    let (p50, p99) = (percentile(&v, 50.0), percentile(&v, 99.0));
    rep.fig(
        3,
        "Invite minting, warm, STUN disabled (1,000 requests)",
        "p50 < 1 ms",
        format!(
            "p50 {} · p99 {} · max {}",
            ms(p50),
            ms(p99),
            ms(percentile(&v, 100.0))
        ),
        Some(p50 < 1.0),
    );
    raw.insert("warm_no_stun_ms".into(), serde_json::json!(v));

    // Cold (first mint after start) and then warm, STUN server silent.
    let mut cold = Vec::new();
    let mut since_spawn = Vec::new();
    let mut stun_packets = 0;
    let mut warm_silent = Vec::new();
    for i in 0..cold_runs {
        let stun = SilentStun::start().await?;
        let addr = format!("127.0.0.1:{}", stun.port);
        let spawned = Instant::now();
        let host = Host::start_with(&[], &[("ATMOSPHERE_STUN_SERVERS", &addr)]).await;
        let client = reqwest::Client::new();
        let secret = host.admin_secret();
        let t = mint(&client, &host, &secret).await?;
        since_spawn.push(spawned.elapsed().as_secs_f64() * 1e3);
        cold.push(t);
        if i == 0 {
            // Once is enough for the warm figure with a dead STUN server configured.
            tokio::time::sleep(Duration::from_millis(100)).await;
            warm_silent = warm(&host, 1000).await?;
        }
        stun_packets += stun.got.load(Ordering::Relaxed);
        drop(host);
    }
    let worst = cold.iter().cloned().fold(0.0, f64::max);
    rep.fig(
        3,
        format!("Invite minting, cold: first mint after start, STUN server silent ({cold_runs} fresh hosts)"),
        format!("never longer than the discovery deadline ({})", ms(deadline_ms)),
        format!(
            "median {} · worst {} (first mint finished {} after spawning the host, median; the silent STUN server got {stun_packets} requests)",
            ms(median(&cold)),
            ms(worst),
            ms(median(&since_spawn))
        ),
        Some(worst <= deadline_ms),
    );
    let (p50, p99) = (
        percentile(&warm_silent, 50.0),
        percentile(&warm_silent, 99.0),
    );
    rep.fig(
        3,
        "Invite minting, warm, STUN server silent (1,000 requests)",
        "p50 < 1 ms",
        format!("p50 {} · p99 {}", ms(p50), ms(p99)),
        Some(p50 < 1.0),
    );
    raw.insert(
        "cold_silent_stun".into(),
        serde_json::json!({"mint_ms": cold, "since_spawn_ms": since_spawn,
                           "stun_requests": stun_packets, "deadline_ms": deadline_ms}),
    );
    raw.insert("warm_silent_stun_ms".into(), serde_json::json!(warm_silent));
    rep.raw("mint", serde_json::Value::Object(raw));
    Ok(())
}
