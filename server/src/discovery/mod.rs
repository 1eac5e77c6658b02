//! Background network discovery: local IPs, public IP via STUN, NAT and CGNAT flags.
//!
//! One *round* finds the local addresses (no packet sent, see [`local`]), asks every
//! configured STUN server for our mapped address (see [`stun`]), traces the first few hops
//! toward the first STUN server that answered (see [`path_probe`]: a 100.64.0.0/10 router
//! on the way means carrier-grade NAT even when this machine and STUN only see ordinary
//! addresses) and turns the result into a [`NetworkSnapshot`] with the pure rules of
//! [`nat`]. [`Discovery`] runs a round at start, then every `refresh_interval` and on
//! [`Discovery::refresh_now`], and keeps the latest snapshot in a `watch` channel so readers
//! (invite minting, `GET /api/network`) never wait on the network.
//!
//! A round publishes as soon as the first STUN answer arrives, so one dead server among
//! several does not delay the public endpoint, again when STUN is done, and a last time
//! with the path verdict. `updated_at` is set only by that last, complete snapshot (until
//! then a later round's snapshots keep the previous round's time and path), while
//! [`Discovery::ready`] — what the very first invite waits for — already returns at the
//! first STUN answer: the path probe never delays minting.

pub mod local;
pub mod nat;
pub mod path_probe;
pub mod stun;

use atmosphere_shared::api::NetworkSnapshot;
use atmosphere_shared::link::Endpoints;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{watch, Notify};

pub use local::LocalInfo;
pub use path_probe::{PathOptions, Trace};
pub use stun::{ProbeOutcome, StunOptions, StunServer};

/// Default STUN servers when neither `--stun-server` nor `ATMOSPHERE_STUN_SERVERS` is set.
pub const DEFAULT_STUN_SERVERS: &[&str] = &["stun.l.google.com:19302", "stun.cloudflare.com:3478"];
/// Default time between background rounds.
pub const DEFAULT_REFRESH_INTERVAL: Duration = Duration::from_secs(300);
/// Default overall deadline of one STUN round.
pub const DEFAULT_STUN_DEADLINE: Duration = Duration::from_secs(2);
/// Background rounds never run more often than this, whatever the config says.
const MIN_REFRESH_INTERVAL: Duration = Duration::from_secs(1);

/// The `--stun-server` flag shared by `serve` and `netcheck` (flattened into both).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct StunArgs {
    /// STUN server HOST:PORT used to find the public IP; repeat for several. Replaces the
    /// defaults (stun.l.google.com:19302 and stun.cloudflare.com:3478). The env var takes a
    /// comma list; `none` disables STUN. Flags win over the env var.
    #[arg(
        long = "stun-server",
        value_name = "HOST:PORT",
        env = "ATMOSPHERE_STUN_SERVERS",
        value_delimiter = ','
    )]
    pub stun_servers: Vec<String>,
}

impl StunArgs {
    /// The servers to query (empty = STUN disabled), per [`DiscoveryConfig::stun_servers_from`].
    pub fn servers(&self) -> Vec<String> {
        // clap already merged the flags and the env var (flags win).
        DiscoveryConfig::stun_servers_from(&self.stun_servers, None)
    }
}

/// What discovery needs to know; built by `serve` and `netcheck` from flags and env.
#[derive(Debug, Clone)]
pub struct DiscoveryConfig {
    /// `HOST:PORT` STUN servers; empty disables STUN.
    pub stun_servers: Vec<String>,
    /// Port the host listens on (the local endpoint uses it).
    pub listen_port: u16,
    /// Port advertised in the public endpoint (default: `listen_port`).
    pub public_port: Option<u16>,
    /// Overrides the public endpoint entirely (e.g. `wss://home.example.com`).
    pub public_url: Option<String>,
    /// Overrides the advertised local IP.
    pub local_ip: Option<IpAddr>,
    /// How often the snapshot is refreshed in the background.
    pub refresh_interval: Duration,
    /// Overall deadline of one STUN round (all servers in parallel, with retransmits).
    pub stun_deadline: Duration,
}

impl Default for DiscoveryConfig {
    /// The product defaults: port 11451 and the public default STUN servers.
    fn default() -> Self {
        DiscoveryConfig::new(
            11451,
            DEFAULT_STUN_SERVERS.iter().map(|s| s.to_string()).collect(),
        )
    }
}

