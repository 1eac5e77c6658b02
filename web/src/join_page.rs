//! The Join view (`/join#…`, usually on a phone that scanned the host's QR code): decode
//! the invite with the shared codec, pick what to join with ([`JoinPlan`]: the stored
//! credential of the invite's mesh, else the invite's token and a new device key), race the
//! endpoints with the shared policy and handshake (through [`crate::ws`]), show each path's
//! progress live, remember the device credential, then show the mesh (members, their paths,
//! a small message box). Once joined, the invite link leaves the address bar
//! (`history.replaceState` to the bare `/join`): the token must not show in a screenshot or
//! a shared address. A reload finds the mesh (not the token) in the tab's `sessionStorage`
//! ([`crate::storage::tab_mesh`]) and rejoins with the stored credential.

use crate::paths::SessionPaths;
use crate::random;
use crate::storage::{self, TabMesh};
use crate::ws::{Connector, ShellEvent};
use atmosphere_shared::backoff::Backoff;
use atmosphere_shared::credential::JoinPlan;
use atmosphere_shared::handshake::StaticSecret;
use atmosphere_shared::racing::{FailReason, Policy, RaceEvent};
use atmosphere_shared::upgrade::UpgradeEvent;
use atmosphere_shared::wire::{
    ClientMsg, DeviceInfo, ErrorCode, Joined, Peer, PeersSnapshot, ServerMsg,
};
use atmosphere_shared::{Endpoints, Invite, PathKind};
use leptos::prelude::*;
use std::time::Duration;

/// Progress of one endpoint row.
#[derive(Debug, Clone, PartialEq)]
pub enum RowState {
    Waiting,
    Trying,
    Failed(String),
    Connected(u64),
    /// Another path won before this one was started.
    NotNeeded,
    /// This path was still being tried when another one won (e.g. a black-holed LAN
    /// address): the person sees it was attempted, not skipped.
    Stopped {
        winner: PathKind,
    },
    /// The race ended (host refusal) before this path was tried.
    NotTried,
    /// This path was being tried when the host's refusal on another path ended the race.
    StoppedByRefusal,
}

/// One endpoint of the invite, as shown to the person.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub path: PathKind,
    pub url: String,
    pub state: RowState,
}

/// Where the page is.
#[derive(Debug, Clone, PartialEq)]
pub enum Phase {
    /// No invite in the address: only the paste box.
    NoInvite,
    /// The link could not be decoded.
    BadLink(String),
    Racing,
    Connected {
        path: PathKind,
        elapsed_ms: u64,
        mesh_name: String,
        device_id: String,
        /// The mesh id the host proved (the key of the stored credential).
        mesh_id: String,
    },
    /// The host refused the invite or credential; nothing else is tried.
    Refused {
        title: String,
        detail: String,
    },
    /// The page cannot join from here (no secure random numbers, or a reloaded tab whose
    /// credential is gone); `detail` says what to do.
    CannotJoin {
        title: String,
        detail: String,
    },
    AllFailed,
    Disconnected {
        reason: String,
    },
}

/// A chat line.
#[derive(Debug, Clone, PartialEq)]
pub struct Line {
    pub from: String,
    pub text: String,
    pub mine: bool,
}

/// Most chat lines kept on screen.
const MAX_LINES: usize = 200;
/// Longest message a person may send (characters); the wire limit is larger.
const MAX_MESSAGE_CHARS: usize = 2000;
/// Delay before the one automatic reconnect after the session closed: at most 2 s, jittered
/// down to 1 s, so the phones a restarting host dropped at once do not all rejoin at once.
const AUTO_RECONNECT: Backoff = Backoff::new(Duration::from_secs(2), Duration::from_secs(2));
/// Longest link accepted in the paste box.
const MAX_LINK_CHARS: usize = 8 * 1024;

