//! # Network-namespace harness
//!
//! Builds a small simulated internet out of Linux network namespaces, so the original
//! design's scenario table (same Wi-Fi → `local`, port forward → `public`, both behind NAT →
//! `relay`) runs over real routing and real NAT instead of loopback:
//!
//! ```text
//!                        internet (br0: 198.51.100.1/24, 203.0.113.1/24)
//!                        coturn STUN 203.0.113.10:3478 · atmosphere relay 203.0.113.20:8080
//!                  ┌───────────────┬──────────────────────────────┐
//!       198.51.100.2 (wan)   [cgnat: out 198.51.100.4,         198.51.100.3 (wan)
//!         home-router         in 100.64.0.1/10 → home-router     cell-router
//!   nft masquerade, optional   wan 100.64.0.2]                  nft masquerade
//!   DNAT tcp 11451 → host                                        lan 10.20.0.1/24
//!   lan 192.168.1.1/24                                              │
//!        │            │                                        phone 10.20.0.10
//!  home-host      home-phone
//!  192.168.1.10   192.168.1.20
//! ```
//!
//! Rules the harness enforces, because this machine may only talk to loopback and to
//! namespaces a test made itself:
//! - every process starts through `ip netns exec NS sh -c GUARD …`, and the guard checks
//!   with `ip netns identify $$` that it really is inside `NS` before it `exec`s the
//!   program (exit 97 otherwise); in-process HTTP requests run on a thread that `setns`es
//!   into the namespace and checks the namespace inode before opening a socket;
//! - only documentation ranges (198.51.100.0/24, 203.0.113.0/24) on the simulated internet,
//!   private ranges only inside our own namespaces; no veth ever touches the root namespace
//!   (both ends of every pair are created directly inside namespaces);
//! - the internet namespace black-holes private and CGNAT destinations like the real
//!   internet does, and the home router drops unsolicited inbound traffic (a consumer
//!   router's firewall), so a path that cannot work hangs instead of being refused — the
//!   racing client has to stagger past it;
//! - every namespace is removed in `Drop` (also after a panic), on Ctrl-C / SIGTERM (a
//!   handler thread), and namespaces left by a run that was killed outright are swept at
//!   the start of the next run (their names carry the owning PID). Spawned processes are
//!   killed before their namespace is deleted, and get `PR_SET_PDEATHSIG` so they die with
//!   the test thread that started them.
//!
//! Nothing is skipped silently: when the suite cannot run (not root, no `ip`, `nft` or
//! `turnserver`), [`preflight`] panics with a message saying exactly that.

use crate::browser::{Browser, Screen};
use atmosphere_shared::api::TokenResponse;
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Once};
use std::time::{Duration, Instant};

/// The STUN server (coturn) on the simulated internet.
pub const STUN_IP: &str = "203.0.113.10";
/// `HOST:PORT` of the STUN server, as passed to `--stun-server`.
pub const STUN_ADDR: &str = "203.0.113.10:3478";
/// The relay's address on the simulated internet.
pub const RELAY_IP: &str = "203.0.113.20";
/// The relay's port.
pub const RELAY_PORT: u16 = 8080;
/// The internet side of the home router (the host's public address, without CGNAT).
pub const HOME_WAN_IP: &str = "198.51.100.2";
/// The internet side of the cellular router (the phone's public address).
pub const CELL_WAN_IP: &str = "198.51.100.3";
/// The internet side of the carrier-grade NAT (the host's public address behind CGNAT).
pub const CGNAT_OUTSIDE_IP: &str = "198.51.100.4";
/// The home router's WAN address behind the carrier-grade NAT.
pub const CGNAT_HOME_WAN_IP: &str = "100.64.0.2";
/// The host on the home LAN.
pub const HOST_IP: &str = "192.168.1.10";
/// The second device on the home LAN (a phone on the same Wi-Fi).
pub const HOME_PHONE_IP: &str = "192.168.1.20";
/// The phone behind the cellular router.
pub const PHONE_IP: &str = "10.20.0.10";
/// The host's listening port (the product default, 11451).
pub const HOST_PORT: u16 = 11451;
/// The home router's WAN address when it runs miniupnpd ([`TopologyBuilder::miniupnpd`]):
/// miniupnpd refuses to map behind a private, CGNAT or documentation address, so this one
/// is an ordinary unicast address — it exists only inside the test's namespaces.
pub const UPNP_WAN_IP: &str = "11.11.0.2";
/// The internet side of [`UPNP_WAN_IP`]'s link (an address of the internet namespace).
pub const UPNP_INET_IP: &str = "11.11.0.1";

/// Exit code of the namespace guard when a process would have started outside its namespace.
pub const GUARD_EXIT: i32 = 97;

/// Checks the namespace before `exec`ing the program: `$1` is the expected namespace name,
/// the rest is the command line. Runs under `sh -c`, so it needs nothing but `ip`.
const GUARD: &str = r#"want="$1"; shift
got="$(ip netns identify $$ 2>/dev/null)"
if [ "$got" != "$want" ]; then
  echo "netns guard: refusing to start $1: inside namespace '$got', expected '$want'" >&2
  exit 97
fi
exec "$@""#;

/// One machine of the topology.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Node {
    /// The simulated internet: a bridge, the STUN server and the relay.
    Internet,
    /// The home NAT router (masquerade, optional port forward).
    HomeRouter,
    /// The machine running `atmosphere serve`.
    HomeHost,
    /// A phone on the home Wi-Fi.
    HomePhone,
    /// The carrier-grade NAT in front of the home router (CGNAT scenarios only).
    Cgnat,
    /// The cellular carrier's NAT router.
    CellRouter,
    /// A phone on cellular data.
    Phone,
}

impl Node {
    /// Short role name used in namespace names.
    fn role(self) -> &'static str {
        match self {
            Node::Internet => "inet",
            Node::HomeRouter => "hrouter",
            Node::HomeHost => "host",
            Node::HomePhone => "hphone",
            Node::Cgnat => "cgnat",
            Node::CellRouter => "crouter",
            Node::Phone => "phone",
        }
    }
}

/// Fails the test run loudly when namespaces cannot be used here. CI runs as root, so a
/// missing capability is a broken environment, never a reason to skip.
pub fn preflight() {
    let mut problems = Vec::new();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        problems.push("the suite must run as root (it creates network namespaces)".to_string());
    }
    for (tool, pkg) in [
        ("ip", "iproute2"),
        ("nft", "nftables"),
        ("turnserver", "coturn"),
    ] {
        if which(tool).is_none() {
            problems.push(format!("`{tool}` is not installed (apt-get install {pkg})"));
        }
    }
    if problems.is_empty() {
        // Prove that namespaces really work (a container may forbid them even for root).
        let probe = format!("atm-{}-probe", std::process::id());
        let out = Command::new("ip").args(["netns", "add", &probe]).output();
        match out {
            Ok(o) if o.status.success() => {
                let _ = Command::new("ip").args(["netns", "del", &probe]).output();
            }
            Ok(o) => problems.push(format!(
                "`ip netns add` failed: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            )),
            Err(e) => problems.push(format!("cannot run `ip`: {e}")),
        }
    }
    assert!(
        problems.is_empty(),
        "\n\n*** NETWORK-NAMESPACE SUITE CANNOT RUN ON THIS MACHINE ***\n{}\n\
         These scenarios are required (CI runs them as root after `scripts/setup.sh --test`);\n\
         they fail instead of skipping so a broken environment is never mistaken for a pass.\n",
        problems
            .iter()
            .map(|p| format!("  - {p}"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

fn which(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin"].iter().map(PathBuf::from))
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}

/// Serialises the scenarios: each one starts several processes, and running them one at a
/// time keeps a 2-core machine responsive (and timings meaningful).
pub fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// Namespaces of every live topology in this process, for the Ctrl-C / SIGTERM handler.
static LIVE: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Once per process: sweep namespaces left by dead runs and install the interrupt handler.
fn init_once() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        sweep_stale();
        // ctrlc runs the handler on its own thread (not in signal context), so it may
        // run commands. A second handler registration elsewhere would fail; ignore that.
        let _ = ctrlc::set_handler(|| {
            let names: Vec<String> = LIVE.lock().map(|l| l.clone()).unwrap_or_default();
            eprintln!(
                "netns harness: interrupted, removing {} namespaces",
                names.len()
            );
            for ns in names.iter().rev() {
                remove_namespace(ns);
            }
            std::process::exit(130);
        });
    });
}

/// Removes `atm-<pid>-…` namespaces whose owning process no longer exists.
fn sweep_stale() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        let Some(rest) = name.strip_prefix("atm-") else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            eprintln!("netns harness: removing stale namespace {name} (owner pid {pid} is gone)");
            remove_namespace(name);
        }
    }
}