impl DiscoveryConfig {
    /// A config with default timings and no overrides.
    pub fn new(listen_port: u16, stun_servers: Vec<String>) -> DiscoveryConfig {
        DiscoveryConfig {
            stun_servers,
            listen_port,
            public_port: None,
            public_url: None,
            local_ip: None,
            refresh_interval: DEFAULT_REFRESH_INTERVAL,
            stun_deadline: DEFAULT_STUN_DEADLINE,
        }
    }

    /// The STUN server list from repeated `--stun-server` flags and `ATMOSPHERE_STUN_SERVERS`:
    /// flags (each may itself be a comma list) replace the defaults and win over the env
    /// var; the env var's comma list replaces the defaults; `none` anywhere in the chosen
    /// list disables STUN (empty result); neither given → [`DEFAULT_STUN_SERVERS`].
    pub fn stun_servers_from(flags: &[String], env: Option<&str>) -> Vec<String> {
        fn split(list: &str) -> impl Iterator<Item = String> + '_ {
            list.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
        }
        let from_flags: Vec<String> = flags.iter().flat_map(|f| split(f)).collect();
        let chosen = if !from_flags.is_empty() {
            from_flags
        } else {
            match env.map(|e| split(e).collect::<Vec<_>>()) {
                Some(v) if !v.is_empty() => v,
                _ => DEFAULT_STUN_SERVERS.iter().map(|s| s.to_string()).collect(),
            }
        };
        if chosen.iter().any(|s| s.eq_ignore_ascii_case("none")) {
            Vec::new()
        } else {
            chosen
        }
    }

    fn stun_options(&self) -> StunOptions {
        StunOptions {
            deadline: self.stun_deadline,
            ..StunOptions::default()
        }
    }
}

/// Turns one round's findings into the API snapshot. `stun_finished` says whether every
/// probe has its final outcome (it controls the "no STUN server answered" hint); `path` is
/// the trace toward the STUN server, if one ran. `endpoints.relay`, `relay` and
/// `updated_at` are left empty for the caller to fill.
pub fn build_snapshot(
    cfg: &DiscoveryConfig,
    local: &LocalInfo,
    outcomes: &[ProbeOutcome],
    stun_finished: bool,
    path: Option<&Trace>,
) -> NetworkSnapshot {
    // The first answer wins; IPv4 answers before IPv6 ones, because the local endpoint and
    // most NAT port forwards are IPv4.
    let winner = outcomes
        .iter()
        .filter(|o| o.mapped.is_some())
        .min_by_key(|o| (o.mapped.is_some_and(|m| m.is_ipv6()), o.answer_rank));
    let public_ip = winner.and_then(|w| w.mapped).map(|m| m.ip().to_canonical());
    let advertised = local.advertised;

    let mut own: Vec<IpAddr> = local.all.clone();
    own.extend(advertised);
    let behind_nat = nat::is_behind_nat(public_ip, &own);
    let public_cgnat = public_ip.is_some_and(nat::is_cgnat);
    let cgnat_hop = path.and_then(Trace::cgnat_hop);
    let cgnat = public_cgnat
        || cgnat_hop.is_some()
        || local
            .addrs
            .iter()
            .chain(advertised.iter())
            .any(|a| nat::is_cgnat(*a));
    let mapped: Vec<_> = outcomes.iter().filter_map(|o| o.mapped).collect();
    let mapping_varies = nat::mapping_varies(&mapped);

    let public_url = cfg
        .public_url
        .as_deref()
        .map(str::trim)
        .filter(|u| !u.is_empty());
    let public = nat::public_endpoint(public_url, public_ip, cfg.public_port, cfg.listen_port);
    let public_port = match (public_url, &public) {
        (Some(u), _) => url::Url::parse(u)
            .ok()
            .and_then(|u| u.port_or_known_default()),
        (None, Some(_)) => Some(cfg.public_port.unwrap_or(cfg.listen_port)),
        (None, None) => None,
    };
    let hint = nat::hint(&nat::HintInput {
        cgnat,
        public_cgnat,
        cgnat_hop,
        behind_nat,
        mapping_varies,
        local_ip: advertised,
        listen_port: cfg.listen_port,
        public_port: cfg.public_port,
        public_url_set: public_url.is_some(),
        stun_enabled: !cfg.stun_servers.is_empty() && stun_finished,
        public_ip_known: public_ip.is_some(),
    });

    NetworkSnapshot {
        local_ip: advertised.map(|a| a.to_string()),
        local_ips: local.addrs.iter().map(|a| a.to_string()).collect(),
        public_ip: public_ip.map(|a| a.to_string()),
        public_port,
        is_behind_nat: behind_nat,
        cgnat,
        hint,
        stun_source: winner.map(|w| w.server.clone()),
        // The serve layer knows the relay; it fills the list handed to browsers.
        stun_servers: Vec::new(),
        mapping_varies,
        probes: outcomes.iter().map(ProbeOutcome::to_api).collect(),
        endpoints: Endpoints {
            local: advertised.map(|ip| nat::ws_endpoint(ip, cfg.listen_port)),
            public,
            relay: None,
        },
        relay: None,
        updated_at: None,
        path: path.map(Trace::to_api),
        cgnat_hop: cgnat_hop.map(|(_, ip)| ip.to_string()),
        port_mapping: Default::default(),
        reachability: Default::default(),
    }
}

