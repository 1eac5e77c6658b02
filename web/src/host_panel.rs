//! The host view (`/`, admin): the JoinPanel. Mint an invite and show it as a QR code
//! (the `join_url`), with the token, expiry and the app link; a Connectivity block that
//! says at a glance which paths will work; outstanding invites (revocable) and member
//! devices with their path, online state and last seen (each removable, after a
//! confirmation), refreshed live.
//!
//! Invites are safe by default: one device, valid one hour. The person can ask for more
//! (5 devices or unlimited; 24 hours or 7 days) before generating.
//!
//! Live updates: the host's `GET /api/events` (server-sent events) says when something
//! changed; while that stream is not open (older host, proxy without streaming) the page
//! polls every 2 s instead.

use crate::api::{self, ApiFailure};
use crate::qr;
use atmosphere_shared::api::{
    DeviceView, InviteView, MeshView, NetworkSnapshot, PortMappingState, PortMappingStatus,
    Reachability, RelayState, TokenRequest, TokenResponse,
};
use leptos::prelude::*;
use std::time::Duration;
use wasm_bindgen::closure::Closure;
use wasm_bindgen::JsCast;

/// Polling period while the event stream is unavailable.
const POLL_MS: u64 = 2_000;

/// How healthy one connectivity row is (its color).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// Will work.
    Good,
    /// Might work / needs action.
    Warn,
    /// Will not work.
    Bad,
    /// Not set up.
    Off,
}

impl Health {
    fn class(self) -> &'static str {
        match self {
            Health::Good => "good",
            Health::Warn => "warn",
            Health::Bad => "bad",
            Health::Off => "off",
        }
    }
    fn word(self) -> &'static str {
        match self {
            Health::Good => "works",
            Health::Warn => "needs setup",
            Health::Bad => "not working",
            Health::Off => "off",
        }
    }
}

/// One line of the Connectivity block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnRow {
    pub label: &'static str,
    pub health: Health,
    pub value: String,
    pub detail: String,
}

/// The port the mesh WebSocket listens on, read from an advertised endpoint URL.
fn endpoint_port(net: &NetworkSnapshot) -> Option<String> {
    let url = net
        .endpoints
        .local
        .as_deref()
        .or(net.endpoints.public.as_deref())?;
    let hostport = url.split("://").nth(1)?.split('/').next()?;
    let port = hostport.rsplit_once(':')?.1;
    port.chars()
        .all(|c| c.is_ascii_digit())
        .then(|| port.to_string())
}

