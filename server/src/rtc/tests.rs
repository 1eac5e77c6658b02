//! Client ↔ host over real UDP sockets on loopback, candidates restricted to 127.0.0.1 and
//! no STUN server: nothing leaves the machine.

use std::net::Ipv4Addr;
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::time::timeout;

use super::stun_fixture::{responder, Fixture};
use super::*;
use atmosphere_shared::upgrade::{NatFiltering, NatMapping};

/// Generous: a debug build on a shared 2-core machine.
const WAIT: Duration = Duration::from_secs(20);

async fn next(ch: &mut DirectChannel) -> DirectEvent {
    timeout(WAIT, ch.recv())
        .await
        .expect("no direct event in time")
        .expect("channel ended without Closed")
}

async fn next_message(ch: &mut DirectChannel) -> Vec<u8> {
    match next(ch).await {
        DirectEvent::Message(m) => m,
        other => panic!("expected a message, got {other:?}"),
    }
}

async fn opened(ch: &mut DirectChannel) -> DirectPath {
    match next(ch).await {
        DirectEvent::Open(path) => path,
        other => panic!("expected the channel to open, got {other:?}"),
    }
}

async fn host(config: RtcConfig) -> HostPeer {
    // RUST_LOG=debug shows str0m's ICE, DTLS and SCTP steps when a test fails.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    HostPeer::bind(config).await.expect("host socket")
}

/// Offer, answer, and both channels open.
async fn connect(host: &HostPeer) -> (DirectChannel, DirectChannel, SocketAddr) {
    let mut client = ClientPeer::bind(RtcConfig::loopback(), &[])
        .await
        .expect("client socket");
    let client_addr = client.local_addr();
    let offer = client.offer().expect("offer");
    assert!(offer.contains("m=application"), "{offer}");
    assert!(
        !offer.contains("typ srflx"),
        "no STUN server, no reflexive candidate: {offer}"
    );
    let (answer, mut at_host) = host.accept(&offer).await.expect("host answers");
    let mut at_client = client
        .accept_answer(&answer)
        .await
        .expect("answer accepted");
    let host_path = opened(&mut at_host).await;
    let client_path = opened(&mut at_client).await;
    // The host may be bound to 0.0.0.0: the path names the address the client reached.
    let host_addr = SocketAddr::new(Ipv4Addr::LOCALHOST.into(), host.local_addr().port());
    assert_eq!(
        host_path.remote, client_addr,
        "the host sees the client's socket"
    );
    assert_eq!(host_path.local, host_addr);
    assert_eq!(client_path.remote, host_addr);
    assert_eq!(client_path.local, client_addr);
    assert_eq!(at_host.path(), Some(host_path));
    (at_client, at_host, client_addr)
}

#[tokio::test]
async fn a_channel_opens_and_carries_messages_both_ways_in_order() {
    let host = host(RtcConfig::loopback()).await;
    let (mut client, mut at_host, _) = connect(&host).await;

    client.send(b"hello host".to_vec()).await.unwrap();
    assert_eq!(next_message(&mut at_host).await, b"hello host");
    at_host.send(b"hello client".to_vec()).await.unwrap();
    assert_eq!(next_message(&mut client).await, b"hello client");

    // 64 KiB messages arrive whole, as one message each.
    let big: Vec<u8> = (0..64 * 1024).map(|i| (i % 251) as u8).collect();
    client.send(big.clone()).await.unwrap();
    at_host.send(big.clone()).await.unwrap();
    assert_eq!(next_message(&mut at_host).await, big);
    assert_eq!(next_message(&mut client).await, big);

    // A burst of 1,000 small messages each way, in order.
    let burst = |i: u32| format!("message {i}").into_bytes();
    let (c, h) = (client.sender(), at_host.sender());
    let send_both = async {
        for i in 0..1000 {
            c.send(burst(i)).await.unwrap();
            h.send(burst(i)).await.unwrap();
        }
    };
    let receive_at_host = async {
        for i in 0..1000 {
            assert_eq!(next_message(&mut at_host).await, burst(i));
        }
    };
    let receive_at_client = async {
        for i in 0..1000 {
            assert_eq!(next_message(&mut client).await, burst(i));
        }
    };
    tokio::join!(send_both, receive_at_host, receive_at_client);
    assert_eq!(host.stats().peers, 1);
}

#[tokio::test]
async fn garbage_datagrams_are_counted_and_change_nothing() {
    let host = host(RtcConfig::loopback()).await;
    let junk = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    // No STUN/DTLS/RTP first byte; a STUN-looking header that does not parse; empty.
    for d in [&b"\xffgarbage"[..], &[0u8; 20][..], &[][..], &[22u8; 3][..]] {
        junk.send_to(d, host.local_addr()).await.unwrap();
    }
    let (client, mut at_host, _) = connect(&host).await;
    junk.send_to(b"\x7fmore garbage", host.local_addr())
        .await
        .unwrap();
    client.send(b"still here".to_vec()).await.unwrap();
    assert_eq!(next_message(&mut at_host).await, b"still here");
    let stats = host.stats();
    assert!(
        stats.garbage_datagrams + stats.unmatched_datagrams >= 4,
        "every junk datagram is dropped and counted: {stats:?}"
    );
    assert!(stats.garbage_datagrams >= 2, "{stats:?}");
}

