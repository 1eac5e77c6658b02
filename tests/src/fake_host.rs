//! A fake mesh host on loopback for "crafted link" tests: it accepts WebSockets where a
//! link says a host is, records every data frame it receives, and answers as an attacker
//! would — with a plaintext refusal, or with a Noise handshake of *another* mesh key (and,
//! if a client ever sent it message 3, a sealed `joined`). A client that checks the host
//! sends it nothing but its ephemeral key.

use atmosphere_shared::handshake::{Entropy, HostHandshake, HostKeys};
use atmosphere_shared::wire::{Joined, ServerMsg};
use futures_util::{SinkExt, StreamExt};
use std::sync::{Arc, Mutex};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;

/// How the fake host answers.
#[derive(Debug, Clone, Copy)]
pub enum FakeMode {
    /// A plaintext `{"type":"error","code":CODE}` as soon as anything arrives (a forged
    /// `unknown_device` would make a careless client forget its credential).
    PlaintextRefusal { code: &'static str },
    /// A real handshake with its own Ed25519 key: another mesh id than the invite's.
    OtherMesh,
}

/// The fake host.
pub struct FakeHost {
    pub port: u16,
    received: Arc<Mutex<Vec<Vec<u8>>>>,
    task: tokio::task::JoinHandle<()>,
}

impl FakeHost {
    pub async fn start(mode: FakeMode) -> FakeHost {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let received: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
        let log = received.clone();
        let keys = Arc::new(HostKeys::from_signing_key(
            &ed25519_dalek::SigningKey::from_bytes(&rand::random()),
        ));
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (log, keys) = (log.clone(), keys.clone());
                tokio::spawn(async move {
                    if let Ok(ws) = tokio_tungstenite::accept_async(tcp).await {
                        answer(ws, mode, &keys, &log).await;
                    }
                });
            }
        });
        FakeHost {
            port,
            received,
            task,
        }
    }

    /// `ws://127.0.0.1:PORT/ws`.
    pub fn url(&self) -> String {
        format!("ws://127.0.0.1:{}/ws", self.port)
    }

    /// Every data frame received so far (text as its bytes).
    pub fn received(&self) -> Vec<Vec<u8>> {
        self.received.lock().unwrap().clone()
    }
}

impl Drop for FakeHost {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn answer<S>(
    mut ws: tokio_tungstenite::WebSocketStream<S>,
    mode: FakeMode,
    keys: &HostKeys,
    log: &Mutex<Vec<Vec<u8>>>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let first = loop {
        match ws.next().await {
            Some(Ok(Message::Binary(b))) => break b.to_vec(),
            Some(Ok(Message::Text(t))) => break t.as_bytes().to_vec(),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            _ => return,
        }
    };
    log.lock().unwrap().push(first.clone());
    match mode {
        FakeMode::PlaintextRefusal { code } => {
            let text =
                format!(r#"{{"type":"error","code":"{code}","message":"forget your credential"}}"#);
            let _ = ws.send(Message::text(text)).await;
        }
        FakeMode::OtherMesh => {
            let hs = HostHandshake::new(keys, Entropy::new(rand::random()));
            let Ok((hs, msg2)) = hs.read_client_hello(&first) else {
                return;
            };
            if ws.send(Message::Binary(msg2.into())).await.is_err() {
                return;
            }
            let msg3 = loop {
                match ws.next().await {
                    Some(Ok(Message::Binary(b))) => break b.to_vec(),
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                    _ => return,
                }
            };
            log.lock().unwrap().push(msg3.clone());
            let Ok(mut join) = hs.read_join(&msg3) else {
                return;
            };
            let joined = ServerMsg::Joined(Joined {
                mesh_id: keys.mesh_id().to_string(),
                mesh_name: "Home Mesh".into(),
                device_id: "fake-device".into(),
                direct: false,
                stun_servers: Vec::new(),
            });
            if let Ok(frame) = join.channel.seal(joined.to_json().as_bytes()) {
                let _ = ws.send(Message::Binary(frame.into())).await;
            }
        }
    }
    // Keep the socket open a moment so the client reads the answer, then let it go.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
}
