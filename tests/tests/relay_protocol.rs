//! The relay's admission rules, against a real `atmosphere relay` process on 127.0.0.1:
//! who may register a mesh, what a member of an offline mesh sees, and the per-IP limit.
//! Every refusal must arrive as its documented close code (docs/RELAY.md), promptly.

mod relay_common;

use atmosphere_shared::relay_proto::{b64_encode, close, HostMsg, RelayMsg};
use atmosphere_tests::Relay;
use relay_common::*;
use std::time::{Duration, Instant};

#[tokio::test]
async fn squatter_with_another_key_is_refused_and_the_owner_keeps_the_mesh() {
    let relay = Relay::start(&[]).await;
    let owner = new_key();
    let mesh = mesh_of(&owner);
    let mut owner_ws = register_ok(&relay.url(), &owner).await;

    // The squatter signs the fresh challenge correctly, but with its own key: the mesh id
    // is not derived from that key.
    let squatter = new_key();
    let (mut ws, _, _) = register_raw(&relay.url(), &mesh, &squatter).await;
    let end = read_until_close(&mut ws, Duration::from_secs(5)).await;
    assert_eq!(end.code, Some(close::MESH_MISMATCH), "{end:?}");

    // The owner is untouched: its control socket still gets session notices.
    let mut member = connect(&format!("{}/mesh/{mesh}", relay.url())).await;
    match next_relay_msg(&mut owner_ws).await {
        RelayMsg::Session {
            session_id, secret, ..
        } => {
            assert!(!session_id.is_empty() && !secret.is_empty());
        }
        other => panic!("expected a session notice, got {other:?}"),
    }
    drop(member.close(None).await);
    let m = relay.metrics().await;
    assert!(
        m.contains("atmosphere_relay_refusals_total{reason=\"mesh_mismatch\",code=\"4403\"} 1"),
        "{m}"
    );
}

#[tokio::test]
async fn replayed_signature_is_refused() {
    let relay = Relay::start(&[]).await;
    let key = new_key();
    let mesh = mesh_of(&key);
    // An eavesdropper captures a complete, valid registration...
    let (mut first, _nonce, captured_sig) = register_raw(&relay.url(), &mesh, &key).await;
    assert!(matches!(
        next_relay_msg(&mut first).await,
        RelayMsg::Registered { .. }
    ));
    drop(first);

    // ...and presents it again: the relay's new challenge makes it worthless.
    let mut ws = connect(&format!("{}/mesh/{mesh}/host", relay.url())).await;
    assert!(matches!(
        next_relay_msg(&mut ws).await,
        RelayMsg::Challenge { .. }
    ));
    let replay = HostMsg::Register {
        public_key: b64_encode(&key.verifying_key().to_bytes()),
        signature: captured_sig,
    };
    send_json(&mut ws, &replay).await;
    let end = read_until_close(&mut ws, Duration::from_secs(5)).await;
    assert_eq!(end.code, Some(close::BAD_SIGNATURE), "{end:?}");

    // The real key holder still registers fine.
    let _ok = register_ok(&relay.url(), &key).await;
}

#[tokio::test]
async fn member_of_an_offline_mesh_gets_host_offline_at_once() {
    // Long deadlines: a relay that made the member wait for any of them would fail here.
    let relay = Relay::start(&["--handshake-timeout", "30s", "--accept-timeout", "30s"]).await;
    let start = Instant::now();
    let mut ws = connect(&format!("{}/mesh/{}", relay.url(), unknown_mesh())).await;
    let end = read_until_close(&mut ws, Duration::from_secs(10)).await;
    let took = start.elapsed();
    assert_eq!(end.code, Some(close::HOST_OFFLINE), "{end:?}");
    assert_eq!(end.texts.len(), 1, "{end:?}");
    let err: serde_json::Value = serde_json::from_str(&end.texts[0]).unwrap();
    assert_eq!(err["type"], "error");
    assert_eq!(err["code"], "host_offline");
    assert!(
        err["message"].as_str().unwrap().contains("not connected"),
        "{err}"
    );
    assert!(
        took < Duration::from_secs(5),
        "the refusal took {took:?}, a deadline must not be involved"
    );
}