/// What the page joins.
#[derive(Debug, Clone, PartialEq)]
enum Target {
    /// An invite link (the address or the paste box): the stored credential of its mesh
    /// rejoins, else its token joins as a new device.
    Invite(Invite),
    /// A reload of a tab that joined (the link left the address bar and the token was not
    /// kept): only the stored credential of this mesh can rejoin it.
    Reload(TabMesh),
}

impl Target {
    fn mesh_name(&self) -> &str {
        match self {
            Target::Invite(inv) => &inv.mesh_name,
            Target::Reload(tab) => &tab.mesh_name,
        }
    }

    fn endpoints(&self) -> &Endpoints {
        match self {
            Target::Invite(inv) => &inv.endpoints,
            Target::Reload(tab) => &tab.endpoints,
        }
    }
}

/// The page's reactive state; `Copy`, so callbacks can capture it freely.
#[derive(Clone, Copy)]
struct Ctx {
    target: RwSignal<Option<Target>>,
    rows: RwSignal<Vec<Row>>,
    phase: RwSignal<Phase>,
    /// The members online, once the host's snapshot is complete (`None` before).
    members: RwSignal<Option<Vec<Peer>>>,
    /// The `peers` pages of the snapshot being received.
    snapshot: StoredValue<PeersSnapshot, LocalStorage>,
    lines: RwSignal<Vec<Line>>,
    connector: StoredValue<Option<Connector>, LocalStorage>,
    /// The session's paths once joined: the relay standby and the direct path.
    paths: StoredValue<Option<SessionPaths>, LocalStorage>,
    /// The path the session uses now (`None` before `joined`).
    path: RwSignal<Option<PathKind>>,
    /// Why the session is on the relay, once an attempt at a direct path failed or fell back.
    why_relay: RwSignal<Option<String>>,
    /// Every step of the upgrade ("relay → local after 420 ms"), oldest first.
    path_log: RwSignal<Vec<String>>,
}

/// The sentence a person reads for a host refusal.
pub fn refusal_words(code: ErrorCode, message: &str) -> (String, String) {
    let (title, detail) = match code {
        ErrorCode::TokenExpired => (
            "This invite has expired",
            "Ask the host for a new invite (a fresh QR code).",
        ),
        ErrorCode::TokenExhausted => (
            "This invite has been used up",
            "It allowed a limited number of devices. Ask the host for a new one.",
        ),
        ErrorCode::TokenRevoked => (
            "This invite was revoked",
            "The host cancelled it. Ask the host for a new one.",
        ),
        ErrorCode::InvalidToken => (
            "This invite is not valid",
            "The host does not know this invite. Check you scanned the latest QR code.",
        ),
        ErrorCode::UnknownDevice => (
            "The host no longer knows this device",
            "Ask the host for a new invite.",
        ),
        ErrorCode::DeviceRemoved => (
            "This device was removed from the mesh",
            "The host removed it. To join again, ask the host for a new invite.",
        ),
        ErrorCode::RateLimited => ("Too many attempts", "Wait a minute and try again."),
        _ => ("The host refused to let this device in", ""),
    };
    // Known codes have our own sentence; for others the host's message is the best we have.
    let detail = if detail.is_empty() && !message.is_empty() {
        message.to_string()
    } else {
        detail.to_string()
    };
    (title.to_string(), detail)
}

/// A failure reason in plain words.
pub fn reason_words(reason: &FailReason) -> String {
    match reason {
        // The relay's plaintext notice (unauthenticated, but the relay is the one who knows).
        FailReason::Unverified { code, .. } if code == ErrorCode::HostOffline.as_str() => {
            "the host is offline (the relay has no host for this mesh right now)".into()
        }
        FailReason::Timeout { after_ms } => {
            format!("no answer within {} s", after_ms.div_ceil(1000))
        }
        FailReason::Host { message, .. } if !message.is_empty() => {
            format!("the host said: {message}")
        }
        other => other.to_string(),
    }
}

