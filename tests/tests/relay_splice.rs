//! The splice, end to end through a real `atmosphere relay` process: a member socket on one
//! side, the real `HostLink` (in this test process) on the other. Frames must pass both ways
//! unchanged, endings must propagate promptly, nothing may leak after churn, and limits must
//! be enforced with their documented codes.

mod relay_common;

use atmosphere_shared::relay_proto::{close, RelayMsg};
use atmosphere_tests::Relay;
use futures_util::{SinkExt, StreamExt};
use relay_common::*;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn frames_pass_both_ways_and_a_close_is_forwarded() {
    let relay = Relay::start(&[]).await;
    let mut host = TestHost::start(&relay.url()).await;
    let mut member = connect(&host.member_url()).await;
    // The member's first frame goes out before the host has even dialed in: it must not be lost.
    member
        .send(Message::text(r#"{"type":"join","path":"relay"}"#))
        .await
        .unwrap();
    let mut h = host.next_session().await;
    assert_eq!(
        next_data(&mut h).await,
        Message::text(r#"{"type":"join","path":"relay"}"#)
    );

    h.send(Message::text("hello member")).await.unwrap();
    assert_eq!(next_data(&mut member).await, Message::text("hello member"));
    member
        .send(Message::binary(vec![0u8, 1, 2, 255]))
        .await
        .unwrap();
    assert_eq!(
        next_data(&mut h).await,
        Message::binary(vec![0u8, 1, 2, 255])
    );
    let big = "x".repeat(100 * 1024);
    h.send(Message::text(big.clone())).await.unwrap();
    assert_eq!(next_data(&mut member).await, Message::text(big));

    // A ping from the member reaches the host as a ping.
    member
        .send(Message::Ping(b"are you there".to_vec().into()))
        .await
        .unwrap();
    let got_ping = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(Ok(m)) = h.next().await {
            if let Message::Ping(p) = m {
                return p.to_vec();
            }
        }
        Vec::new()
    })
    .await
    .unwrap();
    assert_eq!(got_ping, b"are you there".to_vec());

    // The member's close code and reason reach the host.
    member
        .close(Some(CloseFrame {
            code: CloseCode::Normal,
            reason: "bye".into(),
        }))
        .await
        .unwrap();
    let end = read_until_close(&mut h, Duration::from_secs(5)).await;
    assert_eq!(end.code, Some(1000), "{end:?}");
    assert_eq!(end.reason, "bye");

    let m = relay.metrics().await;
    assert!(
        !m.contains("atmosphere_relay_forwarded_frames_total{direction=\"client_to_host\"} 0\n"),
        "{m}"
    );
    assert!(
        !m.contains("atmosphere_relay_forwarded_bytes_total{direction=\"host_to_client\"} 0\n"),
        "{m}"
    );
}

#[tokio::test]
async fn when_one_side_vanishes_the_other_is_closed_promptly() {
    // A long idle timeout: only the vanishing may end these sessions.
    let relay = Relay::start(&["--idle-timeout", "300s"]).await;
    let mut host = TestHost::start(&relay.url()).await;

    // The member vanishes without a close frame (its TCP connection is simply dropped).
    let member = connect(&host.member_url()).await;
    let mut h = host.next_session().await;
    drop(member);
    let start = Instant::now();
    let end = read_until_close(&mut h, Duration::from_secs(10)).await;
    assert_eq!(end.code, Some(1001), "{end:?}");
    assert!(start.elapsed() < Duration::from_secs(10));

    // The host's data socket vanishes: the member is closed.
    let mut member = connect(&host.member_url()).await;
    let h = host.next_session().await;
    drop(h);
    let end = read_until_close(&mut member, Duration::from_secs(10)).await;
    assert_eq!(end.code, Some(1001), "{end:?}");
}

#[tokio::test]
async fn sessions_return_to_zero_after_200_sessions_of_churn() {
    let relay = Relay::start(&[]).await;
    let mut host = TestHost::start(&relay.url()).await;
    for i in 0..200 {
        let mut member = connect(&host.member_url()).await;
        let mut h = host.next_session().await;
        member.send(Message::text(format!("m{i}"))).await.unwrap();
        assert_eq!(next_data(&mut h).await, Message::text(format!("m{i}")));
        // Vary how sessions end: member closes, host closes, member vanishes, host vanishes.
        match i % 4 {
            0 => {
                member.close(None).await.unwrap();
                read_until_close(&mut h, Duration::from_secs(5)).await;
            }
            1 => {
                h.close(None).await.unwrap();
                read_until_close(&mut member, Duration::from_secs(5)).await;
            }
            2 => drop(member),
            _ => drop(h),
        }
    }
    let start = Instant::now();
    let h = loop {
        let h = relay.health().await;
        if h["sessions"] == 0 && h["connections"] == 1 {
            break h;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "sessions leaked: {h}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(h["meshes"], 1, "{h}");
    let m = relay.metrics().await;
    assert!(
        m.contains("atmosphere_relay_sessions_spliced_total 200"),
        "{m}"
    );
}

#[tokio::test]
async fn frame_over_the_limit_is_refused_with_4413() {
    let relay = Relay::start(&["--max-frame-bytes", "4096"]).await;
    let mut host = TestHost::start(&relay.url()).await;
    let mut member = connect(&host.member_url()).await;
    let mut h = host.next_session().await;
    // Within the limit passes...
    member.send(Message::text("y".repeat(4000))).await.unwrap();
    assert_eq!(next_data(&mut h).await, Message::text("y".repeat(4000)));
    // ...over it closes the sender with 4413 and tells the other side why.
    let _ = member.send(Message::text("z".repeat(5000))).await;
    let end = read_until_close(&mut member, Duration::from_secs(5)).await;
    assert_eq!(end.code, Some(close::TOO_LARGE), "{end:?}");
    let end = read_until_close(&mut h, Duration::from_secs(5)).await;
    assert_eq!(end.code, Some(close::TOO_LARGE), "{end:?}");
    let m = relay.metrics().await;
    assert!(
        m.contains("atmosphere_relay_refusals_total{reason=\"too_large\",code=\"4413\"} 1"),
        "{m}"
    );
}

#[tokio::test]
async fn member_gets_timeout_when_the_host_never_dials_in() {
    let relay = Relay::start(&["--accept-timeout", "300ms"]).await;
    // A registered host that ignores session notices.
    let key = new_key();
    let mut control = register_ok(&relay.url(), &key).await;
    let mut member = connect(&format!("{}/mesh/{}", relay.url(), mesh_of(&key))).await;
    assert!(matches!(
        next_relay_msg(&mut control).await,
        RelayMsg::Session { .. }
    ));
    let end = read_until_close(&mut member, Duration::from_secs(10)).await;
    assert_eq!(end.code, Some(close::TIMEOUT), "{end:?}");
    assert!(
        end.texts
            .first()
            .is_some_and(|t| t.contains("\"code\":\"timeout\"")),
        "{end:?}"
    );
    assert_eq!(relay.health().await["sessions"], 0);
}

/// Dials a data socket and expects a plain HTTP refusal (no upgrade): its status and the
/// `error` of its JSON body.
async fn data_socket_refusal(url: &str, secret: Option<&str>) -> (u16, serde_json::Value) {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::Error;
    let mut req = url.into_client_request().unwrap();
    if let Some(s) = secret {
        req.headers_mut()
            .insert("authorization", format!("Bearer {s}").parse().unwrap());
    }
    match tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::connect_async(req),
    )
    .await
    .expect("the relay answered in time")
    {
        Err(Error::Http(resp)) => {
            let body = resp.body().clone().unwrap_or_default();
            let body: serde_json::Value = serde_json::from_slice(&body)
                .unwrap_or_else(|e| panic!("body is not JSON ({e}): {body:?}"));
            (resp.status().as_u16(), body)
        }
        Ok(_) => panic!("the relay upgraded a data socket it should have refused"),
        Err(e) => panic!("unexpected error: {e}"),
    }
}

/// F10: the data socket's session id and secret are checked before the WebSocket upgrade:
/// a wrong or missing secret, an unknown session and a session of another mesh get a plain
/// HTTP refusal with a JSON body, never an upgraded socket; a source that keeps failing is
/// answered 429; the right secret still gets its socket.
#[tokio::test]
async fn data_socket_needs_the_session_secret() {
    let relay = Relay::start(&[]).await;
    let key = new_key();
    let mesh = mesh_of(&key);
    let mut control = register_ok(&relay.url(), &key).await;
    let mut member = connect(&format!("{}/mesh/{mesh}", relay.url())).await;
    let RelayMsg::Session {
        session_id, secret, ..
    } = next_relay_msg(&mut control).await
    else {
        panic!()
    };
    let data_url = format!("{}/mesh/{mesh}/session/{session_id}", relay.url());
    let (status, body) = data_socket_refusal(&data_url, None).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("bad_signature")),
        "{body}"
    );
    let (status, body) = data_socket_refusal(&data_url, Some("00")).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("bad_signature")),
        "{body}"
    );
    assert!(
        body["message"].as_str().unwrap().contains("secret"),
        "{body}"
    );
    // An unknown session id is 404.
    let unknown = format!("{}/mesh/{mesh}/session/00ff", relay.url());
    let (status, body) = data_socket_refusal(&unknown, Some(&secret)).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (404, Some("host_offline")),
        "{body}"
    );
    // Another mesh's path for this session is 400.
    let other = format!(
        "{}/mesh/{}/session/{session_id}",
        relay.url(),
        unknown_mesh()
    );
    let (status, body) = data_socket_refusal(&other, Some(&secret)).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("bad_request")),
        "{body}"
    );
    // Past ten failed proofs from one source, its failures are answered 429...
    for _ in 0..7 {
        data_socket_refusal(&data_url, Some("00")).await;
    }
    let (status, body) = data_socket_refusal(&data_url, Some("00")).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (429, Some("too_many")),
        "{body}"
    );
    assert_eq!(
        relay.health().await["connections"],
        2,
        "no data socket was ever opened"
    );
    // ...but the right secret is still admitted, and the session splices.
    let mut ws = {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let mut req = data_url.as_str().into_client_request().unwrap();
        req.headers_mut()
            .insert("authorization", format!("Bearer {secret}").parse().unwrap());
        tokio_tungstenite::connect_async(req).await.unwrap().0
    };
    ws.send(Message::text("hi")).await.unwrap();
    assert_eq!(next_data(&mut member).await, Message::text("hi"));
}