#[tokio::test]
async fn malformed_mesh_id_is_a_bad_request() {
    let relay = Relay::start(&[]).await;
    let mut ws = connect(&format!("{}/mesh/NOT-A-MESH", relay.url())).await;
    let end = read_until_close(&mut ws, Duration::from_secs(5)).await;
    assert_eq!(end.code, Some(close::BAD_REQUEST), "{end:?}");
    let mut ws = connect(&format!("{}/mesh/NOT-A-MESH/host", relay.url())).await;
    let end = read_until_close(&mut ws, Duration::from_secs(5)).await;
    assert_eq!(end.code, Some(close::BAD_REQUEST), "{end:?}");
}

#[tokio::test]
async fn silent_host_is_closed_at_the_handshake_deadline() {
    let relay = Relay::start(&["--handshake-timeout", "300ms"]).await;
    let mut ws = connect(&format!("{}/mesh/{}/host", relay.url(), unknown_mesh())).await;
    assert!(matches!(
        next_relay_msg(&mut ws).await,
        RelayMsg::Challenge { .. }
    ));
    let end = read_until_close(&mut ws, Duration::from_secs(10)).await;
    assert_eq!(end.code, Some(close::TIMEOUT), "{end:?}");
}

#[tokio::test]
async fn second_host_with_the_same_key_replaces_the_first() {
    let relay = Relay::start(&[]).await;
    let key = new_key();
    let mut old = register_ok(&relay.url(), &key).await;
    let mut new = register_ok(&relay.url(), &key).await;
    let end = read_until_close(&mut old, Duration::from_secs(5)).await;
    assert_eq!(end.code, Some(close::REPLACED), "{end:?}");
    // Members now reach the new connection.
    let _member = connect(&format!("{}/mesh/{}", relay.url(), mesh_of(&key))).await;
    assert!(matches!(
        next_relay_msg(&mut new).await,
        RelayMsg::Session { .. }
    ));
    assert_eq!(relay.health().await["meshes"], 1);
}

#[tokio::test]
async fn too_many_connections_from_one_ip_get_4429() {
    let relay = Relay::start(&["--max-conns-per-ip", "3", "--handshake-timeout", "30s"]).await;
    // Three unregistered control sockets hold the IP's three slots.
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut ws = connect(&format!("{}/mesh/{}/host", relay.url(), unknown_mesh())).await;
        assert!(matches!(
            next_relay_msg(&mut ws).await,
            RelayMsg::Challenge { .. }
        ));
        held.push(ws);
    }
    let mut fourth = connect(&format!("{}/mesh/{}/host", relay.url(), unknown_mesh())).await;
    let end = read_until_close(&mut fourth, Duration::from_secs(5)).await;
    assert_eq!(end.code, Some(close::TOO_MANY), "{end:?}");

    // A member from the same IP gets the same code plus a mesh error frame its client shows.
    let mut member = connect(&format!("{}/mesh/{}", relay.url(), unknown_mesh())).await;
    let end = read_until_close(&mut member, Duration::from_secs(5)).await;
    assert_eq!(end.code, Some(close::TOO_MANY), "{end:?}");
    assert!(
        end.texts
            .first()
            .is_some_and(|t| t.contains("rate_limited")),
        "{end:?}"
    );

    // Freeing a slot lets the next connection in.
    drop(held.pop());
    let start = Instant::now();
    // The relay may not have seen the close yet: a retry refused meanwhile is counted too.
    let mut refused_retries = 0;
    loop {
        let mut ws = connect(&format!("{}/mesh/{}/host", relay.url(), unknown_mesh())).await;
        if let RelayMsg::Challenge { .. } = next_relay_msg_or_close(&mut ws).await {
            break;
        }
        refused_retries += 1;
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "slot was never released"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let m = relay.metrics().await;
    assert!(
        m.contains(&format!(
            "atmosphere_relay_refusals_total{{reason=\"too_many\",code=\"4429\"}} {}",
            2 + refused_retries
        )),
        "{m}"
    );
}

/// The first control message, or a fake `registered` if the socket was closed instead.
async fn next_relay_msg_or_close(ws: &mut Ws) -> RelayMsg {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    while let Some(Ok(m)) = ws.next().await {
        if let Message::Text(t) = m {
            return serde_json::from_str(t.as_str()).unwrap();
        }
    }
    RelayMsg::Registered {
        mesh_id: String::new(),
    }
}

