//! Section 7: mesh message throughput, encrypted (now) against plaintext (before).
//!
//! Before issue 11 a member sent each `send` as a plaintext JSON **text** frame and the host
//! parsed it; now the same JSON is sealed with the member's [`SecureChannel`] into a
//! **binary** frame and the host opens it first. Two measurements:
//!
//! - **One hop, side by side** (the comparison): a member socket and a host-side socket
//!   on loopback, both tokio-tungstenite with the settings of the real ones (the host side
//!   reads with `SOCKET_READ_BUFFER`, as `serve` does). The sender serialises
//!   `{"type":"send","to":…,"body":…}` and writes and flushes one frame per message, as
//!   `join` does; the receiver takes each frame and parses it back into a `ClientMsg`.
//!   *Plaintext* sends the JSON as a text frame (the receiver validates UTF-8, as before);
//!   *sealed* seals it and sends a binary frame (the receiver opens it). The channels come
//!   from a real handshake. Everything else is identical, so the difference is the
//!   encryption. Runs alternate plaintext/sealed.
//! - **Through a real host** (the whole path, sealed only: no plaintext host exists any
//!   more): two members join a release `atmosphere serve`; one sends `send` messages to the
//!   other, which opens and parses each `message`. The host opens, parses, re-serialises and
//!   seals every message for the recipient, and paces the sender to the recipient.
//!
//! Bodies are JSON strings of ~100 B and ~16 KiB; MB/s counts body bytes (10⁶ B). Each
//! sample counts what the receiver got over `secs` after a 0.3 s warm-up; medians of `reps`.

use crate::member::Member;
use crate::report::Report;
use crate::util::{dial, median, pin_to_one_cpu, thread_cpu};
use anyhow::{anyhow, bail, Context, Result};
use atmosphere_server::ws::SOCKET_READ_BUFFER;
use atmosphere_shared::api::TokenRequest;
use atmosphere_shared::channel::SecureChannel;
use atmosphere_shared::handshake::{
    ClientHandshake, Entropy, HostExpectation, HostHandshake, HostKeys, JoinProof, JoinRequest,
    StaticSecret,
};
use atmosphere_shared::wire::{ClientMsg, DeviceInfo, ServerMsg};
use atmosphere_shared::{Invite, PathKind};
use atmosphere_tests::Host;
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use rand::Rng;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

/// Unmeasured time at the start of every sample (connections warm, buffers grown).
const WARM_UP: Duration = Duration::from_millis(300);

/// How a message travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// Before issue 11: the JSON as a text frame.
    Plaintext,
    /// Now: the JSON sealed with the channel, in a binary frame.
    Sealed,
}

/// What a receiver counted.
#[derive(Debug, Clone, Copy, serde::Serialize)]
struct Sample {
    msgs: u64,
    secs: f64,
    body_bytes: usize,
}

impl Sample {
    fn msgs_per_s(&self) -> f64 {
        self.msgs as f64 / self.secs
    }
    fn mb_per_s(&self) -> f64 {
        self.msgs_per_s() * self.body_bytes as f64 / 1e6
    }
}

/// A message body: a JSON string of exactly `len` bytes once serialised (quotes included).
fn body(len: usize) -> serde_json::Value {
    let mut rng = rand::thread_rng();
    let s: String = (0..len.saturating_sub(2))
        .map(|_| rng.sample(rand::distributions::Alphanumeric) as char)
        .collect();
    serde_json::Value::String(s)
}

fn body_len(v: &serde_json::Value) -> usize {
    v.as_str().map_or(0, |s| s.len() + 2)
}