/// Turns the host's discovery snapshot into the rows a person reads.
pub fn connectivity_rows(net: &NetworkSnapshot) -> Vec<ConnRow> {
    let port = endpoint_port(net).unwrap_or_else(|| "11451".into());
    let local = match &net.local_ip {
        Some(ip) => ConnRow {
            label: "Local",
            health: Health::Good,
            value: ip.clone(),
            detail: "Devices on the same Wi-Fi/LAN connect directly.".into(),
        },
        None => ConnRow {
            label: "Local",
            health: Health::Bad,
            value: "no LAN address".into(),
            detail: "No network interface with a LAN address was found.".into(),
        },
    };
    let stun_off = net.stun_source.is_none() && net.probes.is_empty();
    let mut internet = match (&net.public_ip, net.cgnat) {
        (_, true) => ConnRow {
            label: "Internet",
            health: Health::Bad,
            value: net.public_ip.clone().unwrap_or_else(|| "behind carrier-grade NAT".into()),
            detail: "Carrier-grade NAT (CGNAT): the provider shares one address among many customers, so a port forward will not help. Use a relay.".into(),
        },
        (Some(ip), false) if net.is_behind_nat => ConnRow {
            label: "Internet",
            health: Health::Warn,
            value: ip.clone(),
            detail: format!("Behind NAT: port forward required (router TCP {port} → this machine) for devices outside your network."),
        },
        (Some(ip), false) => ConnRow {
            label: "Internet",
            health: Health::Good,
            value: ip.clone(),
            detail: "Not behind NAT: reachable directly if no firewall blocks the port.".into(),
        },
        (None, false) if stun_off => ConnRow {
            label: "Internet",
            health: Health::Off,
            value: "unknown".into(),
            detail: "STUN is disabled, so the public address is not known.".into(),
        },
        (None, false) => ConnRow {
            label: "Internet",
            health: Health::Bad,
            value: "unknown".into(),
            detail: "No STUN server answered: the public address is not known.".into(),
        },
    };
    if net.mapping_varies == Some(true) {
        internet
            .detail
            .push_str(" STUN servers saw different mappings (endpoint-dependent NAT).");
    }
    if let Some(h) = &net.hint {
        internet.detail.push(' ');
        internet.detail.push_str(h);
    }
    let relay = match &net.relay {
        None | Some(RelayState::NotConfigured) => ConnRow {
            label: "Relay",
            health: Health::Off,
            value: "not configured".into(),
            detail: "Start the host with --relay-url (or ATMOSPHERE_RELAY_URL) to reach it through any NAT.".into(),
        },
        Some(RelayState::Connecting { url }) => ConnRow {
            label: "Relay",
            health: Health::Warn,
            value: "connecting".into(),
            detail: format!("Registering with {url}…"),
        },
        Some(RelayState::Connected { url }) => ConnRow {
            label: "Relay",
            health: Health::Good,
            value: "connected".into(),
            detail: format!("Registered with {url}: devices anywhere can connect through it."),
        },
        Some(RelayState::Retrying { url, last_error, retry_in_ms }) => ConnRow {
            label: "Relay",
            health: Health::Bad,
            value: "retrying".into(),
            detail: format!("{url}: {last_error} (next try in {} s)", retry_in_ms.div_ceil(1000)),
        },
    };
    let failed: Vec<String> = net
        .probes
        .iter()
        .filter_map(|p| p.error.as_ref().map(|e| format!("{}: {e}", p.server)))
        .collect();
    let stun = match &net.stun_source {
        Some(src) => ConnRow {
            label: "STUN",
            health: if failed.is_empty() {
                Health::Good
            } else {
                Health::Warn
            },
            value: src.clone(),
            detail: if failed.is_empty() {
                "Public address discovered.".into()
            } else {
                format!("Some servers failed: {}", failed.join("; "))
            },
        },
        None if stun_off => ConnRow {
            label: "STUN",
            health: Health::Off,
            value: "disabled".into(),
            detail: "ATMOSPHERE_STUN_SERVERS=none".into(),
        },
        None => ConnRow {
            label: "STUN",
            health: Health::Bad,
            value: "no answer".into(),
            detail: failed.join("; "),
        },
    };
    let mapped = net.port_mapping.state == PortMappingState::Mapped;
    if mapped && internet.health == Health::Warn {
        internet.health = Health::Good;
        internet.detail =
            "Behind NAT; the router forwards the port automatically (see Port mapping).".into();
    }
    vec![
        local,
        internet,
        relay,
        stun,
        port_mapping_row(&net.port_mapping),
        public_path_row(net),
    ]
}

/// The "Port mapping" row: what the host's router forwards automatically (UPnP, PCP,
/// NAT-PMP), or why nothing.
pub fn port_mapping_row(pm: &PortMappingStatus) -> ConnRow {
    let protocol = pm.protocol.map(|p| p.label()).unwrap_or("?");
    match pm.state {
        PortMappingState::Off => ConnRow {
            label: "Port mapping",
            health: Health::Off,
            value: "off".into(),
            detail: "Started with --no-port-mapping: forward the port on the router by hand."
                .into(),
        },
        PortMappingState::Searching => ConnRow {
            label: "Port mapping",
            health: Health::Warn,
            value: "searching".into(),
            detail: "Asking the router (UPnP, PCP, NAT-PMP) to forward the port…".into(),
        },
        PortMappingState::Mapped => {
            let ip = pm.external_ip.as_deref().unwrap_or("?");
            let mut ports = Vec::new();
            if let Some(t) = pm.tcp_port {
                ports.push(format!("TCP {ip}:{t}"));
            }
            if let Some(u) = pm.udp_port {
                ports.push(format!("UDP {ip}:{u}"));
            }
            let mut detail = format!(
                "The router ({}) forwards {} to this machine",
                pm.gateway.as_deref().unwrap_or("gateway"),
                ports.join(" and ")
            );
            match &pm.expires_at {
                Some(t) => detail.push_str(&format!("; renewed before it lapses at {t}.")),
                None => detail.push_str(" (permanent; removed when the host stops)."),
            }
            ConnRow {
                label: "Port mapping",
                health: Health::Good,
                value: format!("mapped ({protocol})"),
                detail,
            }
        }
        PortMappingState::Unavailable => ConnRow {
            label: "Port mapping",
            health: Health::Warn,
            value: "unavailable".into(),
            detail: pm
                .error
                .clone()
                .unwrap_or_else(|| "No router answered UPnP, PCP or NAT-PMP.".into()),
        },
    }
}

