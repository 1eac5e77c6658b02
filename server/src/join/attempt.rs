//! One attempt of the race: connect to one endpoint, run the client side of the mesh
//! handshake ([`atmosphere_shared::handshake`]), wait for the host's verdict (`joined` or
//! `error`, through the secure channel), and report it to the race driver exactly once.
//!
//! The steps, and what each failure means:
//!
//! 1. Connect (TCP, TLS for `wss://`, the WebSocket upgrade). A refused upgrade with a JSON
//!    error body is a relay's or a host's notice, not authenticated: never final.
//! 2. Send message 1 as one binary frame.
//! 3. Wait for message 2, a binary frame. A text frame before it is a plaintext notice (the
//!    relay's `host_offline` or `rate_limited`, a host turning the socket away):
//!    [`FailReason::from_plaintext_notice`], never final.
//! 4. Check message 2: the host must prove the mesh the plan expects. If it cannot, the
//!    attempt fails with [`FailReason::NotTheHost`] and the socket is dropped: nothing more
//!    is sent, so the endpoint never sees the credential.
//! 5. Send message 3 (the encrypted join request), then read the verdict through the
//!    channel: `joined` wins; `error` is the host's own word (final codes stop the race).

use super::secure_socket::{io_reason, stream_reason, SecureSocket};
use crate::dial::{dial, ClientSocket, DialError, DialOptions};
use atmosphere_shared::handshake::{ClientHandshake, HostIdentity};
use atmosphere_shared::racing::{AttemptId, FailReason};
use atmosphere_shared::wire::{ErrorCode, Joined, MAX_FRAME_BYTES};
use atmosphere_shared::PathKind;
use futures_util::{SinkExt, StreamExt};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::{self, protocol::WebSocketConfig, Message};

/// A mesh WebSocket to the host (directly or through a relay).
pub(super) type Ws = ClientSocket;

/// A won attempt: the secure socket that is now the session, the host the handshake
/// authenticated, and its `joined`.
pub(super) struct Won {
    pub socket: SecureSocket,
    pub host: HostIdentity,
    pub joined: Joined,
    /// The path this attempt ran over.
    pub path: PathKind,
}

/// What an attempt task reports back to the race driver.
pub(super) enum Report {
    Joined { id: AttemptId, won: Box<Won> },
    Failed { id: AttemptId, reason: FailReason },
}

/// One attempt: connect to `url`, run `handshake` (whose message 1 is `msg1`), wait for
/// the host's verdict, all within `safety` (a backstop behind the race's own deadline).
/// Reports exactly once (unless aborted by a cancel, which needs no report).
pub(super) async fn run(
    id: AttemptId,
    path: PathKind,
    url: String,
    handshake: ClientHandshake,
    msg1: Vec<u8>,
    safety: Duration,
    tx: mpsc::Sender<Report>,
) {
    let attempt = join_over(&url, path, handshake, msg1, safety);
    let report = match tokio::time::timeout(safety, attempt).await {
        Ok(Ok(won)) => Report::Joined {
            id,
            won: Box::new(won),
        },
        Ok(Err(reason)) => Report::Failed { id, reason },
        Err(_) => Report::Failed {
            id,
            reason: FailReason::Timeout {
                after_ms: u64::try_from(safety.as_millis()).unwrap_or(u64::MAX),
            },
        },
    };
    let _ = tx.send(report).await;
}

/// Connect, handshake, wait for `joined`.
async fn join_over(
    url: &str,
    path: PathKind,
    handshake: ClientHandshake,
    msg1: Vec<u8>,
    deadline: Duration,
) -> Result<Won, FailReason> {
    let mut ws = connect(url, deadline).await?;
    ws.send(Message::binary(msg1))
        .await
        .map_err(|e| stream_reason(&e))?;
    let msg2 = await_host_hello(&mut ws).await?;
    // On failure `ws` is dropped here: not even a close frame goes to an impostor.
    let done = handshake
        .read_host_hello(&msg2)
        .map_err(|e| FailReason::NotTheHost(e.to_string()))?;
    ws.send(Message::binary(done.message))
        .await
        .map_err(|e| stream_reason(&e))?;
    let mut socket = SecureSocket::new(ws, done.channel);
    let joined = await_joined(&mut socket).await?;
    Ok(Won {
        socket,
        host: done.host,
        joined,
        path,
    })
}