/// Kills whatever still runs inside `ns` (only processes this harness started can be
/// there), then deletes the namespace, which also destroys its veths and bridges.
fn remove_namespace(ns: &str) {
    if let Ok(out) = Command::new("ip").args(["netns", "pids", ns]).output() {
        for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            if let Ok(pid) = pid.parse::<i32>() {
                // SAFETY: plain syscall on a pid listed as living in our namespace.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
    let _ = Command::new("ip")
        .args(["netns", "del", ns])
        .stderr(Stdio::null())
        .status();
}

/// Runs `ip ARGS`, panicking with its stderr when it fails (topology setup must not half-work).
fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "`ip {}` failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
}

/// Options of a topology.
#[derive(Debug, Clone)]
pub struct TopologyBuilder {
    scenario: String,
    port_forward: bool,
    udp_forward: bool,
    host_symmetric_nat: bool,
    host_cgnat: bool,
    relay_tls: bool,
    miniupnpd: Option<MiniUpnpd>,
}

/// What the home router's miniupnpd serves ([`TopologyBuilder::miniupnpd`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MiniUpnpd {
    /// UPnP IGD (SSDP + SOAP).
    pub upnp: bool,
    /// NAT-PMP and PCP (one switch in miniupnpd, `enable_natpmp`).
    pub nat_pmp_pcp: bool,
}

impl TopologyBuilder {
    /// A topology for `scenario` (a short name that ends up in the namespace names).
    pub fn new(scenario: &str) -> TopologyBuilder {
        TopologyBuilder {
            scenario: scenario.to_string(),
            port_forward: false,
            udp_forward: false,
            host_symmetric_nat: false,
            host_cgnat: false,
            relay_tls: false,
            miniupnpd: None,
        }
    }

    /// Makes the home router a port-mapping gateway: WAN [`UPNP_WAN_IP`], the nftables
    /// tables miniupnpd expects, and [`Topology::start_miniupnpd`] to run the daemon. No
    /// manual port forward (leave [`port_forward`](Self::port_forward) off).
    pub fn miniupnpd(mut self, serve: MiniUpnpd) -> Self {
        self.miniupnpd = Some(serve);
        self
    }

    /// With [`port_forward`](Self::port_forward): also forward udp 11451 (the host's
    /// WebRTC socket) to the host.
    pub fn udp_forward(mut self, on: bool) -> Self {
        self.udp_forward = on;
        self
    }

    /// Makes the home router a symmetric NAT: masquerade with random source ports
    /// (`masquerade random`), so each destination sees another mapping.
    pub fn host_symmetric_nat(mut self, on: bool) -> Self {
        self.host_symmetric_nat = on;
        self
    }

    /// Gives the relay TLS with a certificate for 203.0.113.20 made by this test
    /// ([`TestCert`]): the relay URL becomes `wss://`, hosts trust it through
    /// `ATMOSPHERE_RELAY_CA`, browsers started by [`Topology::browser`] through its SPKI hash.
    pub fn relay_tls(mut self, on: bool) -> Self {
        self.relay_tls = on;
        self
    }

    /// Adds the home router's port forward: tcp 11451 on its WAN address → the host.
    pub fn port_forward(mut self, on: bool) -> Self {
        self.port_forward = on;
        self
    }

    /// Puts the home router behind a carrier-grade NAT (its WAN gets 100.64.0.2/10).
    pub fn host_behind_cgnat(mut self, on: bool) -> Self {
        self.host_cgnat = on;
        self
    }

    /// Creates the namespaces, links, addresses, routes and NAT rules.
    pub fn build(self) -> Topology {
        preflight();
        init_once();
        static SEQ: AtomicUsize = AtomicUsize::new(0);
        let seq = SEQ.fetch_add(1, Ordering::Relaxed);
        let prefix = format!("atm-{}-{}-{}", std::process::id(), seq, self.scenario);
        let dir = tempfile::Builder::new()
            .prefix("atm-netns-")
            .tempdir()
            .expect("tempdir");
        let mut topo = Topology {
            prefix,
            namespaces: BTreeMap::new(),
            procs: Vec::new(),
            relay_cert: None,
            dir,
            nat: HomeNat {
                tcp_forward: self.port_forward,
                udp_forward: self.port_forward && self.udp_forward,
                random_ports: self.host_symmetric_nat,
            },
            host_cgnat: self.host_cgnat,
            miniupnpd: self.miniupnpd,
        };
        if self.relay_tls {
            topo.relay_cert = Some(TestCert::generate(topo.dir(), RELAY_IP));
        }
        let mut nodes = vec![
            Node::Internet,
            Node::HomeRouter,
            Node::HomeHost,
            Node::HomePhone,
        ];
        if self.host_cgnat {
            nodes.push(Node::Cgnat);
        }
        nodes.extend([Node::CellRouter, Node::Phone]);
        for node in nodes {
            topo.add_namespace(node);
        }
        topo.wire();
        topo
    }
}

/// What a home router does besides masquerading: port forwards and port randomisation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HomeNat {
    /// DNAT tcp 11451 on the WAN address → the host.
    pub tcp_forward: bool,
    /// DNAT udp 11451 on the WAN address → the host.
    pub udp_forward: bool,
    /// `masquerade random`: a symmetric (endpoint-dependent) NAT.
    pub random_ports: bool,
}

/// nftables rules of a consumer/carrier NAT router: masquerade everything leaving through
/// `wan` (with random ports when `nat.random_ports`: a symmetric NAT), drop unsolicited
/// inbound traffic (so an unforwarded port black-holes, as on real routers), and with
/// `forward = Some((wan_ip, "lan_ip:port"))` DNAT port forwards of that port on the WAN
/// address to the LAN machine, tcp and/or udp as `nat` says.
pub fn nat_rules(wan: &str, forward: Option<(&str, &str)>, nat: HomeNat) -> String {
    let mut dnat = String::new();
    if let Some((wan_ip, target)) = forward {
        let port = target.rsplit(':').next().unwrap_or("0");
        for (on, proto) in [(nat.tcp_forward, "tcp"), (nat.udp_forward, "udp")] {
            if on {
                dnat.push_str(&format!(
                    "iifname \"{wan}\" ip daddr {wan_ip} {proto} dport {port} dnat to {target}\n    "
                ));
            }
        }
    }
    let masquerade = if nat.random_ports {
        "masquerade random"
    } else {
        "masquerade"
    };
    format!(
        r#"table ip atm_nat {{
  chain prerouting {{
    type nat hook prerouting priority dstnat; policy accept;
    {dnat}
  }}
  chain postrouting {{
    type nat hook postrouting priority srcnat; policy accept;
    oifname "{wan}" {masquerade}
  }}
}}
table ip atm_filter {{
  chain input {{
    type filter hook input priority filter; policy accept;
    iifname "{wan}" ct state established,related accept
    iifname "{wan}" drop
  }}
  chain forward {{
    type filter hook forward priority filter; policy accept;
    iifname "{wan}" ct state established,related accept
    iifname "{wan}" ct status dnat accept
    iifname "{wan}" drop
  }}
}}
"#
    )
}

