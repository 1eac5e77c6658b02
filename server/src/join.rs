//! `atmosphere join LINK`: the native shell around the shared racing policy
//! ([`atmosphere_shared::racing`]).
//!
//! The policy (which path to try when, deadlines, who wins, when to give up) lives in the
//! sans-IO [`Race`]; this file only does the I/O it asks for: one tokio task per started
//! attempt (tokio-tungstenite connect, send `join`, wait for `joined` or `error`), abort on
//! cancel, a timer for [`Race::poll_timeout`], and printing the race's events — as JSON
//! lines (`--json`, the CLI contract in ARCHITECTURE.md) or as a readable progress log.
//!
//! After the race is won the command either leaves (`--once`) or stays in the mesh: it
//! prints presence and messages and sends each line typed on stdin as a broadcast.
//!
//! Exit codes: 0 connected (and, without `--once`, left with Ctrl-C), 1 all paths failed,
//! the host refused the credential, or (with `--no-reconnect`) the session was lost,
//! 2 bad link or usage. Without `--once` a lost session is re-established with the
//! device credential, with capped backoff.

use atmosphere_shared::racing::{
    AttemptId, FailReason, Outcome, Output, Policy, Race, RaceEvent, DEFAULT_ATTEMPT_TIMEOUT_MS,
    DEFAULT_STAGGER_MS,
};
use atmosphere_shared::wire::{ClientMsg, DeviceInfo, ErrorCode, Peer, ServerMsg, MAX_FRAME_BYTES};
use atmosphere_shared::{Invite, PathKind};
use futures_util::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::{self, protocol::WebSocketConfig, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// Longest device name we send (the host shows it in lists; a name is not an essay).
const MAX_NAME_CHARS: usize = 64;
/// Largest device file we read: it holds four short strings.
const MAX_DEVICE_FILE_BYTES: u64 = 64 * 1024;
/// How long a clean close may take before we just drop the socket.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// `atmosphere join` flags.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Exit codes: 0 connected; 1 every path failed, the host refused the token/device \
(invalid_token, token_expired, token_exhausted, token_revoked, unknown_device) or, with \
--no-reconnect, the session was lost; 2 bad link or usage.

With --json, stdout carries one JSON object per line:
  {\"event\":\"trying\",\"path\":\"local\",\"url\":\"ws://…\"}
  {\"event\":\"failed\",\"path\":\"local\",\"reason\":\"connection refused\"}
  {\"event\":\"connected\",\"path\":\"public\",\"mesh_name\":\"Home\",\"elapsed_ms\":262}
  {\"event\":\"error\",\"code\":\"token_expired\",\"message\":\"…\"}
Without --once, presence and messages follow (peers, peer_joined, peer_left, message); a \
lost session prints {\"event\":\"disconnected\",\"reason\":…} and \
{\"event\":\"reconnecting\",\"in_ms\":1000}, then the new trying/connected lines.")]
pub struct Args {
    /// The invite: `atmosphere://join?token=…&mesh=…&endpoints=…` (v2), the legacy
    /// `…&endpoint=ws://…` (v1), or the web form `http(s)://HOST/join#…`.
    pub link: String,

    /// Print one JSON object per line (trying / failed / connected / error, then, without
    /// --once, peers / peer_joined / peer_left / message) instead of a readable log.
    #[arg(long)]
    pub json: bool,

    /// Leave right after connecting (exit 0). Without it, stay in the mesh: print presence
    /// and messages, and send each line typed on stdin to every member.
    #[arg(long)]
    pub once: bool,

    /// Device name other members see (at most 64 characters). Default: this machine's
    /// host name.
    #[arg(long, env = "ATMOSPHERE_DEVICE_NAME")]
    pub name: Option<String>,

    /// Platform reported to the host with the device name.
    #[arg(long, default_value = "cli")]
    pub platform: String,

    /// Try one path at a time, the next only after the previous failed or timed out (the
    /// seed's behaviour), instead of racing them with a stagger.
    #[arg(long)]
    pub sequential: bool,

    /// Milliseconds after one path starts before the next one starts too, if the first has
    /// not answered (0 = all at once; ignored with --sequential).
    #[arg(long, default_value_t = DEFAULT_STAGGER_MS, value_parser = clap::value_parser!(u64).range(0..=60_000))]
    pub stagger_ms: u64,

    /// Deadline of one attempt in milliseconds: connect, WebSocket handshake and the host's
    /// `joined`.
    #[arg(long, default_value_t = DEFAULT_ATTEMPT_TIMEOUT_MS, value_parser = clap::value_parser!(u64).range(1..=600_000))]
    pub attempt_timeout_ms: u64,

    /// File holding this device's credential for this mesh. If it exists, join with it
    /// (`device_id` + `device_key`) instead of the invite's token; after a first join with
    /// the token, the credential the host returns is written there (mode 0600). Without
    /// this flag nothing is stored.
    #[arg(long, env = "ATMOSPHERE_DEVICE_FILE")]
    pub device_file: Option<PathBuf>,

    /// Without --once, exit 1 when the connection to the host is lost instead of
    /// reconnecting. By default the session is re-established with this device's credential
    /// over whichever path works then, retrying with capped backoff (1 s doubling to 30 s)
    /// until Ctrl-C or a final refusal (e.g. the host removed the device).
    #[arg(long)]
    pub no_reconnect: bool,
}

/// What `--device-file` stores: the credential the host handed out on the first join.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct DeviceCredential {
    mesh_id: String,
    mesh_name: String,
    device_id: String,
    device_key: String,
}

/// The host's `joined`, kept until the race decides whether this attempt won.
#[derive(Debug, Clone)]
struct Joined {
    mesh_id: String,
    mesh_name: String,
    device_id: String,
    device_key: Option<String>,
    peers: Vec<Peer>,
}

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// What an attempt task reports back to the race loop.
enum Report {
    Joined {
        id: AttemptId,
        joined: Box<Joined>,
        ws: Box<Ws>,
    },
    Failed {
        id: AttemptId,
        reason: FailReason,
    },
}

/// Prints the race's events and the session's traffic in the chosen format.
struct Printer {
    json: bool,
    /// Set while re-establishing a lost session: a round in which every path failed is not
    /// the end (the next `reconnecting` line follows), so it is not printed as an `error`.
    retrying: std::cell::Cell<bool>,
}

impl Printer {
    /// Prints one JSON object as a line. Built with `json!`/`Value` the keys come out
    /// sorted, so callers that care about order (`event` first) pass a ready string.
    fn line(&self, text: &str) {
        println!("{text}");
    }

    fn race_event(&self, ev: &RaceEvent, mesh_name: Option<&str>) {
        if self.retrying.get() && matches!(ev, RaceEvent::AllFailed { .. }) {
            return;
        }
        if self.json {
            self.line(&ev.to_json_line(mesh_name));
        } else if matches!(ev, RaceEvent::AllFailed { .. } | RaceEvent::Fatal { .. }) {
            eprintln!("error: {}", ev.describe(mesh_name));
        } else {
            println!("{}", ev.describe(mesh_name));
        }
    }

    /// An error that is not a race event (bad link, lost session, …), in the same
    /// `{"event":"error","code","message"}` shape.
    fn error(&self, code: &str, message: &str) {
        if self.json {
            #[derive(Serialize)]
            struct ErrorLine<'a> {
                event: &'static str,
                code: &'a str,
                message: &'a str,
            }
            let line = ErrorLine {
                event: "error",
                code,
                message,
            };
            self.line(&serde_json::to_string(&line).expect("serialises"));
        } else {
            eprintln!("error: {message}");
        }
    }

    /// The live session ended and will be re-established:
    /// `{"event":"disconnected","reason":…}`.
    fn disconnected(&self, reason: &str) {
        self.retrying.set(true);
        if self.json {
            #[derive(Serialize)]
            struct Line<'a> {
                event: &'static str,
                reason: &'a str,
            }
            let line = Line {
                event: "disconnected",
                reason,
            };
            self.line(&serde_json::to_string(&line).expect("serialises"));
        } else {
            eprintln!("disconnected: {reason}");
        }
    }

    /// The next reconnection round starts after `delay`:
    /// `{"event":"reconnecting","in_ms":…}`.
    fn reconnecting(&self, delay: Duration) {
        let in_ms = delay.as_millis() as u64;
        if self.json {
            self.line(&format!(r#"{{"event":"reconnecting","in_ms":{in_ms}}}"#));
        } else {
            eprintln!(
                "reconnecting in {:.1} s (Ctrl-C to stop)",
                delay.as_secs_f64()
            );
        }
    }

    fn info(&self, text: &str) {
        if !self.json {
            println!("{text}");
        }
    }
}

/// A host frame as a JSON line: the frame itself with its leading `"type"` tag renamed
/// `"event"`, so session lines look like the race's events.
fn server_line(m: &ServerMsg) -> String {
    let text = m.to_json();
    // serde writes an internally tagged enum's tag first.
    match text.strip_prefix("{\"type\":") {
        Some(rest) => format!("{{\"event\":{rest}"),
        None => text,
    }
}

/// Runs `atmosphere join` and returns the exit code (see the module docs).
pub async fn run(args: Args) -> ExitCode {
    let printer = Printer {
        json: args.json,
        retrying: std::cell::Cell::new(false),
    };
    let invite = match Invite::parse(&args.link) {
        Ok(i) => i,
        Err(e) => {
            printer.error("bad_link", &format!("not a valid invite link: {e}"));
            return ExitCode::from(2);
        }
    };
    if invite.endpoints.iter().next().is_none() {
        printer.error("bad_link", "the invite lists no endpoint to connect to");
        return ExitCode::from(2);
    }
    let name = match device_name(args.name.as_deref()) {
        Ok(n) => n,
        Err(e) => {
            printer.error("bad_usage", &e);
            return ExitCode::from(2);
        }
    };
    let stored = match &args.device_file {
        Some(p) => match load_credential(p) {
            Ok(c) => c,
            Err(e) => {
                printer.error("bad_usage", &e);
                return ExitCode::from(2);
            }
        },
        None => None,
    };
    let join = JoinFrame {
        token: invite.token.clone(),
        device: DeviceInfo {
            name,
            platform: args.platform.clone(),
        },
        credential: stored
            .as_ref()
            .map(|c| (c.device_id.clone(), c.device_key.clone())),
    };
    if let Some(c) = &stored {
        printer.info(&format!(
            "rejoining as device {} (credential from the device file)",
            c.device_id
        ));
    }
    let policy = Policy {
        stagger_ms: args.stagger_ms,
        attempt_timeout_ms: args.attempt_timeout_ms,
        sequential: args.sequential,
        page_is_https: false,
    };

    let (ws, joined) = match race(&invite, policy, &join, &printer).await {
        Ok(won) => won,
        Err(_) => return ExitCode::from(1),
    };

    if let (Some(path), Some(key)) = (&args.device_file, &joined.device_key) {
        let cred = DeviceCredential {
            mesh_id: joined.mesh_id.clone(),
            mesh_name: joined.mesh_name.clone(),
            device_id: joined.device_id.clone(),
            device_key: key.clone(),
        };
        match save_credential(path, &cred) {
            Ok(()) => printer.info(&format!("device credential saved to {}", path.display())),
            // The session is fine; only the next rejoin will need a fresh invite. Say so.
            Err(e) => eprintln!("warning: {e}"),
        }
    }

    if args.once {
        close(ws).await;
        return ExitCode::SUCCESS;
    }
    // Reconnections rejoin as this device (never spend another invite use).
    let mut join = join;
    if let Some(key) = &joined.device_key {
        join.credential = Some((joined.device_id.clone(), key.clone()));
    }
    let mut stdin = StdinLines::new();
    let (mut ws, mut joined) = (ws, joined);
    loop {
        match session(ws, &joined, &printer, &mut stdin).await {
            SessionEnd::Left => return ExitCode::SUCCESS,
            SessionEnd::Lost(reason) if args.no_reconnect || join.credential.is_none() => {
                printer.error("disconnected", &reason);
                return ExitCode::from(1);
            }
            SessionEnd::Lost(reason) => printer.disconnected(&reason),
        }
        match reconnect(&invite, policy, &join, &printer).await {
            Some(won) => (ws, joined) = won,
            None => return ExitCode::from(1),
        }
    }
}

/// First retry delay after a lost session, and the cap of its doubling.
const RECONNECT_FIRST: Duration = Duration::from_secs(1);
const RECONNECT_MAX: Duration = Duration::from_secs(30);

/// Races the endpoints again until one joins (`Some`), a final refusal arrives or the person
/// presses Ctrl-C (`None`; the refusal was already printed). Waits with capped exponential
/// backoff between rounds, so a host that is restarting is not hammered.
async fn reconnect(
    invite: &Invite,
    policy: Policy,
    join: &JoinFrame,
    printer: &Printer,
) -> Option<(Box<Ws>, Box<Joined>)> {
    let mut delay = RECONNECT_FIRST;
    loop {
        printer.reconnecting(delay);
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = tokio::signal::ctrl_c() => {
                printer.info("left the mesh");
                return None;
            }
        }
        match race(invite, policy, join, printer).await {
            Ok(won) => return Some(won),
            Err(Outcome::Fatal { .. }) => return None,
            Err(_) => delay = (delay * 2).min(RECONNECT_MAX),
        }
    }
}

/// How this device introduces itself in every attempt's `join` frame.
struct JoinFrame {
    token: String,
    device: DeviceInfo,
    /// `(device_id, device_key)` from `--device-file`: rejoin instead of using the token.
    credential: Option<(String, String)>,
}

impl JoinFrame {
    fn for_path(&self, path: PathKind) -> String {
        match &self.credential {
            Some((id, key)) => ClientMsg::rejoin(id, key, path),
            None => ClientMsg::join_with_token(&self.token, self.device.clone(), path),
        }
        .to_json()
    }
}

/// Drives the shared [`Race`] with real sockets until it has an outcome. Returns the
/// winning socket and the host's `joined`, or the exit code to leave with.
async fn race(
    invite: &Invite,
    policy: Policy,
    join: &JoinFrame,
    printer: &Printer,
) -> Result<(Box<Ws>, Box<Joined>), Outcome> {
    let t0 = Instant::now();
    let now_ms = move || t0.elapsed().as_millis() as u64;
    let mut race = Race::from_endpoints(&invite.endpoints, policy, 0);
    let (tx, mut rx) = mpsc::channel::<Report>(8);
    let mut tasks: HashMap<AttemptId, JoinHandle<()>> = HashMap::new();
    // Attempts that got `joined`; the race says which one (if any) won.
    let mut joined: HashMap<AttemptId, (Box<Joined>, Box<Ws>)> = HashMap::new();

    loop {
        while let Some(out) = race.poll_output() {
            match out {
                Output::Start { id, path, url } => {
                    let frame = join.for_path(path);
                    let tx = tx.clone();
                    let safety =
                        Duration::from_millis(policy.attempt_timeout_ms.saturating_add(1_000));
                    tasks.insert(id, tokio::spawn(attempt(id, url, frame, safety, tx)));
                }
                Output::Cancel { id } => {
                    if let Some(t) = tasks.remove(&id) {
                        t.abort(); // drops the socket mid-handshake, whatever state it is in
                    }
                    joined.remove(&id);
                }
                Output::Event(ev) => {
                    let mesh = match (&ev, race.outcome()) {
                        (RaceEvent::Connected { .. }, Some(Outcome::Connected { id, .. })) => {
                            joined.get(id).map(|(j, _)| j.mesh_name.clone())
                        }
                        _ => None,
                    };
                    printer.race_event(&ev, mesh.as_deref().or(Some(invite.mesh_name.as_str())));
                }
            }
        }
        if let Some(outcome) = race.outcome().cloned() {
            for (_, t) in tasks.drain() {
                t.abort();
            }
            return match outcome {
                Outcome::Connected { id, .. } => {
                    let (j, ws) = joined
                        .remove(&id)
                        .expect("the winner's joined was recorded");
                    Ok((ws, j))
                }
                failed @ (Outcome::AllFailed { .. } | Outcome::Fatal { .. }) => Err(failed),
            };
        }
        let timer = race.poll_timeout();
        let sleep = async {
            match timer {
                Some(at) => tokio::time::sleep_until((t0 + Duration::from_millis(at)).into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            report = rx.recv() => match report {
                Some(Report::Joined { id, joined: j, ws }) => {
                    tasks.remove(&id);
                    joined.insert(id, (j, ws));
                    race.handle_joined(id, now_ms());
                    // A joined the race ignored (it had already lost) is dropped, closing it.
                    if !matches!(race.outcome(), Some(Outcome::Connected { id: w, .. }) if *w == id) {
                        joined.remove(&id);
                    }
                }
                Some(Report::Failed { id, reason }) => {
                    tasks.remove(&id);
                    tracing::debug!(attempt = %id, %reason, "attempt failed");
                    race.handle_failed(id, reason, now_ms());
                }
                None => unreachable!("the loop holds a sender"),
            },
            _ = sleep => race.handle_timeout(now_ms()),
        }
    }
}

fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(Some(MAX_FRAME_BYTES))
        .max_frame_size(Some(MAX_FRAME_BYTES))
}

/// One attempt: connect, send `join`, wait for the host's verdict. Reports exactly once
/// (unless aborted by a cancel, which needs no report).
async fn attempt(
    id: AttemptId,
    url: String,
    frame: String,
    safety: Duration,
    tx: mpsc::Sender<Report>,
) {
    let report = match tokio::time::timeout(safety, attempt_inner(&url, frame)).await {
        Ok(Ok((joined, ws))) => Report::Joined {
            id,
            joined: Box::new(joined),
            ws: Box::new(ws),
        },
        Ok(Err(reason)) => Report::Failed { id, reason },
        Err(_) => Report::Failed {
            id,
            reason: FailReason::Timeout {
                after_ms: safety.as_millis() as u64,
            },
        },
    };
    let _ = tx.send(report).await;
}

async fn attempt_inner(url: &str, frame: String) -> Result<(Joined, Ws), FailReason> {
    // wss:// trusts the Mozilla roots plus ATMOSPHERE_RELAY_CA (a self-signed relay), the
    // same trust the host uses for its relay link.
    let connector = if url
        .get(..6)
        .is_some_and(|s| s.eq_ignore_ascii_case("wss://"))
    {
        let c = crate::relay::tls::connector()
            .map_err(|e| FailReason::Connect(format!("TLS setup: {e:#}")))?;
        Some(c)
    } else {
        None
    };
    let (mut ws, _resp) =
        tokio_tungstenite::connect_async_tls_with_config(url, Some(ws_config()), true, connector)
            .await
            .map_err(connect_reason)?;
    ws.send(Message::text(frame)).await.map_err(stream_reason)?;
    loop {
        let msg = match ws.next().await {
            None => return Err(FailReason::ClosedBeforeJoined),
            Some(Err(e)) => return Err(stream_reason(e)),
            Some(Ok(m)) => m,
        };
        match msg {
            Message::Text(t) => match parse_server(t.as_str())? {
                ServerMsg::Joined {
                    mesh_id,
                    mesh_name,
                    device_id,
                    device_key,
                    peers,
                } => {
                    return Ok((
                        Joined {
                            mesh_id,
                            mesh_name,
                            device_id,
                            device_key,
                            peers,
                        },
                        ws,
                    ));
                }
                ServerMsg::Error { code, message } => {
                    return Err(FailReason::Host { code, message })
                }
                other => {
                    return Err(FailReason::Protocol(format!(
                        "expected joined, got {}",
                        type_name(&other)
                    )))
                }
            },
            Message::Close(_) => return Err(FailReason::ClosedBeforeJoined),
            Message::Binary(_) => {
                return Err(FailReason::Protocol("unexpected binary frame".into()))
            }
            // Pings are answered by tungstenite itself.
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
        }
    }
}

/// Parses a host frame. An error frame with a code this build does not know still says
/// what the host meant, as a protocol failure with its text.
fn parse_server(text: &str) -> Result<ServerMsg, FailReason> {
    match serde_json::from_str::<ServerMsg>(text) {
        Ok(m) => Ok(m),
        Err(e) => {
            let v: serde_json::Value = serde_json::from_str(text).map_err(|_| {
                FailReason::Protocol(format!("the host sent something that is not JSON: {e}"))
            })?;
            if v["type"] == "error" {
                return Err(FailReason::Protocol(format!(
                    "host error {}: {}",
                    v["code"].as_str().unwrap_or("?"),
                    v["message"].as_str().unwrap_or("")
                )));
            }
            Err(FailReason::Protocol(format!(
                "unexpected frame from the host: {e}"
            )))
        }
    }
}

fn type_name(m: &ServerMsg) -> &'static str {
    match m {
        ServerMsg::Joined { .. } => "joined",
        ServerMsg::Peers { .. } => "peers",
        ServerMsg::PeerJoined { .. } => "peer_joined",
        ServerMsg::PeerLeft { .. } => "peer_left",
        ServerMsg::Message { .. } => "message",
        ServerMsg::Error { .. } => "error",
    }
}

fn io_reason(e: &std::io::Error) -> String {
    use std::io::ErrorKind::*;
    match e.kind() {
        ConnectionRefused => "connection refused".into(),
        ConnectionReset => "connection reset".into(),
        ConnectionAborted => "connection aborted".into(),
        TimedOut => "timed out".into(),
        HostUnreachable => "host unreachable".into(),
        NetworkUnreachable => "network unreachable".into(),
        _ => e.to_string(),
    }
}

/// Why connecting or the WebSocket handshake failed, in words a person can act on.
fn connect_reason(e: tungstenite::Error) -> FailReason {
    match e {
        tungstenite::Error::Io(io) => FailReason::Connect(io_reason(&io)),
        tungstenite::Error::Http(resp) => {
            // A relay (or host) may refuse the upgrade with a JSON error body naming a code.
            let body = resp.body().as_deref().unwrap_or_default();
            if let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) {
                let code = v.get("code").or_else(|| v.get("error")).cloned();
                if let Some(Ok(code)) = code.map(serde_json::from_value::<ErrorCode>) {
                    let message = v["message"].as_str().unwrap_or_default().to_string();
                    return FailReason::Host { code, message };
                }
            }
            FailReason::Connect(format!("HTTP {} instead of a WebSocket", resp.status()))
        }
        tungstenite::Error::Url(u) => FailReason::Connect(format!("bad URL: {u}")),
        other => FailReason::Connect(other.to_string()),
    }
}

/// A failure after the socket is open.
fn stream_reason(e: tungstenite::Error) -> FailReason {
    match e {
        tungstenite::Error::Io(io) => FailReason::Connect(io_reason(&io)),
        tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed => {
            FailReason::ClosedBeforeJoined
        }
        tungstenite::Error::Capacity(c) => FailReason::Protocol(format!("frame too large: {c}")),
        other => FailReason::Protocol(other.to_string()),
    }
}

/// Closes the socket politely, but never waits long for it.
async fn close(mut ws: Box<Ws>) {
    let _ = tokio::time::timeout(CLOSE_GRACE, WebSocketStream::close(&mut *ws, None)).await;
}

/// How a live session ended.
enum SessionEnd {
    /// The person pressed Ctrl-C; the socket was closed cleanly.
    Left,
    /// The host or the network ended it (the reason, for the person).
    Lost(String),
}

/// Lines typed on stdin, read once for the whole run (sessions come and go on reconnect).
struct StdinLines {
    rx: mpsc::Receiver<Result<String, String>>,
    open: bool,
}

impl StdinLines {
    fn new() -> StdinLines {
        StdinLines {
            rx: stdin_lines(),
            open: true,
        }
    }
}

/// Connected without `--once`: print presence and messages, send stdin lines as
/// broadcasts, until Ctrl-C or the host goes away.
async fn session(
    mut ws: Box<Ws>,
    joined: &Joined,
    printer: &Printer,
    stdin: &mut StdinLines,
) -> SessionEnd {
    let mut names: HashMap<String, String> = joined
        .peers
        .iter()
        .map(|p| (p.device_id.clone(), p.name.clone()))
        .collect();
    if printer.json {
        printer.line(&server_line(&ServerMsg::Peers {
            peers: joined.peers.clone(),
        }));
    } else if joined.peers.is_empty() {
        println!("no other member online; type a line to send it to everyone, Ctrl-C to leave");
    } else {
        let list: Vec<String> = joined.peers.iter().map(describe_peer).collect();
        println!("online: {}", list.join(", "));
        println!("type a line to send it to everyone, Ctrl-C to leave");
    }
    loop {
        tokio::select! {
            msg = ws.next() => match msg {
                Some(Ok(Message::Text(t))) => match serde_json::from_str::<ServerMsg>(t.as_str()) {
                    Ok(m) => show(&m, printer, &mut names),
                    Err(e) => tracing::warn!("ignoring a frame the host sent that we do not understand: {e}"),
                },
                Some(Ok(Message::Close(frame))) => {
                    let why = frame.map(|f| f.reason.to_string()).filter(|r| !r.is_empty());
                    return SessionEnd::Lost(format!(
                        "the host closed the connection{}",
                        why.map(|r| format!(": {r}")).unwrap_or_default()
                    ));
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return SessionEnd::Lost(format!("connection lost: {}", stream_reason(e))),
                None => return SessionEnd::Lost("connection lost".into()),
            },
            line = stdin.rx.recv(), if stdin.open => match line {
                Some(Ok(line)) => {
                    let frame = serde_json::to_string(&ClientMsg::Send {
                        to: None,
                        body: serde_json::Value::String(line),
                    })
                    .expect("ClientMsg always serialises");
                    if frame.len() > MAX_FRAME_BYTES {
                        eprintln!("not sent: the line is longer than a frame may be ({MAX_FRAME_BYTES} bytes)");
                    } else if let Err(e) = ws.send(Message::text(frame)).await {
                        return SessionEnd::Lost(format!("connection lost: {}", stream_reason(e)));
                    }
                }
                Some(Err(e)) => eprintln!("not sent: {e}"),
                // End of input: keep listening (e.g. `join LINK < /dev/null` as a monitor).
                None => stdin.open = false,
            },
            _ = tokio::signal::ctrl_c() => {
                close(ws).await;
                printer.info("left the mesh");
                return SessionEnd::Left;
            }
        }
    }
}

fn describe_peer(p: &Peer) -> String {
    format!("{} ({}, via {})", p.name, p.platform, p.path)
}

/// Prints one host frame of a live session.
fn show(m: &ServerMsg, printer: &Printer, names: &mut HashMap<String, String>) {
    // `names` is who is online now (device id → name), for readable lines and to skip
    // presence lists that say nothing new (the host's first one repeats `joined`'s).
    let mut left_name = None;
    match m {
        ServerMsg::PeerJoined { peer } => {
            names.insert(peer.device_id.clone(), peer.name.clone());
        }
        ServerMsg::Peers { peers } => {
            let same = peers.len() == names.len()
                && peers.iter().all(|p| names.contains_key(&p.device_id));
            if same {
                return;
            }
            *names = peers
                .iter()
                .map(|p| (p.device_id.clone(), p.name.clone()))
                .collect();
        }
        ServerMsg::PeerLeft { device_id } => left_name = names.remove(device_id),
        _ => {}
    }
    if printer.json {
        printer.line(&server_line(m));
        return;
    }
    match m {
        ServerMsg::PeerJoined { peer } => println!("+ {} joined", describe_peer(peer)),
        ServerMsg::PeerLeft { device_id } => {
            println!("- {} left", left_name.unwrap_or_else(|| device_id.clone()));
        }
        ServerMsg::Peers { peers } => {
            let list: Vec<String> = peers.iter().map(describe_peer).collect();
            println!(
                "online: {}",
                if list.is_empty() {
                    "nobody else".into()
                } else {
                    list.join(", ")
                }
            );
        }
        ServerMsg::Message { from, body } => {
            let who = names.get(from).cloned().unwrap_or_else(|| from.clone());
            match body {
                serde_json::Value::String(s) => println!("{who}: {s}"),
                other => println!("{who}: {other}"),
            }
        }
        ServerMsg::Error { code, message } => eprintln!("host error ({code}): {message}"),
        ServerMsg::Joined { .. } => {}
    }
}

/// Lines typed on stdin, each at most one frame long. Read on a plain OS thread: a tokio
/// stdin read would keep the runtime (and so the process) alive at exit until Enter.
fn stdin_lines() -> mpsc::Receiver<Result<String, String>> {
    let (tx, rx) = mpsc::channel(16);
    std::thread::spawn(move || {
        let stdin = std::io::stdin();
        let mut lock = stdin.lock();
        loop {
            let mut buf = Vec::new();
            // One byte over the limit tells "too long" from "exactly at the limit".
            let n = match (&mut lock)
                .take(MAX_FRAME_BYTES as u64 + 1)
                .read_until_newline(&mut buf)
            {
                Ok(n) => n,
                Err(_) => return,
            };
            if n == 0 {
                return; // end of input
            }
            let item = if buf.last() != Some(&b'\n') && buf.len() > MAX_FRAME_BYTES {
                // Skip the rest of the overlong line so the next one starts clean.
                let mut rest = Vec::new();
                let _ = lock.read_until_newline(&mut rest);
                Err(format!("the line is longer than {MAX_FRAME_BYTES} bytes"))
            } else {
                while matches!(buf.last(), Some(b'\n' | b'\r')) {
                    buf.pop();
                }
                String::from_utf8(buf).map_err(|_| "the line is not valid UTF-8".to_string())
            };
            if tx.blocking_send(item).is_err() {
                return;
            }
        }
    });
    rx
}

/// `BufRead::read_until(b'\n')` under a shorter name, for readers and `Take`s alike.
trait ReadLineBytes {
    fn read_until_newline(&mut self, buf: &mut Vec<u8>) -> std::io::Result<usize>;
}

impl<R: std::io::BufRead> ReadLineBytes for R {
    fn read_until_newline(&mut self, buf: &mut Vec<u8>) -> std::io::Result<usize> {
        self.read_until(b'\n', buf)
    }
}

/// `--name`, or the host name, checked for length and control characters.
fn device_name(arg: Option<&str>) -> Result<String, String> {
    let name = match arg {
        Some(n) => n.trim().to_string(),
        None => std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .or_else(|| std::env::var("HOSTNAME").ok())
            .map(|h| h.trim().to_string())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "terminal".to_string()),
    };
    if name.is_empty() {
        return Err("--name must not be empty".into());
    }
    if name.chars().count() > MAX_NAME_CHARS {
        return Err(format!("--name is longer than {MAX_NAME_CHARS} characters"));
    }
    if name.chars().any(char::is_control) {
        return Err("--name must not contain control characters".into());
    }
    Ok(name)
}

/// Reads the device file: `Ok(None)` if it does not exist yet (first join).
fn load_credential(path: &Path) -> Result<Option<DeviceCredential>, String> {
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(format!(
                "cannot read the device file {}: {e}",
                path.display()
            ))
        }
    };
    let mut text = String::new();
    file.take(MAX_DEVICE_FILE_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(|e| format!("cannot read the device file {}: {e}", path.display()))?;
    if text.len() as u64 > MAX_DEVICE_FILE_BYTES {
        return Err(format!(
            "the device file {} is too large to be a credential",
            path.display()
        ));
    }
    serde_json::from_str(&text).map(Some).map_err(|e| {
        format!(
            "the device file {} is not a device credential: {e}",
            path.display()
        )
    })
}

/// Writes the credential next to its final place and renames it over, so a crash never
/// leaves half a file; readable by the owner only (it is a password).
fn save_credential(path: &Path, cred: &DeviceCredential) -> Result<(), String> {
    let fail = |e: std::io::Error| {
        format!(
            "cannot save the device credential to {}: {e}",
            path.display()
        )
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(fail)?;
    }
    let tmp = path.with_extension("tmp");
    let text = serde_json::to_string_pretty(cred).expect("credential serialises");
    {
        use std::io::Write;
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut f = opts.open(&tmp).map_err(fail)?;
        f.write_all(text.as_bytes()).map_err(fail)?;
        f.sync_all().map_err(fail)?;
    }
    std::fs::rename(&tmp, path).map_err(fail)
}
