//! # atmosphere-tests
//!
//! Support for the end-to-end tests in `tests/tests/`: they run the real `atmosphere`
//! binary (host, relay, join) as processes on 127.0.0.1 with real SQLite files in temporary
//! data dirs. Nothing here talks to anything but loopback; hosts always start with
//! `ATMOSPHERE_STUN_SERVERS=none` unless a test passes its own loopback STUN server.

pub mod browser;
pub mod capture;
pub mod coturn;
pub mod fake_host;
pub mod netns;

use atmosphere_shared::api::{TokenRequest, TokenResponse};
use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Path of the `atmosphere` binary under test: `$ATMOSPHERE_BIN`, or `target/debug/atmosphere`
/// (the README's test command builds it before running the tests).
pub fn bin_path() -> PathBuf {
    if let Some(p) = std::env::var_os("ATMOSPHERE_BIN") {
        return PathBuf::from(p);
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf();
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let p = target.join("debug").join("atmosphere");
    assert!(
        p.exists(),
        "{} is missing: run `cargo build -p atmosphere-server` first (the README's test command does)",
        p.display()
    );
    p
}

/// A port that was free a moment ago on both 127.0.0.1 and ::1 (chromedriver binds both
/// and exits when the IPv6 one is taken).
pub fn free_dual_stack_port() -> u16 {
    loop {
        let port = free_port();
        match StdListener::bind(("::1", port)) {
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => continue,
            // Free, or no IPv6 on this machine (then chromedriver binds IPv4 only).
            _ => return port,
        }
    }
}

/// A port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A `ws://` URL on which nothing listens: connecting fails fast with "connection refused".
pub fn refused_url() -> String {
    format!("ws://127.0.0.1:{}", free_port())
}

/// A TCP listener that accepts connections and never answers (a black-holed path: the
/// WebSocket handshake hangs until the client's deadline).
pub struct BlackHole {
    addr: SocketAddr,
    _task: tokio::task::JoinHandle<()>,
}

impl BlackHole {
    /// Starts the listener on 127.0.0.1 (needs a tokio runtime).
    pub async fn start() -> BlackHole {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = l.accept().await {
                held.push(s);
            }
        });
        BlackHole { addr, _task: task }
    }

    /// `ws://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("ws://{}", self.addr)
    }
}

/// A child process that is killed when dropped, with its stderr captured to a file.
pub struct Proc {
    pub child: Child,
    pub log: PathBuf,
}

impl Proc {
    /// Spawns `atmosphere ARGS` with extra env, stderr/stdout to `log`.
    pub fn spawn(args: &[&str], env: &[(&str, &str)], log: PathBuf) -> Proc {
        let out = std::fs::File::create(&log).unwrap();
        let err = out.try_clone().unwrap();
        let mut cmd = Command::new(bin_path());
        cmd.args(args)
            .env("ATMOSPHERE_STUN_SERVERS", "none")
            // No direct path (UDP 11451) unless a test asks with --udp-port: hosts of
            // parallel tests would fight over the port.
            .env("ATMOSPHERE_UDP_PORT", "0")
            // Network safety: no SSDP multicast or gateway requests from a loopback test
            // (port mapping runs only inside the namespace suites).
            .env("ATMOSPHERE_NO_PORT_MAPPING", "1")
            .env_remove("ATMOSPHERE_RELAY_URL")
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawn atmosphere");
        Proc { child, log }
    }