/// The public endpoint and what the relay's dial-back found: reachable, unreachable (and
/// therefore left out of new invites), or not checked, each with the host's detail.
fn public_path_row(net: &NetworkSnapshot) -> ConnRow {
    let r = &net.reachability;
    let Some(endpoint) = net.endpoints.public.clone() else {
        return ConnRow {
            label: "Public path",
            health: Health::Off,
            value: "none".into(),
            detail: "No public endpoint: invites offer the LAN and the relay only.".into(),
        };
    };
    let detail = r.detail.as_deref().unwrap_or("no detail");
    match r.state {
        Reachability::Reachable => ConnRow {
            label: "Public path",
            health: Health::Good,
            value: format!("{endpoint} — reachable"),
            detail: format!("The relay reached it from outside ({detail}); invites include it."),
        },
        Reachability::Unreachable => ConnRow {
            label: "Public path",
            health: Health::Bad,
            value: format!("{endpoint} — unreachable, left out of invites"),
            detail: format!(
                "The relay could not reach it from outside: {detail}. Forward the port on your router to this machine; new invites include it once a check succeeds."
            ),
        },
        Reachability::Unknown => ConnRow {
            label: "Public path",
            health: Health::Warn,
            value: format!("{endpoint} — not checked"),
            detail: format!("{detail}. Invites include it."),
        },
    }
}

/// Milliseconds since the epoch of an RFC 3339 time (via the browser's date parser).
fn parse_time(s: &str) -> Option<f64> {
    let t = js_sys::Date::parse(s);
    (!t.is_nan()).then_some(t)
}

/// "just now", "5 min ago", "in 23 h" — relative to `now_ms`.
pub fn relative(t_ms: f64, now_ms: f64) -> String {
    let d = (t_ms - now_ms) / 1000.0;
    // Whole numbers only: printed as integers, so the bundle needs no float formatting.
    let (n, unit): (u64, &str) = {
        let a = d.abs();
        if a < 45.0 {
            return if d < 0.0 {
                "just now".into()
            } else {
                "in a moment".into()
            };
        } else if a < 3600.0 {
            ((a / 60.0).round() as u64, "min")
        } else if a < 86_400.0 * 2.0 {
            ((a / 3600.0).round() as u64, "h")
        } else {
            ((a / 86_400.0).round() as u64, "days")
        }
    };
    if d < 0.0 {
        format!("{n} {unit} ago")
    } else {
        format!("in {n} {unit}")
    }
}

fn when(s: &str) -> String {
    match parse_time(s) {
        Some(t) => relative(t, js_sys::Date::now()),
        None => s.to_string(),
    }
}

/// Writes text to the clipboard (async; failures are shown next to the button).
fn copy(text: String, feedback: RwSignal<Option<String>>, what: &'static str) {
    let Some(w) = web_sys::window() else { return };
    let p = w.navigator().clipboard().write_text(&text);
    leptos::task::spawn_local(async move {
        let ok = wasm_bindgen_futures::JsFuture::from(p).await.is_ok();
        feedback.set(Some(if ok {
            format!("{what} copied")
        } else {
            "Copy failed: select the text and copy it by hand".into()
        }));
    });
}

/// Auth state of the page.
#[derive(Debug, Clone, PartialEq)]
enum Access {
    Loading,
    Ok,
    NeedAdmin,
    Unreachable(String),
}

#[derive(Clone, Copy)]
struct Ctx {
    access: RwSignal<Access>,
    network: RwSignal<Option<NetworkSnapshot>>,
    mesh: RwSignal<Option<MeshView>>,
    /// The invite on screen; kept here so it survives re-renders of the panel.
    invite: RwSignal<Option<TokenResponse>>,
}

async fn refresh(ctx: Ctx) {
    let (mesh, net) = (
        api::get_json::<MeshView>("/api/mesh").await,
        api::get_json::<NetworkSnapshot>("/api/network").await,
    );
    let access = match (&mesh, &net) {
        (Err(ApiFailure::Unauthorized), _) | (_, Err(ApiFailure::Unauthorized)) => {
            Access::NeedAdmin
        }
        (Err(e), _) => Access::Unreachable(e.to_string()),
        _ => Access::Ok,
    };
    // Setting a signal always notifies; re-rendering the panel would drop what it shows.
    set_if_changed(ctx.access, access);
    if let Ok(m) = mesh {
        set_if_changed(ctx.mesh, Some(m));
    }
    if let Ok(n) = net {
        set_if_changed(ctx.network, Some(n));
    }
}