#[tokio::test]
async fn bad_offers_are_refused_with_errors_that_say_why() {
    let host = host(RtcConfig::loopback()).await;

    let huge = format!(
        "v=0\r\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\n{}",
        "a=x\r\n".repeat(4000)
    );
    let err = host.accept(&huge).await.unwrap_err();
    assert!(
        matches!(
            err,
            RtcError::SdpTooLarge {
                max: MAX_SDP_BYTES,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("at most 16384"), "{err}");

    let err = host.accept("v=0\r\nnot an offer").await.unwrap_err();
    assert!(matches!(err, RtcError::NoDataChannel), "{err:?}");

    let err = host
        .accept("v=0\r\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\nbroken")
        .await
        .unwrap_err();
    assert!(matches!(err, RtcError::BadSdp(_)), "{err:?}");
    assert!(
        err.to_string().starts_with("the SDP does not parse"),
        "{err}"
    );

    assert_eq!(
        host.stats().peers,
        0,
        "nothing was set up for a refused offer"
    );
}

#[tokio::test]
async fn the_peer_bound_is_enforced() {
    let host = host(RtcConfig {
        max_peers: 1,
        ..RtcConfig::loopback()
    })
    .await;
    let (_client, _at_host, _) = connect(&host).await;
    let mut second = ClientPeer::bind(RtcConfig::loopback(), &[]).await.unwrap();
    let err = host.accept(&second.offer().unwrap()).await.unwrap_err();
    assert!(matches!(err, RtcError::TooManyPeers { max: 1 }), "{err:?}");
}

#[tokio::test]
async fn a_connection_that_never_opens_is_dropped_by_its_deadline() {
    let host = host(RtcConfig {
        open_deadline: Duration::from_millis(800),
        ..RtcConfig::loopback()
    })
    .await;
    let mut client = ClientPeer::bind(RtcConfig::loopback(), &[]).await.unwrap();
    let (_answer, mut at_host) = host.accept(&client.offer().unwrap()).await.unwrap();
    // The client never takes the answer: no DTLS, no channel.
    drop(client);
    assert_eq!(host.stats().peers, 1);
    assert_eq!(
        next(&mut at_host).await,
        DirectEvent::Closed(CloseReason::OpenDeadline)
    );
    assert!(timeout(WAIT, at_host.recv()).await.unwrap().is_none());
    let err = at_host.send(b"late".to_vec()).await.unwrap_err();
    assert!(
        matches!(err, RtcError::Closed(CloseReason::OpenDeadline)),
        "{err:?}"
    );
    // The driver forgets it after the closing drain.
    timeout(WAIT, async {
        while host.stats().peers != 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the dead connection is dropped");
}

#[tokio::test]
async fn closing_one_side_is_seen_by_the_other() {
    let host = host(RtcConfig::loopback()).await;

    // The client closes.
    let (client, mut at_host, _) = connect(&host).await;
    client.close();
    assert_eq!(
        next(&mut at_host).await,
        DirectEvent::Closed(CloseReason::Remote)
    );

    // The host drops its end.
    let (mut client, at_host, _) = connect(&host).await;
    drop(at_host);
    assert_eq!(
        next(&mut client).await,
        DirectEvent::Closed(CloseReason::Remote)
    );
}

#[tokio::test]
async fn oversize_messages_are_refused_before_they_are_queued() {
    let host = host(RtcConfig::loopback()).await;
    let (client, _at_host, _) = connect(&host).await;
    let err = client
        .send(vec![0u8; MAX_MESSAGE_BYTES + 1])
        .await
        .unwrap_err();
    assert!(matches!(err, RtcError::MessageTooLarge { .. }), "{err:?}");
}

#[tokio::test]
async fn a_host_bound_on_every_address_answers_on_the_one_it_was_reached_on() {
    // Bound like `serve` (0.0.0.0), offering only loopback: the datagrams' destination is
    // learned from the route back, which str0m needs to match its candidate.
    let host = host(RtcConfig {
        bind: "0.0.0.0:0".parse().unwrap(),
        ..RtcConfig::loopback()
    })
    .await;
    assert!(host.local_addr().ip().is_unspecified());
    let (client, mut at_host, _) = connect(&host).await;
    client.send(b"over 0.0.0.0".to_vec()).await.unwrap();
    assert_eq!(next_message(&mut at_host).await, b"over 0.0.0.0");
}

#[tokio::test]
async fn many_sessions_share_the_host_socket() {
    let host = host(RtcConfig::loopback()).await;
    let mut pairs = Vec::new();
    for _ in 0..4 {
        pairs.push(connect(&host).await);
    }
    assert_eq!(host.stats().peers, 4);
    // Each message reaches its own session only.
    for (i, (client, _, _)) in pairs.iter().enumerate() {
        client.send(format!("from {i}").into_bytes()).await.unwrap();
    }
    for (i, (_, at_host, _)) in pairs.iter_mut().enumerate() {
        assert_eq!(
            next_message(at_host).await,
            format!("from {i}").into_bytes()
        );
    }
}

// The two tests below have a fixture STUN server claim a documentation address as our
// mapped address. It only ends up in SDP text that no peer ever receives: nothing dials it.

#[tokio::test]
async fn the_client_offers_the_reflexive_address_its_stun_server_saw() {
    let stun = responder(Fixture {
        claim_mapped: Some("203.0.113.9:40000".parse().unwrap()),
        ..Fixture::default()
    })
    .await;
    let servers = [
        "stun:no-such-host.invalid:bad".to_string(),
        stun.to_string(),
    ];
    let mut client = ClientPeer::bind(RtcConfig::loopback(), &servers)
        .await
        .unwrap();
    let offer = client.offer().unwrap();
    assert!(offer.contains("203.0.113.9 40000 typ srflx"), "{offer}");
    assert!(offer.contains("127.0.0.1"), "{offer}");
    assert!(matches!(client.offer(), Err(RtcError::NoPendingOffer)));
}

#[tokio::test]
async fn the_host_answers_with_the_reflexive_address_its_nat_check_found() {
    let host = host(RtcConfig::loopback()).await;
    assert_eq!(host.nat(), NatReport::default(), "unknown before a check");
    let stun = responder(Fixture {
        claim_mapped: Some("198.51.100.7:40000".parse().unwrap()),
        ..Fixture::default()
    })
    .await;
    let report = host.nat_check(stun).await;
    assert_eq!(
        report,
        NatReport {
            reflexive: Some("198.51.100.7:40000".parse().unwrap()),
            mapping: NatMapping::EndpointIndependent,
            filtering: NatFiltering::Open,
        }
    );
    assert_eq!(host.nat(), report);
    let mut client = ClientPeer::bind(RtcConfig::loopback(), &[]).await.unwrap();
    let (answer, _at_host) = host.accept(&client.offer().unwrap()).await.unwrap();
    assert!(answer.contains("198.51.100.7 40000 typ srflx"), "{answer}");
    assert!(
        answer.contains(&format!("127.0.0.1 {} typ host", host.local_addr().port())),
        "{answer}"
    );
}

#[tokio::test]
async fn a_session_that_stops_reading_loses_its_channel_not_the_hosts_memory() {
    let host = host(RtcConfig::loopback()).await;
    let (mut client, mut at_host, _) = connect(&host).await;
    let chunk = vec![7u8; 64 * 1024];
    let too_much = MAX_INBOUND_BYTES / chunk.len() + 8;
    // The host's session reads nothing while the client sends more than the bound.
    for _ in 0..too_much {
        if client.send(chunk.clone()).await.is_err() {
            break;
        }
    }
    timeout(WAIT, async {
        while at_host.unread_bytes() <= MAX_INBOUND_BYTES {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the client's messages pile up at the host");
    let mut delivered = 0;
    let reason = loop {
        match next(&mut at_host).await {
            DirectEvent::Message(_) => delivered += 1,
            DirectEvent::Closed(reason) => break reason,
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(reason, CloseReason::SlowReader);
    assert!(delivered * chunk.len() <= MAX_INBOUND_BYTES, "{delivered}");
    loop {
        match next(&mut client).await {
            DirectEvent::Closed(reason) => {
                assert_eq!(reason, CloseReason::Remote);
                break;
            }
            DirectEvent::Message(_) | DirectEvent::PathChanged(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[tokio::test]
async fn the_routers_port_mapping_is_offered_as_a_candidate_while_it_is_held() {
    let host = host(RtcConfig::loopback()).await;
    // A fresh client per offer; the answers are only read, never used, so no check is sent
    // to the (loopback stand-in for the router's) external address either way.
    async fn answer(host: &HostPeer) -> String {
        let mut client = ClientPeer::bind(RtcConfig::loopback(), &[])
            .await
            .expect("client socket");
        host.accept(&client.offer().unwrap()).await.unwrap().0
    }
    let mapped: SocketAddr = "127.0.0.2:40000".parse().unwrap();
    let candidate = "127.0.0.2 40000 typ srflx";
    let a = answer(&host).await;
    assert!(!a.contains(candidate), "no mapping yet: {a}");
    host.set_port_mapping(Some(mapped));
    let a = answer(&host).await;
    assert!(a.contains(candidate), "mapped: {a}");
    host.set_port_mapping(None);
    let a = answer(&host).await;
    assert!(!a.contains(candidate), "mapping gone: {a}");
}
