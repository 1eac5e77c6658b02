//! The relay's dial-back (`atmosphere_shared::dial_back`), against a real `atmosphere relay`
//! on 127.0.0.1 with raw control sockets signed with a test key: the relay dials only the
//! control socket's own source address, once per registration per window, within its
//! deadlines, and refuses malformed requests with 4400.

mod relay_common;

use atmosphere_shared::dial_back::{format_nonce, DialBackResult, NONCE_BYTES};
use atmosphere_shared::relay_proto::{self, close, DialBackRequest, HostMsg, RelayMsg};
use atmosphere_tests::Relay;
use relay_common::*;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

fn nonce_hex() -> String {
    format_nonce(&rand::random::<[u8; NONCE_BYTES]>())
}

/// A TCP listener on `ip:port` that counts connections and, when `answer` is set, answers
/// every request for `/dial-back/X` with 200 and X (else accepts and stays silent).
async fn listener(ip: &str, port: u16, answer: bool) -> (u16, Arc<AtomicUsize>) {
    let l = TcpListener::bind((ip, port)).await.unwrap();
    let port = l.local_addr().unwrap().port();
    let seen = Arc::new(AtomicUsize::new(0));
    let count = seen.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((mut s, _)) = l.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            if !answer {
                held.push(s);
                continue;
            }
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                let n = s.read(&mut buf).await.unwrap_or(0);
                let req = String::from_utf8_lossy(&buf[..n]).to_string();
                let nonce = req
                    .strip_prefix("GET /dial-back/")
                    .and_then(|r| r.split(' ').next())
                    .unwrap_or("")
                    .to_string();
                let _ = s
                    .write_all(format!("HTTP/1.1 200 OK\r\n\r\n{nonce}").as_bytes())
                    .await;
            });
        }
    });
    (port, seen)
}

async fn dial_back(ws: &mut Ws, port: u16, nonce: &str) -> DialBackResult {
    let req = HostMsg::DialBack(DialBackRequest {
        port,
        nonce: nonce.into(),
    });
    send_json(ws, &req).await;
    match next_relay_msg(ws).await {
        RelayMsg::DialBackResult(r) => {
            assert_eq!(r.nonce, nonce);
            r
        }
        other => panic!("expected a dial_back_result, got {other:?}"),
    }
}

