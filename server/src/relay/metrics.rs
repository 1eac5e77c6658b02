//! Relay counters: plain atomics (no registry crate needed for a dozen series), rendered as
//! Prometheus text for `GET /metrics` and summarised for `GET /health`.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// What kind of refusal ended a connection: the `reason` label of
/// `atmosphere_relay_refusals_total`, and the close code sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalKind {
    /// 4400: malformed mesh id, control message or path.
    BadRequest,
    /// 4401: signature or data-socket secret did not verify.
    BadSignature,
    /// 4403: key does not own the mesh id, or another key holds it.
    MeshMismatch,
    /// 4404: no host registered (member) or unknown session (data socket).
    HostOffline,
    /// 4408: handshake, host-accept, host-answer or idle deadline passed.
    Timeout,
    /// 4413: frame over the size limit.
    TooLarge,
    /// 4429: per-IP connection, per-mesh session or per-source unanswered limit.
    TooMany,
}

impl RefusalKind {
    const ALL: [RefusalKind; 7] = [
        RefusalKind::BadRequest,
        RefusalKind::BadSignature,
        RefusalKind::MeshMismatch,
        RefusalKind::HostOffline,
        RefusalKind::Timeout,
        RefusalKind::TooLarge,
        RefusalKind::TooMany,
    ];

    /// Label value used in metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            RefusalKind::BadRequest => "bad_request",
            RefusalKind::BadSignature => "bad_signature",
            RefusalKind::MeshMismatch => "mesh_mismatch",
            RefusalKind::HostOffline => "host_offline",
            RefusalKind::Timeout => "timeout",
            RefusalKind::TooLarge => "too_large",
            RefusalKind::TooMany => "too_many",
        }
    }

    /// The WebSocket close code sent with this refusal.
    pub fn close_code(self) -> u16 {
        use atmosphere_shared::relay_proto::close;
        match self {
            RefusalKind::BadRequest => close::BAD_REQUEST,
            RefusalKind::BadSignature => close::BAD_SIGNATURE,
            RefusalKind::MeshMismatch => close::MESH_MISMATCH,
            RefusalKind::HostOffline => close::HOST_OFFLINE,
            RefusalKind::Timeout => close::TIMEOUT,
            RefusalKind::TooLarge => close::TOO_LARGE,
            RefusalKind::TooMany => close::TOO_MANY,
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Why the STUN responder dropped a datagram without answering: the `reason` label of
/// `atmosphere_relay_stun_dropped_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StunDrop {
    /// Larger than the request limit.
    Oversize,
    /// Not a well-formed STUN Binding request.
    Malformed,
    /// The source is over its answer rate.
    RateLimited,
}

impl StunDrop {
    const ALL: [StunDrop; 3] = [
        StunDrop::Oversize,
        StunDrop::Malformed,
        StunDrop::RateLimited,
    ];

    fn as_str(self) -> &'static str {
        match self {
            StunDrop::Oversize => "oversize",
            StunDrop::Malformed => "malformed",
            StunDrop::RateLimited => "rate_limited",
        }
    }
}

/// Direction of forwarded traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Member → host.
    ClientToHost,
    /// Host → member.
    HostToClient,
}

impl Direction {
    fn as_str(self) -> &'static str {
        match self {
            Direction::ClientToHost => "client_to_host",
            Direction::HostToClient => "host_to_client",
        }
    }
}

/// Kind of WebSocket connection, for the connection gauges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnKind {
    /// A host control socket (`/mesh/{id}/host`).
    Host,
    /// A member socket (`/mesh/{id}`).
    Client,
    /// A host data socket (`/mesh/{id}/session/{sid}`).
    Data,
}

impl ConnKind {
    const ALL: [ConnKind; 3] = [ConnKind::Host, ConnKind::Client, ConnKind::Data];
    pub(super) fn as_str(self) -> &'static str {
        match self {
            ConnKind::Host => "host",
            ConnKind::Client => "client",
            ConnKind::Data => "data",
        }
    }
}

/// All relay counters. Relaxed atomics: each number is independent and only read for display.
#[derive(Default)]
pub struct Metrics {
    conns: [AtomicU64; 3],
    conns_total: [AtomicU64; 3],
    /// Live sessions (waiting for the host or spliced).
    pub sessions: AtomicU64,
    sessions_total: AtomicU64,
    spliced_total: AtomicU64,
    bytes: [AtomicU64; 2],
    frames: [AtomicU64; 2],
    refusals: [AtomicU64; 7],
    registrations_total: AtomicU64,
    /// STUN answers sent from the port asked, and from the other port (change port).
    stun_answered: [AtomicU64; 2],
    stun_dropped: [AtomicU64; 3],
    /// Dial-backs by outcome: reachable, unreachable, rate limited (not dialed).
    dial_backs: [AtomicU64; 3],
}

