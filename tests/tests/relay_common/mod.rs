//! Shared helpers of the relay tests (`relay_*.rs`): raw WebSocket clients that speak the
//! relay's control protocol by hand (to play squatters and replayers), and an in-process host
//! built on the real `HostLink` whose relayed sockets the test receives on a channel.
#![allow(dead_code)]

use atmosphere_server::dial::ClientSocket;
use atmosphere_server::serve::relay_link::{HostLink, HostLinkConfig, OnSession};
use atmosphere_shared::api::RelayState;
use atmosphere_shared::mesh_id::mesh_id_from_public_key;
use atmosphere_shared::relay_proto::{self, HostMsg, RelayMsg};
use ed25519_dalek::SigningKey;
use futures_util::{SinkExt, StreamExt};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

pub type Ws = ClientSocket;

/// A fresh random mesh key.
pub fn new_key() -> SigningKey {
    SigningKey::generate(&mut rand::rngs::OsRng)
}

/// The mesh id of `key`.
pub fn mesh_of(key: &SigningKey) -> String {
    mesh_id_from_public_key(&key.verifying_key().to_bytes())
}

/// Opens a WebSocket (plain `ws://`).
pub async fn connect(url: &str) -> Ws {
    tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::connect_async(url),
    )
    .await
    .unwrap_or_else(|_| panic!("connect {url} timed out"))
    .unwrap_or_else(|e| panic!("connect {url}: {e}"))
    .0
}

/// What a socket received before it ended: text frames, then the close code and reason.
#[derive(Debug, Default)]
pub struct Ending {
    pub texts: Vec<String>,
    pub code: Option<u16>,
    pub reason: String,
}

/// Reads until the socket closes (or `within` passes, which panics): the relay must end
/// every refused or finished connection by itself.
pub async fn read_until_close(ws: &mut Ws, within: Duration) -> Ending {
    let mut e = Ending::default();
    let r = tokio::time::timeout(within, async {
        while let Some(m) = ws.next().await {
            match m {
                Ok(Message::Text(t)) => e.texts.push(t.to_string()),
                Ok(Message::Close(f)) => {
                    if let Some(f) = f {
                        e.code = Some(u16::from(f.code));
                        e.reason = f.reason.to_string();
                    }
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
    })
    .await;
    assert!(
        r.is_ok(),
        "socket was not closed within {within:?}; got so far: {e:?}"
    );
    e
}

/// Reads the next control message from the relay.
pub async fn next_relay_msg(ws: &mut Ws) -> RelayMsg {
    loop {
        let m = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("relay answered in time")
            .expect("socket open")
            .expect("frame");
        if let Message::Text(t) = m {
            return serde_json::from_str(t.as_str())
                .unwrap_or_else(|e| panic!("bad relay msg {t}: {e}"));
        }
    }
}

/// Sends a JSON text frame.
pub async fn send_json<T: serde::Serialize>(ws: &mut Ws, v: &T) {
    ws.send(Message::Text(serde_json::to_string(v).unwrap().into()))
        .await
        .unwrap();
}

/// A raw registration of `signer`'s key for `mesh_id`, signed with the shared
/// `relay_proto::sign` over the relay's fresh challenge (so a test can play a squatter with
/// the wrong key). Returns the socket and the (nonce, signature) it used.
pub async fn register_raw(
    relay_url: &str,
    mesh_id: &str,
    signer: &SigningKey,
) -> (Ws, Vec<u8>, String) {
    let mut ws = connect(&format!("{relay_url}/mesh/{mesh_id}/host")).await;
    let RelayMsg::Challenge { nonce, relay } = next_relay_msg(&mut ws).await else {
        panic!("expected a challenge")
    };
    relay_proto::check_relay_name(relay_url, &relay).expect("the relay names itself");
    let nonce = relay_proto::decode_nonce(&nonce).expect("a well-formed challenge");
    let reg = relay_proto::sign(signer, &relay, mesh_id, &nonce);
    send_json(&mut ws, &reg).await;
    let HostMsg::Register { signature, .. } = reg else {
        unreachable!("relay_proto::sign makes a register message")
    };
    (ws, nonce, signature)
}

/// Registers `key` for its own mesh and asserts the relay accepted it.
pub async fn register_ok(relay_url: &str, key: &SigningKey) -> Ws {
    let (mut ws, _, _) = register_raw(relay_url, &mesh_of(key), key).await;
    match next_relay_msg(&mut ws).await {
        RelayMsg::Registered { mesh_id } => assert_eq!(mesh_id, mesh_of(key)),
        other => panic!("expected registered, got {other:?}"),
    }
    ws
}

/// An in-process host: the real `HostLink`, with every relayed socket delivered to the test.
pub struct TestHost {
    pub link: HostLink,
    pub key: SigningKey,
    pub sessions: mpsc::UnboundedReceiver<(Ws, String)>,
}

impl TestHost {
    /// Starts the link to `relay_url` and waits until it is registered.
    pub async fn start(relay_url: &str) -> TestHost {
        let key = new_key();
        let (tx, rx) = mpsc::unbounded_channel();
        let on: OnSession = Arc::new(move |ws, remote| {
            let _ = tx.send((ws, remote));
        });
        let link = HostLink::spawn(
            HostLinkConfig {
                relay_url: relay_url.to_string(),
                signing_key: key.clone(),
            },
            on,
        );
        let h = TestHost {
            link,
            key,
            sessions: rx,
        };
        h.wait_connected(Duration::from_secs(20)).await;
        h
    }

    /// Waits until the link reports `connected`.
    pub async fn wait_connected(&self, within: Duration) {
        let start = Instant::now();
        loop {
            let s = self.link.state();
            if matches!(s, RelayState::Connected { .. }) {
                return;
            }
            assert!(
                start.elapsed() < within,
                "host link not connected within {within:?}: {s:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The member URL (`<relay>/mesh/<mesh_id>`).
    pub fn member_url(&self) -> String {
        self.link.invite_endpoint()
    }

    /// Waits for the host side of the next relayed session.
    pub async fn next_session(&mut self) -> Ws {
        tokio::time::timeout(Duration::from_secs(10), self.sessions.recv())
            .await
            .expect("the host got the relayed session in time")
            .expect("link alive")
            .0
    }
}

/// Reads the next text or binary frame, skipping pings and pongs.
pub async fn next_data(ws: &mut Ws) -> Message {
    loop {
        let m = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("frame in time")
            .expect("socket open")
            .expect("frame ok");
        match m {
            Message::Ping(_) | Message::Pong(_) => continue,
            m => return m,
        }
    }
}

/// A syntactically valid mesh id that no host holds.
pub fn unknown_mesh() -> String {
    mesh_of(&new_key())
}