/// How far a round was when it published a snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// The first STUN answer of a round with several servers (others still out).
    FirstAnswer,
    /// Every STUN probe has its outcome; the path probe is still running.
    StunDone,
    /// The round is complete (`updated_at` is set).
    Complete,
}

/// Runs one discovery round. `publish` gets an early snapshot when the first STUN answer
/// arrives (only if some probes are still out), one when STUN is done (only if a path probe
/// follows) and always the complete one, which is also returned with the round's trace.
/// Intermediate snapshots carry `prev_path` (the previous round's trace), so the CGNAT
/// verdict does not flicker while the new trace runs. The path probe only ever targets the
/// first configured STUN server that answered; with STUN disabled nothing is probed.
pub async fn run_round<F>(
    cfg: &DiscoveryConfig,
    prev_path: Option<&Trace>,
    mut publish: F,
) -> (NetworkSnapshot, Option<Trace>)
where
    F: FnMut(NetworkSnapshot, Stage),
{
    let local = local::discover(cfg.local_ip);
    let outcomes = if cfg.stun_servers.is_empty() {
        Vec::new()
    } else {
        let total = cfg.stun_servers.len().min(stun::MAX_SERVERS);
        let mut early_sent = false;
        stun::probe_servers(&cfg.stun_servers, cfg.stun_options(), |first| {
            if !early_sent && total > 1 {
                early_sent = true;
                let snap =
                    build_snapshot(cfg, &local, std::slice::from_ref(first), false, prev_path);
                publish(snap, Stage::FirstAnswer);
            }
        })
        .await
    };
    let path = match path_probe::choose_target(&outcomes) {
        Some(target) => {
            publish(
                build_snapshot(cfg, &local, &outcomes, true, prev_path),
                Stage::StunDone,
            );
            Some(path_probe::trace(target, PathOptions::default()).await)
        }
        None => None,
    };
    let mut snap = build_snapshot(cfg, &local, &outcomes, true, path.as_ref());
    snap.updated_at = Some(crate::clock::now_rfc3339());
    tracing::debug!(
        local_ip = ?snap.local_ip,
        public_ip = ?snap.public_ip,
        stun_source = ?snap.stun_source,
        cgnat_hop = ?snap.cgnat_hop,
        "network discovery round finished"
    );
    for p in snap.probes.iter().filter(|p| p.error.is_some()) {
        tracing::debug!(server = %p.server, error = ?p.error, "STUN probe failed");
    }
    if let Some(e) = path.as_ref().and_then(|t| t.error.as_deref()) {
        tracing::debug!(error = e, "path probe incomplete");
    }
    publish(snap.clone(), Stage::Complete);
    (snap, path)
}

/// One discovery round without a background task (used by `atmosphere netcheck`).
pub async fn discover_once(cfg: &DiscoveryConfig) -> NetworkSnapshot {
    run_round(cfg, None, |_, _| {}).await.0
}

/// Handle to the background discovery task; cheap to clone. The task stops when the last
/// handle is dropped.
#[derive(Clone)]
pub struct Discovery {
    rx: watch::Receiver<NetworkSnapshot>,
    /// Becomes true once the first round knows its public side (first STUN answer, STUN
    /// done, or the round's end), which is before `updated_at` when a path probe follows.
    public_known: watch::Receiver<bool>,
    refresh: Arc<Notify>,
}

impl Discovery {
    /// Starts discovery in the background (first run immediately). Needs a tokio runtime.
    /// The snapshot already carries the local addresses when this returns (they need no
    /// network); the public side follows when the first round finishes.
    pub fn spawn(config: DiscoveryConfig) -> Discovery {
        let initial = build_snapshot(&config, &local::discover(config.local_ip), &[], false, None);
        let (tx, rx) = watch::channel(initial);
        let (known_tx, public_known) = watch::channel(false);
        let refresh = Arc::new(Notify::new());
        tokio::spawn(background(config, tx, known_tx, refresh.clone()));
        Discovery {
            rx,
            public_known,
            refresh,
        }
    }