/// A short name for this device from its user agent, e.g. "Android phone (browser)".
pub fn device_name(user_agent: &str) -> String {
    let ua = user_agent.to_ascii_lowercase();
    let kind = if ua.contains("iphone") {
        "iPhone"
    } else if ua.contains("ipad") {
        "iPad"
    } else if ua.contains("android") {
        "Android phone"
    } else if ua.contains("mac os") {
        "Mac"
    } else if ua.contains("windows") {
        "Windows PC"
    } else if ua.contains("cros") {
        "Chromebook"
    } else if ua.contains("linux") {
        "Linux PC"
    } else {
        "Device"
    };
    format!("{kind} (browser)")
}

fn page_is_https() -> bool {
    web_sys::window()
        .and_then(|w| w.location().protocol().ok())
        .is_some_and(|p| p == "https:")
}

fn user_agent() -> String {
    web_sys::window()
        .and_then(|w| w.navigator().user_agent().ok())
        .unwrap_or_default()
}

/// Whether an authenticated `code` means the host no longer accepts this device's
/// credential, so it is worthless and is forgotten. No other code is, and no plaintext
/// notice ever is.
fn credential_revoked(code: ErrorCode) -> bool {
    matches!(code, ErrorCode::UnknownDevice | ErrorCode::DeviceRemoved)
}

/// What this race joins with: the plan, and the mesh id of the stored credential it
/// rejoins with, if any. `Err`: why the page cannot join.
fn plan_for(target: &Target, allow_credential: bool) -> Result<(JoinPlan, Option<String>), Phase> {
    let no_crypto = |e: random::NoCsprng| Phase::CannotJoin {
        title: "This browser cannot join securely".into(),
        detail: format!("{e}. Open the link in an up-to-date browser."),
    };
    let stored = match target {
        _ if !allow_credential => None,
        Target::Invite(inv) => storage::find_for_invite(inv),
        Target::Reload(tab) => storage::find(&tab.mesh_id),
    };
    if let Some(cred) = stored {
        // A record this page cannot use (corrupt) is not forgotten: a token join replaces it.
        if let Ok(plan) = JoinPlan::rejoin(&cred, random::bytes32().map_err(no_crypto)?) {
            return Ok((plan, Some(cred.mesh_id)));
        }
    }
    match target {
        Target::Invite(inv) => {
            let device = DeviceInfo {
                name: device_name(&user_agent()),
                platform: "browser".into(),
            };
            let secret = StaticSecret::from_bytes(random::bytes32().map_err(no_crypto)?);
            Ok((JoinPlan::first_join(inv, device, secret), None))
        }
        Target::Reload(_) => Err(Phase::CannotJoin {
            title: "This device has no membership here any more".into(),
            detail:
                "Open the host's invite link again (scan its QR code, or paste the link below)."
                    .into(),
        }),
    }
}

/// Starts (or restarts) the race for `target`. `allow_credential`: rejoin with a stored
/// device credential for its mesh when there is one.
fn begin(ctx: Ctx, target: Target, allow_credential: bool) {
    stop_paths(ctx);
    ctx.connector.update_value(|c| {
        if let Some(c) = c.take() {
            c.stop();
        }
    });
    ctx.path.set(None);
    ctx.why_relay.set(None);
    ctx.path_log.set(Vec::new());
    ctx.rows.set(
        target
            .endpoints()
            .iter()
            .map(|(path, url)| Row {
                path,
                url: url.to_string(),
                state: RowState::Waiting,
            })
            .collect(),
    );
    ctx.members.set(None);
    ctx.snapshot.set_value(PeersSnapshot::default());
    ctx.target.set(Some(target.clone()));

    let (plan, rejoining) = match plan_for(&target, allow_credential) {
        Ok(p) => p,
        Err(phase) => return ctx.phase.set(phase),
    };
    ctx.phase.set(Phase::Racing);
    let policy = Policy {
        page_is_https: page_is_https(),
        ..Policy::default()
    };
    let endpoints = target.endpoints().clone();
    let connector = Connector::start(&endpoints, policy, plan, move |ev| {
        on_event(ctx, &target, rejoining.as_deref(), ev)
    });
    ctx.connector.set_value(Some(connector));
}