#[tokio::test]
async fn the_relay_dials_only_the_control_sockets_source_address() {
    let relay = Relay::start(&[]).await;
    // The same port on two loopback addresses; the control socket comes from 127.0.0.1.
    let (port, at_one) = listener("127.0.0.1", 0, true).await;
    let (_, at_two) = listener("127.0.0.2", port, true).await;

    // A request that names another address is refused outright, and nothing is dialed.
    let mut ws = register_ok(&relay.url(), &new_key()).await;
    let smuggled = serde_json::json!({
        "type": "dial_back", "port": port, "nonce": nonce_hex(), "ip": "127.0.0.2"
    });
    send_json(&mut ws, &smuggled).await;
    let end = read_until_close(&mut ws, Duration::from_secs(5)).await;
    assert_eq!(end.code, Some(close::BAD_REQUEST), "{end:?}");

    // A proper request reaches 127.0.0.1 only.
    let mut ws = register_ok(&relay.url(), &new_key()).await;
    let n = nonce_hex();
    let r = dial_back(&mut ws, port, &n).await;
    assert!(r.reachable, "{r:?}");
    assert_eq!(r.retry_in_secs, None);
    assert_eq!(at_one.load(Ordering::SeqCst), 1);

    // A second request within the window is not dialed.
    let r = dial_back(&mut ws, port, &nonce_hex()).await;
    assert!(!r.reachable, "{r:?}");
    assert!(r.detail.starts_with("rate limited: retry in "), "{r:?}");
    assert!(
        r.retry_in_secs.is_some_and(|s| (1..=20).contains(&s)),
        "{r:?}"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(at_one.load(Ordering::SeqCst), 1);
    assert_eq!(at_two.load(Ordering::SeqCst), 0, "127.0.0.2 was dialed");
    let m = relay.metrics().await;
    for line in [
        "atmosphere_relay_dial_backs_total{result=\"reachable\"} 1",
        "atmosphere_relay_dial_backs_total{result=\"rate_limited\"} 1",
        "atmosphere_relay_refusals_total{reason=\"bad_request\",code=\"4400\"} 1",
    ] {
        assert!(m.contains(line), "{line} not in:\n{m}");
    }
}

#[tokio::test]
async fn nothing_listening_is_unreachable_connection_refused() {
    let relay = Relay::start(&[]).await;
    let mut ws = register_ok(&relay.url(), &new_key()).await;
    let port = atmosphere_tests::free_port();
    let r = dial_back(&mut ws, port, &nonce_hex()).await;
    assert!(!r.reachable);
    assert_eq!(r.detail, "connection refused");
    assert_eq!(r.retry_in_secs, None);
}

#[tokio::test]
async fn a_listener_that_never_answers_is_unreachable_within_the_deadline() {
    let relay = Relay::start(&[]).await;
    let (port, seen) = listener("127.0.0.1", 0, false).await;
    let mut ws = register_ok(&relay.url(), &new_key()).await;
    let start = Instant::now();
    let r = dial_back(&mut ws, port, &nonce_hex()).await;
    let took = start.elapsed();
    assert!(!r.reachable);
    assert!(r.detail.contains("timed out after 3 s"), "{r:?}");
    assert_eq!(seen.load(Ordering::SeqCst), 1);
    assert!(
        took >= Duration::from_millis(2900) && took < Duration::from_secs(5),
        "took {took:?}"
    );
}

#[tokio::test]
async fn bad_nonces_and_port_zero_are_refused() {
    let relay = Relay::start(&[]).await;
    for bad in [
        serde_json::json!({"type": "dial_back", "port": 0, "nonce": nonce_hex()}),
        serde_json::json!({"type": "dial_back", "port": 80, "nonce": "ABC"}),
        serde_json::json!({"type": "dial_back", "port": 80, "nonce": nonce_hex().to_uppercase()}),
        serde_json::json!({"type": "dial_back", "port": 80}),
    ] {
        let mut ws = register_ok(&relay.url(), &new_key()).await;
        send_json(&mut ws, &bad).await;
        let end = read_until_close(&mut ws, Duration::from_secs(5)).await;
        assert_eq!(end.code, Some(close::BAD_REQUEST), "{bad}: {end:?}");
    }
}

#[tokio::test]
async fn a_dial_back_before_registering_is_refused() {
    let relay = Relay::start(&[]).await;
    let mut ws = connect(&format!("{}/mesh/{}/host", relay.url(), unknown_mesh())).await;
    assert!(matches!(
        next_relay_msg(&mut ws).await,
        RelayMsg::Challenge { .. }
    ));
    let req = HostMsg::DialBack(DialBackRequest {
        port: 80,
        nonce: nonce_hex(),
    });
    send_json(&mut ws, &req).await;
    let end = read_until_close(&mut ws, Duration::from_secs(5)).await;
    assert_eq!(end.code, Some(close::BAD_REQUEST), "{end:?}");
}

#[tokio::test]
async fn behind_a_proxy_the_relay_dials_the_real_ip_header_address() {
    // A relay behind a trusted proxy takes the client address from the header; the
    // dial-back follows it, the same address its per-IP limit counts.
    let relay = Relay::start(&["--real-ip-header", "X-Forwarded-For"]).await;
    let (port, at_one) = listener("127.0.0.1", 0, true).await;
    let (_, at_two) = listener("127.0.0.2", port, true).await;
    let key = new_key();
    let mesh = mesh_of(&key);
    let url = format!("{}/mesh/{mesh}/host", relay.url());
    let mut req = url.as_str().into_client_request().unwrap();
    req.headers_mut()
        .insert("x-forwarded-for", "127.0.0.2".parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    let RelayMsg::Challenge { nonce, relay: name } = next_relay_msg(&mut ws).await else {
        panic!("expected a challenge")
    };
    let nonce = relay_proto::decode_nonce(&nonce).unwrap();
    send_json(&mut ws, &relay_proto::sign(&key, &name, &mesh, &nonce)).await;
    assert!(matches!(
        next_relay_msg(&mut ws).await,
        RelayMsg::Registered { .. }
    ));
    let r = dial_back(&mut ws, port, &nonce_hex()).await;
    assert!(r.reachable, "{r:?}");
    assert_eq!(at_two.load(Ordering::SeqCst), 1);
    assert_eq!(at_one.load(Ordering::SeqCst), 0, "the TCP peer was dialed");
}