#[tokio::test]
async fn health_and_metrics_answer() {
    let relay = Relay::start(&[]).await;
    let h = relay.health().await;
    assert_eq!(h["status"], "ok");
    assert_eq!(h["meshes"], 0);
    assert_eq!(h["sessions"], 0);
    assert!(h["uptime_secs"].is_u64());
    let m = relay.metrics().await;
    for series in [
        "atmosphere_relay_connections{kind=\"client\"}",
        "atmosphere_relay_sessions ",
        "atmosphere_relay_forwarded_bytes_total{direction=\"client_to_host\"}",
        "atmosphere_relay_forwarded_frames_total{direction=\"host_to_client\"}",
        "atmosphere_relay_refusals_total{reason=\"host_offline\",code=\"4404\"}",
    ] {
        assert!(m.contains(series), "missing {series} in\n{m}");
    }
}

/// Behind a proxy that adds its own `X-Forwarded-For` line (HAProxy's `option forwardfor`
/// does), a client can send a forged line first. The relay must take the last value the
/// proxy wrote, not the client's: otherwise a fresh forged address per connection escapes
/// the per-IP limit.
#[tokio::test]
async fn the_real_ip_header_uses_the_last_line_a_proxy_appended() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let relay = Relay::start(&[
        "--real-ip-header",
        "X-Forwarded-For",
        "--max-conns-per-ip",
        "1",
        "--handshake-timeout",
        "30s",
    ])
    .await;
    let url = format!("{}/mesh/{}/host", relay.url(), unknown_mesh());
    let dial = |forged: &'static str| {
        let mut req = url.as_str().into_client_request().unwrap();
        let h = req.headers_mut();
        h.append("x-forwarded-for", forged.parse().unwrap());
        h.append("x-forwarded-for", "198.51.100.1".parse().unwrap());
        async move {
            tokio::time::timeout(
                Duration::from_secs(10),
                tokio_tungstenite::connect_async(req),
            )
            .await
            .unwrap()
            .unwrap()
            .0
        }
    };
    // Both connections come from 198.51.100.1 (the proxy's line); only one slot.
    let mut first = dial("203.0.113.1").await;
    assert!(matches!(
        next_relay_msg(&mut first).await,
        RelayMsg::Challenge { .. }
    ));
    let mut second = dial("203.0.113.2").await;
    let end = read_until_close(&mut second, Duration::from_secs(5)).await;
    assert_eq!(
        end.code,
        Some(close::TOO_MANY),
        "a forged first header line escaped the per-IP limit: {end:?}"
    );
}

/// Opens a member socket whose source the relay takes from `X-Real-IP`.
async fn member_from(url: &str, ip: &str) -> Ws {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = url.into_client_request().unwrap();
    req.headers_mut().insert("x-real-ip", ip.parse().unwrap());
    tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::connect_async(req),
    )
    .await
    .unwrap()
    .unwrap()
    .0
}

/// F5: five addresses open as many member sockets as the per-IP limit lets them and never
/// send anything. They must not take all of the mesh's session slots: a real member from
/// another address still reaches the host.
#[tokio::test]
async fn silent_members_from_a_few_ips_cannot_starve_a_mesh() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    // A long answer deadline: only the per-source cap may let the real member in.
    let relay = Relay::start(&["--real-ip-header", "X-Real-IP", "--answer-timeout", "300s"]).await;
    let mut host = TestHost::start(&relay.url()).await;
    let url = host.member_url();
    const REAL: &str = "203.0.113.99";
    // The host holds every relayed session and answers only the real member (as a real
    // host answers only a member that speaks its protocol).
    let (answered_tx, mut answered_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let host_task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Some((mut h, remote)) = host.sessions.recv().await {
            if remote == REAL {
                h.send(Message::text("welcome")).await.unwrap();
                let _ = answered_tx.send(());
            }
            held.push(h);
        }
    });
    let mut attackers = Vec::new();
    for a in 1..=5 {
        for _ in 0..64 {
            attackers.push(member_from(&url, &format!("198.51.100.{a}")).await);
        }
    }
    // Every attacker socket is either a session or refused (4429); wait until the relay has
    // decided all of them.
    let start = Instant::now();
    loop {
        let sessions = relay.health().await["sessions"].as_u64().unwrap();
        let m = relay.metrics().await;
        let refused: u64 = m
            .lines()
            .find_map(|l| {
                l.strip_prefix(
                    "atmosphere_relay_refusals_total{reason=\"too_many\",code=\"4429\"} ",
                )
            })
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        if sessions + refused == attackers.len() as u64 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{sessions} sessions + {refused} refusals"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut member = member_from(&url, REAL).await;
    match member.next().await {
        Some(Ok(Message::Text(t))) => assert_eq!(t.as_str(), "welcome"),
        other => panic!("the real member did not reach the host: {other:?}"),
    }
    answered_rx.recv().await.unwrap();
    drop(attackers);
    host_task.abort();
}

