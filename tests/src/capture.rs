//! A recording TCP proxy for "what does the relay see" tests: every byte that passes, in
//! both directions of every connection, is kept; [`ws_payloads`] turns a captured stream
//! back into the (unmasked) payloads of its WebSocket frames, so a test can search what a
//! relay operator could read.

use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// One direction of one proxied connection.
#[derive(Debug, Clone)]
pub struct Captured {
    /// The connection's number, in accept order.
    pub conn: usize,
    /// True for client → target (what the relay receives), false for target → client.
    pub to_target: bool,
    pub bytes: Vec<u8>,
}

/// A loopback proxy to `127.0.0.1:target` that records everything.
pub struct RecordingProxy {
    pub port: u16,
    streams: Arc<Mutex<Vec<Captured>>>,
    task: tokio::task::JoinHandle<()>,
}

impl RecordingProxy {
    pub async fn start(target: u16) -> RecordingProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let streams: Arc<Mutex<Vec<Captured>>> = Arc::default();
        let recorded = streams.clone();
        let task = tokio::spawn(async move {
            let mut conn = 0;
            while let Ok((client, _)) = listener.accept().await {
                let Ok(upstream) = TcpStream::connect(("127.0.0.1", target)).await else {
                    continue;
                };
                let (cr, cw) = client.into_split();
                let (ur, uw) = upstream.into_split();
                tokio::spawn(pump(cr, uw, recorded.clone(), conn, true));
                tokio::spawn(pump(ur, cw, recorded.clone(), conn, false));
                conn += 1;
            }
        });
        RecordingProxy {
            port,
            streams,
            task,
        }
    }

    /// `ws://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("ws://127.0.0.1:{}", self.port)
    }

    /// Everything captured so far.
    pub fn captured(&self) -> Vec<Captured> {
        self.streams.lock().unwrap().clone()
    }
}

impl Drop for RecordingProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    recorded: Arc<Mutex<Vec<Captured>>>,
    conn: usize,
    to_target: bool,
) {
    let index = {
        let mut r = recorded.lock().unwrap();
        r.push(Captured {
            conn,
            to_target,
            bytes: Vec::new(),
        });
        r.len() - 1
    };
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        recorded.lock().unwrap()[index]
            .bytes
            .extend_from_slice(&buf[..n]);
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

/// The WebSocket frames of one captured direction, after its HTTP upgrade: `(opcode,
/// unmasked payload)`. A frame cut off at the end of the capture is left out.
pub fn ws_payloads(stream: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let Some(start) = stream.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Vec::new();
    };
    let mut i = start + 4;
    let mut frames = Vec::new();
    while i + 2 <= stream.len() {
        let opcode = stream[i] & 0x0f;
        let masked = stream[i + 1] & 0x80 != 0;
        let mut len = (stream[i + 1] & 0x7f) as usize;
        i += 2;
        if len == 126 {
            let Some(b) = stream.get(i..i + 2) else { break };
            len = u16::from_be_bytes([b[0], b[1]]) as usize;
            i += 2;
        } else if len == 127 {
            let Some(b) = stream.get(i..i + 8) else { break };
            len = u64::from_be_bytes(b.try_into().unwrap()) as usize;
            i += 8;
        }
        let mask = if masked {
            let Some(m) = stream.get(i..i + 4) else { break };
            i += 4;
            Some([m[0], m[1], m[2], m[3]])
        } else {
            None
        };
        let Some(payload) = stream.get(i..i.saturating_add(len)) else {
            break;
        };
        let payload = match mask {
            Some(m) => payload
                .iter()
                .enumerate()
                .map(|(k, b)| b ^ m[k % 4])
                .collect(),
            None => payload.to_vec(),
        };
        frames.push((opcode, payload));
        i += len;
    }
    frames
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masked_and_unmasked_frames_read_back() {
        let mut s = b"HTTP/1.1 101 Switching Protocols\r\n\r\n".to_vec();
        s.extend([0x81, 0x02, b'h', b'i']); // unmasked text "hi"
        let m = [1u8, 2, 3, 4];
        s.extend([0x82, 0x83]); // masked binary, 3 bytes
        s.extend(m);
        s.extend([b'a' ^ 1, b'b' ^ 2, b'c' ^ 3]);
        s.extend([0x82, 0x7e, 0x01]); // cut off
        assert_eq!(
            ws_payloads(&s),
            vec![(1, b"hi".to_vec()), (2, b"abc".to_vec())]
        );
    }
}
