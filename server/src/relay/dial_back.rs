//! The relay's side of the public-reachability dial-back (the protocol, its checks and its
//! limits are `atmosphere_shared::dial_back`): on a registered host's `dial_back` request,
//! one TCP connection to the control socket's own source address on the requested port,
//! one `GET /dial-back/{nonce}`, at most 512 bytes read back, then the verdict.
//!
//! The address is never the host's to choose: [`DialBacks::request`] takes the IP the
//! control task already knows (`Relay::client_ip`, so `--real-ip-header` is honoured), and
//! the request message has no address field at all.

use super::metrics::{DialBackOutcome, Metrics, RefusalKind};
use super::server::Refused;
use atmosphere_shared::dial_back::{
    self, judge_answer, probe_request, timed_out_detail, DialBackResult, GlobalDialBudget,
    HostDialLimit, Probe, CONNECT_DEADLINE_MS, MAX_ANSWER_BYTES, READ_DEADLINE_MS,
};
use atmosphere_shared::relay_proto::DialBackRequest;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

/// The relay-wide dial state: the global budget and the clock it runs on.
pub(super) struct DialBacks {
    started: Instant,
    budget: Mutex<GlobalDialBudget>,
}

impl Default for DialBacks {
    fn default() -> Self {
        DialBacks {
            started: Instant::now(),
            budget: Mutex::new(GlobalDialBudget::default()),
        }
    }
}

impl DialBacks {
    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Handles one `dial_back` from the registered host at `ip`: a malformed request is a
    /// refusal (4400); a request over the registration's or the relay's limit is answered
    /// "rate limited" at once; otherwise a task dials and sends the result to `results`.
    pub fn request(
        &self,
        req: DialBackRequest,
        ip: IpAddr,
        mesh: &str,
        limit: &mut HostDialLimit,
        results: &mpsc::Sender<DialBackResult>,
        metrics: &Arc<Metrics>,
    ) -> Result<(), Refused> {
        dial_back::check_request(req.port, &req.nonce)
            .map_err(|e| Refused::new(RefusalKind::BadRequest, e.to_string()))?;
        let now = self.now_ms();
        let allowed = limit.try_take(now).and_then(|()| {
            self.budget
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .try_take(now)
        });
        if let Err(retry_in_ms) = allowed {
            tracing::info!(mesh = %mesh, %ip, port = req.port, retry_in_ms, "dial-back rate limited");
            metrics.dial_back(DialBackOutcome::RateLimited);
            let _ = results.try_send(DialBackResult::rate_limited(&req.nonce, retry_in_ms));
            return Ok(());
        }
        let results = results.clone();
        let mesh = mesh.to_string();
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let ip = ip.to_canonical();
            let probe = probe(ip, req.port, &req.nonce).await;
            tracing::info!(mesh = %mesh, %ip, port = req.port, reachable = probe.reachable,
                detail = %probe.detail, "dial-back");
            metrics.dial_back(if probe.reachable {
                DialBackOutcome::Reachable
            } else {
                DialBackOutcome::Unreachable
            });
            // The control task may be gone (host left): nothing to tell then.
            let _ = results
                .send(DialBackResult::dialed(&req.nonce, probe))
                .await;
        });
        Ok(())
    }
}

/// One dial: connect to `ip:port` within the connect deadline, write the probe request, read
/// at most [`MAX_ANSWER_BYTES`] within the read deadline, and judge them.
pub async fn probe(ip: IpAddr, port: u16, nonce: &str) -> Probe {
    let addr = SocketAddr::new(ip, port);
    let connect = Duration::from_millis(CONNECT_DEADLINE_MS);
    let mut stream = match tokio::time::timeout(connect, TcpStream::connect(addr)).await {
        Err(_) => return Probe::no(timed_out_detail(CONNECT_DEADLINE_MS)),
        Ok(Err(e)) => return Probe::no(connect_error(&e)),
        Ok(Ok(s)) => s,
    };
    let host = match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("[{v6}]"),
    };
    let read = Duration::from_millis(READ_DEADLINE_MS);
    let mut answer = Vec::with_capacity(MAX_ANSWER_BYTES);
    let exchange = async {
        stream
            .write_all(probe_request(&host, port, nonce).as_bytes())
            .await?;
        let mut buf = [0u8; MAX_ANSWER_BYTES];
        while answer.len() < MAX_ANSWER_BYTES {
            let n = stream
                .read(&mut buf[..MAX_ANSWER_BYTES - answer.len()])
                .await?;
            if n == 0 {
                break;
            }
            answer.extend_from_slice(&buf[..n]);
        }
        Ok::<(), std::io::Error>(())
    };
    match tokio::time::timeout(read, exchange).await {
        // The deadline passed: judge what did arrive (a server that keeps the connection
        // open after a complete answer is still reachable).
        Err(_) if answer.is_empty() => Probe::no(format!(
            "connected, but no answer: {}",
            timed_out_detail(READ_DEADLINE_MS)
        )),
        Ok(Err(e)) if answer.is_empty() => Probe::no(format!("connection failed: {e}")),
        _ => judge_answer(&answer, nonce),
    }
}

/// A person's words for a failed connect.
fn connect_error(e: &std::io::Error) -> String {
    use std::io::ErrorKind;
    match e.kind() {
        ErrorKind::ConnectionRefused => "connection refused".into(),
        ErrorKind::HostUnreachable => "host unreachable".into(),
        ErrorKind::NetworkUnreachable => "network unreachable".into(),
        ErrorKind::TimedOut => timed_out_detail(CONNECT_DEADLINE_MS),
        _ => format!("cannot connect: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    const N: &str = "00112233445566778899aabbccddeeff";

    #[tokio::test]
    async fn a_listener_that_echoes_the_nonce_is_reachable() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut buf = [0u8; 512];
            let n = s.read(&mut buf).await.unwrap();
            let req = String::from_utf8_lossy(&buf[..n]).to_string();
            assert!(
                req.starts_with(&format!("GET /dial-back/{N} HTTP/1.1\r\n")),
                "{req}"
            );
            s.write_all(format!("HTTP/1.1 200 OK\r\n\r\n{N}").as_bytes())
                .await
                .unwrap();
        });
        let p = probe([127, 0, 0, 1].into(), port, N).await;
        assert!(p.reachable, "{p:?}");
    }

    #[tokio::test]
    async fn nothing_listening_is_connection_refused() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let p = probe([127, 0, 0, 1].into(), port, N).await;
        assert_eq!(p, Probe::no("connection refused"));
    }
}