/// Stops the direct path of the current session, if any.
fn stop_paths(ctx: Ctx) {
    if let Some(p) = ctx.paths.try_update_value(Option::take).flatten() {
        p.stop();
    }
}

/// The session joined over `path`: start its paths (a `relay` session tries a direct one
/// when the host answers offers; otherwise no peer connection is ever made).
fn start_paths(ctx: Ctx, path: PathKind, joined: &Joined) {
    stop_paths(ctx);
    ctx.path.set(Some(path));
    let Some(connector) = ctx.connector.get_value() else {
        return;
    };
    let (offer, stun_servers) = (joined.direct, joined.stun_servers.clone());
    let paths = SessionPaths::start(connector, path, offer, stun_servers, move |ev| {
        on_path_event(ctx, ev)
    });
    ctx.paths.set_value(Some(paths));
}

/// One step of the upgrade: the current path, the log line, and why it is on the relay.
fn on_path_event(ctx: Ctx, ev: UpgradeEvent) {
    ctx.path_log.update(|l| {
        l.push(ev.describe());
        let extra = l.len().saturating_sub(MAX_LINES);
        l.drain(..extra);
    });
    match ev {
        UpgradeEvent::PathChanged { to, reason, .. } => {
            ctx.path.set(Some(to));
            ctx.why_relay.set(reason.filter(|_| to == PathKind::Relay));
        }
        UpgradeEvent::DirectUnavailable { reason, .. } => ctx.why_relay.set(Some(reason)),
    }
}

fn set_row(ctx: Ctx, path: PathKind, state: RowState) {
    ctx.rows.update(|rows| {
        if let Some(r) = rows.iter_mut().find(|r| r.path == path) {
            r.state = state;
        }
    });
}