/// nftables of a home router that runs miniupnpd: the tables and chains Debian's nftables
/// build expects by default (`table inet filter`, chains `miniupnpd`,
/// `prerouting_miniupnpd`, `postrouting_miniupnpd`; its own `nft_init.sh` does not make a
/// ruleset this daemon can use), masquerade out of `wan`, and the same consumer firewall as
/// [`nat_rules`]: unsolicited inbound is dropped unless a mapping's rule in `miniupnpd`
/// accepts it.
pub fn miniupnpd_router_rules(wan: &str) -> String {
    format!(
        r#"table inet filter {{
  chain miniupnpd {{
  }}
  chain prerouting_miniupnpd {{
  }}
  chain postrouting_miniupnpd {{
  }}
  chain input {{
    type filter hook input priority filter; policy accept;
    iifname "{wan}" ct state established,related accept
    iifname "{wan}" drop
  }}
  chain forward {{
    type filter hook forward priority filter; policy accept;
    iifname "{wan}" ct state established,related accept
    iifname "{wan}" jump miniupnpd
    iifname "{wan}" drop
  }}
  chain prerouting {{
    type nat hook prerouting priority dstnat; policy accept;
    jump prerouting_miniupnpd
  }}
  chain postrouting {{
    type nat hook postrouting priority srcnat; policy accept;
    jump postrouting_miniupnpd
    oifname "{wan}" masquerade
  }}
}}
"#
    )
}

/// A self-signed certificate for one IP address, made by the test (rcgen): PEM files for
/// the relay (`--tls-cert`/`--tls-key`) and for hosts (`ATMOSPHERE_RELAY_CA`), and the
/// base64 SHA-256 of its public key for Chromium's `--ignore-certificate-errors-spki-list`,
/// which trusts exactly this key and nothing else. Nothing in the product skips a check.
#[derive(Debug, Clone)]
pub struct TestCert {
    pub cert_pem: PathBuf,
    pub key_pem: PathBuf,
    pub spki_sha256_b64: String,
}

impl TestCert {
    /// Generates a certificate for `ip` into `dir`.
    pub fn generate(dir: &Path, ip: &str) -> TestCert {
        use sha2::Digest;
        let ck = rcgen::generate_simple_self_signed(vec![ip.to_string()])
            .expect("generate a test certificate");
        let cert_pem = dir.join("relay-cert.pem");
        let key_pem = dir.join("relay-key.pem");
        std::fs::write(&cert_pem, ck.cert.pem()).unwrap();
        std::fs::write(&key_pem, ck.key_pair.serialize_pem()).unwrap();
        let spki = sha2::Sha256::digest(ck.key_pair.public_key_der());
        TestCert {
            cert_pem,
            key_pem,
            spki_sha256_b64: data_encoding::BASE64.encode(&spki),
        }
    }
}

/// A hyper connector that opens every TCP connection from inside namespace `ns` (through
/// [`in_netns`], which checks it got there): the socket belongs to that namespace for its
/// whole life, so the test talks to a chromedriver that listens on the namespace's
/// loopback. Only IP-literal URLs (nothing is resolved).
#[derive(Debug, Clone)]
pub struct NetnsConnector {
    ns: String,
}

impl NetnsConnector {
    /// Dials inside `ns`.
    pub fn new(ns: &str) -> NetnsConnector {
        NetnsConnector { ns: ns.to_string() }
    }
}

type ConnectFuture = std::pin::Pin<
    Box<
        dyn std::future::Future<
                Output = std::io::Result<hyper_util::rt::TokioIo<tokio::net::TcpStream>>,
            > + Send,
    >,
>;

impl tower_service::Service<http::Uri> for NetnsConnector {
    type Response = hyper_util::rt::TokioIo<tokio::net::TcpStream>;
    type Error = std::io::Error;
    type Future = ConnectFuture;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let ns = self.ns.clone();
        Box::pin(async move {
            let host = uri.host().unwrap_or_default().trim_matches(['[', ']']);
            let ip: std::net::IpAddr = host.parse().map_err(|_| {
                std::io::Error::other(format!("NetnsConnector dials IP literals only: {uri}"))
            })?;
            let addr = std::net::SocketAddr::new(ip, uri.port_u16().unwrap_or(80));
            let stream = tokio::task::spawn_blocking(move || {
                in_netns(&ns, || {
                    std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))
                })
            })
            .await
            .map_err(std::io::Error::other)???;
            stream.set_nonblocking(true)?;
            Ok(hyper_util::rt::TokioIo::new(
                tokio::net::TcpStream::from_std(stream)?,
            ))
        })
    }
}

/// Handle of a process started inside a namespace (owned by the [`Topology`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcId(usize);

struct NsProc {
    child: Child,
    what: String,
    log: PathBuf,
}

/// A built topology. Dropping it kills every process and removes every namespace.
pub struct Topology {
    prefix: String,
    namespaces: BTreeMap<Node, String>,
    procs: Vec<NsProc>,
    dir: tempfile::TempDir,
    nat: HomeNat,
    host_cgnat: bool,
    /// The home router runs miniupnpd (WAN [`UPNP_WAN_IP`]).
    miniupnpd: Option<MiniUpnpd>,
    /// The relay's certificate with `relay_tls`.
    relay_cert: Option<TestCert>,
}

impl Topology {
    /// Name of the namespace that plays `node` (panics if the topology has no such node).
    pub fn ns(&self, node: Node) -> &str {
        self.namespaces
            .get(&node)
            .unwrap_or_else(|| panic!("topology has no {node:?}"))
    }

    /// Scratch directory for logs and data dirs (removed on drop).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Whether the home router forwards tcp 11451 to the host.
    pub fn has_port_forward(&self) -> bool {
        self.nat.tcp_forward
    }

    /// The relay's test certificate, when the topology was built with `relay_tls`.
    pub fn relay_cert(&self) -> Option<&TestCert> {
        self.relay_cert.as_ref()
    }

    /// The relay's URL as hosts are given it: `wss://203.0.113.20:8080` with TLS, else
    /// [`Topology::relay_url`].
    pub fn relay_base(&self) -> String {
        match self.relay_cert {
            Some(_) => format!("wss://{RELAY_IP}:{RELAY_PORT}"),
            None => Topology::relay_url(),
        }
    }