/// A relayed session the host never answers is closed at the answer deadline, on both
/// sides, with 4408.
#[tokio::test]
async fn a_session_the_host_never_answers_is_closed_at_the_answer_deadline() {
    let relay = Relay::start(&["--answer-timeout", "500ms"]).await;
    let mut host = TestHost::start(&relay.url()).await;
    let mut member = connect(&host.member_url()).await;
    let mut h = host.next_session().await;
    let end = read_until_close(&mut member, Duration::from_secs(10)).await;
    assert_eq!(end.code, Some(close::TIMEOUT), "{end:?}");
    let end = read_until_close(&mut h, Duration::from_secs(10)).await;
    assert_eq!(end.code, Some(close::TIMEOUT), "{end:?}");
}

/// F16: the registration names the relay. A relay with `--public-url` names itself by it in
/// every challenge, whatever `Host` the request sent, and accepts only a signature over
/// that name: a signature a host made for another relay (which forwarded this relay's
/// challenge) is refused. A host whose challenge names another relay than the one it dialed
/// refuses to sign.
#[tokio::test]
async fn a_registration_is_bound_to_the_relay_it_names() {
    use atmosphere_shared::api::RelayState;
    use atmosphere_shared::relay_proto;
    let relay = Relay::start(&["--public-url", "wss://Relay-R.example:443/"]).await;
    let key = new_key();
    let mesh = mesh_of(&key);

    // The challenge names the relay by its public URL, not by the Host this request sent.
    let mut ws = connect(&format!("{}/mesh/{mesh}/host", relay.url())).await;
    let RelayMsg::Challenge { nonce, relay: name } = next_relay_msg(&mut ws).await else {
        panic!("expected a challenge")
    };
    assert_eq!(name, "relay-r.example");
    let nonce = relay_proto::decode_nonce(&nonce).unwrap();
    // A signature made for another relay (the one the host dialed, which forwarded this
    // challenge) does not verify here.
    send_json(
        &mut ws,
        &relay_proto::sign(&key, "relay-m.example", &mesh, &nonce),
    )
    .await;
    let end = read_until_close(&mut ws, Duration::from_secs(5)).await;
    assert_eq!(end.code, Some(close::BAD_SIGNATURE), "{end:?}");

    // Signed for this relay's name, the same key registers.
    let mut ws = connect(&format!("{}/mesh/{mesh}/host", relay.url())).await;
    let RelayMsg::Challenge { nonce, relay: name } = next_relay_msg(&mut ws).await else {
        panic!("expected a challenge")
    };
    let nonce = relay_proto::decode_nonce(&nonce).unwrap();
    send_json(&mut ws, &relay_proto::sign(&key, &name, &mesh, &nonce)).await;
    assert!(matches!(
        next_relay_msg(&mut ws).await,
        RelayMsg::Registered { .. }
    ));
    drop(ws);

    // A real host link that dialed this relay as 127.0.0.1 sees a challenge naming
    // another relay, and refuses to sign it.
    let key = new_key();
    let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
    let on: atmosphere_server::serve::relay_link::OnSession = std::sync::Arc::new(move |ws, r| {
        let _ = tx.send((ws, r));
    });
    let link = atmosphere_server::serve::relay_link::HostLink::spawn(
        atmosphere_server::serve::relay_link::HostLinkConfig {
            relay_url: relay.url(),
            signing_key: key,
        },
        on,
    );
    let start = Instant::now();
    let last_error = loop {
        if let RelayState::Retrying { last_error, .. } = link.state() {
            break last_error;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{:?}",
            link.state()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        last_error.contains("names itself \"relay-r.example\""),
        "{last_error}"
    );
    let m = relay.metrics().await;
    assert!(
        m.contains("atmosphere_relay_registrations_total 1\n"),
        "only the test's own registration: {m}"
    );
}