/// A member's and a host's end of one channel, from a real (in-memory) handshake.
fn channels() -> Result<(SecureChannel, SecureChannel)> {
    let keys = HostKeys::from_signing_key(&ed25519_dalek::SigningKey::from_bytes(&rand::random()));
    let request = JoinRequest {
        proof: JoinProof::Invite {
            token: "ATM-HAEQDDBYEJ9FCA91ABJEK9GC76VZTCRG".into(),
            device: DeviceInfo {
                name: "bench".into(),
                platform: "bench".into(),
            },
        },
        path: PathKind::Local,
    };
    let (client, msg1) = ClientHandshake::start(
        HostExpectation::MeshId(keys.mesh_id().to_string()),
        &request,
        &StaticSecret::from_bytes(rand::random()),
        Entropy::new(rand::random()),
    )?;
    let (host, msg2) =
        HostHandshake::new(&keys, Entropy::new(rand::random())).read_client_hello(&msg1)?;
    let done = client.read_host_hello(&msg2)?;
    let join = host.read_join(&done.message)?;
    Ok((done.channel, join.channel))
}

/// Writes `send` messages until `stop`: serialise, frame (seal), write and flush each.
async fn sender<W>(
    mut ws: W,
    mut channel: Option<SecureChannel>,
    msg: ClientMsg,
    stop: Arc<AtomicBool>,
) -> Result<()>
where
    W: Sink<Message, Error = WsError> + Unpin,
{
    while !stop.load(Ordering::Relaxed) {
        let json = serde_json::to_vec(&msg)?;
        let frame = match &mut channel {
            Some(ch) => Message::Binary(ch.seal(&json)?.into()),
            None => Message::Text(String::from_utf8(json)?.into()),
        };
        if let Err(e) = ws.send(frame).await {
            // The receiver hangs up once it has its sample.
            if stop.load(Ordering::Relaxed) {
                break;
            }
            return Err(e.into());
        }
    }
    Ok(())
}

/// Reads frames, turns each into a message with `decode` (which returns the body length of
/// a counted message, or `None` for other traffic), and counts over `dur` after the
/// warm-up; then sets `stop`.
async fn receiver<R, D>(
    mut ws: R,
    mut decode: D,
    dur: Duration,
    stop: Arc<AtomicBool>,
) -> Result<Sample>
where
    R: Stream<Item = Result<Message, WsError>> + Unpin,
    D: FnMut(Message) -> Result<Option<usize>>,
{
    let mut window: Option<(Instant, u64)> = None;
    let mut first: Option<Instant> = None;
    let mut n = 0u64;
    let deadline = Instant::now() + WARM_UP + dur + Duration::from_secs(30);
    loop {
        let m = tokio::time::timeout_at(deadline.into(), ws.next())
            .await
            .context("the receiver got too little within the deadline")?
            .context("the sender's socket closed")??;
        let Some(len) = decode(m)? else { continue };
        let now = Instant::now();
        n += 1;
        let first = *first.get_or_insert(now);
        match window {
            None if now - first >= WARM_UP => window = Some((now, n)),
            Some((t0, n0)) if now - t0 >= dur => {
                stop.store(true, Ordering::Relaxed);
                return Ok(Sample {
                    msgs: n - n0,
                    secs: (now - t0).as_secs_f64(),
                    body_bytes: len,
                });
            }
            _ => {}
        }
    }
}

/// CPU cost of the channel alone, per message of `len` body bytes: (seal µs, open µs) of
/// the `send` JSON, on this thread (pinned by the caller), over at least `dur` of its CPU
/// time. Timed in batches of 256 (reading the thread's CPU clock is a system call).
fn seal_open_cost(body: &serde_json::Value, dur: Duration) -> Result<(f64, f64)> {
    const BATCH: u32 = 256;
    let (mut member, mut host) = channels()?;
    let json = serde_json::to_vec(&ClientMsg::Send {
        to: Some("f446faf7bb60225a".into()),
        body: body.clone(),
    })?;
    let (mut seal, mut open, mut n) = (Duration::ZERO, Duration::ZERO, 0u32);
    while seal + open < dur {
        let t0 = thread_cpu();
        let frames = (0..BATCH)
            .map(|_| member.seal(&json))
            .collect::<Result<Vec<_>, _>>()?;
        let t1 = thread_cpu();
        for f in &frames {
            if host.open(f)?.map(|b| b.len()) != Some(json.len()) {
                bail!("the channel changed the message");
            }
        }
        let t2 = thread_cpu();
        seal += t1 - t0;
        open += t2 - t1;
        n += BATCH;
    }
    let us = |d: Duration| d.as_secs_f64() * 1e6 / f64::from(n);
    Ok((us(seal), us(open)))
}