/// Applies one event of the shell to the page. `rejoining`: the mesh id of the stored
/// credential this race rejoins with, if any.
fn on_event(ctx: Ctx, target: &Target, rejoining: Option<&str>, ev: ShellEvent) {
    match ev {
        ShellEvent::Race(RaceEvent::Trying { path, .. }) => set_row(ctx, path, RowState::Trying),
        ShellEvent::Race(RaceEvent::Failed { path, reason }) => {
            set_row(ctx, path, RowState::Failed(reason_words(&reason)))
        }
        ShellEvent::Race(RaceEvent::Connected { path, elapsed_ms }) => {
            ctx.rows.update(|rows| {
                for r in rows.iter_mut() {
                    if r.path == path {
                        r.state = RowState::Connected(elapsed_ms);
                    } else if r.state == RowState::Trying {
                        r.state = RowState::Stopped { winner: path };
                    } else if r.state == RowState::Waiting {
                        r.state = RowState::NotNeeded;
                    }
                }
            });
        }
        ShellEvent::Race(RaceEvent::AllFailed { .. }) => ctx.phase.set(Phase::AllFailed),
        ShellEvent::Race(RaceEvent::Fatal { code, message, .. }) => {
            ctx.rows.update(|rows| {
                for r in rows.iter_mut() {
                    match r.state {
                        RowState::Waiting => r.state = RowState::NotTried,
                        RowState::Trying => r.state = RowState::StoppedByRefusal,
                        _ => {}
                    }
                }
            });
            // The host itself (through the channel) no longer takes the stored credential.
            if let Some(mesh_id) = rejoining.filter(|_| credential_revoked(code)) {
                storage::forget(mesh_id);
                // A stale credential (the host was reset) is not the invite's fault: join
                // with the invite's token instead. A removed device stays removed.
                if code == ErrorCode::UnknownDevice && matches!(target, Target::Invite(_)) {
                    let again = target.clone();
                    // Not from inside the shell's callback: restart on the next tick.
                    leptos::prelude::queue_microtask(move || begin(ctx, again, false));
                    return;
                }
            }
            let (title, detail) = refusal_words(code, &message);
            ctx.phase.set(Phase::Refused { title, detail });
        }
        ShellEvent::Joined {
            path,
            elapsed_ms,
            joined,
            mut credential,
        } => {
            let endpoints = target.endpoints();
            credential.endpoints = endpoints.iter().map(|(_, u)| u.to_string()).collect();
            let mesh_id = credential.mesh_id.clone();
            storage::save(credential);
            storage::remember_tab_mesh(&TabMesh {
                mesh_id: mesh_id.clone(),
                mesh_name: target.mesh_name().to_string(),
                endpoints: endpoints.clone(),
            });
            drop_link_from_address_bar();
            start_paths(ctx, path, &joined);
            ctx.phase.set(Phase::Connected {
                path,
                elapsed_ms,
                mesh_name: joined.mesh_name,
                device_id: joined.device_id,
                mesh_id,
            });
        }
        ShellEvent::Frame(ServerMsg::Error { code, message }) if code.is_final() => {
            // The host removed this device: its credential is worthless now and a
            // reconnect would only be refused, so forget it and stay on the refusal.
            if let Phase::Connected { mesh_id, .. } = ctx.phase.get_untracked() {
                if credential_revoked(code) {
                    storage::forget(&mesh_id);
                }
            }
            ctx.members.set(None);
            let (title, detail) = refusal_words(code, &message);
            ctx.phase.set(Phase::Refused { title, detail });
        }
        ShellEvent::Frame(msg) => on_frame(ctx, msg),
        ShellEvent::SessionClosed { .. }
            if matches!(ctx.phase.get_untracked(), Phase::Refused { .. }) => {}
        ShellEvent::SessionClosed { reason } => {
            stop_paths(ctx);
            ctx.members.set(None);
            ctx.phase.set(Phase::Disconnected { reason });
            // One automatic reconnect (a host restart, a Wi-Fi hiccup); if that race fails
            // too, the page stays on "Could not reach the host" with a button.
            leptos::prelude::set_timeout(
                move || {
                    if matches!(ctx.phase.get_untracked(), Phase::Disconnected { .. }) {
                        retry(ctx);
                    }
                },
                AUTO_RECONNECT.delay(0, js_sys::Math::random()),
            );
        }
    }
}

fn on_frame(ctx: Ctx, msg: ServerMsg) {
    match msg {
        ServerMsg::Peers { peers, more } => {
            if let Some(all) = ctx
                .snapshot
                .try_update_value(|s| s.page(&peers, more))
                .flatten()
            {
                ctx.members.set(Some(all));
            }
        }
        // Changes follow the snapshot; before it is complete there is no list to change.
        ServerMsg::PeerJoined { peer } => ctx.members.update(|m| {
            if let Some(m) = m {
                m.retain(|p| p.device_id != peer.device_id);
                m.push(peer);
            }
        }),
        ServerMsg::PeerLeft { device_id } => ctx.members.update(|m| {
            if let Some(m) = m {
                m.retain(|p| p.device_id != device_id);
            }
        }),
        ServerMsg::Message { from, body } => {
            let from = ctx
                .members
                .with_untracked(|m| {
                    m.iter()
                        .flatten()
                        .find(|p| p.device_id == from)
                        .map(|p| p.name.clone())
                })
                .unwrap_or(from);
            let text = match body {
                serde_json::Value::String(s) => s,
                other => other.to_string(),
            };
            push_line(
                ctx,
                Line {
                    from,
                    text,
                    mine: false,
                },
            );
        }
        ServerMsg::Error { message, .. } => push_line(
            ctx,
            Line {
                from: "host".into(),
                text: message,
                mine: false,
            },
        ),
        ServerMsg::RtcAnswer { .. }
        | ServerMsg::RtcUnavailable { .. }
        | ServerMsg::Direct { .. } => {
            if let Some(paths) = ctx.paths.get_value() {
                paths.handle_signal(&msg);
            }
        }
        ServerMsg::Joined(_) => {}
    }
}

