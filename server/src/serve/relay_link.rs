//! The host's link to its relay (`serve --relay-url`): keeps `/mesh/{mesh_id}/host` up,
//! proves the mesh key, and dials a data socket for every relayed member. The relay server
//! itself is [`crate::relay`].
//!
//! Life of the link: dial the control socket → check that the relay's challenge names the
//! relay this link dialed (`relay_proto::check_relay_name`) and answer it with
//! `relay_proto::sign` → `registered` → wait for `session` notices, pinging every
//! [`PING_EVERY`] so the relay's idle timeout never fires and a dead relay is noticed
//! within [`SILENCE_LIMIT`]. Any failure (refused, reset, relay restarted)
//! leads to a retry after a capped exponential backoff with jitter (250 ms doubling to
//! 30 s; reset once a connection has stayed up for a while), and the state that
//! `/api/network` shows says why.
//!
//! Each `session` notice spawns a task that dials `/mesh/{mesh_id}/session/{session_id}`
//! with `Authorization: Bearer <secret>` and hands the resulting WebSocket to `on_session`,
//! i.e. the same mesh-session handler direct sockets use. At most [`MAX_PENDING_DIALS`]
//! dials run at once; while all of them are busy the link stops reading its control socket,
//! so the next notices wait in the relay (bounded there by its per-mesh session limit)
//! instead of being dropped: no relayed member is lost to a burst.
//!
//! The link also carries the public-reachability check (`super::reachability`): it sends
//! the checker's `dial_back` requests ([`HostLink::send`]) on the registered socket, and
//! every registration and every `dial_back_result` reaches the receivers of
//! [`HostLink::subscribe`] as a [`LinkEvent`].

use crate::dial::{dial, ClientSocket, DialOptions};
use crate::printable::printable;
use atmosphere_shared::api::RelayState;
use atmosphere_shared::backoff::Backoff;
use atmosphere_shared::dial_back::DialBackResult;
use atmosphere_shared::mesh_id::mesh_id_from_public_key;
use atmosphere_shared::relay_proto::{self, HostMsg, RelayMsg, MAX_CONTROL_FRAME_BYTES};
use futures_util::{SinkExt, StreamExt};
use rand::Rng;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{broadcast, mpsc};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

/// Called for every new relayed session with its data socket (an ordinary WebSocket to the
/// relay, which splices it to the member; `serve` hands it to the same session handler as
/// direct sockets) and the member's address as the relay reported it (for logs).
pub type OnSession = Arc<dyn Fn(ClientSocket, String) + Send + Sync>;

/// Configuration of the host link.
pub struct HostLinkConfig {
    /// Base URL of the relay, e.g. `wss://relay.example:8080` (from `--relay-url`).
    pub relay_url: String,
    /// The mesh's Ed25519 identity; `mesh_id` is derived from its public key.
    pub signing_key: ed25519_dalek::SigningKey,
}

/// First retry delay.
const BACKOFF_START: Duration = Duration::from_millis(250);
/// Largest retry delay.
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// A connection that stayed registered this long resets the backoff.
const STABLE_AFTER: Duration = Duration::from_secs(30);
/// Deadline for dialing the relay and for each handshake step.
const STEP_TIMEOUT: Duration = Duration::from_secs(10);
/// Keepalive ping interval on the control socket (well under the relay's idle timeout).
pub const PING_EVERY: Duration = Duration::from_secs(15);
/// No frame at all (not even a pong) for this long means the relay is gone.
pub const SILENCE_LIMIT: Duration = Duration::from_secs(45);
/// Largest frame accepted on a data socket: above the mesh protocol's own limit, so the
/// session handler (not the transport) reports oversize frames with its clear error.
const DATA_MAX_BYTES: usize = 1024 * 1024;
/// Data sockets being dialled at once. The relay asks for one per waiting member; a relay
/// that floods session notices must not make the host open connections without bound, so
/// past this many the link reads no further notice until a dial finishes.
const MAX_PENDING_DIALS: usize = 64;
/// Control messages queued for the relay (the reachability check sends one at a time).
const OUTBOX: usize = 4;

/// What the link tells its subscribers ([`HostLink::subscribe`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkEvent {
    /// The relay accepted a (new) registration.
    Registered,
    /// The relay's answer to a `dial_back` request.
    DialBackResult(DialBackResult),
}

