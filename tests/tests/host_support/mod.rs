//! Shared helpers of the `host_*` tests: a mesh member speaking the wire protocol (the Noise
//! handshake of `atmosphere_shared::handshake`, then sealed JSON messages) over a real
//! tokio-tungstenite WebSocket on loopback, and small HTTP helpers.

#![allow(dead_code)]

use atmosphere_shared::channel::SecureChannel;
use atmosphere_shared::handshake::{
    ClientHandshake, Entropy, HostExpectation, HostIdentity, JoinProof, JoinRequest, StaticSecret,
};
use atmosphere_shared::wire::DeviceInfo;
use atmosphere_shared::PathKind;
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long a test waits for any single frame before failing.
pub const FRAME_WAIT: Duration = Duration::from_secs(5);

/// What came next on a member socket.
#[derive(Debug)]
pub enum Next {
    /// A message: opened from the channel, or a plaintext frame before it existed.
    Json(Value),
    /// A close frame, the end of the stream, or a connection error.
    Closed(String),
    /// Nothing within the wait.
    Silent,
}

/// One mesh member connection.
pub struct Member {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// The channel, once the handshake finished.
    pub channel: Option<SecureChannel>,
    /// The host the handshake authenticated.
    pub host: Option<HostIdentity>,
    /// This device's static secret (what a client keeps as its credential).
    pub secret: [u8; 32],
}

/// The device key a test passes around: the device's static secret, base64url. Any other
/// string names some other key (derived from it), so "the wrong key" is easy to write.
pub fn secret_from_key(key: &str) -> [u8; 32] {
    let decoded = data_encoding::BASE64URL_NOPAD.decode(key.as_bytes()).ok();
    decoded
        .and_then(|b| <[u8; 32]>::try_from(b).ok())
        .unwrap_or_else(|| {
            use sha2::Digest;
            sha2::Sha256::digest(key.as_bytes()).into()
        })
}

impl Member {
    /// Opens a WebSocket to `url` (no handshake yet).
    pub async fn connect(url: &str) -> Member {
        let (ws, _) = tokio::time::timeout(FRAME_WAIT, tokio_tungstenite::connect_async(url))
            .await
            .expect("WebSocket connect timed out")
            .expect("WebSocket connect failed");
        Member {
            ws,
            channel: None,
            host: None,
            secret: rand::random(),
        }
    }

    /// This member's device key (see [`secret_from_key`]).
    pub fn key(&self) -> String {
        data_encoding::BASE64URL_NOPAD.encode(&self.secret)
    }

    /// Connects and joins with an invite token; returns the member and the host's first
    /// answer (`joined`, or an `error`).
    pub async fn join_token(url: &str, token: &str, name: &str) -> (Member, Value) {
        let mut m = Member::connect(url).await;
        let proof = JoinProof::Invite {
            token: token.into(),
            device: DeviceInfo {
                name: name.into(),
                platform: "test".into(),
            },
        };
        let first = m.handshake(proof).await;
        (m, first)
    }

    /// Connects and rejoins as device `device_id` proving the key `key` (see
    /// [`Member::key`]).
    pub async fn rejoin(url: &str, device_id: &str, key: &str) -> (Member, Value) {
        let mut m = Member::connect(url).await;
        m.secret = secret_from_key(key);
        let first = m
            .handshake(JoinProof::Device {
                device_id: device_id.into(),
            })
            .await;
        (m, first)
    }

    /// Runs the handshake (trusting the host on first use) with `proof` on a socket opened
    /// on the local path; returns the host's first answer.
    pub async fn handshake(&mut self, proof: JoinProof) -> Value {
        let request = JoinRequest {
            proof,
            path: PathKind::Local,
        };
        let (client, msg1) = ClientHandshake::start(
            HostExpectation::TrustOnFirstUse,
            &request,
            &StaticSecret::from_bytes(self.secret),
            Entropy::new(rand::random()),
        )
        .expect("message 1");
        self.send_binary(msg1).await.expect("send message 1");
        match self.next_frame(FRAME_WAIT).await {
            Frame::Binary(msg2) => {
                let done = client
                    .read_host_hello(&msg2)
                    .expect("the host authenticates");
                self.send_binary(done.message)
                    .await
                    .expect("send message 3");
                self.channel = Some(done.channel);
                self.host = Some(done.host);
                self.next_json().await
            }
            Frame::Text(t) => serde_json::from_str(&t).expect("a plaintext error is JSON"),
            other => panic!("expected message 2, got {other:?}"),
        }
    }

    /// Sends a JSON message (sealed once the channel exists, else as plaintext text).
    pub async fn send(&mut self, v: Value) {
        let text = v.to_string();
        match &mut self.channel {
            Some(ch) => {
                let frame = ch.seal(text.as_bytes()).expect("seal");
                self.send_binary(frame).await.expect("send frame");
            }
            None => self.send_text(text).await.expect("send frame"),
        }
    }

    /// Sends raw text (the host accepts none).
    pub async fn send_text(&mut self, s: String) -> Result<(), String> {
        self.ws
            .send(Message::Text(s.into()))
            .await
            .map_err(|e| e.to_string())
    }

