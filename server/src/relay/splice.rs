//! The splice: pipes frames between a member socket and its host data socket without
//! reading them.
//!
//! Each direction forwards one frame, awaits the send (which flushes), then reads the next:
//! a slow reader on one side stops the relay reading from the other, TCP flow control pushes
//! back to the sender, and the relay's memory per session stays bounded by one frame (the
//! frame limit) per direction. Text, binary, ping and pong frames are forwarded as they
//! are; a close frame is forwarded with its code and reason, and then both sockets are
//! closed. If one side vanishes (EOF, reset) the other is closed at once with 1001.
//!
//! Until the host's first text or binary frame reaches the member the session is
//! unanswered ([`Unanswered`]): it holds its source's unanswered slot, and if the host has
//! not answered by the deadline both sides are closed with 4408.

use super::metrics::{Direction, Metrics, RefusalKind};
use super::server::is_too_large;
use atmosphere_shared::relay_proto::close;
use axum::extract::ws::{CloseFrame, Message, WebSocket};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;

/// A session the host has not answered yet: `slot` is released at the host's first text or
/// binary frame to the member; `deadline` is when the relay gives up on that answer.
pub struct Unanswered<S> {
    pub slot: S,
    pub deadline: Instant,
}

/// Set once the host's first text or binary frame was forwarded to the member.
#[derive(Default)]
struct Answer {
    answered: AtomicBool,
    notify: Notify,
}

impl Answer {
    fn mark(&self) {
        // Called for every forwarded frame: a plain load keeps the answered case read-only.
        if !self.answered.load(Ordering::Relaxed) && !self.answered.swap(true, Ordering::Relaxed) {
            // `notify_one` keeps a permit if the watcher is not waiting yet.
            self.notify.notify_one();
        }
    }
}

/// Going Away: the standard code for "the other side disconnected".
const GOING_AWAY: u16 = 1001;

/// How one direction of the pipe ended.
enum PumpEnd {
    /// The reader sent a close frame (forward it).
    Closed(Option<CloseFrame>),
    /// The reader's stream ended or failed without a close frame.
    Gone,
    /// The reader sent a frame over the size limit.
    TooLarge,
    /// Writing to the other side failed: it is gone.
    WriteFailed,
}

async fn pump(
    rx: &mut SplitStream<WebSocket>,
    tx: &mut SplitSink<WebSocket, Message>,
    dir: Direction,
    metrics: &Metrics,
    last_ms: &AtomicU64,
    base: Instant,
    answer: Option<&Answer>,
) -> PumpEnd {
    loop {
        let msg = match rx.next().await {
            None => return PumpEnd::Gone,
            Some(Err(e)) => {
                return if is_too_large(e) {
                    PumpEnd::TooLarge
                } else {
                    PumpEnd::Gone
                }
            }
            Some(Ok(m)) => m,
        };
        last_ms.store(base.elapsed().as_millis() as u64, Ordering::Relaxed);
        let len = match &msg {
            Message::Close(f) => return PumpEnd::Closed(f.clone()),
            Message::Text(t) => t.as_str().len(),
            Message::Binary(b) | Message::Ping(b) | Message::Pong(b) => b.len(),
        };
        let is_data = matches!(msg, Message::Text(_) | Message::Binary(_));
        if tx.send(msg).await.is_err() {
            return PumpEnd::WriteFailed;
        }
        if let Some(a) = answer.filter(|_| is_data) {
            a.mark();
        }
        metrics.forwarded(dir, len);
    }
}

async fn idle_watch(last_ms: &AtomicU64, base: Instant, idle: Duration) {
    loop {
        let last = base + Duration::from_millis(last_ms.load(Ordering::Relaxed));
        let due = last + idle;
        if Instant::now() >= due {
            return;
        }
        tokio::time::sleep_until(due).await;
    }
}

async fn send_close(tx: &mut SplitSink<WebSocket, Message>, frame: Option<CloseFrame>) {
    let _ = tokio::time::timeout(Duration::from_secs(1), tx.send(Message::Close(frame))).await;
}

fn frame(code: u16, reason: &str) -> Option<CloseFrame> {
    Some(CloseFrame {
        code,
        reason: reason.into(),
    })
}