/// The connect step: [`dial`] (TCP, TLS for `wss://` with the relay trust, the WebSocket
/// handshake) with the mesh frame limits. The attempt's own deadline is the race's, so the
/// dial gets the safety backstop as its deadline.
async fn connect(url: &str, deadline: Duration) -> Result<Ws, FailReason> {
    let config = WebSocketConfig::default()
        .max_message_size(Some(MAX_FRAME_BYTES))
        .max_frame_size(Some(MAX_FRAME_BYTES));
    let options = DialOptions {
        bearer: None,
        config,
        deadline,
    };
    dial(url, &options)
        .await
        .map(|d| d.socket)
        .map_err(connect_reason)
}

/// Reads frames until message 2 (the first binary frame). A text frame first is a
/// plaintext notice, which fails the attempt without being final.
async fn await_host_hello(ws: &mut Ws) -> Result<Vec<u8>, FailReason> {
    loop {
        let msg = match ws.next().await {
            None => return Err(FailReason::ClosedBeforeJoined),
            Some(Err(e)) => return Err(stream_reason(&e)),
            Some(Ok(m)) => m,
        };
        match msg {
            Message::Binary(b) => return Ok(b.to_vec()),
            Message::Text(t) => return Err(FailReason::from_plaintext_notice(t.as_str())),
            Message::Close(_) => return Err(FailReason::ClosedBeforeJoined),
            // Pings are answered by tungstenite itself.
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
        }
    }
}

/// Reads the host's verdict through the channel: `joined` (success), an `error` (its code
/// and message, the host's own word), or anything else (a protocol failure).
async fn await_joined(socket: &mut SecureSocket) -> Result<Joined, FailReason> {
    FailReason::verdict(socket.recv().await.map_err(|e| e.into_fail_reason())?)
}