    /// Sends one raw binary frame.
    pub async fn send_binary(&mut self, b: Vec<u8>) -> Result<(), String> {
        self.ws
            .send(Message::Binary(b.into()))
            .await
            .map_err(|e| e.to_string())
    }

    /// The next data frame or close, skipping pings/pongs, within `wait`.
    async fn next_frame(&mut self, wait: Duration) -> Frame {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => return Frame::Silent,
                Ok(None) => return Frame::Closed("end of stream".into()),
                Ok(Some(Err(e))) => return Frame::Closed(e.to_string()),
                Ok(Some(Ok(Message::Text(t)))) => return Frame::Text(t.to_string()),
                Ok(Some(Ok(Message::Binary(b)))) => return Frame::Binary(b.to_vec()),
                Ok(Some(Ok(Message::Close(c)))) => {
                    return Frame::Closed(format!("close frame {c:?}"))
                }
                Ok(Some(Ok(_))) => continue,
            }
        }
    }

    /// The next message or close within `wait`. Binary frames are opened with the channel
    /// (a frame with nothing to deliver, a pure ack or a duplicate, is skipped); a text
    /// frame is only legal before it exists (a plaintext refusal).
    pub async fn next_within(&mut self, wait: Duration) -> Next {
        if let Some(plain) = self.channel.as_mut().and_then(SecureChannel::pop_ready) {
            return Next::Json(serde_json::from_slice(&plain).expect("host sent JSON"));
        }
        loop {
            match self.next_frame(wait).await {
                Frame::Silent => return Next::Silent,
                Frame::Closed(why) => return Next::Closed(why),
                Frame::Text(t) => {
                    assert!(
                        self.channel.is_none(),
                        "the host sent plaintext after the handshake: {t}"
                    );
                    return Next::Json(serde_json::from_str(&t).expect("host sent JSON"));
                }
                Frame::Binary(b) => {
                    let ch = self
                        .channel
                        .as_mut()
                        .expect("a binary frame before the handshake");
                    if let Some(plain) = ch.open(&b).expect("the host's frame opens") {
                        return Next::Json(serde_json::from_slice(&plain).expect("host sent JSON"));
                    }
                }
            }
        }
    }

    /// The next JSON frame; panics if the socket closes or stays silent.
    pub async fn next_json(&mut self) -> Value {
        match self.next_within(FRAME_WAIT).await {
            Next::Json(v) => v,
            other => panic!("expected a JSON frame, got {other:?}"),
        }
    }

    /// The next frame of `type` (skipping others, e.g. `peers`).
    pub async fn next_of_type(&mut self, ty: &str) -> Value {
        loop {
            let v = self.next_json().await;
            if v["type"] == ty {
                return v;
            }
        }
    }

    /// Asserts the host closes the socket (after any frames) within `wait`.
    pub async fn expect_closed(&mut self, wait: Duration) {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match self
                .next_within(deadline.saturating_duration_since(tokio::time::Instant::now()))
                .await
            {
                Next::Closed(_) => return,
                Next::Silent => panic!("the host did not close the socket within {wait:?}"),
                Next::Json(_) => continue,
            }
        }
    }

    /// Asserts the next frame is `error` with `code`, then that the host closes.
    pub async fn expect_error(&mut self, code: &str) -> Value {
        let v = self.next_json().await;
        assert_eq!(v["type"], "error", "expected error {code}, got {v}");
        assert_eq!(v["code"], code, "wrong error code in {v}");
        assert!(
            v["message"].as_str().is_some_and(|m| !m.is_empty()),
            "error without a message: {v}"
        );
        self.expect_closed(FRAME_WAIT).await;
        v
    }
}

/// One raw frame.
#[derive(Debug)]
enum Frame {
    Text(String),
    Binary(Vec<u8>),
    Closed(String),
    Silent,
}

/// Asserts `v` is a `joined` frame and returns its device id.
pub fn joined_id(v: &Value) -> String {
    assert_eq!(v["type"], "joined", "expected joined, got {v}");
    assert!(
        v.get("device_key").is_none(),
        "no bearer key crosses the wire: {v}"
    );
    v["device_id"].as_str().expect("device_id").to_string()
}

/// Unix seconds of an RFC 3339 UTC timestamp `YYYY-MM-DDTHH:MM:SSZ` (panics otherwise).
pub fn rfc3339_secs(s: &str) -> i64 {
    let b = s.as_bytes();
    assert!(
        s.len() == 20 && b[4] == b'-' && b[7] == b'-' && b[10] == b'T' && b[19] == b'Z',
        "not RFC 3339 UTC: {s}"
    );
    let n = |r: std::ops::Range<usize>| {
        s[r].parse::<i64>()
            .unwrap_or_else(|_| panic!("bad number in {s}"))
    };
    let (y, m, d) = (n(0..4), n(5..7), n(8..10));
    // Days from civil (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146097 + doe - 719468;
    days * 86400 + n(11..13) * 3600 + n(14..16) * 60 + n(17..19)
}

/// Now in Unix seconds.
pub fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}