/// Sets `sig` only when the value differs, so an unchanged poll does not rebuild the DOM.
fn set_if_changed<T: PartialEq + Send + Sync + 'static>(sig: RwSignal<T>, value: T) {
    if sig.with_untracked(|v| *v != value) {
        sig.set(value);
    }
}

/// Removes `?admin=…` from the address bar: the host has set its cookie by now, and the
/// secret should not linger in history or on screen.
fn hide_admin_secret() {
    let Some(w) = web_sys::window() else { return };
    let search = w.location().search().unwrap_or_default();
    if search.contains("admin=") {
        if let Ok(h) = w.history() {
            let _ = h.replace_state_with_url(&wasm_bindgen::JsValue::NULL, "", Some("/"));
        }
    }
}

/// Opens the host's event stream; any event triggers a refresh. Returns a flag that is
/// true while the stream is open, so the poller can stand down.
fn subscribe(ctx: Ctx) -> StoredValue<bool> {
    let open = StoredValue::new(false);
    let Ok(es) = web_sys::EventSource::new("/api/events") else {
        return open;
    };
    let on_open = Closure::<dyn FnMut()>::new(move || open.set_value(true));
    let on_change = Closure::<dyn FnMut()>::new(move || leptos::task::spawn_local(refresh(ctx)));
    let es2 = es.clone();
    let on_error = Closure::<dyn FnMut()>::new(move || {
        open.set_value(false);
        // A 404 (host without the stream) closes it for good: polling takes over.
        if es2.ready_state() == web_sys::EventSource::CLOSED {
            es2.close();
        }
    });
    es.set_onopen(Some(on_open.as_ref().unchecked_ref()));
    // The host sends only unnamed events (`MeshEvent` as JSON, `resync` included): each
    // means "mesh state changed".
    es.set_onmessage(Some(on_change.as_ref().unchecked_ref()));
    es.set_onerror(Some(on_error.as_ref().unchecked_ref()));
    // The page lives as long as the stream: leak the callbacks on purpose.
    on_open.forget();
    on_change.forget();
    on_error.forget();
    open
}

/// The host view.
#[component]
pub fn HostPanel() -> impl IntoView {
    let ctx = Ctx {
        access: RwSignal::new(Access::Loading),
        network: RwSignal::new(None),
        mesh: RwSignal::new(None),
        invite: RwSignal::new(None),
    };
    hide_admin_secret();
    leptos::task::spawn_local(refresh(ctx));
    let sse_open = subscribe(ctx);
    // Polling fallback (also keeps "last seen" fresh); stops once the page is unauthorized.
    let _ = set_interval_with_handle(
        move || {
            if !sse_open.get_value() && ctx.access.get_untracked() != Access::NeedAdmin {
                leptos::task::spawn_local(refresh(ctx));
            }
        },
        Duration::from_millis(POLL_MS),
    );

    view! {
        <main class="page host">
            <header class="top">
                <h1>"Atmosphere"</h1>
                {move || ctx.mesh.get().map(|m| view! { <p class="sub">"Mesh " <b>{m.mesh_name}</b></p> })}
            </header>
            {move || match ctx.access.get() {
                Access::Loading => view! { <section class="card"><p class="muted">"Loading…"</p></section> }.into_any(),
                Access::NeedAdmin => need_admin_view().into_any(),
                Access::Unreachable(e) => view! {
                    <section class="card banner bad">
                        <h2 class="headline">"The host is not answering"</h2>
                        <p>{e}</p>
                        <p>"Is `atmosphere serve` still running?"</p>
                    </section>
                }.into_any(),
                Access::Ok => view! {
                    <JoinPanel ctx=ctx/>
                    {connectivity_view(ctx)}
                    {members_view(ctx)}
                }.into_any(),
            }}
        </main>
    }
}

fn need_admin_view() -> impl IntoView {
    view! {
        <section class="card banner warn" id="need-admin">
            <h2 class="headline">"Admin access needed"</h2>
            <p>"This page manages the mesh, so it needs the host's admin secret."</p>
            <p>"Open the admin link printed by " <code>"atmosphere serve"</code> " ("
                <code>"http://127.0.0.1:11451/?admin=…"</code> ")."</p>
            <p class="muted">"Lost it? It is stored in the file " <code>"admin_secret"</code>
                " in the host's data directory. To join this mesh from this device instead, open an invite link."</p>
        </section>
    }
}

