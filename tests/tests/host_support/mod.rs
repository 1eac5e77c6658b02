//! Shared helpers of the `host_*` tests: a mesh member speaking the wire protocol over a real
//! tokio-tungstenite WebSocket on loopback, and small HTTP helpers.

#![allow(dead_code)]

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long a test waits for any single frame before failing.
pub const FRAME_WAIT: Duration = Duration::from_secs(5);

/// What came next on a member socket.
#[derive(Debug)]
pub enum Next {
    Json(Value),
    /// A close frame, the end of the stream, or a connection error.
    Closed(String),
    /// Nothing within the wait.
    Silent,
}

/// One mesh member connection.
pub struct Member {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl Member {
    /// Opens a WebSocket to `url` (no join yet).
    pub async fn connect(url: &str) -> Member {
        let (ws, _) = tokio::time::timeout(FRAME_WAIT, tokio_tungstenite::connect_async(url))
            .await
            .expect("WebSocket connect timed out")
            .expect("WebSocket connect failed");
        Member { ws }
    }

    /// Connects and sends a token join; returns the member and the host's first answer.
    pub async fn join_token(url: &str, token: &str, name: &str) -> (Member, Value) {
        let mut m = Member::connect(url).await;
        m.send(json!({"type":"join","token":token,"device":{"name":name,"platform":"test"},"path":"local"}))
            .await;
        let first = m.next_json().await;
        (m, first)
    }

    /// Connects and sends a rejoin with a device credential.
    pub async fn rejoin(url: &str, device_id: &str, device_key: &str) -> (Member, Value) {
        let mut m = Member::connect(url).await;
        m.send(json!({"type":"join","device_id":device_id,"device_key":device_key,"path":"local"}))
            .await;
        let first = m.next_json().await;
        (m, first)
    }

    /// Sends a JSON text frame.
    pub async fn send(&mut self, v: Value) {
        self.ws
            .send(Message::Text(v.to_string().into()))
            .await
            .expect("send frame");
    }

    /// Sends raw text.
    pub async fn send_text(&mut self, s: String) -> Result<(), String> {
        self.ws
            .send(Message::Text(s.into()))
            .await
            .map_err(|e| e.to_string())
    }

    /// The next JSON text frame or close, skipping pings/pongs, within `wait`.
    pub async fn next_within(&mut self, wait: Duration) -> Next {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => return Next::Silent,
                Ok(None) => return Next::Closed("end of stream".into()),
                Ok(Some(Err(e))) => return Next::Closed(e.to_string()),
                Ok(Some(Ok(Message::Text(t)))) => {
                    return Next::Json(serde_json::from_str(t.as_str()).expect("host sent JSON"))
                }
                Ok(Some(Ok(Message::Close(c)))) => {
                    return Next::Closed(format!("close frame {c:?}"))
                }
                Ok(Some(Ok(_))) => continue,
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

/// Asserts `v` is a `joined` frame and returns (device_id, device_key if present).
pub fn joined_ids(v: &Value) -> (String, Option<String>) {
    assert_eq!(v["type"], "joined", "expected joined, got {v}");
    (
        v["device_id"].as_str().expect("device_id").to_string(),
        v["device_key"].as_str().map(str::to_string),
    )
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