fn push_line(ctx: Ctx, line: Line) {
    ctx.lines.update(|l| {
        l.push(line);
        let extra = l.len().saturating_sub(MAX_LINES);
        l.drain(..extra);
    });
}

/// Whether the address carries parameters (an invite's fragment or query).
fn address_has_link(loc: &web_sys::Location) -> bool {
    !loc.hash().unwrap_or_default().is_empty() || !loc.search().unwrap_or_default().is_empty()
}

fn current_link() -> Option<String> {
    let loc = web_sys::window()?.location();
    let href = loc.href().ok()?;
    address_has_link(&loc).then_some(href)
}

/// Replaces the address (and this history entry) with the bare path, dropping the invite's
/// fragment and its token.
fn drop_link_from_address_bar() {
    let Some(w) = web_sys::window() else { return };
    let loc = w.location();
    if !address_has_link(&loc) {
        return;
    }
    let (Ok(path), Ok(history)) = (loc.pathname(), w.history()) else {
        return;
    };
    let _ = history.replace_state_with_url(&wasm_bindgen::JsValue::NULL, "", Some(&path));
}

/// The Join view.
#[component]
pub fn JoinPage() -> impl IntoView {
    let ctx = Ctx {
        target: RwSignal::new(None),
        rows: RwSignal::new(Vec::new()),
        phase: RwSignal::new(Phase::NoInvite),
        members: RwSignal::new(None),
        snapshot: StoredValue::new_local(PeersSnapshot::default()),
        lines: RwSignal::new(Vec::new()),
        connector: StoredValue::new_local(None),
        paths: StoredValue::new_local(None),
        path: RwSignal::new(None),
        why_relay: RwSignal::new(None),
        path_log: RwSignal::new(Vec::new()),
    };
    match current_link() {
        Some(link) => match Invite::parse(&link) {
            Ok(inv) => begin(ctx, Target::Invite(inv), true),
            Err(e) => ctx.phase.set(Phase::BadLink(e.to_string())),
        },
        None => {
            if let Some(tab) = storage::tab_mesh() {
                begin(ctx, Target::Reload(tab), true);
            }
        }
    }

    let paste = RwSignal::new(String::new());
    let paste_error = RwSignal::new(None::<String>);
    let join_pasted = move || {
        let text = paste.get_untracked();
        let text = text.trim();
        if text.len() > MAX_LINK_CHARS {
            paste_error.set(Some("That link is far too long to be an invite.".into()));
            return;
        }
        match Invite::parse(text) {
            Ok(inv) => {
                paste_error.set(None);
                begin(ctx, Target::Invite(inv), true);
            }
            Err(e) => paste_error.set(Some(format!("That is not an invite link: {e}"))),
        }
    };

    view! {
        <main class="page join">
            <header class="top">
                <h1>"Atmosphere"</h1>
                {move || ctx.target.get().map(|t| view! { <p class="sub">"Joining mesh " <b>{t.mesh_name().to_string()}</b></p> })}
            </header>
            {move || status_view(ctx)}
            {move || (!ctx.rows.get().is_empty()).then(|| view! {
                <section class="card">
                    <h2>"Paths"</h2>
                    <ul class="paths">
                        {ctx.rows.get().into_iter().map(row_view).collect_view()}
                    </ul>
                    <ul class="path-log" id="path-log">
                        {move || ctx.path_log.get().into_iter().map(|l| view! { <li>{l}</li> }).collect_view()}
                    </ul>
                </section>
            })}
            {move || matches!(ctx.phase.get(), Phase::Connected { .. }).then(|| mesh_view(ctx))}
            <section class="card paste">
                <h2>"Have a link?"</h2>
                <p class="muted">"Paste an invite link (atmosphere://join?…, or a http(s)://…/join#… link)."</p>
                <textarea id="paste-link" rows="3" placeholder="atmosphere://join?token=ATM-…"
                    prop:value=move || paste.get()
                    on:input=move |ev| paste.set(event_target_value(&ev))></textarea>
                <button id="paste-join" on:click=move |_| join_pasted()>"Join with this link"</button>
                {move || paste_error.get().map(|e| view! { <p class="error">{e}</p> })}
            </section>
        </main>
    }
}

