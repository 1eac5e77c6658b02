//! Mesh sessions against a real host process: joining with a token and a device credential,
//! every refusal code, presence and messages between two members, keepalive/idle handling,
//! bad input (each answered and closed while the host keeps serving others) and the join
//! rate limit.

mod host_support;

use atmosphere_shared::api::TokenRequest;
use atmosphere_shared::wire::MAX_FRAME_BYTES;
use atmosphere_tests::Host;
use futures_util::StreamExt;
use host_support::{joined_id, Member, Next, FRAME_WAIT};
use serde_json::{json, Value};
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

fn req(max_uses: Option<u32>, ttl_secs: Option<u64>) -> TokenRequest {
    TokenRequest {
        ttl_secs,
        max_uses: Some(max_uses),
        label: None,
    }
}

async fn device<'a>(mesh: &'a Value, id: &str) -> &'a Value {
    mesh["devices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["device_id"] == id)
        .unwrap_or_else(|| panic!("device {id} not in {mesh}"))
}

#[tokio::test]
async fn token_join_then_rejoin_with_the_device_credential() {
    let host = Host::start().await;
    let inv = host.mint(&TokenRequest::unlimited()).await;

    // Both WebSocket paths work: `/` (the bare ws://IP:PORT of v1 links) and `/api/ws`.
    let (mut m, joined) = Member::join_token(&host.ws_url(), &inv.token, "Pixel 8").await;
    let id = joined_id(&joined);
    let key = m.key();
    assert_eq!(joined["mesh_id"], inv.mesh_id.as_str());
    assert_eq!(joined["mesh_name"], "Home Mesh");
    // The member authenticated the host by its mesh key in the handshake.
    assert_eq!(m.host.as_ref().unwrap().mesh_id, inv.mesh_id);
    let peers = m.next_of_type("peers").await;
    assert_eq!(peers, json!({"type":"peers","peers":[]}));

    // The admin sees the device online with its path, and the invite used once.
    let mesh = host.get_json("/api/mesh").await;
    let d = device(&mesh, &id).await;
    assert_eq!(d["name"], "Pixel 8");
    assert_eq!(d["platform"], "test");
    assert_eq!(d["path"], "local");
    assert_eq!(d["online"], true);
    assert!(d["last_seen"].is_string());
    let i = mesh["invites"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["invite_id"] == inv.invite_id.as_str())
        .unwrap();
    assert_eq!(i["uses"], 1);
    // The device's secret never reached the host.
    assert!(!mesh.to_string().contains(&key));

    m.ws.close(None).await.unwrap();
    let mut offline = false;
    for _ in 0..50 {
        let mesh = host.get_json("/api/mesh").await;
        if device(&mesh, &id).await["online"] == false {
            offline = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(offline, "device still online after it closed");

    // Rejoin with the credential (on the other URL): same device, no new key.
    let (m2, again) = Member::rejoin(&format!("{}/api/ws", host.ws_url()), &id, &key).await;
    assert_eq!(joined_id(&again), id);
    assert_eq!(m2.key(), key);

    // A wrong key or an unknown id is refused (through the channel: the host's word).
    let (mut bad, first) = Member::rejoin(&host.ws_url(), &id, "wrong-key").await;
    assert_eq!(first["code"], "unknown_device", "{first}");
    assert!(bad.channel.is_some());
    bad.expect_closed(FRAME_WAIT).await;
    let (mut bad, first) = Member::rejoin(&host.ws_url(), "nosuchdevice", &key).await;
    assert_eq!(first["code"], "unknown_device", "{first}");
    bad.expect_closed(FRAME_WAIT).await;
}

#[tokio::test]
async fn each_refused_token_gets_its_own_code() {
    let host = Host::start().await;
    let url = host.ws_url();

    // Garbage and well-formed-but-unknown tokens.
    for t in [
        "hello",
        "ATM-",
        "ATM-AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        &"A".repeat(1_000),
    ] {
        let (mut m, first) = Member::join_token(&url, t, "x").await;
        assert_eq!(first["code"], "invalid_token", "{first}");
        assert!(m.channel.is_some(), "the refusal came through the channel");
        m.expect_closed(FRAME_WAIT).await;
    }

    // Expired.
    let short = host.mint(&req(None, Some(1))).await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let (mut m, first) = Member::join_token(&url, &short.token, "late").await;
    assert_eq!(first["code"], "token_expired", "{first}");
    m.expect_closed(FRAME_WAIT).await;

    // Exhausted: one use, second device refused.
    let once = host.mint(&req(Some(1), None)).await;
    let (_a, first) = Member::join_token(&url, &once.token, "first").await;
    joined_id(&first);
    let (mut b, first) = Member::join_token(&url, &once.token, "second").await;
    assert_eq!(first["code"], "token_exhausted", "{first}");
    b.expect_closed(FRAME_WAIT).await;

    // Revoked.
    let rev = host.mint(&TokenRequest::unlimited()).await;
    let r = host
        .admin(
            reqwest::Method::DELETE,
            &format!("/api/mesh/invites/{}", rev.invite_id),
        )
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    let (mut m, first) = Member::join_token(&url, &rev.token, "too late").await;
    assert_eq!(first["code"], "token_revoked", "{first}");
    m.expect_closed(FRAME_WAIT).await;

    // A person-typed token (lowercase, spaces) is accepted.
    let ok = host.mint(&TokenRequest::unlimited()).await;
    let typed = ok.token.to_lowercase().replacen("atm-", "atm- ", 1);
    let (_m, first) = Member::join_token(&url, &typed, "typed").await;
    joined_id(&first);

    // The refused devices were never created.
    let mesh = host.get_json("/api/mesh").await;
    assert_eq!(mesh["devices"].as_array().unwrap().len(), 2, "{mesh}");
    let metrics = reqwest::get(format!("{}/metrics", host.base()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for code in [
        "invalid_token",
        "token_expired",
        "token_exhausted",
        "token_revoked",
    ] {
        assert!(
            metrics.contains(&format!("atmosphere_refusals_total{{code=\"{code}\"}}")),
            "{metrics}"
        );
    }
}

#[tokio::test]
async fn presence_and_messages_between_members() {
    let host = Host::start().await;
    let inv = host.mint(&TokenRequest::unlimited()).await;
    let url = host.ws_url();

    let (mut a, ja) = Member::join_token(&url, &inv.token, "Alice").await;
    let a_id = joined_id(&ja);
    a.next_of_type("peers").await;
    let (mut b, jb) = Member::join_token(&url, &inv.token, "Bob").await;
    let b_id = joined_id(&jb);
    // Bob sees Alice in his peer list; Alice is told Bob arrived.
    let peers = b.next_of_type("peers").await;
    assert_eq!(peers.get("more"), None, "{peers}");
    let peers = peers["peers"].as_array().unwrap();
    assert_eq!(peers.len(), 1);
    assert_eq!(peers[0]["device_id"], a_id.as_str());
    assert_eq!(peers[0]["name"], "Alice");
    assert_eq!(peers[0]["path"], "local");
    let pj = a.next_of_type("peer_joined").await;
    assert_eq!(pj["peer"]["device_id"], b_id.as_str());
    assert_eq!(pj["peer"]["name"], "Bob");

    // Broadcast (to = null) reaches the others, not the sender.
    b.send(json!({"type":"send","to":null,"body":{"text":"hi all"}}))
        .await;
    let msg = a.next_of_type("message").await;
    assert_eq!(
        msg,
        json!({"type":"message","from":b_id,"body":{"text":"hi all"}})
    );
    // Direct message.
    a.send(json!({"type":"send","to":b_id,"body":"just you"}))
        .await;
    let msg = b.next_of_type("message").await;
    assert_eq!(msg["from"], a_id.as_str());
    assert_eq!(msg["body"], "just you");
    match b.next_within(Duration::from_millis(300)).await {
        Next::Silent => {}
        other => panic!("the sender's own broadcast must not echo back: {other:?}"),
    }
    let h: Value = reqwest::get(format!("{}/health", host.base()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(h["members_online"], 2);

    // Bob leaves: Alice is told.
    b.ws.close(None).await.unwrap();
    let pl = a.next_of_type("peer_left").await;
    assert_eq!(pl["device_id"], b_id.as_str());
    assert!(
        !host.proc.output().contains("panicked"),
        "{}",
        host.proc.output()
    );
}

#[tokio::test]
async fn bad_input_is_answered_and_closed_while_others_keep_working() {
    let host = Host::start_with(&[], &[("ATMOSPHERE_HANDSHAKE_TIMEOUT_MS", "600")]).await;
    let inv = host.mint(&TokenRequest::unlimited()).await;
    let url = host.ws_url();

    // A member that stays connected through all of this.
    let (mut alice, ja) = Member::join_token(&url, &inv.token, "Alice").await;
    let a_id = joined_id(&ja);
    alice.next_of_type("peers").await;

    // A plaintext first frame (the join of earlier versions): the handshake comes first.
    let mut m = Member::connect(&url).await;
    m.send(json!({"type":"join","token":inv.token,"device":{"name":"x"},"path":"local"}))
        .await;
    let e = m.expect_error("bad_request").await;
    assert!(e["message"].as_str().unwrap().contains("Noise"), "{e}");
    // A message 1 of the wrong size.
    let mut m = Member::connect(&url).await;
    m.send_binary(vec![1, 2, 3]).await.unwrap();
    m.expect_error("bad_request").await;
    // A message 3 that does not decrypt (after a real message 1).
    let mut m = Member::connect(&url).await;
    let request = atmosphere_shared::handshake::JoinRequest {
        proof: atmosphere_shared::handshake::JoinProof::Device {
            device_id: "d".into(),
        },
        path: atmosphere_shared::PathKind::Local,
    };
    let (_client, msg1) = atmosphere_shared::handshake::ClientHandshake::start(
        atmosphere_shared::handshake::HostExpectation::TrustOnFirstUse,
        &request,
        &atmosphere_shared::handshake::StaticSecret::from_bytes([3; 32]),
        atmosphere_shared::handshake::Entropy::new([4; 32]),
    )
    .unwrap();
    m.send_binary(msg1).await.unwrap();
    let msg2 = m.ws.next().await.unwrap().unwrap();
    assert!(
        matches!(msg2, Message::Binary(ref b) if b.len() == 192),
        "{msg2:?}"
    );
    m.send_binary(vec![7; 200]).await.unwrap();
    m.expect_error("bad_request").await;
    // Just over the frame limit: a clean too_large.
    let mut m = Member::connect(&url).await;
    m.send_text(format!(
        "{{\"type\":\"join\",\"token\":\"{}\"}}",
        "A".repeat(MAX_FRAME_BYTES)
    ))
    .await
    .unwrap();
    m.expect_error("too_large").await;
    // 2 MiB frame: refused at its header (never buffered); the socket is closed quickly.
    let mut m = Member::connect(&url).await;
    let _ = m.send_text("x".repeat(2 * 1024 * 1024)).await; // may fail once the host hangs up
    match m.next_within(FRAME_WAIT).await {
        Next::Json(v) => {
            eprintln!("2 MiB frame answered with {v}");
            assert_eq!(v["code"], "too_large", "{v}");
            m.expect_closed(FRAME_WAIT).await;
        }
        Next::Closed(why) => eprintln!("2 MiB frame: socket closed ({why})"),
        Next::Silent => panic!("a 2 MiB frame left the socket hanging"),
    }
    // No join within the (shortened) handshake deadline.
    let mut m = Member::connect(&url).await;
    let t0 = std::time::Instant::now();
    m.expect_error("timeout").await;
    assert!(
        t0.elapsed() < Duration::from_secs(4),
        "handshake deadline not enforced: {:?}",
        t0.elapsed()
    );
    // Bad input after joining ends that session only: plaintext, an unknown sealed
    // message, a frame that does not open.
    let (mut bob, jb) = Member::join_token(&url, &inv.token, "Bob").await;
    joined_id(&jb);
    bob.next_of_type("peers").await;
    bob.send_text("{\"type\":".into()).await.unwrap();
    bob.expect_error("bad_request").await;
    let (mut bob, _) = Member::join_token(&url, &inv.token, "Bob 2").await;
    bob.next_of_type("peers").await;
    bob.send(json!({"type":"teleport","to":"mars"})).await;
    bob.expect_error("bad_request").await;
    let (mut bob, _) = Member::join_token(&url, &inv.token, "Bob 3").await;
    bob.next_of_type("peers").await;
    bob.send_binary(vec![0; 64]).await.unwrap();
    // A broken channel cannot carry an answer: the host just closes.
    bob.expect_closed(FRAME_WAIT).await;

    // The host still serves: a new member joins and Alice still gets messages.
    let (mut carol, jc) = Member::join_token(&url, &inv.token, "Carol").await;
    let c_id = joined_id(&jc);
    carol
        .send(json!({"type":"send","to":a_id,"body":"still here?"}))
        .await;
    let msg = alice.next_of_type("message").await;
    assert_eq!(msg["from"], c_id.as_str());
    assert_eq!(msg["body"], "still here?");
    assert_eq!(host.get_json("/health").await["status"], "ok");
    assert!(
        !host.proc.output().contains("panicked"),
        "{}",
        host.proc.output()
    );
}

#[tokio::test]
async fn keepalive_pings_keep_a_member_and_silence_ends_it() {
    // Pings every 200 ms; 1 s without any frame closes the session.
    let host = Host::start_with(
        &[],
        &[
            ("ATMOSPHERE_PING_INTERVAL_MS", "200"),
            ("ATMOSPHERE_IDLE_TIMEOUT_MS", "1000"),
        ],
    )
    .await;
    let inv = host.mint(&TokenRequest::unlimited()).await;
    // A reading client answers pings (tungstenite does it while reading): it stays.
    let (mut m, j) = Member::join_token(&host.ws_url(), &inv.token, "awake").await;
    joined_id(&j);
    let mut pings = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_millis(2500);
    while tokio::time::Instant::now() < deadline {
        use futures_util::StreamExt;
        match tokio::time::timeout_at(deadline, m.ws.next()).await {
            Err(_) => break,
            Ok(Some(Ok(Message::Ping(_)))) => pings += 1,
            Ok(Some(Ok(Message::Binary(_)))) => {}
            other => panic!("session ended although the member answered pings: {other:?}"),
        }
    }
    assert!(pings >= 3, "host sent only {pings} pings in 2.5 s");

    // A client that never reads never answers pings: the host closes it after the idle time.
    let (mut quiet, j) = Member::join_token(&host.ws_url(), &inv.token, "asleep").await;
    let quiet_id = joined_id(&j);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let mesh = host.get_json("/api/mesh").await;
    let d = mesh["devices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["device_id"] == quiet_id.as_str())
        .unwrap();
    assert_eq!(
        d["online"], false,
        "an unresponsive member must be dropped after the idle timeout"
    );
    quiet.expect_closed(FRAME_WAIT).await;
}

#[tokio::test]
async fn token_guessing_from_one_address_is_rate_limited() {
    let host = Host::start().await;
    let url = host.ws_url();
    let good = host.mint(&TokenRequest::unlimited()).await;
    // Successful joins do not count.
    for i in 0..3 {
        let (_m, j) = Member::join_token(&url, &good.token, &format!("ok{i}")).await;
        joined_id(&j);
    }
    for _ in 0..10 {
        let (mut m, first) =
            Member::join_token(&url, "ATM-BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB", "guess").await;
        assert_eq!(first["code"], "invalid_token", "{first}");
        m.expect_closed(FRAME_WAIT).await;
    }
    // Now a further guess from this address is refused with its own code.
    let (mut m, first) =
        Member::join_token(&url, "ATM-CCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCC", "guess").await;
    assert_eq!(first["code"], "rate_limited", "{first}");
    m.expect_closed(FRAME_WAIT).await;
    // And it is logged.
    let mut logged = false;
    for _ in 0..20 {
        if host.proc.output().contains("rate limited") {
            logged = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(logged, "no rate-limit log line:\n{}", host.proc.output());
}

/// F7: behind a carrier NAT or a proxy many members share one address. One of them guessing
/// credentials must not lock the others out: a valid credential is admitted whatever others
/// from the same address did, while wrong ones stay rate limited.
#[tokio::test]
async fn valid_credentials_are_admitted_after_others_failed_from_the_same_address() {
    let host = Host::start().await;
    let url = host.ws_url();
    let inv = host.mint(&TokenRequest::unlimited()).await;
    let (m, j) = Member::join_token(&url, &inv.token, "phone").await;
    let id = joined_id(&j);
    let key = m.key();
    drop(m);

    // Someone else at 127.0.0.1 guesses: tokens and device keys, past the limit.
    for i in 0..12 {
        let (mut m, first) = if i % 2 == 0 {
            Member::join_token(&url, "ATM-BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB", "guess").await
        } else {
            Member::rejoin(&url, &id, "not-the-key").await
        };
        assert_eq!(first["type"], "error", "{first}");
        m.expect_closed(FRAME_WAIT).await;
    }
    // The guesser is still rate limited, for both kinds of credential.
    let (mut m, first) = Member::rejoin(&url, &id, "still-not-the-key").await;
    assert_eq!(first["code"], "rate_limited", "{first}");
    m.expect_closed(FRAME_WAIT).await;
    let (mut m, first) =
        Member::join_token(&url, "ATM-CCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCC", "guess").await;
    assert_eq!(first["code"], "rate_limited", "{first}");
    m.expect_closed(FRAME_WAIT).await;

    // The real member's rejoin from the same address gets in.
    let (mut m, first) = Member::rejoin(&url, &id, &key).await;
    assert_eq!(
        first["type"], "joined",
        "a valid rejoin was refused: {first}"
    );
    assert_eq!(first["device_id"], id.as_str());
    m.next_of_type("peers").await;
    // And so does a new member with a valid invite.
    let (_n, first) = Member::join_token(&url, &inv.token, "tablet").await;
    assert_eq!(
        first["type"], "joined",
        "a valid token join was refused: {first}"
    );
}

/// Removing a device ends its live session at once with a final `device_removed` error,
/// the others see it leave, and its key is refused from then on.
#[tokio::test]
async fn removing_a_device_closes_its_live_session_and_its_key_is_refused() {
    let host = Host::start().await;
    let url = host.ws_url();
    let inv = host.mint(&TokenRequest::unlimited()).await;
    let (mut gone, j) = Member::join_token(&url, &inv.token, "lost phone").await;
    let id = joined_id(&j);
    let key = gone.key();
    gone.next_of_type("peers").await;
    let (mut stay, _) = Member::join_token(&url, &inv.token, "laptop").await;
    stay.next_of_type("peers").await;
    gone.next_of_type("peer_joined").await;

    let r = host
        .admin(reqwest::Method::DELETE, &format!("/api/mesh/devices/{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(
        body,
        json!({"device_id": id, "removed": true, "was_online": true})
    );

    let err = gone.expect_error("device_removed").await;
    assert!(
        err["message"].as_str().unwrap().contains("removed"),
        "{err}"
    );
    let left = stay.next_of_type("peer_left").await;
    assert_eq!(left["device_id"], id.as_str());

    let (mut again, first) = Member::rejoin(&url, &id, &key).await;
    assert_eq!(first["code"], "unknown_device", "{first}");
    again.expect_closed(FRAME_WAIT).await;
    let mesh = host.get_json("/api/mesh").await;
    assert!(
        mesh["devices"]
            .as_array()
            .unwrap()
            .iter()
            .all(|d| d["device_id"] != id.as_str()),
        "{mesh}"
    );
}

#[tokio::test]
async fn a_member_that_stops_reading_is_dropped_without_slowing_the_others() {
    let host = Host::start().await;
    let inv = host.mint(&TokenRequest::unlimited()).await;
    let url = host.ws_url();
    let (mut alice, ja) = Member::join_token(&url, &inv.token, "Alice").await;
    joined_id(&ja);
    // Stalled: joins, then never reads again.
    let (_stalled, js) = Member::join_token(&url, &inv.token, "Stalled").await;
    let stalled_id = joined_id(&js);
    let (mut bob, jb) = Member::join_token(&url, &inv.token, "Bob").await;
    let b_id = joined_id(&jb);

    // ~48 MB of broadcasts: far more than the stalled member's queue and socket buffers.
    const N: usize = 800;
    let chunk = "m".repeat(60_000);
    let reader = tokio::spawn(async move {
        let mut got = 0;
        while got < N {
            let v = alice.next_of_type("message").await;
            assert_eq!(v["from"], b_id.as_str());
            got += 1;
        }
        got
    });
    for i in 0..N {
        bob.send(json!({"type":"send","to":null,"body":{"i":i,"pad":chunk}}))
            .await;
    }
    let got = tokio::time::timeout(Duration::from_secs(60), reader)
        .await
        .expect("Alice was held up")
        .unwrap();
    assert_eq!(got, N);

    let mut dropped = false;
    for _ in 0..100 {
        let mesh = host.get_json("/api/mesh").await;
        let d = mesh["devices"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["device_id"] == stalled_id.as_str())
            .unwrap();
        if d["online"] == false {
            dropped = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(dropped, "the stalled member was never dropped");
    assert!(
        host.proc.output().contains("cannot keep up"),
        "{}",
        host.proc.output()
    );
    assert!(!host.proc.output().contains("panicked"));
}

#[tokio::test]
async fn a_client_that_never_finishes_its_request_head_is_cut_off() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let host = Host::start_with(&[], &[("ATMOSPHERE_HANDSHAKE_TIMEOUT_MS", "600")]).await;
    // Slow-loris: a request line and one header, then silence.
    let mut slow = tokio::net::TcpStream::connect(("127.0.0.1", host.port))
        .await
        .unwrap();
    slow.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), slow.read_to_end(&mut buf)).await;
    assert!(
        read.is_ok(),
        "the host kept a half-sent request open for 10 s"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(400),
        "closed before the deadline"
    );
    // Meanwhile and afterwards the host serves everyone else.
    let inv = host.mint(&req(None, None)).await;
    let (_m, joined) = Member::join_token(&host.ws_url(), &inv.token, "after").await;
    assert_eq!(joined["type"], "joined");
}

#[tokio::test]
async fn too_many_sockets_from_one_address_are_turned_away_with_rate_limited() {
    let host = Host::start_with(&["--max-conns-per-ip", "3"], &[]).await;
    let inv = host.mint(&req(None, None)).await;
    let mut held = Vec::new();
    for i in 0..3 {
        let (m, joined) = Member::join_token(&host.ws_url(), &inv.token, &format!("m{i}")).await;
        assert_eq!(joined["type"], "joined", "{joined}");
        held.push(m);
    }
    // The fourth socket from 127.0.0.1 gets a mesh error frame it can show, then a close.
    let mut fourth = Member::connect(&host.ws_url()).await;
    let refused = fourth.next_json().await;
    assert_eq!(refused["type"], "error", "{refused}");
    assert_eq!(refused["code"], "rate_limited", "{refused}");
    assert!(
        refused["message"]
            .as_str()
            .unwrap()
            .contains("too many connections"),
        "{refused}"
    );
    // A member that leaves frees its slot.
    drop(held.pop());
    let mut joined_again = false;
    for _ in 0..40 {
        let (_m, first) = Member::join_token(&host.ws_url(), &inv.token, "again").await;
        if first["type"] == "joined" {
            joined_again = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        joined_again,
        "the slot of a departed member was never released"
    );
}

/// Eight phones redeem a one-use invite at the same instant (all sockets open, then every
/// `join` sent together): exactly one is admitted, every other gets `token_exhausted`, and
/// the host stores exactly one device.
#[tokio::test]
async fn a_one_use_invite_raced_by_many_sockets_admits_exactly_one() {
    let host = Host::start().await;
    let url = host.ws_url();
    let once = host.mint(&req(Some(1), None)).await;
    let mut members = Vec::new();
    for _ in 0..8 {
        members.push(Member::connect(&url).await);
    }
    let answers =
        futures_util::future::join_all(members.into_iter().enumerate().map(|(i, mut m)| {
            let token = once.token.clone();
            async move {
                let first = m
                    .handshake(atmosphere_shared::handshake::JoinProof::Invite {
                        token,
                        device: atmosphere_shared::wire::DeviceInfo {
                            name: format!("racer {i}"),
                            platform: "test".into(),
                        },
                    })
                    .await;
                (m, first)
            }
        }))
        .await;
    let joined = answers
        .iter()
        .filter(|(_, v)| v["type"] == "joined")
        .count();
    let exhausted = answers
        .iter()
        .filter(|(_, v)| v["code"] == "token_exhausted")
        .count();
    assert_eq!(
        (joined, exhausted),
        (1, 7),
        "{:?}",
        answers.iter().map(|(_, v)| v).collect::<Vec<_>>()
    );
    let mesh = host.get_json("/api/mesh").await;
    assert_eq!(mesh["devices"].as_array().unwrap().len(), 1, "{mesh}");
    let inv = mesh["invites"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["invite_id"] == once.invite_id.as_str())
        .unwrap();
    assert_eq!(inv["uses"], 1, "{inv}");
}

/// A device name is the member's to choose: with a newline, an escape sequence and a
/// bidirectional override in it, it cannot forge a line in the host's log, colour or clear
/// the operator's terminal, or reorder what the operator reads.
#[tokio::test]
async fn a_device_name_cannot_forge_or_disguise_host_log_lines() {
    const FORGED: &str = "2026-01-01T00:00:00Z  INFO admin logged in";
    let host = Host::start().await;
    let inv = host.mint(&TokenRequest::unlimited()).await;
    let name = format!("\u{202e}Eve\n{FORGED}\x1b[2K\r");
    let (mut m, joined) = Member::join_token(&host.ws_url(), &inv.token, &name).await;
    assert_eq!(joined["type"], "joined", "{joined}");
    m.next_of_type("peers").await;
    drop(m);

    // The host logs the join, then the leave: wait for the leave so both are written.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !host.proc.output().contains("member left") && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let log = host.proc.output();
    assert!(log.contains("member left"), "{log}");
    for bad in ['\x1b', '\r', '\u{202e}'] {
        assert!(!log.contains(bad), "raw {bad:?} in the host log:\n{log:?}");
    }
    assert!(
        !log.lines().any(|l| l.starts_with(FORGED)),
        "a forged line in the host log:\n{log}"
    );
    assert!(
        log.contains("\\u{202e}Eve"),
        "the name is logged escaped:\n{log}"
    );
}
