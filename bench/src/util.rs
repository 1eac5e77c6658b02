//! Small measuring tools shared by the benches: order statistics, process RSS, the file
//! limit, the machine description, and WebSocket dialing from a chosen loopback source
//! address (one source address has only ~28k ephemeral ports towards one destination, so the
//! relay scale bench spreads its members over 127.0.0.2, 127.0.0.3, …).

use anyhow::{anyhow, bail, Context, Result};
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// A client WebSocket over plain TCP (what the benches dial on loopback).
pub type ClientWs = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

/// The `p`-th percentile (0..=100) of `v` by nearest rank; `NaN` for an empty sample.
pub fn percentile(v: &[f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let rank = ((p / 100.0) * s.len() as f64).ceil() as usize;
    s[rank.clamp(1, s.len()) - 1]
}

/// The median of `v` (mean of the two middle values for an even count).
pub fn median(v: &[f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

/// Resident set size of process `pid` in KiB (`VmRSS` of `/proc/PID/status`).
pub fn rss_kib(pid: u32) -> Result<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    for line in s.lines() {
        if let Some(rest) = line.strip_prefix("VmRSS:") {
            let kib = rest.trim().trim_end_matches("kB").trim();
            return kib.parse().context("parsing VmRSS");
        }
    }
    bail!("no VmRSS in /proc/{pid}/status")
}

/// CPU time (user + system) process `pid` has used so far, in clock ticks (`/proc/PID/stat`).
pub fn cpu_ticks(pid: u32) -> Result<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // The command name (field 2) may hold spaces; the fields after its `)` are plain.
    let rest = s.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after `)`.
    match (f.get(11), f.get(12)) {
        (Some(u), Some(s)) => Ok(u.parse::<u64>()? + s.parse::<u64>()?),
        _ => bail!("short /proc/{pid}/stat"),
    }
}

/// Waits until process `pid` is quiet: at most 5 % of one core for two consecutive 1 s
/// windows (its work, e.g. a presence fan-out, is done; keepalive pings to thousands of
/// members stay under that), or `limit` passes. Returns the wait.
pub async fn wait_quiet(pid: u32, limit: Duration) -> Result<Duration> {
    let started = Instant::now();
    // Clock ticks are 1/100 s on Linux: 5 % of one second is 5 ticks.
    let mut quiet = 0;
    let mut last = cpu_ticks(pid)?;
    while quiet < 2 && started.elapsed() < limit {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = cpu_ticks(pid)?;
        quiet = if now - last <= 5 { quiet + 1 } else { 0 };
        last = now;
    }
    Ok(started.elapsed())
}

/// CPU time the calling thread has used.
pub fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime only writes the timespec we pass.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Pins the calling thread to the last CPU it may run on; returns that CPU.
pub fn pin_to_one_cpu() -> Result<usize> {
    // SAFETY: the cpu_set_t is a plain bit set we own; the calls only read/write it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Err(anyhow!("sched_getaffinity failed"));
        }
        let cpu = (0..libc::CPU_SETSIZE as usize)
            .rev()
            .find(|&c| libc::CPU_ISSET(c, &set))
            .context("no CPU in this thread's affinity mask")?;
        let mut one: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut one);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &one) != 0 {
            return Err(anyhow!("sched_setaffinity failed"));
        }
        Ok(cpu)
    }
}

/// Raises this process's open-file limit (soft and, when allowed, hard) to at least `want`;
/// child processes (the relay under test) inherit it. Returns the soft limit in effect.
pub fn raise_nofile(want: u64) -> u64 {
    // SAFETY: getrlimit/setrlimit only read/write the struct we pass.
    unsafe {
        let mut r = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) != 0 {
            return 0;
        }
        if r.rlim_cur >= want {
            return r.rlim_cur;
        }
        let raised = libc::rlimit {
            rlim_cur: want,
            rlim_max: r.rlim_max.max(want),
        };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
            return want;
        }
        // Not privileged: the soft limit can still go up to the hard one.
        let soft = libc::rlimit {
            rlim_cur: r.rlim_max,
            rlim_max: r.rlim_max,
        };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &soft) == 0 {
            return r.rlim_max;
        }
        r.rlim_cur
    }
}

/// What the results were measured on.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Machine {
    pub cpu: String,
    pub cores: usize,
    pub kernel: String,
    pub mem_gib: f64,
    pub load_at_start: String,
}

impl Machine {
    /// Reads `/proc/cpuinfo`, `/proc/sys/kernel/osrelease`, `/proc/meminfo`, `/proc/loadavg`.
    pub fn probe() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, m)| m.trim().to_string())
            .unwrap_or_else(|| "unknown CPU".into());
        let cores = cpuinfo
            .lines()
            .filter(|l| l.starts_with("processor"))
            .count()
            .max(1);
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_string())
            .unwrap_or_default();
        let mem_kib: f64 = std::fs::read_to_string("/proc/meminfo")
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|l| l.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0.0);
        Machine {
            cpu,
            cores,
            kernel,
            mem_gib: mem_kib / 1024.0 / 1024.0,
            load_at_start: loadavg(),
        }
    }
}

/// The 1/5/15-minute load averages, e.g. `"3.91 4.20 3.70"`.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// Dials `url` (a `ws://127.0.0.1:PORT/…` URL) from source address `src` (any 127.x.y.z)
/// with TCP_NODELAY, under a 30 s deadline.
pub async fn dial_from(src: Ipv4Addr, url: &str) -> Result<ClientWs> {
    dial_from_with(src, url, WebSocketConfig::default()).await
}

/// [`dial_from`] with a WebSocket configuration (e.g. small buffers for thousands of
/// in-process clients).
pub async fn dial_from_with(src: Ipv4Addr, url: &str, config: WebSocketConfig) -> Result<ClientWs> {
    let u: url_lite::Parts = url_lite::parse(url)?;
    let fut = async {
        let sock = tokio::net::TcpSocket::new_v4()?;
        sock.bind(SocketAddr::from((src, 0)))?;
        let tcp = sock.connect(u.addr).await?;
        tcp.set_nodelay(true)?;
        let (ws, _) = tokio_tungstenite::client_async_with_config(url, tcp, Some(config)).await?;
        anyhow::Ok(ws)
    };
    tokio::time::timeout(Duration::from_secs(30), fut)
        .await
        .with_context(|| format!("dialing {url} timed out"))?
        .with_context(|| format!("dialing {url} from {src}"))
}

/// Dials `url` from 127.0.0.1.
pub async fn dial(url: &str) -> Result<ClientWs> {
    dial_from(Ipv4Addr::LOCALHOST, url).await
}

/// The socket address of a `ws://IP:PORT/…` URL (loopback literals only: the benches never
/// resolve names).
mod url_lite {
    use anyhow::{anyhow, Result};
    use std::net::SocketAddr;

    pub struct Parts {
        pub addr: SocketAddr,
    }

    pub fn parse(url: &str) -> Result<Parts> {
        let rest = url
            .strip_prefix("ws://")
            .ok_or_else(|| anyhow!("bench dials ws:// URLs only: {url}"))?;
        let hostport = rest.split('/').next().unwrap_or_default();
        let addr: SocketAddr = hostport
            .parse()
            .map_err(|_| anyhow!("bench dials IP:PORT URLs only: {url}"))?;
        if !addr.ip().is_loopback() {
            return Err(anyhow!("network safety: {url} is not loopback"));
        }
        Ok(Parts { addr })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_by_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 50.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
    }
}
