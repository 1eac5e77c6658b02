//! Membership scales: 10,000 members online at once (in-process clients on loopback, each
//! with its own Noise session), then a new member joins through the relay and gets the
//! whole presence snapshot, paged, within the frame limit. Before presence was paged, the
//! `joined` of a new member failed with "frame too large" at about 640 members, after its
//! invite use and device row were committed.
//!
//! `ATMOSPHERE_SCALE_MEMBERS` overrides the count (e.g. for a quick local run). The host's
//! RSS per member is printed (the benchmark in docs/BENCHMARKS.md reads it; no timing or
//! memory figure is asserted here).

mod host_support;

use atmosphere_shared::api::TokenRequest;
use atmosphere_shared::handshake::{
    ClientHandshake, Entropy, HostExpectation, JoinProof, JoinRequest, StaticSecret,
};
use atmosphere_shared::wire::DeviceInfo;
use atmosphere_shared::PathKind;
use atmosphere_tests::{Host, Relay};
use futures_util::{SinkExt, StreamExt};
use host_support::{joined_id, Member};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

/// Lets this process and the host it spawns hold one socket per member.
fn raise_fd_limit(need: u64) {
    let mut l = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain syscalls on a local struct.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut l), 0);
        l.rlim_cur = l.rlim_max;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &l), 0);
    }
    assert!(
        l.rlim_cur >= need,
        "this test needs {need} open files per process; the hard limit is {} (raise it with ulimit -Hn)",
        l.rlim_cur
    );
}

/// One quiet member: joins with the invite, then only drains what the host sends (it
/// answers pings while reading) until the test ends. Small socket buffers keep 10,000 of
/// them affordable in one process.
async fn quiet_member(url: String, token: String, i: usize) -> tokio::task::JoinHandle<()> {
    let config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0);
    let (mut ws, _) = tokio_tungstenite::connect_async_with_config(&url, Some(config), false)
        .await
        .unwrap_or_else(|e| panic!("member {i}: connect failed: {e}"));
    let request = JoinRequest {
        proof: JoinProof::Invite {
            token,
            device: DeviceInfo {
                name: format!("member {i}"),
                platform: "test".into(),
            },
        },
        path: PathKind::Local,
    };
    let (client, msg1) = ClientHandshake::start(
        HostExpectation::TrustOnFirstUse,
        &request,
        &StaticSecret::from_bytes(rand::random()),
        Entropy::new(rand::random()),
    )
    .unwrap();
    ws.send(Message::Binary(msg1.into())).await.unwrap();
    let msg2 = next_binary(&mut ws, i).await;
    let done = client
        .read_host_hello(&msg2)
        .unwrap_or_else(|e| panic!("member {i}: {e}"));
    ws.send(Message::Binary(done.message.into())).await.unwrap();
    let mut channel = done.channel;
    let verdict = channel
        .open(&next_binary(&mut ws, i).await)
        .unwrap()
        .expect("the verdict is the host's first frame");
    let verdict: serde_json::Value = serde_json::from_slice(&verdict).unwrap();
    joined_id(&verdict);
    tokio::spawn(async move { while let Some(Ok(_)) = ws.next().await {} })
}

async fn next_binary<S>(ws: &mut S, i: usize) -> Vec<u8>
where
    S: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    loop {
        match tokio::time::timeout(Duration::from_secs(60), ws.next()).await {
            Ok(Some(Ok(Message::Binary(b)))) => return b.to_vec(),
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
            other => panic!("member {i}: expected a binary frame, got {other:?}"),
        }
    }
}

/// The host's resident memory, from /proc.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn ten_thousand_members_online_and_a_new_member_joins_through_the_relay() {
    let members: usize = std::env::var("ATMOSPHERE_SCALE_MEMBERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    raise_fd_limit(members as u64 + 1000);
    let relay = Relay::start(&[]).await;
    let cap = (members + 100).to_string();
    let host = Host::start_with(
        &["--relay-url", &relay.url(), "--max-conns-per-ip", &cap],
        &[],
    )
    .await;
    let inv = host.mint(&TokenRequest::unlimited()).await;
    let rss_before = rss_kib(host.proc.child.id());

    let started = Instant::now();
    let url = host.ws_url();
    let mut drains = Vec::with_capacity(members);
    let mut pending = futures_util::stream::iter(0..members)
        .map(|i| quiet_member(url.clone(), inv.token.clone(), i))
        .buffer_unordered(32);
    while let Some(drain) = pending.next().await {
        drains.push(drain);
        if drains.len() % 1000 == 0 {
            eprintln!(
                "{} members online after {:?}",
                drains.len(),
                started.elapsed()
            );
        }
    }
    let rss_after = rss_kib(host.proc.child.id());
    eprintln!(
        "{members} members online in {:?}; host RSS {} KiB -> {} KiB: {:.1} KiB per member",
        started.elapsed(),
        rss_before,
        rss_after,
        (rss_after.saturating_sub(rss_before)) as f64 / members as f64
    );

    // A new member through the relay: joined, then the whole snapshot in several pages.
    host.wait_relay_connected(Duration::from_secs(30)).await;
    let late = host.mint(&TokenRequest::default()).await;
    let relay_url = late.endpoints.relay.clone().unwrap();
    let (mut newcomer, first) = Member::join_token(&relay_url, &late.token, "newcomer").await;
    joined_id(&first);
    let mut seen = 0;
    let mut pages = 0;
    loop {
        let page = newcomer.next_of_type("peers").await;
        pages += 1;
        seen += page["peers"].as_array().unwrap().len();
        if page.get("more") != Some(&serde_json::Value::Bool(true)) {
            break;
        }
    }
    assert_eq!(seen, members, "the snapshot lists every member online");
    assert!(
        members < 1000 || pages > 1,
        "{members} members fit one page?"
    );
    // And every member online was told about the newcomer: the session is live.
    let mesh = host.get_json("/api/mesh").await;
    let online = mesh["devices"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["online"] == true)
        .count();
    assert_eq!(online, members + 1);
    for d in drains {
        d.abort();
    }
}