    /// The cached snapshot (never waits on the network). `endpoints.local`/`public` are filled
    /// from what was found; `endpoints.relay` and `relay` are left for `serve` to fill.
    pub fn snapshot(&self) -> NetworkSnapshot {
        self.rx.borrow().clone()
    }

    /// Every snapshot from now on (the reachability check watches the public endpoint and
    /// each finished round).
    pub fn subscribe(&self) -> watch::Receiver<NetworkSnapshot> {
        self.rx.clone()
    }

    /// Waits until the first discovery knows the public side (first STUN answer, all STUN
    /// outcomes, or the round's end — not the path probe that may follow), at most
    /// `max_wait`, then returns the snapshot (used when minting the very first invite).
    /// `updated_at` may still be `None` then: it marks the complete round.
    pub async fn ready(&self, max_wait: Duration) -> NetworkSnapshot {
        let mut known = self.public_known.clone();
        let _ = tokio::time::timeout(max_wait, known.wait_for(|k| *k)).await;
        self.snapshot()
    }

    /// Asks for a refresh now (returns immediately). Calls during a round coalesce into one
    /// more round right after it.
    pub fn refresh_now(&self) {
        self.refresh.notify_one();
    }
}

/// The facts whose change is worth an info log line: local IP, public IP, STUN source,
/// behind NAT, CGNAT, the CGNAT hop.
type LogKey = (
    Option<String>,
    Option<String>,
    Option<String>,
    bool,
    bool,
    Option<String>,
);