/// The outcomes counted by `atmosphere_relay_dial_backs_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DialBackOutcome {
    Reachable,
    Unreachable,
    RateLimited,
}

impl DialBackOutcome {
    const LABELS: [&'static str; 3] = ["reachable", "unreachable", "rate_limited"];
}

impl Metrics {
    /// Counts a dial-back request by its outcome.
    pub fn dial_back(&self, outcome: DialBackOutcome) {
        self.dial_backs[outcome as usize].fetch_add(1, Relaxed);
    }

    /// Counts a refusal.
    pub fn refused(&self, r: RefusalKind) {
        self.refusals[r.index()].fetch_add(1, Relaxed);
    }

    /// Counts one forwarded frame of `len` payload bytes.
    pub fn forwarded(&self, d: Direction, len: usize) {
        let i = d as usize;
        self.frames[i].fetch_add(1, Relaxed);
        self.bytes[i].fetch_add(len as u64, Relaxed);
    }

    /// A WebSocket of `kind` opened; the returned guard counts it until dropped.
    pub fn conn_opened(self: &std::sync::Arc<Self>, kind: ConnKind) -> ConnGuard {
        self.conns[kind as usize].fetch_add(1, Relaxed);
        self.conns_total[kind as usize].fetch_add(1, Relaxed);
        ConnGuard {
            metrics: self.clone(),
            kind,
        }
    }

    /// A session slot was taken.
    pub fn session_started(&self) {
        self.sessions.fetch_add(1, Relaxed);
        self.sessions_total.fetch_add(1, Relaxed);
    }

    /// A session slot was released.
    pub fn session_ended(&self) {
        self.sessions.fetch_sub(1, Relaxed);
    }

    /// A session got its host data socket and is now spliced.
    pub fn session_spliced(&self) {
        self.spliced_total.fetch_add(1, Relaxed);
    }

    /// A host registered (or re-registered).
    pub fn registered(&self) {
        self.registrations_total.fetch_add(1, Relaxed);
    }

    /// The STUN responder answered a request (`changed_port`: from the other port).
    pub fn stun_answered(&self, changed_port: bool) {
        self.stun_answered[changed_port as usize].fetch_add(1, Relaxed);
    }

    /// The STUN responder dropped a datagram.
    pub fn stun_dropped(&self, why: StunDrop) {
        self.stun_dropped[why as usize].fetch_add(1, Relaxed);
    }

    /// Open WebSocket connections of every kind.
    pub fn connections(&self) -> u64 {
        self.conns.iter().map(|c| c.load(Relaxed)).sum()
    }