/// The "Devices" choice of the invite form: (value, label, `max_uses` to ask for).
const USES_CHOICES: [(&str, &str, Option<u32>); 3] = [
    ("1", "1 device", Some(1)),
    ("5", "up to 5 devices", Some(5)),
    ("unlimited", "any number of devices", None),
];

/// The "Valid for" choice of the invite form: (value, label, seconds).
const TTL_CHOICES: [(&str, &str, u64); 3] = [
    ("1h", "1 hour", 3600),
    ("24h", "24 hours", 24 * 3600),
    ("7d", "7 days", 7 * 24 * 3600),
];

/// The request the invite form sends for the chosen values (unknown values: the safe
/// defaults).
pub fn token_request(uses: &str, ttl: &str) -> TokenRequest {
    let max_uses = USES_CHOICES
        .iter()
        .find(|c| c.0 == uses)
        .map_or(Some(1), |c| c.2);
    let ttl_secs = TTL_CHOICES
        .iter()
        .find(|c| c.0 == ttl)
        .map_or(3600, |c| c.2);
    TokenRequest {
        ttl_secs: Some(ttl_secs),
        max_uses: Some(max_uses),
        label: None,
    }
}

#[component]
fn JoinPanel(ctx: Ctx) -> impl IntoView {
    let invite = ctx.invite;
    let minting = RwSignal::new(false);
    let error = RwSignal::new(None::<String>);
    let feedback = RwSignal::new(None::<String>);
    let uses = RwSignal::new(USES_CHOICES[0].0.to_string());
    let ttl = RwSignal::new(TTL_CHOICES[0].0.to_string());
    let mint = move || {
        minting.set(true);
        error.set(None);
        feedback.set(None);
        let req = token_request(&uses.get_untracked(), &ttl.get_untracked());
        leptos::task::spawn_local(async move {
            match api::post_json::<_, TokenResponse>("/api/mesh/token", &req).await {
                Ok(t) => invite.set(Some(t)),
                Err(ApiFailure::Unauthorized) => ctx.access.set(Access::NeedAdmin),
                Err(e) => error.set(Some(format!("Could not create an invite: {e}"))),
            }
            minting.set(false);
            refresh(ctx).await;
        });
    };
    view! {
        <section class="card invite">
            <h2>"Invite a device"</h2>
            <p class="muted">"Scan the code with a phone camera; the page that opens connects over the best path."</p>
            <div class="invite-options">
                <label>"Devices "
                    <select id="invite-uses" on:change=move |ev| uses.set(event_target_value(&ev))>
                        {USES_CHOICES.iter().map(|(v, l, _)| view! { <option value=*v>{*l}</option> }).collect_view()}
                    </select>
                </label>
                <label>" Valid for "
                    <select id="invite-ttl" on:change=move |ev| ttl.set(event_target_value(&ev))>
                        {TTL_CHOICES.iter().map(|(v, l, _)| view! { <option value=*v>{*l}</option> }).collect_view()}
                    </select>
                </label>
            </div>
            <button id="generate" class="primary" on:click=move |_| mint() disabled=move || minting.get()>
                {move || if minting.get() { "Generating…" } else { "Generate invite" }}
            </button>
            {move || error.get().map(|e| view! { <p class="error">{e}</p> })}
            {move || invite.get().map(|t| invite_view(t, feedback))}
        </section>
    }
}