struct Inner {
    endpoint: String,
    state: Arc<Mutex<RelayState>>,
    outbox: mpsc::Sender<HostMsg>,
    events: broadcast::Sender<LinkEvent>,
    task: tokio::task::AbortHandle,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The last handle is gone: stop reconnecting.
        self.task.abort();
    }
}

/// Handle to the running link; cheap to clone. Dropping the last clone stops the link.
#[derive(Clone)]
pub struct HostLink {
    inner: Arc<Inner>,
}

impl HostLink {
    /// Starts the control link in the background (needs a tokio runtime).
    pub fn spawn(config: HostLinkConfig, on_session: OnSession) -> HostLink {
        let mesh_id = mesh_id_from_public_key(&config.signing_key.verifying_key().to_bytes());
        let base = config.relay_url.trim().trim_end_matches('/').to_string();
        let endpoint = format!("{base}/mesh/{mesh_id}");
        let state = Arc::new(Mutex::new(RelayState::Connecting { url: base.clone() }));
        let (outbox, outbox_rx) = mpsc::channel(OUTBOX);
        let (events, _) = broadcast::channel(16);
        let link = Link {
            outbox: tokio::sync::Mutex::new(outbox_rx),
            events: events.clone(),
            base,
            mesh_id,
            key: config.signing_key,
            on_session,
            state: state.clone(),
            dials: Arc::new(tokio::sync::Semaphore::new(MAX_PENDING_DIALS)),
        };
        let task = tokio::spawn(link.run()).abort_handle();
        HostLink {
            inner: Arc::new(Inner {
                endpoint,
                state,
                outbox,
                events,
                task,
            }),
        }
    }

    /// The invite's relay endpoint: `<relay-url>/mesh/<mesh_id>`.
    pub fn invite_endpoint(&self) -> String {
        self.inner.endpoint.clone()
    }

    /// Queues `msg` for the relay. It is sent only on a registered control socket: a message
    /// queued while the link is down is dropped at the next registration (subscribers then
    /// see [`LinkEvent::Registered`] and ask again). `false` when the queue is full.
    pub fn send(&self, msg: HostMsg) -> bool {
        self.inner.outbox.try_send(msg).is_ok()
    }

    /// Registrations and `dial_back` results from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<LinkEvent> {
        self.inner.events.subscribe()
    }

    /// Current link state for `/api/network` and the UI.
    pub fn state(&self) -> RelayState {
        self.inner
            .state
            .lock()
            .map(|s| s.clone())
            .unwrap_or(RelayState::NotConfigured)
    }
}

struct Link {
    base: String,
    mesh_id: String,
    key: ed25519_dalek::SigningKey,
    on_session: OnSession,
    state: Arc<Mutex<RelayState>>,
    /// Permits for in-flight data-socket dials ([`MAX_PENDING_DIALS`]).
    dials: Arc<tokio::sync::Semaphore>,
    /// Messages for the relay ([`HostLink::send`]); only this task reads them.
    outbox: tokio::sync::Mutex<mpsc::Receiver<HostMsg>>,
    events: broadcast::Sender<LinkEvent>,
}

/// Retry delay for the `attempt`-th consecutive failure: 250 ms · 2^attempt capped at 30 s,
/// then "equal jitter" (a uniform pick in [d/2, d]) so many hosts restarted by one relay
/// outage do not reconnect in lockstep.
fn backoff(attempt: u32) -> Duration {
    Backoff::new(BACKOFF_START, BACKOFF_MAX).delay(attempt, rand::thread_rng().gen::<f64>())
}

impl Link {
    fn set(&self, s: RelayState) {
        if let Ok(mut g) = self.state.lock() {
            *g = s;
        }
    }

    async fn run(self) {
        let mut attempt = 0u32;
        loop {
            self.set(RelayState::Connecting {
                url: self.base.clone(),
            });
            let mut registered_at = None;
            let err = self.connect_once(&mut registered_at).await;
            if registered_at.is_some_and(|t: Instant| t.elapsed() >= STABLE_AFTER) {
                attempt = 0;
            }
            let delay = backoff(attempt);
            attempt = attempt.saturating_add(1);
            tracing::warn!(relay = %self.base, retry_in_ms = delay.as_millis() as u64,
                "relay link down: {}", printable(&err.to_string()));
            self.set(RelayState::Retrying {
                url: self.base.clone(),
                last_error: err,
                retry_in_ms: delay.as_millis() as u64,
            });
            tokio::time::sleep(delay).await;
        }
    }