/// The background loop: a round, then wait for the interval or a refresh request.
async fn background(
    cfg: DiscoveryConfig,
    tx: watch::Sender<NetworkSnapshot>,
    public_known: watch::Sender<bool>,
    refresh: Arc<Notify>,
) {
    let interval = cfg.refresh_interval.max(MIN_REFRESH_INTERVAL);
    // What was last logged: one info line per change, not one per round.
    let mut logged: Option<LogKey> = None;
    // The last complete round's trace and time, carried by the next round's partial
    // snapshots.
    let mut path: Option<Trace> = None;
    let mut updated_at: Option<String> = None;
    loop {
        let publish = |mut s: NetworkSnapshot, stage: Stage| {
            if stage != Stage::Complete {
                s.updated_at = updated_at.clone();
            }
            tx.send_replace(s);
            public_known.send_replace(true);
        };
        let (snap, trace) = tokio::select! {
            r = run_round(&cfg, path.as_ref(), publish) => r,
            _ = tx.closed() => return,
        };
        path = trace;
        updated_at = snap.updated_at.clone();
        let key = (
            snap.local_ip.clone(),
            snap.public_ip.clone(),
            snap.stun_source.clone(),
            snap.is_behind_nat,
            snap.cgnat,
            snap.cgnat_hop.clone(),
        );
        if logged.as_ref() != Some(&key) {
            tracing::info!(
                local_ip = ?snap.local_ip,
                public_ip = ?snap.public_ip,
                stun_source = ?snap.stun_source,
                behind_nat = snap.is_behind_nat,
                cgnat = snap.cgnat,
                cgnat_hop = ?snap.cgnat_hop,
                hint = ?snap.hint,
                "network discovery"
            );
            logged = Some(key);
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = refresh.notified() => {}
            _ = tx.closed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn stun_server_list_rules() {
        let defaults = strings(DEFAULT_STUN_SERVERS);
        assert_eq!(DiscoveryConfig::stun_servers_from(&[], None), defaults);
        assert_eq!(
            DiscoveryConfig::stun_servers_from(&[], Some("  ")),
            defaults
        );
        assert_eq!(
            DiscoveryConfig::stun_servers_from(&[], Some("127.0.0.1:3478, [::1]:3478")),
            strings(&["127.0.0.1:3478", "[::1]:3478"])
        );
        assert_eq!(
            DiscoveryConfig::stun_servers_from(&strings(&["a:1", "b:2"]), Some("c:3")),
            strings(&["a:1", "b:2"]),
            "flags win over env"
        );
        assert_eq!(
            DiscoveryConfig::stun_servers_from(&[], Some("none")),
            Vec::<String>::new()
        );
        assert_eq!(
            DiscoveryConfig::stun_servers_from(&strings(&["NONE"]), Some("c:3")),
            Vec::<String>::new()
        );
        assert_eq!(
            DiscoveryConfig::stun_servers_from(&strings(&["a:1,b:2"]), None),
            strings(&["a:1", "b:2"])
        );
    }

    fn outcome(server: &str, mapped: Option<&str>, rank: Option<usize>) -> ProbeOutcome {
        ProbeOutcome {
            server: server.into(),
            target: None,
            mapped: mapped.map(|m| m.parse::<SocketAddr>().unwrap()),
            rtt: mapped.map(|_| Duration::from_millis(12)),
            error: if mapped.is_some() {
                None
            } else {
                Some("no answer".into())
            },
            answer_rank: rank,
            requests: 1,
        }
    }

    fn lan() -> LocalInfo {
        let ip: IpAddr = "192.168.86.237".parse().unwrap();
        LocalInfo {
            advertised: Some(ip),
            addrs: vec![ip],
            all: vec![ip, "127.0.0.1".parse().unwrap()],
        }
    }

    #[test]
    fn snapshot_from_answers() {
        let cfg = DiscoveryConfig::new(11451, strings(&["a:1", "b:2", "c:3"]));
        let outs = [
            outcome("stun:a:1", Some("73.45.123.89:5000"), Some(1)),
            outcome("stun:b:2", Some("73.45.123.89:5000"), Some(0)),
            outcome("stun:c:3", None, None),
        ];
        let s = build_snapshot(&cfg, &lan(), &outs, true, None);
        assert_eq!(s.public_ip.as_deref(), Some("73.45.123.89"));
        assert_eq!(
            s.stun_source.as_deref(),
            Some("stun:b:2"),
            "first answer wins"
        );
        assert!(s.is_behind_nat);
        assert!(!s.cgnat);
        assert_eq!(s.mapping_varies, Some(false));
        assert_eq!(
            s.endpoints.local.as_deref(),
            Some("ws://192.168.86.237:11451")
        );
        assert_eq!(
            s.endpoints.public.as_deref(),
            Some("ws://73.45.123.89:11451")
        );
        assert_eq!(s.public_port, Some(11451));
        assert_eq!(s.probes.len(), 3);
        assert_eq!(s.probes[0].rtt_ms, Some(12));
        assert_eq!(s.probes[2].error.as_deref(), Some("no answer"));
        assert!(s
            .hint
            .unwrap()
            .contains("forward TCP port 11451 on your router to 192.168.86.237:11451"));
    }

    #[test]
    fn snapshot_without_answers_invents_nothing() {
        let cfg = DiscoveryConfig::new(11451, strings(&["a:1"]));
        let s = build_snapshot(&cfg, &lan(), &[outcome("stun:a:1", None, None)], true, None);
        assert_eq!(s.public_ip, None);
        assert_eq!(s.endpoints.public, None);
        assert_eq!(s.public_port, None);
        assert_eq!(s.stun_source, None);
        assert!(!s.is_behind_nat);
        assert!(s.hint.unwrap().contains("No STUN server answered"));

        let mut cfg = DiscoveryConfig::new(11451, Vec::new());
        cfg.public_url = Some("wss://home.example.com".into());
        let s = build_snapshot(&cfg, &lan(), &[], true, None);
        assert_eq!(
            s.endpoints.public.as_deref(),
            Some("wss://home.example.com")
        );
        assert_eq!(s.public_port, Some(443));
        assert_eq!(s.hint, None);
    }

    #[test]
    fn snapshot_flags_cgnat() {
        let cfg = DiscoveryConfig::new(11451, strings(&["a:1"]));
        let ip: IpAddr = "100.72.1.2".parse().unwrap();
        let local = LocalInfo {
            advertised: Some(ip),
            addrs: vec![ip],
            all: vec![ip],
        };
        let s = build_snapshot(
            &cfg,
            &local,
            &[outcome("stun:a:1", Some("203.0.113.9:1"), Some(0))],
            true,
            None,
        );
        assert!(s.cgnat);
        assert!(s.is_behind_nat);
        assert!(s.hint.unwrap().contains("carrier-grade NAT"));
    }

    #[test]
    fn snapshot_flags_cgnat_found_on_the_path() {
        // 192.168.x host, STUN sees an ordinary public address, but hop 2 is 100.64.0.1:
        // the home router's WAN is inside the ISP's carrier-grade NAT.
        use path_probe::{Hop, Trace};
        let cfg = DiscoveryConfig::new(11451, strings(&["a:1"]));
        let outs = [outcome("stun:a:1", Some("198.51.100.4:40000"), Some(0))];
        let hop = |ttl: u8, addr: &str, destination: bool| Hop {
            ttl,
            addr: Some(addr.parse().unwrap()),
            destination,
        };
        let trace = Trace {
            target: "203.0.113.10:3478".parse().unwrap(),
            hops: vec![
                hop(1, "192.168.86.1", false),
                hop(2, "100.64.0.1", false),
                hop(3, "203.0.113.10", true),
            ],
            error: None,
        };
        let plain = build_snapshot(&cfg, &lan(), &outs, true, None);
        assert!(!plain.cgnat);
        assert!(plain.hint.unwrap().contains("forward TCP port"));

        let s = build_snapshot(&cfg, &lan(), &outs, true, Some(&trace));
        assert!(s.cgnat);
        assert!(s.is_behind_nat);
        assert_eq!(s.cgnat_hop.as_deref(), Some("100.64.0.1"));
        let hint = s.hint.unwrap();
        assert!(hint.contains("carrier-grade NAT"), "{hint}");
        assert!(hint.contains("Hop 2"), "{hint}");
        assert!(!hint.contains("forward TCP port"), "{hint}");
        let path = s.path.unwrap();
        assert_eq!(path.target, "203.0.113.10:3478");
        assert_eq!(path.hops.len(), 3);
        assert!(path.hops[2].destination);

        // The JSON carries both new fields; an old snapshot without them still parses.
        let json =
            serde_json::to_value(build_snapshot(&cfg, &lan(), &outs, true, Some(&trace))).unwrap();
        assert_eq!(json["cgnat_hop"], "100.64.0.1");
        assert_eq!(json["path"]["hops"][1]["addr"], "100.64.0.1");
        let mut old = json.clone();
        old.as_object_mut().unwrap().remove("path");
        old.as_object_mut().unwrap().remove("cgnat_hop");
        let back: NetworkSnapshot = serde_json::from_value(old).unwrap();
        assert_eq!(back.path, None);
    }

    #[test]
    fn snapshot_ipv6_local_and_no_nat() {
        let cfg = DiscoveryConfig::new(11451, strings(&["a:1"]));
        let ip: IpAddr = "2001:db8::5".parse().unwrap();
        let local = LocalInfo {
            advertised: Some(ip),
            addrs: vec![ip],
            all: vec![ip],
        };
        let s = build_snapshot(
            &cfg,
            &local,
            &[outcome("stun:a:1", Some("[2001:db8::5]:999"), Some(0))],
            true,
            None,
        );
        assert_eq!(
            s.endpoints.local.as_deref(),
            Some("ws://[2001:db8::5]:11451")
        );
        assert_eq!(
            s.endpoints.public.as_deref(),
            Some("ws://[2001:db8::5]:11451")
        );
        assert!(!s.is_behind_nat, "the public IP is our own address");
        assert_eq!(s.hint, None);
    }

    #[tokio::test]
    async fn stun_disabled_round_is_ready_at_once() {
        let mut cfg = DiscoveryConfig::new(11451, Vec::new());
        cfg.local_ip = Some("127.0.0.1".parse().unwrap());
        let d = Discovery::spawn(cfg);
        assert_eq!(
            d.snapshot().local_ip.as_deref(),
            Some("127.0.0.1"),
            "local known before any round"
        );
        let s = d.ready(Duration::from_secs(5)).await;
        assert!(s.updated_at.is_some());
        assert_eq!(s.public_ip, None);
        assert!(s.probes.is_empty());
        assert_eq!(s.endpoints.local.as_deref(), Some("ws://127.0.0.1:11451"));
    }

    #[tokio::test]
    async fn dead_stun_server_gives_null_public_within_deadline() {
        let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut cfg = DiscoveryConfig::new(11451, vec![silent.local_addr().unwrap().to_string()]);
        cfg.stun_deadline = Duration::from_millis(500);
        let d = Discovery::spawn(cfg);
        let t = std::time::Instant::now();
        let s = d.ready(Duration::from_secs(3)).await;
        assert!(
            t.elapsed() < Duration::from_millis(1500),
            "{:?}",
            t.elapsed()
        );
        assert!(s.updated_at.is_some());
        assert_eq!(s.public_ip, None);
        assert_eq!(s.endpoints.public, None);
        assert!(
            s.probes[0].error.as_deref().unwrap().contains("no answer"),
            "{:?}",
            s.probes
        );
    }
}