/// Why connecting or the WebSocket handshake failed, in words a person can act on.
fn connect_reason(e: DialError) -> FailReason {
    match e {
        DialError::Handshake {
            source: tungstenite::Error::Http(resp),
            ..
        } => {
            // A relay (or host) may refuse the upgrade with a JSON error body naming a code.
            // Nothing is authenticated yet, so it is a notice, never final.
            let body = resp.body().as_deref().unwrap_or_default();
            if let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) {
                let code = v.get("code").or_else(|| v.get("error")).cloned();
                if let Some(Ok(code)) = code.map(serde_json::from_value::<ErrorCode>) {
                    let message = v["message"].as_str().unwrap_or_default();
                    return FailReason::unverified(code.as_str().into(), message.into());
                }
            }
            FailReason::Connect(format!("HTTP {} instead of a WebSocket", resp.status()))
        }
        DialError::Timeout { deadline, .. } => FailReason::Timeout {
            after_ms: u64::try_from(deadline.as_millis()).unwrap_or(u64::MAX),
        },
        other => match other.io_error() {
            Some(io) => FailReason::Connect(io_reason(io)),
            None => FailReason::Connect(other.to_string()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::super::secure_socket::testing::*;
    use super::*;
    use atmosphere_shared::credential::JoinPlan;
    use atmosphere_shared::handshake::{Entropy, HostKeys, StaticSecret};
    use atmosphere_shared::wire::DeviceInfo;
    use atmosphere_shared::{Endpoints, Invite, PathKind};

    const SAFETY: Duration = Duration::from_secs(5);

    /// A first join that expects the test mesh.
    fn plan() -> JoinPlan {
        let mut invite = Invite::v2("ATM-TEST", "Home", Endpoints::default());
        invite.mesh_id = Some(host_keys().mesh_id().to_string());
        JoinPlan::first_join(
            &invite,
            DeviceInfo {
                name: "Laptop".into(),
                platform: "cli".into(),
            },
            StaticSecret::from_bytes([9; 32]),
        )
    }

    /// Runs one attempt of [`plan`] against `url`.
    async fn attempt(url: String) -> Report {
        let (handshake, msg1) = plan()
            .start(PathKind::Local, Entropy::new([1; 32]))
            .unwrap();
        let (tx, mut rx) = mpsc::channel(1);
        run(
            AttemptId(0),
            PathKind::Local,
            url,
            handshake,
            msg1,
            SAFETY,
            tx,
        )
        .await;
        rx.recv().await.unwrap()
    }

    fn failed(r: Report) -> FailReason {
        match r {
            Report::Failed { reason, .. } => reason,
            Report::Joined { .. } => panic!("expected a failure, got joined"),
        }
    }

    #[tokio::test]
    async fn the_real_host_gets_the_request_and_its_joined_wins() {
        let (req_tx, req_rx) = tokio::sync::oneshot::channel();
        let url = fake_host(|mut ws| async move {
            let (mut ch, request) = accept(&mut ws, &host_keys()).await;
            let _ = req_tx.send(request);
            let joined = r#"{"type":"joined","mesh_id":"m","mesh_name":"Home","device_id":"d1"}"#;
            send_sealed(&mut ws, &mut ch, joined).await;
            let _ = ws.next().await;
        })
        .await;
        let Report::Joined { won, .. } = attempt(url).await else {
            panic!("expected joined")
        };
        assert_eq!(won.joined.device_id, "d1");
        assert_eq!(won.host.mesh_id, host_keys().mesh_id());
        let request = req_rx.await.unwrap();
        assert_eq!(request["type"], "invite");
        assert_eq!(request["token"], "ATM-TEST");
        assert_eq!(request["path"], "local");
    }

    #[tokio::test]
    async fn a_host_of_another_mesh_never_gets_message_3() {
        let (rest_tx, rest_rx) = tokio::sync::oneshot::channel();
        let url = fake_host(|mut ws| async move {
            let other =
                HostKeys::from_signing_key(&ed25519_dalek::SigningKey::from_bytes(&[8; 32]));
            let msg1 = next_binary(&mut ws).await;
            let (_, msg2) =
                atmosphere_shared::handshake::HostHandshake::new(&other, Entropy::new([2; 32]))
                    .read_client_hello(&msg1)
                    .unwrap();
            ws.send(Message::binary(msg2)).await.unwrap();
            // Whatever arrives next: the socket must end without a message 3.
            let next = ws.next().await;
            let _ = rest_tx.send(matches!(next, Some(Ok(Message::Binary(_)))));
        })
        .await;
        let reason = failed(attempt(url).await);
        assert!(matches!(reason, FailReason::NotTheHost(_)), "{reason:?}");
        assert!(!reason.is_final());
        assert!(!rest_rx.await.unwrap(), "the impostor got a binary frame");
    }

    #[tokio::test]
    async fn a_plaintext_notice_before_message_2_fails_the_attempt_but_is_not_final() {
        let url = fake_host(|mut ws| async move {
            let _ = next_binary(&mut ws).await;
            let notice = r#"{"type":"error","code":"unknown_device","message":"forget it"}"#;
            ws.send(Message::text(notice)).await.unwrap();
        })
        .await;
        let reason = failed(attempt(url).await);
        assert_eq!(
            reason,
            FailReason::Unverified {
                code: "unknown_device".into(),
                message: "forget it".into()
            }
        );
        assert!(!reason.is_final());
    }

    #[tokio::test]
    async fn the_hosts_sealed_refusal_is_final() {
        let url = fake_host(|mut ws| async move {
            let (mut ch, _) = accept(&mut ws, &host_keys()).await;
            let refusal = r#"{"type":"error","code":"token_expired","message":"too late"}"#;
            send_sealed(&mut ws, &mut ch, refusal).await;
        })
        .await;
        let reason = failed(attempt(url).await);
        assert_eq!(
            reason,
            FailReason::Host {
                code: ErrorCode::TokenExpired,
                message: "too late".into()
            }
        );
        assert!(reason.is_final());
    }
}