#[tokio::test]
async fn sessions_per_mesh_are_limited() {
    let relay = Relay::start(&["--max-sessions-per-mesh", "2"]).await;
    let mut host = TestHost::start(&relay.url()).await;
    let _m1 = connect(&host.member_url()).await;
    let _h1 = host.next_session().await;
    let _m2 = connect(&host.member_url()).await;
    let _h2 = host.next_session().await;
    let mut m3 = connect(&host.member_url()).await;
    let end = read_until_close(&mut m3, Duration::from_secs(5)).await;
    assert_eq!(end.code, Some(close::TOO_MANY), "{end:?}");
}

#[tokio::test]
async fn host_link_reconnects_after_the_relay_restarts() {
    let mut relay = Relay::start(&[]).await;
    let mut host = TestHost::start(&relay.url()).await;
    relay.restart().await;
    // The link notices, backs off, reconnects: members reach the host again.
    host.wait_connected(Duration::from_secs(20)).await;
    let start = Instant::now();
    let mut member = loop {
        let mut m = connect(&host.member_url()).await;
        m.send(Message::text("again")).await.unwrap();
        // Right after the restart the old registration may still be re-establishing.
        match tokio::time::timeout(Duration::from_secs(3), host.sessions.recv()).await {
            Ok(Some((mut h, _))) => {
                assert_eq!(next_data(&mut h).await, Message::text("again"));
                break m;
            }
            _ => assert!(
                start.elapsed() < Duration::from_secs(20),
                "no session after restart"
            ),
        }
    };
    member.close(None).await.unwrap();
}

