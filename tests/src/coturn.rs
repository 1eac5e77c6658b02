//! A real STUN server for the tests: Debian's coturn (`turnserver`) in STUN-only mode on
//! 127.0.0.1 (or ::1), on a free UDP port, killed when dropped. Nothing here leaves loopback.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running `turnserver --stun-only` on a loopback address.
pub struct Coturn {
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Coturn {
    /// Starts coturn on a free loopback UDP port and waits until it answers a Binding
    /// request. Panics with a clear message when `turnserver` is not installed or never
    /// answers.
    pub fn start() -> Coturn {
        Coturn::start_on(IpAddr::V4(Ipv4Addr::LOCALHOST))
    }

    /// Like [`Coturn::start`] on another loopback address (e.g. `::1` for IPv6 tests).
    pub fn start_on(ip: IpAddr) -> Coturn {
        assert!(
            ip.is_loopback(),
            "test STUN servers live on loopback only, not {ip}"
        );
        let mut last_log = String::new();
        // A free port can be taken between our check and coturn's bind: retry a few times.
        for _ in 0..5 {
            match Coturn::try_start(ip) {
                Ok(c) => return c,
                Err(log) => last_log = log,
            }
        }
        panic!("coturn did not answer STUN on {ip} after 5 tries; its last output:\n{last_log}");
    }

    fn try_start(ip: IpAddr) -> Result<Coturn, String> {
        let dir = tempfile::tempdir().unwrap();
        let port = free_udp_port_on(ip);
        let log = dir.path().join("turnserver.log");
        let out = std::fs::File::create(&log).unwrap();
        let err = out.try_clone().unwrap();
        let spawned = Command::new("turnserver")
            .args([
                // Ignore /etc/turnserver.conf (it may send logs to syslog or enable TLS).
                "-n",
                &format!("--listening-ip={ip}"),
                &format!("--listening-port={port}"),
                "--stun-only",
                "--no-cli",
                "--no-tls",
                "--no-dtls",
                "--no-tcp",
                // RFC 5780 wants a second address and port; a plain Binding server needs none.
                "--no-rfc5780",
                "--no-software-attribute",
                "--log-file=stdout",
                "--simple-log",
                &format!("--pidfile={}", dir.path().join("turnserver.pid").display()),
                &format!("--userdb={}", dir.path().join("turndb").display()),
            ])
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn();
        let child = match spawned {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
                "`turnserver` is not installed: the STUN tests need a real STUN server \
                 (Debian: `apt-get install -y coturn`)"
            ),
            Err(e) => panic!("cannot start turnserver: {e}"),
        };
        let mut c = Coturn {
            child,
            addr: SocketAddr::new(ip, port),
            log,
            _dir: dir,
        };
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(10) {
            if let Ok(Some(status)) = c.child.try_wait() {
                return Err(format!("turnserver exited with {status}:\n{}", c.output()));
            }
            if binding_answered(c.addr, Duration::from_millis(200)) {
                return Ok(c);
            }
        }
        Err(c.output())
    }

    /// `127.0.0.1:PORT` (or `[::1]:PORT`).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The value for `--stun-server` / `ATMOSPHERE_STUN_SERVERS`.
    pub fn server_arg(&self) -> String {
        self.addr.to_string()
    }

    /// The `stun_source` name Atmosphere gives this server: `stun:127.0.0.1:PORT`
    /// (`stun:[::1]:PORT` for IPv6).
    pub fn stun_source(&self) -> String {
        format!("stun:{}", self.addr)
    }

    /// What coturn printed so far (for assertion messages).
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Coturn {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A UDP port that was free a moment ago on 127.0.0.1.
pub fn free_udp_port() -> u16 {
    free_udp_port_on(IpAddr::V4(Ipv4Addr::LOCALHOST))
}

/// A UDP port that was free a moment ago on `ip`.
pub fn free_udp_port_on(ip: IpAddr) -> u16 {
    UdpSocket::bind(SocketAddr::new(ip, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Whether this machine has IPv6 loopback (`::1`); IPv6 tests skip without it.
pub fn has_ipv6_loopback() -> bool {
    UdpSocket::bind("[::1]:0").is_ok()
}

/// A loopback UDP address where a socket receives and never answers (a dead STUN server
/// that swallows requests); the socket lives as long as the returned guard.
pub fn silent_udp() -> (UdpSocket, SocketAddr) {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    let a = s.local_addr().unwrap();
    (s, a)
}

/// Readiness probe only: one STUN Binding request (RFC 5389 §6 header: type 0x0001, length
/// 0, magic cookie, 12-byte transaction id) and a check that a Binding success answer with
/// the same transaction id came back. The product's STUN client uses the stun-rs codec;
/// this harness stays dependency-free for a 20-byte readiness check.
fn binding_answered(addr: SocketAddr, wait: Duration) -> bool {
    let Ok(sock) = UdpSocket::bind(SocketAddr::new(addr.ip(), 0)) else {
        return false;
    };
    let _ = sock.set_read_timeout(Some(wait));
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let tid: [u8; 12] = (nanos ^ ((std::process::id() as u128) << 64)).to_be_bytes()[4..16]
        .try_into()
        .unwrap();
    let mut req = vec![0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42];
    req.extend_from_slice(&tid);
    if sock.send_to(&req, addr).is_err() {
        std::thread::sleep(wait);
        return false;
    }
    let mut buf = [0u8; 1500];
    match sock.recv_from(&mut buf) {
        Ok((n, _)) => n >= 20 && buf[0..2] == [0x01, 0x01] && buf[8..20] == tid,
        // "Connection refused" comes back at once before coturn binds: pace the retries.
        Err(_) => {
            std::thread::sleep(Duration::from_millis(50));
            false
        }
    }
}