/// Waits until the host answers (then releases `slot` and never returns) or the deadline
/// passes (returns).
async fn answer_watch<S>(answer: &Answer, unanswered: Option<Unanswered<S>>) {
    let Some(Unanswered { slot, deadline }) = unanswered else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = answer.notify.notified() => {}
        _ = tokio::time::sleep_until(deadline) => return,
    }
    drop(slot);
    std::future::pending().await
}

/// Splices `client` and `host` until either side closes; returns a short description of
/// how it ended (for logs). `unanswered` is the session's answer deadline and the slot it
/// holds until the host's first text or binary frame to the member (`None`: answered).
pub async fn splice<S>(
    client: WebSocket,
    host: WebSocket,
    metrics: &Metrics,
    idle: Duration,
    max_frame_bytes: usize,
    unanswered: Option<Unanswered<S>>,
) -> &'static str {
    let (mut c_tx, mut c_rx) = client.split();
    let (mut h_tx, mut h_rx) = host.split();
    let base = Instant::now();
    let last_ms = AtomicU64::new(0);
    let answer = Answer::default();

    enum End {
        Client(PumpEnd),
        Host(PumpEnd),
        Idle,
        Unanswered,
    }
    let end = tokio::select! {
        e = pump(&mut c_rx, &mut h_tx, Direction::ClientToHost, metrics, &last_ms, base, None) => End::Client(e),
        e = pump(&mut h_rx, &mut c_tx, Direction::HostToClient, metrics, &last_ms, base, Some(&answer)) => End::Host(e),
        _ = idle_watch(&last_ms, base, idle) => End::Idle,
        _ = answer_watch(&answer, unanswered) => End::Unanswered,
    };
    let too_large = format!("frame over the relay limit of {max_frame_bytes} bytes");
    let what = match end {
        End::Client(e) => finish(e, &mut c_tx, &mut h_tx, &too_large, metrics).await,
        End::Host(e) => finish(e, &mut h_tx, &mut c_tx, &too_large, metrics).await,
        End::Idle => {
            metrics.refused(RefusalKind::Timeout);
            tracing::info!(
                code = close::TIMEOUT,
                "relayed session idle, closing both sides"
            );
            tokio::join!(
                send_close(&mut c_tx, frame(close::TIMEOUT, "idle timeout")),
                send_close(&mut h_tx, frame(close::TIMEOUT, "idle timeout"))
            );
            "idle timeout"
        }
        End::Unanswered => {
            metrics.refused(RefusalKind::Timeout);
            let why = "the host did not answer the member in time";
            tracing::info!(
                code = close::TIMEOUT,
                "relayed session unanswered, closing both sides"
            );
            tokio::join!(
                send_close(&mut c_tx, frame(close::TIMEOUT, why)),
                send_close(&mut h_tx, frame(close::TIMEOUT, why))
            );
            "unanswered"
        }
    };
    // Let both close handshakes complete (so each side sees its code), but not for long.
    tokio::join!(drain(&mut c_rx), drain(&mut h_rx));
    what
}

/// Reads (and drops) what is left until the peer's close arrives, for at most a second.
async fn drain(rx: &mut SplitStream<WebSocket>) {
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        while let Some(Ok(_)) = rx.next().await {}
    })
    .await;
}

/// Closes both sides after the direction reading from `r_tx`'s socket ended with `e`.
async fn finish(
    e: PumpEnd,
    r_tx: &mut SplitSink<WebSocket, Message>,
    w_tx: &mut SplitSink<WebSocket, Message>,
    too_large: &str,
    metrics: &Metrics,
) -> &'static str {
    match e {
        PumpEnd::Closed(f) => {
            // tungstenite already queued the close reply to the reader; forward the code.
            send_close(w_tx, f).await;
            "closed"
        }
        PumpEnd::Gone => {
            send_close(w_tx, frame(GOING_AWAY, "the other side disconnected")).await;
            "peer gone"
        }
        PumpEnd::WriteFailed => {
            send_close(r_tx, frame(GOING_AWAY, "the other side disconnected")).await;
            "peer gone"
        }
        PumpEnd::TooLarge => {
            metrics.refused(RefusalKind::TooLarge);
            tracing::info!(
                code = close::TOO_LARGE,
                reason = "too_large",
                "relay refused frame: {too_large}"
            );
            tokio::join!(
                send_close(r_tx, frame(close::TOO_LARGE, too_large)),
                send_close(
                    w_tx,
                    frame(
                        close::TOO_LARGE,
                        "the other side sent a frame over the relay limit"
                    )
                )
            );
            "frame too large"
        }
    }
}
