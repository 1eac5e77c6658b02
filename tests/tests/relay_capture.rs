//! What a relay operator sees: everything the relay process receives and sends is recorded
//! (a recording proxy in front of it carries the host's control and data sockets and the
//! members' sockets) during a token join, a rejoin and messages both ways. The recorded
//! WebSocket payloads, unmasked, contain no invite token, no device key, no device name and
//! no message text: the mesh protocol is end-to-end encrypted through the relay.

mod host_support;

use atmosphere_shared::api::TokenRequest;
use atmosphere_tests::capture::{ws_payloads, RecordingProxy};
use atmosphere_tests::{Host, Relay};
use host_support::{joined_id, Member};
use serde_json::json;
use std::time::Duration;

const NAME: &str = "Marker-Phone-Name-7Q";
const TO_PHONE: &str = "marker message to the phone 4F2K";
const FROM_PHONE: &str = "marker message from the phone 9X1C";

#[tokio::test]
async fn the_relay_forwards_only_ciphertext() {
    let relay = Relay::start(&[]).await;
    let proxy = RecordingProxy::start(relay.port).await;
    let host = Host::start_with(&["--relay-url", &proxy.url()], &[]).await;
    host.wait_relay_connected(Duration::from_secs(15)).await;
    let inv = host.mint(&TokenRequest::default()).await;
    let relay_url = inv
        .endpoints
        .relay
        .clone()
        .expect("the invite has the relay path");
    assert!(relay_url.starts_with(&proxy.url()), "{relay_url}");

    // A token join through the relay; a member on the direct path to talk to.
    let (mut phone, j) = Member::join_token(&relay_url, &inv.token, NAME).await;
    let phone_id = joined_id(&j);
    let key = phone.key();
    phone.next_of_type("peers").await;
    let laptop_inv = host.mint(&TokenRequest::default()).await;
    let (mut laptop, _) = Member::join_token(&host.ws_url(), &laptop_inv.token, "laptop").await;
    laptop.next_of_type("peers").await;
    phone.next_of_type("peer_joined").await;

    // Messages both ways through the relay.
    laptop
        .send(json!({"type":"send","to":phone_id,"body":TO_PHONE}))
        .await;
    assert_eq!(phone.next_of_type("message").await["body"], TO_PHONE);
    phone
        .send(json!({"type":"send","to":null,"body":FROM_PHONE}))
        .await;
    assert_eq!(laptop.next_of_type("message").await["body"], FROM_PHONE);
    drop(phone);

    // A rejoin through the relay, and one more message.
    let (mut phone, j) = Member::rejoin(&relay_url, &phone_id, &key).await;
    assert_eq!(joined_id(&j), phone_id);
    phone.next_of_type("peers").await;
    phone
        .send(json!({"type":"send","to":null,"body":FROM_PHONE}))
        .await;
    assert_eq!(laptop.next_of_type("message").await["body"], FROM_PHONE);
    drop(phone);
    tokio::time::sleep(Duration::from_millis(300)).await;

    let captured = proxy.captured();
    let frames: Vec<(u8, Vec<u8>)> = captured
        .iter()
        .flat_map(|c| ws_payloads(&c.bytes))
        .collect();
    // The capture really holds the member sessions: two handshakes' messages 1 (32 bytes)
    // and 2 (192 bytes), each seen entering and leaving the relay.
    let sized = |n: usize| {
        frames
            .iter()
            .filter(|(op, p)| *op == 2 && p.len() == n)
            .count()
    };
    assert!(
        sized(32) >= 4 && sized(192) >= 4,
        "{} frames; 32 B: {}, 192 B: {}",
        frames.len(),
        sized(32),
        sized(192)
    );

    let key_bytes = data_encoding::BASE64URL_NOPAD
        .decode(key.as_bytes())
        .unwrap();
    let secrets: [(&str, &[u8]); 6] = [
        ("the invite token", inv.token.as_bytes()),
        ("the token without its prefix", &inv.token.as_bytes()[4..]),
        ("the device key", key.as_bytes()),
        ("the device key's bytes", &key_bytes),
        ("the device name", NAME.as_bytes()),
        ("a message", TO_PHONE.as_bytes()),
    ];
    let contains = |hay: &[u8], needle: &[u8]| hay.windows(needle.len()).any(|w| w == needle);
    let all: Vec<&[u8]> = frames
        .iter()
        .map(|(_, p)| p.as_slice())
        .chain(captured.iter().map(|c| c.bytes.as_slice()))
        .collect();
    for (what, secret) in secrets
        .iter()
        .chain([("a message", FROM_PHONE.as_bytes())].iter())
    {
        for bytes in &all {
            assert!(
                !contains(bytes, secret),
                "the relay saw {what} in the clear"
            );
        }
    }
    // The search works: what the relay must see (the mesh id it routes by) is found.
    assert!(all.iter().any(|b| contains(b, inv.mesh_id.as_bytes())));
    // Only the relay's own protocol is text: no mesh message crosses it as plaintext.
    for (op, p) in &frames {
        if *op == 1 {
            let v: serde_json::Value = serde_json::from_slice(p).expect("relay text is JSON");
            let ty = v["type"].as_str().unwrap_or_default();
            assert!(
                ![
                    "joined",
                    "peers",
                    "message",
                    "send",
                    "peer_joined",
                    "peer_left"
                ]
                .contains(&ty),
                "a mesh message crossed the relay in the clear: {v}"
            );
        }
    }
}