fn invite_view(t: TokenResponse, feedback: RwSignal<Option<String>>) -> impl IntoView {
    let qr = match qr::svg_for(&t.join_url) {
        Ok(svg) => view! { <div class="qr" id="invite-qr" inner_html=svg></div> }.into_any(),
        Err(e) => view! { <p class="error">{e}</p> }.into_any(),
    };
    let (token, join_url, qr_data) = (t.token.clone(), t.join_url.clone(), t.qr_data.clone());
    let lan = lan_link_view(&t, feedback);
    let paths: Vec<(String, Option<String>)> = atmosphere_shared::PathKind::ENDPOINTS
        .iter()
        .map(|p| (p.to_string(), t.endpoints.get(*p).map(str::to_string)))
        .collect();
    let uses = match t.max_uses {
        Some(1) => "single use".to_string(),
        Some(n) => format!("up to {n} devices"),
        None => "any number of devices".to_string(),
    };
    view! {
        <div class="invite-body">
            {qr}
            <div class="invite-info">
                <label>"Token"</label>
                <div class="copy-row">
                    <code id="invite-token" class="token">{t.token.clone()}</code>
                    <button on:click=move |_| copy(token.clone(), feedback, "Token")>"Copy"</button>
                </div>
                <label>"Join link"</label>
                <div class="copy-row">
                    <a id="invite-link" class="link" href=t.join_url.clone() target="_blank">{t.join_url.clone()}</a>
                    <button on:click=move |_| copy(join_url.clone(), feedback, "Join link")>"Copy"</button>
                </div>
                {lan}
                <button class="secondary" on:click=move |_| copy(qr_data.clone(), feedback, "App link")>"Copy app link"</button>
                <p class="muted" id="invite-expiry">{format!("Expires {} ({}), {uses}.", when(&t.expires_at), t.expires_at)}</p>
                <ul class="included">
                    {paths.into_iter().map(|(p, url)| match url {
                        Some(u) => view! { <li><span class=format!("badge {p}")>{p.clone()}</span>" "<span class="mono">{u}</span></li> }.into_any(),
                        None => view! { <li class="muted"><span class="badge off">{p.clone()}</span>" not available"</li> }.into_any(),
                    }).collect_view()}
                </ul>
                {move || feedback.get().map(|f| view! { <p class="note">{f}</p> })}
            </div>
        </div>
    }
}

/// The invite on the host's own LAN page, for a phone on the same Wi-Fi, when the QR code's
/// link is another page (the relay's or `--web-url`'s); nothing when they are the same.
fn lan_link_view(t: &TokenResponse, feedback: RwSignal<Option<String>>) -> Option<impl IntoView> {
    let lan = t.lan_join_url.clone().filter(|l| *l != t.join_url)?;
    let (href, copied) = (lan.clone(), lan.clone());
    Some(view! {
        <label>"Same Wi-Fi link"</label>
        <div class="copy-row">
            <a id="invite-lan-link" class="link" href=href target="_blank">{lan}</a>
            <button on:click=move |_| copy(copied.clone(), feedback, "Same Wi-Fi link")>"Copy"</button>
        </div>
    })
}

fn connectivity_view(ctx: Ctx) -> impl IntoView {
    view! {
        <section class="card">
            <h2>"Connectivity"</h2>
            {move || match ctx.network.get() {
                None => view! { <p class="muted">"Discovering…"</p> }.into_any(),
                Some(net) => view! {
                    <ul class="conn" id="connectivity">
                        {connectivity_rows(&net).into_iter().map(|r| view! {
                            <li class=format!("conn-row {}", r.health.class()) data-row=r.label>
                                <span class="dot"></span>
                                <span class="conn-label">{r.label}</span>
                                <span class="conn-value">{r.value}</span>
                                <span class=format!("pill {}", r.health.class())>{r.health.word()}</span>
                                <span class="conn-detail">{r.detail}</span>
                            </li>
                        }).collect_view()}
                    </ul>
                }.into_any(),
            }}
        </section>
    }
}

fn members_view(ctx: Ctx) -> impl IntoView {
    let revoke = move |id: String| {
        leptos::task::spawn_local(async move {
            let _ = api::delete(&format!("/api/mesh/invites/{id}")).await;
            refresh(ctx).await;
        });
    };
    view! {
        <section class="card">
            <h2>"Devices"</h2>
            {move || {
                let devices = ctx.mesh.get().map(|m| m.devices).unwrap_or_default();
                if devices.is_empty() {
                    view! { <p class="muted">"No devices yet. Generate an invite and scan it."</p> }.into_any()
                } else {
                    view! { <ul class="devices" id="devices">{devices.into_iter().map(|d| device_view(ctx, d)).collect_view()}</ul> }.into_any()
                }
            }}
        </section>
        <section class="card">
            <h2>"Outstanding invites"</h2>
            {move || {
                let now = js_sys::Date::now();
                let invites: Vec<InviteView> = ctx.mesh.get().map(|m| m.invites).unwrap_or_default().into_iter()
                    .filter(|i| !i.revoked && parse_time(&i.expires_at).is_none_or(|t| t > now))
                    .filter(|i| i.max_uses.is_none_or(|m| i.uses < m))
                    .collect();
                if invites.is_empty() {
                    view! { <p class="muted">"None."</p> }.into_any()
                } else {
                    view! { <ul class="invites" id="invites">{invites.into_iter().map(|i| {
                        let id = i.invite_id.clone();
                        let uses = match i.max_uses { Some(m) => format!("{}/{m} used", i.uses), None => format!("{} used", i.uses) };
                        view! {
                            <li class="invite-row" data-invite=i.invite_id.clone()>
                                <span class="name">{i.label.clone().unwrap_or_else(|| format!("Invite {}", short(&i.invite_id)))}</span>
                                <span class="muted">{format!("created {}, expires {}, {uses}", when(&i.created_at), when(&i.expires_at))}</span>
                                <button class="danger" on:click=move |_| revoke(id.clone())>"Revoke"</button>
                            </li>
                        }
                    }).collect_view()}</ul> }.into_any()
                }
            }}
        </section>
    }
}