    /// One connection: dial, register, serve session notices. Returns why it ended.
    async fn connect_once(&self, registered_at: &mut Option<Instant>) -> String {
        let mut ws = match self.dial_control().await {
            Ok(ws) => ws,
            Err(e) => return e,
        };
        if let Err(e) = self.register(&mut ws).await {
            return e;
        }
        *registered_at = Some(Instant::now());
        tracing::info!(relay = %self.base, mesh = %self.mesh_id, "registered with the relay");
        self.set(RelayState::Connected {
            url: self.base.clone(),
        });
        let mut outbox = self.outbox.lock().await;
        // Requests made while the link was down belong to checks that have given up.
        while outbox.try_recv().is_ok() {}
        let _ = self.events.send(LinkEvent::Registered);
        self.serve_notices(ws, &mut outbox).await
    }

    /// Opens the control socket `/mesh/{mesh_id}/host`.
    async fn dial_control(&self) -> Result<ClientSocket, String> {
        let url = format!("{}/mesh/{}/host", self.base, self.mesh_id);
        let options = DialOptions {
            bearer: None,
            config: WebSocketConfig::default()
                .max_frame_size(Some(MAX_CONTROL_FRAME_BYTES))
                .max_message_size(Some(MAX_CONTROL_FRAME_BYTES)),
            deadline: STEP_TIMEOUT,
        };
        dial(&url, &options)
            .await
            .map(|d| d.socket)
            .map_err(|e| format!("cannot connect to {url}: {e}"))
    }

    /// Challenge → register → registered, each read under [`STEP_TIMEOUT`].
    async fn register(&self, ws: &mut ClientSocket) -> Result<(), String> {
        let (nonce, relay) = match next_control(ws).await? {
            RelayMsg::Challenge { nonce, relay } => (
                relay_proto::decode_nonce(&nonce)
                    .ok_or_else(|| "relay sent a malformed challenge".to_string())?,
                relay,
            ),
            other => return Err(format!("relay sent {other:?} instead of a challenge")),
        };
        // Sign only for the relay this link dialed: a relay that forwards another relay's
        // challenge gets nothing it can use there.
        relay_proto::check_relay_name(&self.base, &relay)
            .map_err(|e| format!("refusing the relay's challenge: {e}"))?;
        let register = relay_proto::sign(&self.key, &relay, &self.mesh_id, &nonce);
        let register = serde_json::to_string(&register).unwrap_or_default();
        ws.send(Message::Text(register.into()))
            .await
            .map_err(|e| format!("control link lost while registering: {e}"))?;
        match next_control(ws).await? {
            RelayMsg::Registered { .. } => Ok(()),
            other => Err(format!("relay sent {other:?} instead of registered")),
        }
    }

    /// Serves `session` notices until the link ends, keeping it alive with pings and
    /// noticing a silent relay. Returns why it ended.
    ///
    /// A notice is only read once a dial permit is in hand: while [`MAX_PENDING_DIALS`]
    /// dials are in flight the control socket is not read, TCP pushes back, and the relay
    /// keeps the notices (and the members' sessions, under its accept deadline). The relay's
    /// silence is only measured while the link is reading.
    async fn serve_notices(
        &self,
        mut ws: ClientSocket,
        outbox: &mut mpsc::Receiver<HostMsg>,
    ) -> String {
        let mut ping = tokio::time::interval_at(Instant::now() + PING_EVERY, PING_EVERY);
        let mut last_frame = Instant::now();
        let mut permit: Option<tokio::sync::OwnedSemaphorePermit> = None;
        loop {
            tokio::select! {
                p = self.dials.clone().acquire_owned(), if permit.is_none() => {
                    // The semaphore is never closed; a closed one would end the link.
                    let Ok(p) = p else { return "dial permits closed".into() };
                    permit = Some(p);
                    // Time spent waiting for our own dials is not the relay's silence.
                    last_frame = Instant::now();
                }
                frame = ws.next(), if permit.is_some() => {
                    last_frame = Instant::now();
                    match frame {
                        Some(Ok(Message::Text(t))) => match serde_json::from_str::<RelayMsg>(t.as_str()) {
                            Ok(RelayMsg::Session { session_id, secret, remote }) => {
                                if let Some(p) = permit.take() {
                                    self.accept(p, session_id, secret, remote);
                                }
                            }
                            Ok(RelayMsg::DialBackResult(r)) => {
                                let _ = self.events.send(LinkEvent::DialBackResult(r));
                            }
                            Ok(other) => tracing::debug!("ignoring relay message {other:?}"),
                            Err(e) => tracing::debug!("ignoring unknown relay message: {e}"),
                        },
                        Some(Ok(Message::Close(f))) => return describe_close("relay closed the control link", f),
                        Some(Ok(_)) => {}
                        Some(Err(e)) => return format!("control link lost: {e}"),
                        None => return "control link closed by the relay".into(),
                    }
                }
                Some(msg) = outbox.recv() => {
                    let text = serde_json::to_string(&msg).unwrap_or_default();
                    if let Err(e) = ws.send(Message::Text(text.into())).await {
                        return format!("control link lost: {e}");
                    }
                }
                _ = ping.tick() => {
                    if let Err(e) = ws.send(Message::Ping(Vec::new().into())).await {
                        return format!("control link lost: {e}");
                    }
                }
                _ = tokio::time::sleep_until(last_frame + SILENCE_LIMIT), if permit.is_some() => {
                    return format!("relay silent for {} s", SILENCE_LIMIT.as_secs());
                }
            }
        }
    }