    /// Prometheus text exposition.
    pub fn render(&self, meshes: usize, uptime_secs: u64) -> String {
        let mut s = String::with_capacity(2048);
        let _ = writeln!(
            s,
            "# HELP atmosphere_relay_up_seconds Seconds since the relay started."
        );
        let _ = writeln!(s, "# TYPE atmosphere_relay_up_seconds gauge");
        let _ = writeln!(s, "atmosphere_relay_up_seconds {uptime_secs}");
        let _ = writeln!(
            s,
            "# HELP atmosphere_relay_meshes Meshes with a registered host."
        );
        let _ = writeln!(s, "# TYPE atmosphere_relay_meshes gauge");
        let _ = writeln!(s, "atmosphere_relay_meshes {meshes}");
        let _ = writeln!(
            s,
            "# HELP atmosphere_relay_connections Open WebSocket connections by kind."
        );
        let _ = writeln!(s, "# TYPE atmosphere_relay_connections gauge");
        for k in ConnKind::ALL {
            let _ = writeln!(
                s,
                "atmosphere_relay_connections{{kind=\"{}\"}} {}",
                k.as_str(),
                self.conns[k as usize].load(Relaxed)
            );
        }
        let _ = writeln!(
            s,
            "# HELP atmosphere_relay_connections_total WebSocket connections accepted by kind."
        );
        let _ = writeln!(s, "# TYPE atmosphere_relay_connections_total counter");
        for k in ConnKind::ALL {
            let _ = writeln!(
                s,
                "atmosphere_relay_connections_total{{kind=\"{}\"}} {}",
                k.as_str(),
                self.conns_total[k as usize].load(Relaxed)
            );
        }
        let _ = writeln!(
            s,
            "# HELP atmosphere_relay_sessions Live sessions (waiting for the host or spliced)."
        );
        let _ = writeln!(s, "# TYPE atmosphere_relay_sessions gauge");
        let _ = writeln!(
            s,
            "atmosphere_relay_sessions {}",
            self.sessions.load(Relaxed)
        );
        let _ = writeln!(
            s,
            "# HELP atmosphere_relay_sessions_total Sessions requested by members."
        );
        let _ = writeln!(s, "# TYPE atmosphere_relay_sessions_total counter");
        let _ = writeln!(
            s,
            "atmosphere_relay_sessions_total {}",
            self.sessions_total.load(Relaxed)
        );
        let _ = writeln!(s, "# HELP atmosphere_relay_sessions_spliced_total Sessions whose host dialed in and were spliced.");
        let _ = writeln!(s, "# TYPE atmosphere_relay_sessions_spliced_total counter");
        let _ = writeln!(
            s,
            "atmosphere_relay_sessions_spliced_total {}",
            self.spliced_total.load(Relaxed)
        );
        let _ = writeln!(
            s,
            "# HELP atmosphere_relay_registrations_total Successful host registrations."
        );
        let _ = writeln!(s, "# TYPE atmosphere_relay_registrations_total counter");
        let _ = writeln!(
            s,
            "atmosphere_relay_registrations_total {}",
            self.registrations_total.load(Relaxed)
        );
        for (name, arr, help) in [
            (
                "atmosphere_relay_forwarded_bytes_total",
                &self.bytes,
                "Payload bytes forwarded by direction.",
            ),
            (
                "atmosphere_relay_forwarded_frames_total",
                &self.frames,
                "Frames forwarded by direction.",
            ),
        ] {
            let _ = writeln!(s, "# HELP {name} {help}");
            let _ = writeln!(s, "# TYPE {name} counter");
            for d in [Direction::ClientToHost, Direction::HostToClient] {
                let _ = writeln!(
                    s,
                    "{name}{{direction=\"{}\"}} {}",
                    d.as_str(),
                    arr[d as usize].load(Relaxed)
                );
            }
        }
        let _ = writeln!(s, "# HELP atmosphere_relay_refusals_total Refused or failed connections by reason (close code).");
        let _ = writeln!(s, "# TYPE atmosphere_relay_refusals_total counter");
        for r in RefusalKind::ALL {
            let _ = writeln!(
                s,
                "atmosphere_relay_refusals_total{{reason=\"{}\",code=\"{}\"}} {}",
                r.as_str(),
                r.close_code(),
                self.refusals[r.index()].load(Relaxed)
            );
        }
        let _ = writeln!(s, "# HELP atmosphere_relay_dial_backs_total Dial-back requests of registered hosts, by outcome (rate_limited: not dialed).");
        let _ = writeln!(s, "# TYPE atmosphere_relay_dial_backs_total counter");
        for (i, result) in DialBackOutcome::LABELS.iter().enumerate() {
            let _ = writeln!(
                s,
                "atmosphere_relay_dial_backs_total{{result=\"{result}\"}} {}",
                self.dial_backs[i].load(Relaxed)
            );
        }
        let _ = writeln!(s, "# HELP atmosphere_relay_stun_answered_total STUN Binding requests answered, by the port the answer left from.");
        let _ = writeln!(s, "# TYPE atmosphere_relay_stun_answered_total counter");
        for (i, port) in ["same", "other"].iter().enumerate() {
            let _ = writeln!(
                s,
                "atmosphere_relay_stun_answered_total{{port=\"{port}\"}} {}",
                self.stun_answered[i].load(Relaxed)
            );
        }
        let _ = writeln!(s, "# HELP atmosphere_relay_stun_dropped_total STUN datagrams dropped without an answer, by reason.");
        let _ = writeln!(s, "# TYPE atmosphere_relay_stun_dropped_total counter");
        for d in StunDrop::ALL {
            let _ = writeln!(
                s,
                "atmosphere_relay_stun_dropped_total{{reason=\"{}\"}} {}",
                d.as_str(),
                self.stun_dropped[d as usize].load(Relaxed)
            );
        }
        s
    }
}

/// Counts one open connection of a kind until dropped.
pub struct ConnGuard {
    metrics: std::sync::Arc<Metrics>,
    kind: ConnKind,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.metrics.conns[self.kind as usize].fetch_sub(1, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn guards_and_render() {
        let m = Arc::new(Metrics::default());
        {
            let _g = m.conn_opened(ConnKind::Client);
            assert_eq!(m.connections(), 1);
        }
        assert_eq!(m.connections(), 0);
        m.refused(RefusalKind::TooMany);
        m.forwarded(Direction::HostToClient, 10);
        let t = m.render(2, 5);
        assert!(
            t.contains("atmosphere_relay_refusals_total{reason=\"too_many\",code=\"4429\"} 1"),
            "{t}"
        );
        assert!(
            t.contains("atmosphere_relay_forwarded_bytes_total{direction=\"host_to_client\"} 10"),
            "{t}"
        );
        assert!(t.contains("atmosphere_relay_meshes 2"), "{t}");
    }
}