/// One sample of the one-hop comparison.
async fn one_hop(framing: Framing, body: &serde_json::Value, dur: Duration) -> Result<Sample> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("ws://{}", listener.local_addr()?);
    let accept = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await?;
        tcp.set_nodelay(true)?;
        // The host side reads like `serve`'s member sockets.
        let config = WebSocketConfig::default().read_buffer_size(SOCKET_READ_BUFFER);
        anyhow::Ok(tokio_tungstenite::accept_async_with_config(tcp, Some(config)).await?)
    });
    let member = dial(&url).await?;
    let host = tokio::time::timeout(Duration::from_secs(10), accept)
        .await
        .context("accept timed out")???;
    let (member_ch, mut host_ch) = match framing {
        Framing::Plaintext => (None, None),
        Framing::Sealed => {
            let (m, h) = channels()?;
            (Some(m), Some(h))
        }
    };
    let msg = ClientMsg::Send {
        to: Some("f446faf7bb60225a".into()),
        body: body.clone(),
    };
    let stop = Arc::new(AtomicBool::new(false));
    let send = tokio::spawn(sender(member, member_ch, msg, stop.clone()));
    let decode = move |m: Message| -> Result<Option<usize>> {
        let parsed: ClientMsg = match (m, &mut host_ch) {
            (Message::Text(t), None) => serde_json::from_str(t.as_str())?,
            (Message::Binary(b), Some(ch)) => match ch.open(&b)? {
                Some(plain) => serde_json::from_slice(&plain)?,
                None => return Ok(None), // a pure ack or a duplicate
            },
            (Message::Ping(_) | Message::Pong(_), _) => return Ok(None),
            (other, _) => bail!("unexpected frame {other:?}"),
        };
        let ClientMsg::Send { body, .. } = parsed else {
            bail!("the bench sends only `send` messages");
        };
        Ok(Some(body_len(&body)))
    };
    let sample = receiver(host, decode, dur, stop.clone()).await;
    stop.store(true, Ordering::Relaxed);
    // The receiver's socket is gone: the sender's next write fails and it stops.
    let _ = tokio::time::timeout(Duration::from_secs(10), send).await;
    sample
}

/// One sample through the host: a fresh sender and receiver join, then the sender sends
/// to the receiver.
async fn through_host(
    host: &Host,
    invite: &Invite,
    body: &serde_json::Value,
    dur: Duration,
) -> Result<Sample> {
    let url = host.ws_url();
    let config = WebSocketConfig::default;
    let to = Member::join(
        Ipv4Addr::LOCALHOST,
        &url,
        config(),
        invite,
        "bench-receiver",
    )
    .await?;
    let from = Member::join(Ipv4Addr::LOCALHOST, &url, config(), invite, "bench-sender").await?;
    let msg = ClientMsg::Send {
        to: Some(to.device_id.clone()),
        body: body.clone(),
    };
    let stop = Arc::new(AtomicBool::new(false));
    // The sender reads nothing; what the host sends it (presence, pings) waits in its
    // socket. Its own stream of frames keeps its session alive.
    let (tx, _rx) = from.ws.split();
    let send = tokio::spawn(sender(tx, Some(from.channel), msg, stop.clone()));
    let mut ch = to.channel;
    let decode = move |m: Message| -> Result<Option<usize>> {
        match m {
            Message::Binary(b) => match ch.open(&b)? {
                Some(plain) => match serde_json::from_slice::<ServerMsg>(&plain)? {
                    ServerMsg::Message { body, .. } => Ok(Some(body_len(&body))),
                    _ => Ok(None),
                },
                None => Ok(None), // a pure ack or a duplicate
            },
            Message::Ping(_) | Message::Pong(_) => Ok(None),
            other => bail!("unexpected frame {other:?}"),
        }
    };
    let sample = receiver(to.ws, decode, dur, stop.clone()).await;
    stop.store(true, Ordering::Relaxed);
    let _ = tokio::time::timeout(Duration::from_secs(10), send).await;
    sample
}