fn status_view(ctx: Ctx) -> impl IntoView {
    match ctx.phase.get() {
        Phase::NoInvite => view! {
            <section class="card banner">
                <h2 class="headline" id="headline">"No invite in this link"</h2>
                <p>"Scan the QR code shown by the host, or paste an invite link below."</p>
            </section>
        }
        .into_any(),
        Phase::BadLink(e) => view! {
            <section class="card banner bad">
                <h2 class="headline" id="headline">"This link is not a valid invite"</h2>
                <p>{e}</p>
            </section>
        }
        .into_any(),
        Phase::Racing => view! {
            <section class="card banner">
                <h2 class="headline" id="headline">"Connecting…"</h2>
                <p>"Trying every way to reach the host; the first that answers wins."</p>
            </section>
        }
        .into_any(),
        Phase::Connected { path, elapsed_ms, mesh_name, .. } => view! {
            <section class="card banner good">
                // The path the session uses now: the one it joined on, until the direct
                // path takes over (or it falls back).
                <h2 class="headline" id="headline" data-path=move || ctx.path.get().unwrap_or(path).as_str()>
                    {move || format!("Connected via {}", ctx.path.get().unwrap_or(path))}
                </h2>
                <p>{format!("Member of \u{201c}{mesh_name}\u{201d} — joined in {elapsed_ms} ms.")}</p>
                {move || ctx.why_relay.get().map(|why| view! { <p class="muted" id="why-relay">{why}</p> })}
            </section>
        }
        .into_any(),
        Phase::Refused { title, detail } | Phase::CannotJoin { title, detail } => view! {
            <section class="card banner bad">
                <h2 class="headline" id="headline">{title}</h2>
                <p>{detail}</p>
            </section>
        }
        .into_any(),
        Phase::AllFailed => view! {
            <section class="card banner bad">
                <h2 class="headline" id="headline">"Could not reach the host"</h2>
                <p>"Every path failed; the reason for each is below. Is the host running, and are you on its network or is a relay configured?"</p>
                <button on:click=move |_| retry(ctx)>"Try again"</button>
            </section>
        }
        .into_any(),
        Phase::Disconnected { reason } => view! {
            <section class="card banner warn">
                <h2 class="headline" id="headline">"Disconnected from the host"</h2>
                <p>{reason}</p>
                <button on:click=move |_| retry(ctx)>"Reconnect"</button>
            </section>
        }
        .into_any(),
    }
}

fn retry(ctx: Ctx) {
    if let Some(target) = ctx.target.get_untracked() {
        begin(ctx, target, true);
    }
}

fn row_view(row: Row) -> impl IntoView {
    let (class, text) = match &row.state {
        RowState::Waiting => ("waiting", "waiting".to_string()),
        RowState::Trying => ("trying", "trying…".to_string()),
        RowState::Failed(r) => ("failed", format!("failed: {r}")),
        RowState::Connected(ms) => ("connected", format!("connected in {ms} ms")),
        RowState::NotNeeded => ("idle", "not needed".to_string()),
        RowState::Stopped { winner } => ("idle", format!("no answer yet — stopped, {winner} won")),
        RowState::NotTried => ("idle", "not tried".to_string()),
        RowState::StoppedByRefusal => ("idle", "stopped: the host refused".to_string()),
    };
    view! {
        <li class=format!("path-row {class}") data-path=row.path.as_str()>
            <span class="dot"></span>
            <span class="path-name">{row.path.as_str()}</span>
            <span class="path-url">{row.url}</span>
            <span class="path-state">{text}</span>
        </li>
    }
}