/// Resident memory of a process in KiB (from /proc).
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap()
}

#[tokio::test]
async fn a_side_that_stops_reading_slows_its_peer_and_relay_memory_stays_bounded() {
    let relay = Relay::start(&["--idle-timeout", "300s"]).await;
    let mut host = TestHost::start(&relay.url()).await;
    let member = connect(&host.member_url()).await;
    let mut h = host.next_session().await;
    let (mut tx, _rx) = member.split();
    let rss_before = rss_kib(relay.proc.child.id());

    // The host side reads nothing. The member writes 64 KiB frames for two seconds: without
    // backpressure the relay would buffer all of it (gigabytes on loopback).
    let frame = vec![7u8; 64 * 1024];
    let mut sent: u64 = 0;
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        loop {
            if tx.send(Message::binary(frame.clone())).await.is_err() {
                break;
            }
            sent += frame.len() as u64;
        }
    })
    .await;
    let grown_kib = rss_kib(relay.proc.child.id()).saturating_sub(rss_before);
    eprintln!("accepted {sent} bytes from the member; relay RSS grew {grown_kib} KiB");
    assert!(
        sent < 64 * 1024 * 1024,
        "the member pushed {sent} bytes at a peer that reads nothing: no backpressure"
    );
    assert!(
        grown_kib < 32 * 1024,
        "relay RSS grew by {grown_kib} KiB while its peer was not reading"
    );

    // Once the host reads, everything that was accepted arrives, in order and intact.
    let mut got: u64 = 0;
    while got < sent {
        match next_data(&mut h).await {
            Message::Binary(b) => {
                assert!(b.iter().all(|&x| x == 7));
                got += b.len() as u64;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(got, sent);
}

/// While a session is spliced, the relay holds three sockets: the host's control socket, the
/// member and the host's data socket. `/health` and `/metrics` must count all of them (the
/// data socket lives on in the splice after its upgrade handler hands it over), and none
/// once the session ended.
#[tokio::test]
async fn a_spliced_session_counts_its_data_socket_until_it_ends() {
    let relay = Relay::start(&[]).await;
    let mut host = TestHost::start(&relay.url()).await;
    let mut member = connect(&host.member_url()).await;
    let mut h = host.next_session().await;
    member.send(Message::text("hi")).await.unwrap();
    assert_eq!(next_data(&mut h).await, Message::text("hi"));

    let health = relay.health().await;
    assert_eq!(health["sessions"], 1, "{health}");
    assert_eq!(
        health["connections"], 3,
        "control + member + data: {health}"
    );
    let m = relay.metrics().await;
    assert!(
        m.contains("atmosphere_relay_connections{kind=\"data\"} 1\n"),
        "{m}"
    );

    member.close(None).await.unwrap();
    read_until_close(&mut h, Duration::from_secs(5)).await;
    let start = Instant::now();
    loop {
        let health = relay.health().await;
        if health["sessions"] == 0 && health["connections"] == 1 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "leaked: {health}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let m = relay.metrics().await;
    assert!(
        m.contains("atmosphere_relay_connections{kind=\"data\"} 0\n"),
        "{m}"
    );
}

/// A burst of members through the relay: every one is spliced to the host. The host link
/// dials a bounded number of data sockets at once; the notices beyond that must wait (the
/// link stops reading its control socket), not be dropped to the relay's accept deadline.
#[tokio::test]
async fn a_burst_of_2000_members_is_spliced_every_one() {
    const MEMBERS: usize = 2000;
    // A long accept deadline: a member that was not picked up would otherwise pass the test
    // by luck of timing; limits high enough that only the host link can lose someone.
    let relay = Relay::start(&[
        "--max-sessions-per-mesh",
        "5000",
        "--max-conns-per-ip",
        "5000",
        "--max-unanswered-per-ip",
        "5000",
        "--accept-timeout",
        "60s",
    ])
    .await;
    let mut host = TestHost::start(&relay.url()).await;
    let url = host.member_url();
    let members: Vec<_> = (0..MEMBERS)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move {
                let mut m = connect(&url).await;
                // Spliced means the host's greeting arrives; a refusal closes the socket.
                match m.next().await {
                    Some(Ok(Message::Text(t))) if t.as_str() == "hello" => Ok(m),
                    other => Err(format!("{other:?}")),
                }
            })
        })
        .collect();
    // The host side: greet every relayed session and count them.
    let greeter = tokio::spawn(async move {
        let mut datas = Vec::new();
        while datas.len() < MEMBERS {
            let Some((mut h, _)) = host.sessions.recv().await else {
                break;
            };
            h.send(Message::text("hello")).await.unwrap();
            datas.push(h);
        }
        (host, datas)
    });
    let mut refused = Vec::new();
    let mut spliced = Vec::new();
    for m in members {
        match m.await.unwrap() {
            Ok(m) => spliced.push(m),
            Err(e) => refused.push(e),
        }
    }
    assert!(
        refused.is_empty(),
        "{} of {MEMBERS} members were not spliced, e.g. {:?}",
        refused.len(),
        refused.first()
    );
    let (_host, datas) = greeter.await.unwrap();
    assert_eq!(datas.len(), MEMBERS);
    assert_eq!(relay.health().await["sessions"], MEMBERS as u64);
}