fn fmt(s: &Sample) -> String {
    format!("{:.0} msg/s = {:.1} MB/s", s.msgs_per_s(), s.mb_per_s())
}

/// The median sample by messages per second.
fn med(v: &[Sample]) -> Result<Sample> {
    let m = median(&v.iter().map(Sample::msgs_per_s).collect::<Vec<_>>());
    v.iter()
        .min_by(|a, b| {
            (a.msgs_per_s() - m)
                .abs()
                .total_cmp(&(b.msgs_per_s() - m).abs())
        })
        .copied()
        .ok_or_else(|| anyhow!("no samples"))
}

/// Runs section 7.
pub async fn run(rep: &mut Report, reps: usize, secs: f64) -> Result<()> {
    let dur = Duration::from_secs_f64(secs);
    let host = Host::start().await;
    let inv = host
        .mint(&TokenRequest {
            label: Some("bench throughput".into()),
            ..TokenRequest::unlimited()
        })
        .await;
    let invite = Invite::parse(&inv.qr_data).context("parsing the minted invite")?;
    let mut raw = serde_json::Map::new();
    for (label, len) in [("~100 B", 100usize), ("~16 KiB", 16 * 1024)] {
        let body = body(len);
        let b = body.clone();
        let (seal_us, open_us) = std::thread::spawn(move || -> Result<(f64, f64)> {
            pin_to_one_cpu()?;
            seal_open_cost(&b, Duration::from_millis(100))?;
            seal_open_cost(&b, Duration::from_secs_f64(secs))
        })
        .join()
        .map_err(|_| anyhow!("the channel-cost thread panicked"))??;
        let (mut plain, mut sealed, mut hosted) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..reps.max(1) {
            plain.push(one_hop(Framing::Plaintext, &body, dur).await?);
            sealed.push(one_hop(Framing::Sealed, &body, dur).await?);
            hosted.push(through_host(&host, &invite, &body, dur).await?);
        }
        let (p, s, h) = (med(&plain)?, med(&sealed)?, med(&hosted)?);
        eprintln!(
            "   {label}: plaintext {} · sealed {} · through the host {}",
            fmt(&p),
            fmt(&s),
            fmt(&h)
        );
        rep.fig(
            7,
            format!("Member → host, one hop, {len}-byte bodies: sealed binary frames (now) vs plaintext JSON text frames (before) (median of {} × {secs:.0} s)", plain.len()),
            "— (reported)",
            format!(
                "sealed {} · plaintext {} · sealed/plaintext = {:.0} %",
                fmt(&s),
                fmt(&p),
                100.0 * s.msgs_per_s() / p.msgs_per_s()
            ),
            None,
        );
        rep.fig(
            7,
            format!("Member → host → member through a real `atmosphere serve`, {len}-byte bodies, sealed on both hops (median of {} × {secs:.0} s)", hosted.len()),
            "— (reported)",
            fmt(&h),
            None,
        );
        rep.fig(
            7,
            format!("Channel CPU cost per {len}-byte-body `send` (ChaCha20-Poly1305 of `snow`; thread CPU time, one pinned thread)"),
            "— (reported)",
            format!(
                "seal {seal_us:.2} µs + open {open_us:.2} µs per message = {:.0} MB/s of bodies through seal+open on one core",
                len as f64 / (seal_us + open_us)
            ),
            None,
        );
        raw.insert(
            label.to_string(),
            serde_json::json!({"seal_us": seal_us, "open_us": open_us, "plaintext_one_hop": plain, "sealed_one_hop": sealed, "sealed_through_host": hosted}),
        );
    }
    rep.raw("messages", serde_json::Value::Object(raw));
    drop(host);
    Ok(())
}