fn short(id: &str) -> String {
    id.chars().take(8).collect()
}

/// One device, with a *Remove* button that asks for a confirmation first.
fn device_view(ctx: Ctx, d: DeviceView) -> impl IntoView {
    let path = d.path.map(|p| p.as_str()).unwrap_or("—");
    let seen = if d.online {
        "online now".to_string()
    } else {
        d.last_seen
            .as_deref()
            .map(|s| format!("last seen {}", when(s)))
            .unwrap_or_else(|| "never connected".into())
    };
    let (id, platform) = (d.device_id.clone(), d.platform.clone());
    let confirming = RwSignal::new(false);
    let failed = RwSignal::new(None::<String>);
    let remove = move |id: String| {
        leptos::task::spawn_local(async move {
            match api::delete(&format!("/api/mesh/devices/{id}")).await {
                Ok(()) | Err(ApiFailure::Http { status: 404, .. }) => {}
                Err(ApiFailure::Unauthorized) => ctx.access.set(Access::NeedAdmin),
                Err(e) => failed.set(Some(format!("Could not remove it: {e}"))),
            }
            confirming.set(false);
            refresh(ctx).await;
        });
    };
    let question = format!("Remove {}? Its key stops working at once.", d.name);
    let remove_id = id.clone();
    view! {
        <li class=if d.online { "device online" } else { "device offline" } data-device=id data-platform=platform data-path=path>
            <span class="dot"></span>
            <span class="name">{d.name}</span>
            <span class="muted">{d.platform}</span>
            <span class=format!("badge {path}")>{path}</span>
            <span class="muted seen">{seen}</span>
            {move || if confirming.get() {
                let id = remove_id.clone();
                view! {
                    <span class="confirm">
                        <span>{question.clone()}</span>
                        " "<button class="danger confirm-remove" on:click=move |_| remove(id.clone())>"Remove"</button>
                        " "<button class="secondary cancel-remove" on:click=move |_| confirming.set(false)>"Cancel"</button>
                    </span>
                }.into_any()
            } else {
                view! { <button class="danger remove" on:click=move |_| confirming.set(true)>"Remove"</button> }.into_any()
            }}
            {move || failed.get().map(|e| view! { <span class="error">{e}</span> })}
        </li>
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgnat_says_port_forward_will_not_help() {
        let net = NetworkSnapshot {
            public_ip: Some("100.64.1.2".into()),
            cgnat: true,
            is_behind_nat: true,
            ..Default::default()
        };
        let rows = connectivity_rows(&net);
        assert_eq!(rows[1].health, Health::Bad);
        assert!(rows[1].detail.contains("port forward will not help"));
    }

    #[test]
    fn nat_requires_port_forward_on_the_mesh_port() {
        let mut net = NetworkSnapshot {
            public_ip: Some("203.0.113.5".into()),
            is_behind_nat: true,
            ..Default::default()
        };
        net.endpoints.local = Some("ws://192.168.1.2:12345".into());
        let rows = connectivity_rows(&net);
        assert_eq!(rows[1].health, Health::Warn);
        assert!(
            rows[1].detail.contains("port forward required"),
            "{}",
            rows[1].detail
        );
        assert!(rows[1].detail.contains("12345"));
    }

    #[test]
    fn relay_states() {
        let mut net = NetworkSnapshot::default();
        assert_eq!(connectivity_rows(&net)[2].value, "not configured");
        net.relay = Some(RelayState::Retrying {
            url: "wss://r".into(),
            last_error: "refused".into(),
            retry_in_ms: 1500,
        });
        let r = &connectivity_rows(&net)[2];
        assert_eq!((r.health, r.value.as_str()), (Health::Bad, "retrying"));
        assert!(r.detail.contains("refused") && r.detail.contains("2 s"));
    }

    #[test]
    fn port_mapping_row_says_what_the_router_forwards() {
        use atmosphere_shared::api::PortMappingProtocol;
        let mut net = NetworkSnapshot {
            public_ip: Some("11.11.0.2".into()),
            is_behind_nat: true,
            ..Default::default()
        };
        let rows = connectivity_rows(&net);
        assert_eq!(rows[4].label, "Port mapping");
        assert_eq!(
            (rows[4].health, rows[4].value.as_str()),
            (Health::Off, "off")
        );
        assert_eq!(
            rows[1].health,
            Health::Warn,
            "no mapping: a forward is needed"
        );
        net.port_mapping = PortMappingStatus {
            state: PortMappingState::Mapped,
            protocol: Some(PortMappingProtocol::Upnp),
            gateway: Some("192.168.1.1:5000".into()),
            external_ip: Some("11.11.0.2".into()),
            tcp_port: Some(11451),
            udp_port: Some(11451),
            expires_at: Some("2026-11-29T12:00:00Z".into()),
            error: None,
        };
        let rows = connectivity_rows(&net);
        assert_eq!(rows[4].value, "mapped (UPnP)");
        assert_eq!(rows[4].health, Health::Good);
        assert!(
            rows[4]
                .detail
                .contains("TCP 11.11.0.2:11451 and UDP 11.11.0.2:11451"),
            "{}",
            rows[4].detail
        );
        assert_eq!(
            rows[1].health,
            Health::Good,
            "mapped: no manual forward needed"
        );
        net.port_mapping = PortMappingStatus {
            state: PortMappingState::Unavailable,
            error: Some("no UPnP gateway answered".into()),
            ..Default::default()
        };
        let rows = connectivity_rows(&net);
        assert_eq!(
            (rows[4].value.as_str(), rows[4].detail.as_str()),
            ("unavailable", "no UPnP gateway answered")
        );
    }

    #[test]
    fn public_path_row_says_whether_invites_carry_it() {
        use atmosphere_shared::api::PublicReachability;
        let mut net = NetworkSnapshot::default();
        assert_eq!(public_path_row(&net).health, Health::Off);
        net.endpoints.public = Some("ws://198.51.100.2:11451".into());
        net.reachability = PublicReachability {
            state: Reachability::Unreachable,
            endpoint: net.endpoints.public.clone(),
            checked_at: Some("2026-11-29T05:00:00Z".into()),
            detail: Some("timed out after 3 s".into()),
        };
        let row = &connectivity_rows(&net)[5];
        assert_eq!(row.label, "Public path");
        assert_eq!(row.health, Health::Bad);
        assert!(row.value.contains("left out of invites"), "{}", row.value);
        assert!(row.detail.contains("timed out after 3 s"), "{}", row.detail);
        net.reachability.state = Reachability::Reachable;
        net.reachability.detail = Some("answered HTTP 200 with the nonce".into());
        let row = public_path_row(&net);
        assert_eq!(row.health, Health::Good);
        assert!(row.value.ends_with("reachable") && row.detail.contains("invites include it"));
        net.reachability = PublicReachability {
            detail: Some("--public-url is set; not checked".into()),
            ..Default::default()
        };
        let row = public_path_row(&net);
        assert_eq!(row.health, Health::Warn);
        assert!(row.value.contains("not checked"));
        assert!(row.detail.contains("--public-url is set"), "{}", row.detail);
    }

    #[test]
    fn stun_disabled_is_off_not_broken() {
        let rows = connectivity_rows(&NetworkSnapshot::default());
        assert_eq!(rows[3].health, Health::Off);
        assert_eq!(rows[1].health, Health::Off);
    }

    #[test]
    fn invite_form_defaults_to_one_device_for_one_hour() {
        let safe = token_request("1", "1h");
        assert_eq!((safe.max_uses, safe.ttl_secs), (Some(Some(1)), Some(3600)));
        assert_eq!(token_request("nonsense", "").max_uses, Some(Some(1)));
        let open = token_request("unlimited", "7d");
        assert_eq!((open.max_uses, open.ttl_secs), (Some(None), Some(604_800)));
    }

    #[test]
    fn relative_times() {
        assert_eq!(relative(0.0, 10_000.0), "just now");
        assert_eq!(relative(0.0, 600_000.0), "10 min ago");
        assert_eq!(relative(86_400_000.0, 0.0), "in 24 h");
    }
}