    /// Dials the data socket for one relayed member in the background, holding `permit`
    /// (one of [`MAX_PENDING_DIALS`]) until the dial is done.
    fn accept(
        &self,
        permit: tokio::sync::OwnedSemaphorePermit,
        session_id: String,
        secret: String,
        remote: String,
    ) {
        // Session ids are hex from the relay; refuse anything that could bend the URL.
        if session_id.is_empty()
            || session_id.len() > 128
            || !session_id.bytes().all(|b| b.is_ascii_alphanumeric())
        {
            tracing::warn!("relay sent a malformed session id; ignoring");
            return;
        }
        let url = format!("{}/mesh/{}/session/{}", self.base, self.mesh_id, session_id);
        let on_session = self.on_session.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let options = DialOptions {
                bearer: Some(&secret),
                config: WebSocketConfig::default()
                    .read_buffer_size(crate::ws::SOCKET_READ_BUFFER)
                    .max_frame_size(Some(DATA_MAX_BYTES))
                    .max_message_size(Some(DATA_MAX_BYTES)),
                deadline: STEP_TIMEOUT,
            };
            match dial(&url, &options).await {
                Ok(d) => {
                    tracing::debug!(%remote, session = %session_id, "relayed session accepted");
                    on_session(d.socket, remote);
                }
                Err(e) => {
                    tracing::warn!(%remote, session = %session_id, "could not open the relayed session: cannot connect to {url}: {e}")
                }
            }
        });
    }
}

fn describe_close(
    what: &str,
    f: Option<tokio_tungstenite::tungstenite::protocol::CloseFrame>,
) -> String {
    match f {
        Some(f) => format!("{what}: {} {}", u16::from(f.code), f.reason.as_str()),
        None => what.to_string(),
    }
}

/// Reads the next control message (skipping pings), under [`STEP_TIMEOUT`].
async fn next_control(ws: &mut ClientSocket) -> Result<RelayMsg, String> {
    let deadline = Instant::now() + STEP_TIMEOUT;
    loop {
        let frame = tokio::time::timeout_at(deadline, ws.next())
            .await
            .map_err(|_| format!("relay did not answer within {} s", STEP_TIMEOUT.as_secs()))?;
        match frame {
            Some(Ok(Message::Text(t))) => {
                return serde_json::from_str(t.as_str())
                    .map_err(|e| format!("relay sent a malformed message: {e}"))
            }
            Some(Ok(Message::Close(f))) => {
                return Err(describe_close("relay refused the registration", f))
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(format!("control link lost: {e}")),
            None => return Err("control link closed by the relay".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_caps_and_jitters() {
        for _ in 0..50 {
            let d0 = backoff(0);
            assert!(
                d0 >= Duration::from_millis(125) && d0 <= Duration::from_millis(250),
                "{d0:?}"
            );
            let d20 = backoff(20);
            assert!(
                d20 >= Duration::from_secs(15) && d20 <= Duration::from_secs(30),
                "{d20:?}"
            );
        }
        assert!(backoff(3) >= Duration::from_millis(1000));
    }
}
