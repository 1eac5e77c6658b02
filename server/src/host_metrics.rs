//! The host's counters behind `GET /metrics` (Prometheus text exposition format, version
//! 0.0.4). The HTTP layer ([`crate::serve`]) and the session handler ([`crate::session`]) both
//! count into one [`HostMetrics`]; the relay has its own ([`crate::relay::metrics`]).
//!
//! Hand-rolled because the set is small and fixed: joins by path, refusals by error code,
//! sessions online, invites minted and HTTP requests by status class.

use atmosphere_shared::path::PathKind;
use atmosphere_shared::wire::ErrorCode;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Host-wide counters; shared by the HTTP layer and the session handler.
#[derive(Default)]
pub struct HostMetrics {
    joins: [AtomicU64; PathKind::ALL.len()],
    refusals: Mutex<BTreeMap<&'static str, u64>>,
    invites_minted: AtomicU64,
    http: Mutex<BTreeMap<&'static str, u64>>,
}

impl HostMetrics {
    /// A member joined on `path`.
    pub fn joined(&self, path: PathKind) {
        let i = PathKind::ALL.iter().position(|p| *p == path).unwrap_or(0);
        self.joins[i].fetch_add(1, Ordering::Relaxed);
    }

    /// A join was refused or a session ended with a protocol error `code`.
    pub fn refusal(&self, code: ErrorCode) {
        *self
            .refusals
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(code.as_str())
            .or_default() += 1;
    }

    /// An invite was minted.
    pub fn invite_minted(&self) {
        self.invites_minted.fetch_add(1, Ordering::Relaxed);
    }

    /// An HTTP request finished with `status`.
    pub fn http_request(&self, status: u16) {
        let class = match status {
            100..=199 => "1xx",
            200..=299 => "2xx",
            300..=399 => "3xx",
            400..=499 => "4xx",
            _ => "5xx",
        };
        *self
            .http
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(class)
            .or_default() += 1;
    }

    /// Renders the exposition text; `online` is the current number of live sessions.
    pub fn render(&self, online: usize) -> String {
        let mut s = String::new();
        s.push_str("# HELP atmosphere_joins_total Members admitted, by the path they reported.\n");
        s.push_str("# TYPE atmosphere_joins_total counter\n");
        for (i, p) in PathKind::ALL.iter().enumerate() {
            let _ = writeln!(
                s,
                "atmosphere_joins_total{{path=\"{p}\"}} {}",
                self.joins[i].load(Ordering::Relaxed)
            );
        }
        s.push_str("# HELP atmosphere_refusals_total Joins refused and sessions ended for a protocol error, by code.\n");
        s.push_str("# TYPE atmosphere_refusals_total counter\n");
        for (code, n) in self
            .refusals
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            let _ = writeln!(s, "atmosphere_refusals_total{{code=\"{code}\"}} {n}");
        }
        s.push_str("# HELP atmosphere_sessions_online Members connected right now.\n");
        s.push_str("# TYPE atmosphere_sessions_online gauge\n");
        let _ = writeln!(s, "atmosphere_sessions_online {online}");
        s.push_str("# HELP atmosphere_invites_minted_total Invites minted since start.\n");
        s.push_str("# TYPE atmosphere_invites_minted_total counter\n");
        let _ = writeln!(
            s,
            "atmosphere_invites_minted_total {}",
            self.invites_minted.load(Ordering::Relaxed)
        );
        s.push_str(
            "# HELP atmosphere_http_requests_total HTTP requests served, by status class.\n",
        );
        s.push_str("# TYPE atmosphere_http_requests_total counter\n");
        for (class, n) in self.http.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            let _ = writeln!(
                s,
                "atmosphere_http_requests_total{{status=\"{class}\"}} {n}"
            );
        }
        s
    }
}