    /// The process's output so far (for assertion messages).
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Kills the process and waits for it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Polls `GET url` until it answers 200 or `deadline` passes.
pub async fn wait_http_ok(url: &str, deadline: Duration) -> bool {
    let client = reqwest::Client::new();
    let start = Instant::now();
    while start.elapsed() < deadline {
        if let Ok(r) = client.get(url).timeout(Duration::from_secs(1)).send().await {
            if r.status().is_success() {
                return true;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// A running `atmosphere serve` on 127.0.0.1 with its own data dir.
pub struct Host {
    pub port: u16,
    pub data_dir: PathBuf,
    pub proc: Proc,
    extra_args: Vec<String>,
    env: Vec<(String, String)>,
    _tmp: Option<tempfile::TempDir>,
}

impl Host {
    /// Starts a host with a fresh data dir and no STUN.
    pub async fn start() -> Host {
        Host::start_with(&[], &[]).await
    }

    /// Starts a host with extra `serve` flags and env vars (e.g. a loopback STUN server).
    pub async fn start_with(extra_args: &[&str], env: &[(&str, &str)]) -> Host {
        let tmp = tempfile::tempdir().unwrap();
        let data_dir = tmp.path().join("data");
        let mut h = Host::launch(
            free_port(),
            data_dir,
            extra_args.iter().map(|s| s.to_string()).collect(),
            env.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
        .await;
        h._tmp = Some(tmp);
        h
    }

    async fn launch(
        port: u16,
        data_dir: PathBuf,
        extra_args: Vec<String>,
        env: Vec<(String, String)>,
    ) -> Host {
        std::fs::create_dir_all(&data_dir).unwrap();
        // Private whatever the umask: the host refuses a data dir others can write to.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&data_dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        }
        let port_s = port.to_string();
        let dd = data_dir.to_str().unwrap().to_string();
        let mut args: Vec<&str> = vec![
            "serve",
            "--port",
            &port_s,
            "--bind",
            "127.0.0.1",
            "--data-dir",
            &dd,
        ];
        // The advertised local endpoint must be dialable from the tests: loopback.
        if !extra_args.iter().any(|a| a == "--local-ip") {
            args.extend(["--local-ip", "127.0.0.1"]);
        }
        args.extend(extra_args.iter().map(|s| s.as_str()));
        let envs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        static STARTS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = STARTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let log = data_dir.join(format!("serve-{n}.log"));
        let proc = Proc::spawn(&args, &envs, log);
        let url = format!("http://127.0.0.1:{port}/health");
        let up = wait_http_ok(&url, Duration::from_secs(20)).await;
        assert!(up, "host did not come up on {url}:\n{}", proc.output());
        Host {
            port,
            data_dir,
            proc,
            extra_args,
            env,
            _tmp: None,
        }
    }

    /// Stops the host and starts it again on the same port and data dir.
    pub async fn restart(mut self) -> Host {
        self.proc.kill();
        let tmp = self._tmp.take();
        let mut h = Host::launch(
            self.port,
            self.data_dir.clone(),
            self.extra_args.clone(),
            self.env.clone(),
        )
        .await;
        h._tmp = tmp;
        h
    }

    /// `http://127.0.0.1:PORT`.
    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// `ws://127.0.0.1:PORT`.
    pub fn ws_url(&self) -> String {
        format!("ws://127.0.0.1:{}", self.port)
    }

    /// The admin secret the host wrote into its data dir.
    pub fn admin_secret(&self) -> String {
        std::fs::read_to_string(self.data_dir.join("admin_secret"))
            .unwrap()
            .trim()
            .to_string()
    }

    /// Mints an invite through the API with the admin bearer token.
    pub async fn mint(&self, req: &TokenRequest) -> TokenResponse {
        let r = reqwest::Client::new()
            .post(format!("{}/api/mesh/token", self.base()))
            .bearer_auth(self.admin_secret())
            .json(req)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "mint failed: {}", r.status());
        r.json().await.unwrap()
    }

    /// A request to `path` on this host with the admin bearer secret.
    pub fn admin(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        reqwest::Client::new()
            .request(method, format!("{}{}", self.base(), path))
            .bearer_auth(self.admin_secret())
    }

    /// Waits until the host's relay link says `connected` (its invites then carry the relay
    /// endpoint); panics with the link's state after `within`.
    pub async fn wait_relay_connected(&self, within: Duration) {
        let start = Instant::now();
        loop {
            let net = self.get_json("/api/network").await;
            if net["relay"]["state"] == "connected" {
                return;
            }
            assert!(
                start.elapsed() < within,
                "relay link not connected within {within:?}: {}",
                net["relay"]
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `GET path` with admin auth, parsed as JSON.
    pub async fn get_json(&self, path: &str) -> serde_json::Value {
        self.admin(reqwest::Method::GET, path)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }
}

// ---------------------------------------------------------------------------------------
// Relay support (owned by the relay work, issue 4): a running `atmosphere relay` process.
// ---------------------------------------------------------------------------------------

/// A running `atmosphere relay` on 127.0.0.1 (plain `ws://`, or `wss://` with a cert).
pub struct Relay {
    pub port: u16,
    pub proc: Proc,
    args: Vec<String>,
    tls: bool,
    _tmp: tempfile::TempDir,
}

impl Relay {
    /// Starts a relay on a free port with extra flags (e.g. `--max-conns-per-ip 4`).
    pub async fn start(extra_args: &[&str]) -> Relay {
        Relay::start_on(free_port(), extra_args).await
    }

    /// Starts a relay whose STUN responder is on free loopback ports; returns it and its
    /// STUN address `127.0.0.1:PORT` (for a host's `--stun-server` / `--relay-stun`).
    pub async fn start_with_stun() -> (Relay, String) {
        let (stun, alt) = (coturn::free_udp_port(), coturn::free_udp_port());
        let relay = Relay::start(&[
            "--stun-port",
            &stun.to_string(),
            "--stun-alt-port",
            &alt.to_string(),
        ])
        .await;
        (relay, format!("127.0.0.1:{stun}"))
    }

    /// Starts a relay on `port` (used to restart one on the same port).
    pub async fn start_on(port: u16, extra_args: &[&str]) -> Relay {
        let tmp = tempfile::tempdir().unwrap();
        let args: Vec<String> = extra_args.iter().map(|s| s.to_string()).collect();
        let tls = args.iter().any(|a| a == "--tls-cert");
        let proc = Relay::launch(port, &args, tmp.path());
        let r = Relay {
            port,
            proc,
            args,
            tls,
            _tmp: tmp,
        };
        r.wait_up().await;
        r
    }

    fn launch(port: u16, args: &[String], dir: &Path) -> Proc {
        static STARTS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = STARTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let port_s = port.to_string();
        let mut all: Vec<&str> = vec!["relay", "--port", &port_s, "--bind", "127.0.0.1"];
        // Relays of parallel tests would all want UDP 3478: STUN is off unless a test asks
        // for it with its own free ports.
        if !args.iter().any(|a| a == "--stun-port") {
            all.extend(["--stun-port", "0"]);
        }
        all.extend(args.iter().map(|s| s.as_str()));
        Proc::spawn(&all, &[], dir.join(format!("relay-{n}.log")))
    }

    async fn wait_up(&self) {
        // Plain HTTP health check only works without TLS; with TLS wait for the port.
        let start = Instant::now();
        let up = if self.tls {
            loop {
                if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                    break true;
                }
                if start.elapsed() > Duration::from_secs(20) {
                    break false;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        } else {
            wait_http_ok(
                &format!("{}/health", self.http_base()),
                Duration::from_secs(20),
            )
            .await
        };
        assert!(
            up,
            "relay did not come up on port {}:\n{}",
            self.port,
            self.proc.output()
        );
    }

    /// Kills the relay and starts a new process on the same port with the same flags.
    pub async fn restart(&mut self) {
        self.proc.kill();
        // The port is free again once the process is gone; rebinding may race a moment.
        let mut tries = 0;
        loop {
            self.proc = Relay::launch(self.port, &self.args, self._tmp.path());
            tokio::time::sleep(Duration::from_millis(200)).await;
            if self.proc.child.try_wait().ok().flatten().is_none() || tries >= 20 {
                break;
            }
            tries += 1;
        }
        self.wait_up().await;
    }

    /// `http://127.0.0.1:PORT`.
    pub fn http_base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// `ws://127.0.0.1:PORT` (or `wss://localhost:PORT` with TLS): the `--relay-url`.
    pub fn url(&self) -> String {
        if self.tls {
            format!("wss://localhost:{}", self.port)
        } else {
            format!("ws://127.0.0.1:{}", self.port)
        }
    }

    /// `GET /health` as JSON (plain relays only).
    pub async fn health(&self) -> serde_json::Value {
        reqwest::get(format!("{}/health", self.http_base()))
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// `GET /metrics` text (plain relays only).
    pub async fn metrics(&self) -> String {
        reqwest::get(format!("{}/metrics", self.http_base()))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }
}