    /// The host's expected public address: the home router's WAN, or the carrier NAT's
    /// outside address when the host is behind CGNAT.
    pub fn host_public_ip(&self) -> &'static str {
        if self.miniupnpd.is_some() {
            UPNP_WAN_IP
        } else if self.host_cgnat {
            CGNAT_OUTSIDE_IP
        } else {
            HOME_WAN_IP
        }
    }

    fn add_namespace(&mut self, node: Node) {
        let name = format!("{}-{}", self.prefix, node.role());
        ip(&["netns", "add", &name]);
        LIVE.lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(name.clone());
        self.namespaces.insert(node, name.clone());
        ip(&["-n", &name, "link", "set", "lo", "up"]);
        // No IPv6: keeps router solicitations and DAD chatter out of the picture.
        self.sysctl(node, "net/ipv6/conf/all/disable_ipv6", "1");
        self.sysctl(node, "net/ipv6/conf/default/disable_ipv6", "1");
    }

    /// Writes a sysctl inside the node's namespace (through the guard, like everything).
    fn sysctl(&self, node: Node, key: &str, value: &str) {
        let script = format!("echo {value} > /proc/sys/{key}");
        let out = self
            .command(node, Path::new("sh"), &["-c", &script])
            .output()
            .expect("sysctl");
        assert!(
            out.status.success(),
            "sysctl {key} in {node:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// A veth pair with one end in each namespace (never in the root namespace).
    fn veth(&self, a: Node, a_if: &str, b: Node, b_if: &str) {
        let (na, nb) = (self.ns(a).to_string(), self.ns(b).to_string());
        ip(&[
            "-n", &na, "link", "add", a_if, "type", "veth", "peer", "name", b_if, "netns", &nb,
        ]);
        ip(&["-n", &na, "link", "set", a_if, "up"]);
        ip(&["-n", &nb, "link", "set", b_if, "up"]);
    }

    fn bridge(&self, node: Node, br: &str, ports: &[&str]) {
        let n = self.ns(node).to_string();
        ip(&["-n", &n, "link", "add", br, "type", "bridge"]);
        ip(&["-n", &n, "link", "set", br, "up"]);
        for p in ports {
            ip(&["-n", &n, "link", "set", p, "master", br]);
        }
    }

    fn addr(&self, node: Node, cidr: &str, dev: &str) {
        ip(&["-n", self.ns(node), "addr", "add", cidr, "dev", dev]);
    }

    fn route(&self, node: Node, args: &[&str]) {
        let mut a = vec!["-n", self.ns(node), "route", "add"];
        a.extend_from_slice(args);
        ip(&a);
    }

    /// Applies nftables `rules` (an `nft -f` script) inside `node`, e.g. to cut a path
    /// mid-session; panics with nft's words if they are refused.
    pub fn nft(&self, node: Node, rules: &str) {
        let path = self.dir().join(format!("{}.nft", node.role()));
        std::fs::write(&path, rules).unwrap();
        let out = self
            .command(node, Path::new("nft"), &["-f", path.to_str().unwrap()])
            .output()
            .expect("run nft");
        assert!(
            out.status.success(),
            "nft in {node:?} failed: {}\nrules:\n{rules}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Links, addresses, routes, forwarding and NAT for every node.
    fn wire(&mut self) {
        use Node::*;
        // The internet: one bridge; servers are addresses on the bridge itself.
        self.veth(CellRouter, "wan", Internet, "cr");
        if self.host_cgnat {
            // home-router wan ↔ cgnat in; cgnat out ↔ internet.
            self.veth(HomeRouter, "wan", Cgnat, "in");
            self.veth(Cgnat, "out", Internet, "cg");
            self.bridge(Internet, "br0", &["cg", "cr"]);
        } else {
            self.veth(HomeRouter, "wan", Internet, "hr");
            self.bridge(Internet, "br0", &["hr", "cr"]);
        }
        for cidr in [
            "198.51.100.1/24",
            "203.0.113.1/24",
            "203.0.113.10/24",
            "203.0.113.20/24",
        ] {
            self.addr(Internet, cidr, "br0");
        }
        // Like the real internet: private and shared-address destinations go nowhere,
        // silently (a blackhole route drops without an ICMP error).
        for dst in [
            "10.0.0.0/8",
            "172.16.0.0/12",
            "192.168.0.0/16",
            "100.64.0.0/10",
        ] {
            self.route(Internet, &["blackhole", dst]);
        }

        // Home LAN: the router bridges two ports, one per device.
        self.veth(HomeRouter, "p-host", HomeHost, "eth0");
        self.veth(HomeRouter, "p-phone", HomePhone, "eth0");
        self.bridge(HomeRouter, "lan", &["p-host", "p-phone"]);
        self.addr(HomeRouter, "192.168.1.1/24", "lan");
        self.addr(HomeHost, &format!("{HOST_IP}/24"), "eth0");
        self.addr(HomePhone, &format!("{HOME_PHONE_IP}/24"), "eth0");
        self.route(HomeHost, &["default", "via", "192.168.1.1"]);
        self.route(HomePhone, &["default", "via", "192.168.1.1"]);
        let home_wan = if self.host_cgnat {
            self.addr(HomeRouter, &format!("{CGNAT_HOME_WAN_IP}/10"), "wan");
            self.route(HomeRouter, &["default", "via", "100.64.0.1"]);
            self.addr(Cgnat, "100.64.0.1/10", "in");
            self.addr(Cgnat, &format!("{CGNAT_OUTSIDE_IP}/24"), "out");
            self.route(Cgnat, &["default", "via", "198.51.100.1"]);
            self.sysctl(Cgnat, "net/ipv4/ip_forward", "1");
            self.nft(Cgnat, &nat_rules("out", None, HomeNat::default()));
            CGNAT_HOME_WAN_IP
        } else if self.miniupnpd.is_some() {
            // The internet routes the unreserved WAN net between its links (the phone's
            // carrier reaches it through 198.51.100.1).
            self.addr(Internet, &format!("{UPNP_INET_IP}/24"), "br0");
            self.sysctl(Internet, "net/ipv4/ip_forward", "1");
            self.addr(HomeRouter, &format!("{UPNP_WAN_IP}/24"), "wan");
            self.route(HomeRouter, &["default", "via", UPNP_INET_IP]);
            UPNP_WAN_IP
        } else {
            self.addr(HomeRouter, &format!("{HOME_WAN_IP}/24"), "wan");
            self.route(HomeRouter, &["default", "via", "198.51.100.1"]);
            HOME_WAN_IP
        };
        self.sysctl(HomeRouter, "net/ipv4/ip_forward", "1");
        if self.miniupnpd.is_some() {
            self.nft(HomeRouter, &miniupnpd_router_rules("wan"));
        }
        let forward = (self.nat.tcp_forward || self.nat.udp_forward)
            .then(|| (home_wan, format!("{HOST_IP}:{HOST_PORT}")));
        if self.miniupnpd.is_none() {
            self.nft(
                HomeRouter,
                &nat_rules(
                    "wan",
                    forward.as_ref().map(|(w, t)| (*w, t.as_str())),
                    self.nat,
                ),
            );
        }

        // Cellular: carrier NAT in front of the phone.
        self.veth(CellRouter, "lan", Phone, "eth0");
        self.addr(CellRouter, &format!("{CELL_WAN_IP}/24"), "wan");
        self.addr(CellRouter, "10.20.0.1/24", "lan");
        self.route(CellRouter, &["default", "via", "198.51.100.1"]);
        self.addr(Phone, &format!("{PHONE_IP}/24"), "eth0");
        self.route(Phone, &["default", "via", "10.20.0.1"]);
        self.sysctl(CellRouter, "net/ipv4/ip_forward", "1");
        self.nft(CellRouter, &nat_rules("wan", None, HomeNat::default()));
    }

    /// `ip netns exec NS sh -c GUARD guard NS PROGRAM ARGS…` — the only way anything starts.
    fn command(&self, node: Node, program: &Path, args: &[&str]) -> Command {
        let ns = self.ns(node);
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns, "sh", "-c", GUARD, "netns-guard", ns])
            .arg(program)
            .args(args);
        cmd.stdin(Stdio::null());
        cmd
    }

    /// A command for the `atmosphere` binary in `node`, with STUN pinned to the simulated
    /// STUN server (never the public defaults) and no inherited relay or data-dir setting.
    fn atmosphere(&self, node: Node, args: &[&str]) -> Command {
        let mut cmd = self.command(node, &crate::bin_path(), args);
        // Nothing from the caller's environment may redirect a process (a relay URL, an
        // advertised address, a device file): the scenario passes everything as flags.
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("ATMOSPHERE_") {
                cmd.env_remove(k);
            }
        }
        cmd.env("ATMOSPHERE_STUN_SERVERS", STUN_ADDR)
            .env("HOME", self.dir())
            .env("XDG_DATA_HOME", self.dir().join("xdg-data"))
            .env("XDG_CONFIG_HOME", self.dir().join("xdg-config"))
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            );
        cmd
    }

    /// Starts a long-running command with stdout+stderr appended to a log file.
    fn spawn_logged(&mut self, mut cmd: Command, what: &str) -> ProcId {
        let log = self
            .dir()
            .join(format!("{}-{}.log", what, self.procs.len()));
        let out = std::fs::File::create(&log).unwrap();
        cmd.stdout(out.try_clone().unwrap()).stderr(out);
        self.register(cmd, what, log, false).0
    }

    /// Spawns and records the child; with `pipe_stdout` its stdout is handed back.
    fn register(
        &mut self,
        mut cmd: Command,
        what: &str,
        log: PathBuf,
        pipe_stdout: bool,
    ) -> (ProcId, Option<std::process::ChildStdout>) {
        if pipe_stdout {
            cmd.stdout(Stdio::piped());
        }
        // SAFETY: prctl is async-signal-safe; the child dies with the test thread that
        // started it even if this process is killed without running Drop.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {what}: {e}"));
        let stdout = child.stdout.take();
        self.procs.push(NsProc {
            child,
            what: what.to_string(),
            log,
        });
        (ProcId(self.procs.len() - 1), stdout)
    }

    /// Everything process `id` wrote to its log so far.
    pub fn output(&self, id: ProcId) -> String {
        std::fs::read_to_string(&self.procs[id.0].log).unwrap_or_default()
    }

    /// Kills process `id` (SIGKILL) and reaps it.
    pub fn kill(&mut self, id: ProcId) {
        let p = &mut self.procs[id.0];
        let _ = p.child.kill();
        let _ = p.child.wait();
    }

    /// Stops process `id` with SIGTERM (a clean shutdown), SIGKILL after 3 s.
    pub fn terminate(&mut self, id: ProcId) {
        let p = &mut self.procs[id.0];
        // SAFETY: signalling our own child.
        unsafe { libc::kill(p.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = p.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = p.child.kill();
        let _ = p.child.wait();
    }

    /// Panics with the log if process `id` has already exited (e.g. refused by the guard).
    pub fn assert_running(&mut self, id: ProcId) {
        let p = &mut self.procs[id.0];
        if let Ok(Some(st)) = p.child.try_wait() {
            panic!(
                "{} exited early ({st}):\n{}",
                p.what,
                std::fs::read_to_string(&p.log).unwrap_or_default()
            );
        }
    }

    /// Runs `program args` in `node` to completion (killed after `deadline`).
    pub fn run(&self, node: Node, program: &Path, args: &[&str], deadline: Duration) -> RunOutput {
        run_with_deadline(self.command(node, program, args), deadline)
    }

    /// Proves the guard works: starts `true` in `exec_in` while claiming it is `claimed`.
    /// When the two differ the guard must refuse with exit [`GUARD_EXIT`] before `true` runs.
    pub fn guard_probe(&self, exec_in: Node, claimed: Node) -> RunOutput {
        let mut cmd = Command::new("ip");
        cmd.args([
            "netns",
            "exec",
            self.ns(exec_in),
            "sh",
            "-c",
            GUARD,
            "netns-guard",
            self.ns(claimed),
            "true",
        ]);
        cmd.stdin(Stdio::null());
        run_with_deadline(cmd, Duration::from_secs(5))
    }

    /// Runs `atmosphere args` in `node` to completion (killed after `deadline`).
    pub fn run_atmosphere(&self, node: Node, args: &[&str], deadline: Duration) -> RunOutput {
        run_with_deadline(self.atmosphere(node, args), deadline)
    }

    /// Starts coturn as a STUN-only server on 203.0.113.10:3478 in the internet namespace
    /// and waits until it answers a binding request.
    pub fn start_stun(&mut self) -> ProcId {
        let db = self.dir().join("turndb");
        let pid = self.dir().join("turnserver.pid");
        let args = [
            "-n",
            "--stun-only",
            "--no-cli",
            "--no-tls",
            "--no-dtls",
            "--no-auth",
            "--listening-ip",
            STUN_IP,
            "--listening-port",
            "3478",
            "--log-file",
            "stdout",
            "--simple-log",
            "--db",
            db.to_str().unwrap(),
            "--pidfile",
            pid.to_str().unwrap(),
        ];
        let cmd = self.command(Node::Internet, Path::new("turnserver"), &args);
        let id = self.spawn_logged(cmd, "coturn");
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(10) {
            self.assert_running(id);
            if self.output(id).contains("203.0.113.10") && udp_listening(self, Node::Internet, 3478)
            {
                return id;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("coturn did not start:\n{}", self.output(id));
    }

    /// Starts `atmosphere relay` on 203.0.113.20:8080 (TLS with the topology's test
    /// certificate when built with `relay_tls`), serving the web bundle at `/join` when one
    /// is built and answering STUN on udp 3478/3479 (its defaults); waits until it accepts
    /// connections (`/health` without TLS).
    pub fn start_relay(&mut self) -> ProcId {
        let port = RELAY_PORT.to_string();
        let mut args: Vec<String> = ["relay", "--port", &port, "--bind", RELAY_IP]
            .iter()
            .map(|s| s.to_string())
            .collect();
        if let Some(c) = &self.relay_cert {
            args.extend([
                "--tls-cert".into(),
                c.cert_pem.display().to_string(),
                "--tls-key".into(),
                c.key_pem.display().to_string(),
            ]);
        }
        let dist = web_dist_dir();
        if dist.join("index.html").is_file() {
            args.extend(["--web-dir".into(), dist.display().to_string()]);
        }
        let argv: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
        let cmd = self.atmosphere(Node::Internet, &argv);
        let id = self.spawn_logged(cmd, "relay");
        let url = format!("http://{RELAY_IP}:{RELAY_PORT}/health");
        let tls = self.relay_cert.is_some();
        let addr: std::net::SocketAddr = format!("{RELAY_IP}:{RELAY_PORT}").parse().unwrap();
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(20) {
            self.assert_running(id);
            let up = if tls {
                in_netns(self.ns(Node::Internet), || {
                    std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok()
                })
                .unwrap_or(false)
            } else {
                matches!(
                    http(self.ns(Node::Internet), "GET", &url, None, None),
                    Ok((200, _))
                )
            };
            if up {
                return id;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("relay did not come up on {url}:\n{}", self.output(id));
    }

    /// Starts miniupnpd (Debian's nftables build) on the home router with what the builder's
    /// [`MiniUpnpd`] asked for, LAN side `lan`, WAN `wan`, its lease file in the scratch
    /// dir ([`Topology::miniupnpd_leases`]); waits until it listens.
    pub fn start_miniupnpd(&mut self) -> ProcId {
        let serve = self
            .miniupnpd
            .expect("start_miniupnpd needs TopologyBuilder::miniupnpd");
        let yes = |on: bool| if on { "yes" } else { "no" };
        let conf = self.dir().join("miniupnpd.conf");
        let leases = self.dir().join("miniupnpd.leases");
        std::fs::write(
            &conf,
            format!(
                "ext_ifname=wan\nlistening_ip=lan\nhttp_port=0\n\
                 enable_upnp={}\nenable_natpmp={}\nsecure_mode=yes\n\
                 lease_file={}\nuuid=3d3cec3a-8cf0-11e0-98ee-001a6bd2d07b\n\
                 allow 1024-65535 192.168.1.0/24 1024-65535\ndeny 0-65535 0.0.0.0/0 0-65535\n",
                yes(serve.upnp),
                yes(serve.nat_pmp_pcp),
                leases.display()
            ),
        )
        .unwrap();
        let cmd = self.command(
            Node::HomeRouter,
            Path::new("/usr/sbin/miniupnpd"),
            &["-f", conf.to_str().unwrap(), "-d"],
        );
        let id = self.spawn_logged(cmd, "miniupnpd");
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(10) {
            self.assert_running(id);
            let out = self.output(id);
            let ready = (!serve.upnp || out.contains("HTTP listening"))
                && (!serve.nat_pmp_pcp || out.contains("Listening for NAT-PMP"));
            if ready {
                return id;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("miniupnpd did not start:\n{}", self.output(id));
    }

    /// miniupnpd's lease file: one line per mapping it holds (`TCP:11451:192.168.1.10:…`).
    pub fn miniupnpd_leases(&self) -> String {
        std::fs::read_to_string(self.dir().join("miniupnpd.leases")).unwrap_or_default()
    }

    /// The home host's LAN address changes (a new DHCP lease): `new_ip` replaces
    /// [`HOST_IP`] on its interface and the default route is put back through it.
    pub fn move_host_address(&self, new_ip: &str) {
        let ns = self.ns(Node::HomeHost);
        ip(&[
            "-n",
            ns,
            "addr",
            "del",
            &format!("{HOST_IP}/24"),
            "dev",
            "eth0",
        ]);
        ip(&[
            "-n",
            ns,
            "addr",
            "add",
            &format!("{new_ip}/24"),
            "dev",
            "eth0",
        ]);
        ip(&[
            "-n",
            ns,
            "route",
            "replace",
            "default",
            "via",
            "192.168.1.1",
        ]);
    }

    /// The home router's `inet filter` table (miniupnpd's rules live in it).
    pub fn router_ruleset(&self) -> String {
        let out = self.run(
            Node::HomeRouter,
            Path::new("nft"),
            &["list", "table", "inet", "filter"],
            Duration::from_secs(5),
        );
        out.stdout
    }

    /// `ws://203.0.113.20:8080`, the URL the host is given with `--relay-url`.
    pub fn relay_url() -> String {
        format!("ws://{RELAY_IP}:{RELAY_PORT}")
    }

    /// Starts `atmosphere serve` in home-host with its own data dir, STUN pointed at the
    /// simulated coturn and, with `relay`, `--relay-url ws://203.0.113.20:8080`; waits for
    /// `/health`.
    pub fn start_host(&mut self, relay: bool) -> NsHost {
        self.start_host_with(relay, &[])
    }

    /// [`Topology::start_host`] with `extra` serve flags.
    pub fn start_host_with(&mut self, relay: bool, extra: &[&str]) -> NsHost {
        let data_dir = self.dir().join("host-data");
        std::fs::create_dir_all(&data_dir).unwrap();
        let mut args: Vec<String> = [
            "serve",
            "--port",
            &HOST_PORT.to_string(),
            "--data-dir",
            data_dir.to_str().unwrap(),
            "--mesh-name",
            "Home Mesh",
            "--stun-server",
            STUN_ADDR,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if relay {
            args.extend(["--relay-url".to_string(), self.relay_base()]);
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut host = NsHost {
            proc: ProcId(usize::MAX),
            data_dir,
            args,
            relay,
        };
        self.launch_host(&mut host);
        host
    }

    fn launch_host(&mut self, host: &mut NsHost) {
        let args: Vec<&str> = host.args.iter().map(|s| s.as_str()).collect();
        let mut cmd = self.atmosphere(Node::HomeHost, &args);
        // Port mapping is on for hosts inside the namespaces (SSDP and gateway requests stay
        // on the simulated home LAN); loopback suites turn it off.
        cmd.env("ATMOSPHERE_NO_PORT_MAPPING", "0");
        if let Some(c) = &self.relay_cert {
            cmd.env("ATMOSPHERE_RELAY_CA", &c.cert_pem);
        }
        host.proc = self.spawn_logged(cmd, "serve");
        let url = format!("http://127.0.0.1:{HOST_PORT}/health");
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(20) {
            self.assert_running(host.proc);
            if matches!(
                http(self.ns(Node::HomeHost), "GET", &url, None, None),
                Ok((200, _))
            ) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("host did not come up on {url}:\n{}", self.output(host.proc));
    }

    /// Stops the host (SIGTERM) and starts it again with the same flags and data dir.
    pub fn restart_host(&mut self, host: &mut NsHost) {
        self.terminate(host.proc);
        self.launch_host(host);
    }

    /// `GET path` on the host's API with the admin secret, parsed as JSON.
    pub fn host_api(&self, host: &NsHost, path: &str) -> Value {
        let url = format!("http://127.0.0.1:{HOST_PORT}{path}");
        let secret = host.admin_secret();
        match http(self.ns(Node::HomeHost), "GET", &url, Some(&secret), None) {
            Ok((200, body)) => serde_json::from_str(&body)
                .unwrap_or_else(|e| panic!("GET {path}: not JSON ({e}): {body}")),
            other => panic!(
                "GET {path} failed: {other:?}\nhost log:\n{}",
                self.output(host.proc)
            ),
        }
    }

    /// Waits until the host's discovery finished (`updated_at` set) and, when it has a
    /// relay configured, its control link is `connected` and the relay's dial-back has
    /// judged the public endpoint, if there is one (`reachability.checked_at` set), so
    /// whether invites carry `public` does not depend on timing. Returns `GET /api/network`.
    pub fn wait_host_ready(&self, host: &NsHost, deadline: Duration) -> Value {
        let start = Instant::now();
        loop {
            let net = self.host_api(host, "/api/network");
            let discovered = !net["updated_at"].is_null();
            let relay_ok = !host.relay || net["relay"]["state"] == "connected";
            // No public endpoint (e.g. no STUN answer): nothing to check, nothing to wait for.
            let checked = !host.relay
                || net["endpoints"]["public"].is_null()
                || !net["reachability"]["checked_at"].is_null();
            if discovered && relay_ok && checked {
                return net;
            }
            if start.elapsed() > deadline {
                panic!(
                    "host not ready after {deadline:?} (discovery done: {discovered}, relay connected: {relay_ok}, \
                     reachability checked: {checked}):\n\
                     /api/network = {net:#}\nhost log:\n{}",
                    self.output(host.proc)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Mints an invite with `atmosphere token --json` run inside home-host (the CLI reads
    /// the admin secret from the data dir and POSTs to the running host).
    pub fn mint(&self, host: &NsHost, uses: Option<u32>) -> Invite {
        let server = format!("http://127.0.0.1:{HOST_PORT}");
        let mut args = vec![
            "token",
            "--json",
            "--data-dir",
            host.data_dir.to_str().unwrap(),
            "--server",
            &server,
        ];
        let uses_s = uses.map(|u| u.to_string());
        if let Some(u) = &uses_s {
            args.extend(["--uses", u]);
        }
        let out = self.run_atmosphere(Node::HomeHost, &args, Duration::from_secs(20));
        assert!(
            out.success(),
            "`atmosphere token` failed ({:?}):\nstdout: {}\nstderr: {}",
            out.status,
            out.stdout,
            out.stderr
        );
        let raw: Value = serde_json::from_str(out.stdout.trim()).unwrap_or_else(|e| {
            panic!(
                "`atmosphere token --json` printed no JSON ({e}): {}",
                out.stdout
            )
        });
        let token: TokenResponse = serde_json::from_value(raw.clone()).unwrap_or_else(|e| {
            panic!("token JSON does not match the API contract ({e}): {raw:#}")
        });
        Invite { token, raw }
    }

    /// Runs `atmosphere join --once --json EXTRA… LINK` in `node`; each stdout line is
    /// timestamped as it arrives. Killed after `deadline`.
    pub fn join(
        &mut self,
        node: Node,
        link: &str,
        extra: &[&str],
        deadline: Duration,
    ) -> JoinOutcome {
        let mut args = vec!["join", "--once", "--json"];
        args.extend_from_slice(extra);
        args.push(link);
        let mut cmd = self.atmosphere(node, &args);
        let err_log = self.dir().join(format!("join-{}.err", self.procs.len()));
        cmd.stderr(std::fs::File::create(&err_log).unwrap());
        let start = Instant::now();
        let (id, stdout) = self.register(cmd, "join", err_log.clone(), true);
        let events = Arc::new(Mutex::new(Vec::new()));
        let reader = spawn_event_reader(stdout.unwrap(), start, events.clone());
        let status = loop {
            if let Ok(Some(st)) = self.procs[id.0].child.try_wait() {
                break Some(st);
            }
            if start.elapsed() > deadline {
                self.kill(id);
                break None;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let wall = start.elapsed();
        let _ = reader.join();
        let events = events.lock().unwrap().clone();
        JoinOutcome {
            status,
            events,
            stderr: std::fs::read_to_string(&err_log).unwrap_or_default(),
            wall,
        }
    }

    /// Starts `atmosphere join --json EXTRA… LINK` (no `--once`: it stays a member) in the
    /// background; its events are collected as they arrive.
    pub fn join_background(&mut self, node: Node, link: &str, extra: &[&str]) -> BackgroundJoin {
        let mut args = vec!["join", "--json"];
        args.extend_from_slice(extra);
        args.push(link);
        let mut cmd = self.atmosphere(node, &args);
        let err_log = self.dir().join(format!("join-bg-{}.err", self.procs.len()));
        cmd.stderr(std::fs::File::create(&err_log).unwrap());
        let start = Instant::now();
        // Without --once, join reads lines to send from stdin: keep it open (and silent).
        cmd.stdin(Stdio::piped());
        let (id, stdout) = self.register(cmd, "join (background)", err_log, true);
        let stdin = self.procs[id.0].child.stdin.take();
        let events = Arc::new(Mutex::new(Vec::new()));
        spawn_event_reader(stdout.unwrap(), start, events.clone());
        BackgroundJoin {
            id,
            events,
            start,
            _stdin: stdin,
        }
    }
}

impl Topology {
    /// Starts chromedriver and a headless Chromium inside `node` (through the guard, like
    /// every process) and opens a WebDriver session over a [`NetnsConnector`]. Chromium
    /// gets the TOOLCHAIN flags for namespaces: every host name resolves to nothing
    /// (`--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE <ip>` for each address of the
    /// topology a page may talk to, so no lookup leaves and navigation does not wait on DNS),
    /// mDNS hiding of local addresses stays ON, and with `relay_tls` it trusts exactly the
    /// relay's test key (`--ignore-certificate-errors-spki-list`).
    pub async fn browser(&mut self, node: Node, test: &str, screen: Screen) -> Browser {
        crate::browser::check_installed();
        // Each namespace has its own loopback: a fixed port cannot collide.
        const DRIVER_PORT: u16 = 9515;
        let driver_args = crate::browser::driver_args(DRIVER_PORT);
        let argv: Vec<&str> = driver_args.iter().map(|s| s.as_str()).collect();
        let mut cmd = self.command(node, Path::new(&crate::browser::chromedriver_bin()), &argv);
        let log = self.dir().join(format!("chromedriver-{}.log", node.role()));
        let f = std::fs::File::create(&log).unwrap();
        cmd.stdout(f.try_clone().unwrap()).stderr(f);
        // The driver is the browser's to stop; the namespace teardown kills what is left.
        let driver = cmd.spawn().expect("start chromedriver in the namespace");
        let ns = self.ns(node).to_string();
        // chromedriver refuses the harness's HTTP/1.0 requests: wait for its port instead.
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], DRIVER_PORT));
        let listening = || {
            in_netns(&ns, || {
                std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok()
            })
            .unwrap_or(false)
        };
        let start = Instant::now();
        while !listening() {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "chromedriver did not come up in {node:?}:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut args = vec![format!(
            "--host-resolver-rules=MAP * ~NOTFOUND , {}",
            [RELAY_IP, HOST_IP, HOME_WAN_IP, CGNAT_OUTSIDE_IP, STUN_IP]
                .iter()
                .map(|ip| format!("EXCLUDE {ip}"))
                .collect::<Vec<_>>()
                .join(" , ")
        )];
        if let Some(c) = &self.relay_cert {
            args.push(format!(
                "--ignore-certificate-errors-spki-list={}",
                c.spki_sha256_b64
            ));
        }
        Browser::open(
            test,
            screen,
            driver,
            &format!("http://127.0.0.1:{DRIVER_PORT}"),
            NetnsConnector::new(&ns),
            &args,
        )
        .await
    }
}

/// The web bundle's directory ([`crate::browser::web_dist`] without the panic).
fn web_dist_dir() -> PathBuf {
    std::env::var_os("ATMOSPHERE_WEB_DIST")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../dist"))
}

/// A host started by [`Topology::start_host`].
#[derive(Debug)]
pub struct NsHost {
    /// The `serve` process.
    pub proc: ProcId,
    /// Its data dir (SQLite, admin secret).
    pub data_dir: PathBuf,
    args: Vec<String>,
    relay: bool,
}

impl NsHost {
    /// The admin secret the host wrote into its data dir.
    pub fn admin_secret(&self) -> String {
        std::fs::read_to_string(self.data_dir.join("admin_secret"))
            .unwrap_or_else(|e| panic!("no admin_secret in {}: {e}", self.data_dir.display()))
            .trim()
            .to_string()
    }
}

/// A minted invite: the typed API answer plus the raw JSON (for fields beyond the type).
#[derive(Debug, Clone)]
pub struct Invite {
    pub token: TokenResponse,
    pub raw: Value,
}

/// Output of a command run to completion.
#[derive(Debug)]
pub struct RunOutput {
    /// `None` when it was killed at the deadline.
    pub status: Option<ExitStatus>,
    pub stdout: String,
    pub stderr: String,
}

impl RunOutput {
    /// Exited with code 0.
    pub fn success(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }
}

fn run_with_deadline(mut cmd: Command, deadline: Duration) -> RunOutput {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn command");
    let mut so = child.stdout.take().unwrap();
    let mut se = child.stderr.take().unwrap();
    let t_out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = so.read_to_string(&mut s);
        s
    });
    let t_err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = se.read_to_string(&mut s);
        s
    });
    let start = Instant::now();
    let status = loop {
        if let Ok(Some(st)) = child.try_wait() {
            break Some(st);
        }
        if start.elapsed() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    RunOutput {
        status,
        stdout: t_out.join().unwrap_or_default(),
        stderr: t_err.join().unwrap_or_default(),
    }
}

/// One JSON line of `atmosphere join --json`, with the time it arrived (since spawn).
#[derive(Debug, Clone)]
pub struct TimedEvent {
    pub at: Duration,
    pub json: Value,
}

fn spawn_event_reader(
    stdout: std::process::ChildStdout,
    start: Instant,
    events: Arc<Mutex<Vec<TimedEvent>>>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let at = start.elapsed();
            let json = serde_json::from_str(&line).unwrap_or_else(|_| Value::String(line.clone()));
            events.lock().unwrap().push(TimedEvent { at, json });
        }
    })
}

/// Result of one `atmosphere join --once --json`.
#[derive(Debug)]
pub struct JoinOutcome {
    /// `None` when the harness killed it at the deadline.
    pub status: Option<ExitStatus>,
    pub events: Vec<TimedEvent>,
    pub stderr: String,
    /// Wall-clock time from spawn to exit.
    pub wall: Duration,
}

impl JoinOutcome {
    /// The exit code (`None` if killed).
    pub fn code(&self) -> Option<i32> {
        self.status.and_then(|s| s.code())
    }

    /// The `connected` event, if any.
    pub fn connected(&self) -> Option<&TimedEvent> {
        self.events.iter().find(|e| e.json["event"] == "connected")
    }

    /// The first event of kind `event` for `path`.
    pub fn find(&self, event: &str, path: &str) -> Option<&TimedEvent> {
        self.events
            .iter()
            .find(|e| e.json["event"] == event && e.json["path"] == path)
    }

    /// Every event, one per line, for assertion messages.
    pub fn transcript(&self) -> String {
        let mut s = String::new();
        for e in &self.events {
            s.push_str(&format!("  +{:>5} ms  {}\n", e.at.as_millis(), e.json));
        }
        s.push_str(&format!(
            "  exit: {:?} after {} ms\n  stderr:\n{}",
            self.status,
            self.wall.as_millis(),
            self.stderr
        ));
        s
    }
}

/// A `join` running in the background.
pub struct BackgroundJoin {
    /// The process (owned by the topology).
    pub id: ProcId,
    events: Arc<Mutex<Vec<TimedEvent>>>,
    /// When the process started (the origin of every [`TimedEvent::at`]).
    pub start: Instant,
    _stdin: Option<std::process::ChildStdin>,
}

impl BackgroundJoin {
    /// Types one line into the member's stdin (`join` sends it to every member).
    pub fn send_line(&mut self, line: &str) {
        use std::io::Write;
        let stdin = self._stdin.as_mut().expect("stdin kept open");
        writeln!(stdin, "{line}").expect("write to join's stdin");
        stdin.flush().expect("flush join's stdin");
    }

    /// Events so far.
    pub fn events(&self) -> Vec<TimedEvent> {
        self.events.lock().unwrap().clone()
    }

    /// Every event so far, one per line, for assertion messages.
    pub fn transcript(&self) -> String {
        self.events()
            .iter()
            .map(|e| format!("  +{:>5} ms  {}\n", e.at.as_millis(), e.json))
            .collect()
    }

    /// The latest event matching `pred`, searched from the newest without copying the
    /// others (for benchmarks that print thousands of large messages).
    pub fn latest(&self, pred: impl Fn(&Value) -> bool) -> Option<TimedEvent> {
        let events = self.events.lock().unwrap();
        events.iter().rev().find(|e| pred(&e.json)).cloned()
    }

    /// How many events so far match `pred` (without copying them).
    pub fn count(&self, pred: impl Fn(&Value) -> bool) -> usize {
        let events = self.events.lock().unwrap();
        events.iter().filter(|e| pred(&e.json)).count()
    }

    /// Waits for the first event matching `pred`.
    pub fn wait_for(
        &self,
        deadline: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Option<TimedEvent> {
        let start = Instant::now();
        while start.elapsed() < deadline {
            if let Some(e) = self.events().into_iter().find(|e| pred(&e.json)) {
                return Some(e);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        for p in &mut self.procs {
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
        let mut live = LIVE.lock().unwrap_or_else(|e| e.into_inner());
        for ns in self.namespaces.values().rev() {
            remove_namespace(ns);
            live.retain(|n| n != ns);
        }
        if std::thread::panicking() || std::env::var_os("ATMOSPHERE_NETNS_KEEP_LOGS").is_some() {
            // Keep the logs of a failed scenario for a post-mortem.
            let kept = self.dir.path().to_path_buf();
            let _ = std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap()).keep();
            eprintln!("netns harness: logs kept in {}", kept.display());
        }
    }
}

/// Is something listening on UDP `port` inside `node`? (reads /proc/net/udp through the guard)
fn udp_listening(topo: &Topology, node: Node, port: u16) -> bool {
    let out = topo.run(
        node,
        Path::new("cat"),
        &["/proc/net/udp"],
        Duration::from_secs(5),
    );
    let needle = format!(":{port:04X} ");
    out.stdout.lines().skip(1).any(|l| {
        l.split_whitespace()
            .nth(1)
            .is_some_and(|a| format!("{a} ").ends_with(&needle))
    })
}

/// Runs `f` on a fresh thread that has joined namespace `ns` (and checked that it did).
/// Only that thread changes namespace; the rest of the test process stays where it is.
pub fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> std::io::Result<T> {
    std::thread::scope(|s| {
        s.spawn(|| {
            let path = format!("/run/netns/{ns}");
            let file = std::fs::File::open(&path)?;
            use std::os::fd::AsRawFd;
            // SAFETY: setns on a valid namespace fd; affects only this thread.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
            let want = std::fs::metadata(&path)?;
            let got = std::fs::metadata("/proc/thread-self/ns/net")?;
            if want.ino() != got.ino() || want.dev() != got.dev() {
                return Err(std::io::Error::other(format!(
                    "setns into {ns} did not take effect"
                )));
            }
            Ok(f())
        })
        .join()
        .map_err(|_| std::io::Error::other("netns thread panicked"))?
    })
}

/// A minimal HTTP/1.0 request made from inside namespace `ns` (HTTP/1.0 so the answer is
/// never chunked and ends at EOF). Returns the status code and body.
pub fn http(
    ns: &str,
    method: &str,
    url: &str,
    bearer: Option<&str>,
    body: Option<&str>,
) -> std::io::Result<(u16, String)> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| std::io::Error::other("only http:// URLs"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let addr: std::net::SocketAddr = authority.parse().map_err(std::io::Error::other)?;
    let mut req = format!("{method} {path} HTTP/1.0\r\nHost: {authority}\r\n");
    if let Some(b) = bearer {
        req.push_str(&format!("Authorization: Bearer {b}\r\n"));
    }
    let body = body.unwrap_or("");
    if !body.is_empty() {
        req.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    req.push_str("\r\n");
    req.push_str(body);
    in_netns(ns, move || -> std::io::Result<(u16, String)> {
        let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.write_all(req.as_bytes())?;
        let mut buf = Vec::new();
        s.take(4 * 1024 * 1024).read_to_end(&mut buf)?;
        let text = String::from_utf8_lossy(&buf).to_string();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let code = head
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("bad HTTP answer: {head}")))?;
        Ok((code, body.to_string()))
    })?
}