fn mesh_view(ctx: Ctx) -> impl IntoView {
    let draft = RwSignal::new(String::new());
    let send_error = RwSignal::new(None::<String>);
    let send = move || {
        let text: String = draft
            .get_untracked()
            .trim()
            .chars()
            .take(MAX_MESSAGE_CHARS)
            .collect();
        if text.is_empty() {
            return;
        }
        let msg = ClientMsg::Send {
            to: None,
            body: serde_json::Value::String(text.clone()),
        };
        let res = ctx.paths.get_value().map(|p| p.send(&msg));
        match res {
            Some(Ok(())) => {
                draft.set(String::new());
                send_error.set(None);
                push_line(
                    ctx,
                    Line {
                        from: "you".into(),
                        text,
                        mine: true,
                    },
                );
            }
            Some(Err(e)) => send_error.set(Some(e)),
            None => send_error.set(Some("not connected".into())),
        }
    };
    let (joined_path, my_id) = match ctx.phase.get_untracked() {
        Phase::Connected {
            path, device_id, ..
        } => (path, device_id),
        _ => (PathKind::Local, String::new()),
    };
    let my_path = move || ctx.path.get().unwrap_or(joined_path);
    view! {
        <section class="card">
            <h2>"Members online"</h2>
            <ul class="members">
                <li class="member me"><span class="name">"This device"</span><span class=move || format!("badge {}", my_path())>{move || my_path().as_str()}</span><span class="muted mono">{short_id(&my_id)}</span></li>
                {move || match ctx.members.get() {
                    Some(members) => members.into_iter().map(|p| view! {
                        <li class="member">
                            <span class="name">{p.name}</span>
                            <span class=format!("badge {}", p.path)>{p.path.as_str()}</span>
                            <span class="muted">{p.platform}</span>
                        </li>
                    }).collect_view().into_any(),
                    None => view! { <li class="member muted">"Loading members…"</li> }.into_any(),
                }}
            </ul>
        </section>
        <section class="card">
            <h2>"Messages"</h2>
            <ul class="chat" id="chat">
                {move || ctx.lines.get().into_iter().map(|l| view! {
                    <li class=if l.mine { "line mine" } else { "line" }><b>{l.from}": "</b>{l.text}</li>
                }).collect_view()}
            </ul>
            <div class="send-row">
                <input id="message" type="text" placeholder="Message to everyone" maxlength="2000"
                    prop:value=move || draft.get()
                    on:input=move |ev| draft.set(event_target_value(&ev))
                    on:keydown=move |ev: web_sys::KeyboardEvent| if ev.key() == "Enter" { send() } />
                <button id="send" on:click=move |_| send()>"Send"</button>
            </div>
            {move || send_error.get().map(|e| view! { <p class="error">{e}</p> })}
        </section>
    }
}

fn short_id(id: &str) -> String {
    id.chars().take(8).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expired_invite_reads_plainly() {
        let (title, _) = refusal_words(ErrorCode::TokenExpired, "");
        assert_eq!(title, "This invite has expired");
    }

    #[test]
    fn device_names() {
        assert_eq!(
            device_name("Mozilla/5.0 (Linux; Android 14; Pixel 8)"),
            "Android phone (browser)"
        );
        assert_eq!(
            device_name("Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X)"),
            "iPhone (browser)"
        );
        assert_eq!(device_name(""), "Device (browser)");
    }

    #[test]
    fn host_offline_reason_is_plain() {
        let r = FailReason::from_plaintext_notice(
            r#"{"type":"error","code":"host_offline","message":"no host"}"#,
        );
        assert!(reason_words(&r).contains("host is offline"));
    }

    #[test]
    fn only_unknown_or_removed_devices_lose_their_credential() {
        assert!(credential_revoked(ErrorCode::UnknownDevice));
        assert!(credential_revoked(ErrorCode::DeviceRemoved));
        assert!(!credential_revoked(ErrorCode::InvalidToken));
        assert!(!credential_revoked(ErrorCode::RateLimited));
    }
}
