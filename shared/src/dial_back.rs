//! The public-reachability dial-back: a host asks the relay it is registered with to open a
//! TCP connection to the host's public endpoint from outside, and learns whether a phone on
//! the internet could reach it. The whole protocol is here, runtime-free; the relay
//! (`relay::dial_back`) and the host (`serve::reachability`) only move bytes and keep time.
//!
//! ## The exchange
//!
//! 1. The host makes a fresh nonce ([`format_nonce`]: 16 random bytes as 32 lowercase hex
//!    characters) and keeps it pending ([`PendingNonces`]: at most [`MAX_PENDING`] at once,
//!    each for at most [`PENDING_TTL_MS`]).
//! 2. Host → relay on its registered control socket:
//!    `{"type":"dial_back","port":P,"nonce":"…"}` (`relay_proto::HostMsg::DialBack`). The
//!    message has **no address field**, and unknown fields are refused: the relay dials only
//!    the address the control socket comes from, so a host cannot point it at a third
//!    machine (no SSRF) and one request is one small connection (no amplification).
//! 3. The relay checks the request ([`check_request`]: nonce format, port 1..=65535; else
//!    it closes the control socket with 4400), then its limits: one dial per registration
//!    per [`PER_HOST_INTERVAL_MS`] ([`HostDialLimit`]) and at most [`GLOBAL_DIALS_PER_WINDOW`]
//!    dials per [`GLOBAL_WINDOW_MS`] for the whole relay ([`GlobalDialBudget`]). Then it
//!    dials TCP `client_ip:P`, where `client_ip` is the control socket's source as the
//!    relay's per-IP limit sees it (so `--real-ip-header` behind a proxy works), within
//!    [`CONNECT_DEADLINE_MS`]; writes [`probe_request`]
//!    (`GET /dial-back/NONCE HTTP/1.1\r\nHost: IP:P\r\nConnection: close\r\n\r\n`); reads at
//!    most [`MAX_ANSWER_BYTES`] within [`READ_DEADLINE_MS`]; and judges them with
//!    [`judge_answer`]: reachable iff the status is 200 and the body holds the nonce.
//! 4. Relay → host: `{"type":"dial_back_result","nonce":"…","reachable":bool,"detail":"…"}`
//!    (`relay_proto::RelayMsg::DialBackResult`), e.g. "connection refused", "timed out after
//!    3 s", "answered HTTP 404". A request the relay did not dial because of its limits is
//!    answered `reachable: false` with `retry_in_secs` set and the detail "rate limited: retry
//!    in N s" ([`DialBackResult::rate_limited`]).
//! 5. The host answers `GET /dial-back/{nonce}` on its mesh port with 200 and the nonce as
//!    the body only for a pending nonce, 404 otherwise, and records that the nonce arrived
//!    ([`PendingNonces::arrived`]). The verdict ([`verdict`]):
//!    - `reachable` iff the relay says reachable **and** the host saw its nonce arrive;
//!    - `unreachable` when the relay dialed and did not reach it;
//!    - `unknown` with a detail when no answer came within [`ANSWER_WAIT_MS`], the relay
//!      was rate limited, or the relay reached something that never asked this host.
//!
//! Without a relay, or with `serve --public-url` (a reverse proxy the relay cannot judge),
//! the state is `unknown` and invites behave as before. With `unreachable`, new invites
//! leave their `public` endpoint out: a phone would only spend an attempt on it.

use crate::api::Reachability;
use serde::{Deserialize, Serialize};

/// Random bytes in a dial-back nonce.
pub const NONCE_BYTES: usize = 16;
/// Length of a nonce on the wire: lowercase hex of [`NONCE_BYTES`].
pub const NONCE_HEX_LEN: usize = NONCE_BYTES * 2;
/// How long the host keeps a nonce pending (its `/dial-back/{nonce}` answers 200 until then).
pub const PENDING_TTL_MS: u64 = 30_000;
/// Nonces a host keeps pending at once; an older one is dropped for a new one.
pub const MAX_PENDING: usize = 4;
/// How long the host waits for the relay's `dial_back_result`.
pub const ANSWER_WAIT_MS: u64 = 10_000;
/// One dial per registration (control socket) per this interval.
pub const PER_HOST_INTERVAL_MS: u64 = 20_000;
/// The relay-wide window of [`GLOBAL_DIALS_PER_WINDOW`].
pub const GLOBAL_WINDOW_MS: u64 = 10_000;
/// Dials the whole relay makes per [`GLOBAL_WINDOW_MS`], whatever the number of hosts.
pub const GLOBAL_DIALS_PER_WINDOW: usize = 100;
/// Deadline of the relay's TCP connect.
pub const CONNECT_DEADLINE_MS: u64 = 3_000;
/// Deadline of reading the answer, from the moment the request was written.
pub const READ_DEADLINE_MS: u64 = 3_000;
/// Most bytes of the answer the relay reads (status line, a few headers and the nonce fit).
pub const MAX_ANSWER_BYTES: usize = 512;
/// The host's route prefix for the probe: `GET /dial-back/{nonce}`.
pub const PATH_PREFIX: &str = "/dial-back/";
/// How a rate-limited result's detail starts.
pub const RATE_LIMITED: &str = "rate limited";

/// A nonce as sent: 16 bytes as 32 lowercase hex characters.
pub fn format_nonce(bytes: &[u8; NONCE_BYTES]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether `nonce` is exactly 32 lowercase hex characters (what [`format_nonce`] makes).
/// Anything else could bend the request line or the host's path.
pub fn is_valid_nonce(nonce: &str) -> bool {
    nonce.len() == NONCE_HEX_LEN
        && nonce
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Why the relay refuses a `dial_back` request outright (it closes the control socket with
/// 4400: a correct host never sends one of these).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// The nonce is not 32 lowercase hex characters.
    #[error("dial_back nonce must be 32 lowercase hex characters")]
    BadNonce,
    /// Port 0 cannot be dialed.
    #[error("dial_back port must be 1 to 65535")]
    BadPort,
}

/// The relay's check of a `dial_back` request's fields (the JSON shape, including "no other
/// field", is checked by `relay_proto::HostMsg`'s parser).
pub fn check_request(port: u16, nonce: &str) -> Result<(), RequestError> {
    if !is_valid_nonce(nonce) {
        return Err(RequestError::BadNonce);
    }
    if port == 0 {
        return Err(RequestError::BadPort);
    }
    Ok(())
}

/// The bytes the relay writes on the connection it opened to `host` (the IP it dialed, as
/// text; IPv6 in brackets) on `port`.
pub fn probe_request(host: &str, port: u16, nonce: &str) -> String {
    format!("GET {PATH_PREFIX}{nonce} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n")
}

/// What the relay's dial found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    /// The status was 200 and the body held the nonce.
    pub reachable: bool,
    /// For a person: "answered HTTP 200 with the nonce", "answered HTTP 404", …
    pub detail: String,
}

impl Probe {
    /// Not reachable, because of `detail`.
    pub fn no(detail: impl Into<String>) -> Probe {
        Probe {
            reachable: false,
            detail: detail.into(),
        }
    }
}

/// Judges the (at most [`MAX_ANSWER_BYTES`]) bytes read back for `nonce`: reachable iff an
/// HTTP status line says 200 and the body (after the blank line) holds the nonce.
pub fn judge_answer(answer: &[u8], nonce: &str) -> Probe {
    if answer.is_empty() {
        return Probe::no("closed the connection without answering");
    }
    let text = String::from_utf8_lossy(answer);
    let status_line = text.lines().next().unwrap_or("");
    let mut parts = status_line.split_whitespace();
    let status = match (parts.next(), parts.next()) {
        (Some(v), Some(code)) if v.starts_with("HTTP/") => code.parse::<u16>().ok(),
        _ => None,
    };
    let Some(status) = status else {
        return Probe::no("answered something that is not HTTP");
    };
    if status != 200 {
        return Probe::no(format!("answered HTTP {status}"));
    }
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    if body.contains(nonce) {
        Probe {
            reachable: true,
            detail: "answered HTTP 200 with the nonce".into(),
        }
    } else {
        Probe::no("answered HTTP 200 without the nonce (another server on that port?)")
    }
}

/// The detail of a connect that did not finish within [`CONNECT_DEADLINE_MS`] or a read that
/// did not within [`READ_DEADLINE_MS`].
pub fn timed_out_detail(deadline_ms: u64) -> String {
    format!("timed out after {} s", deadline_ms.div_ceil(1000))
}

/// The relay's answer to a `dial_back`, as the host reads it (`RelayMsg::DialBackResult`
/// carries the same fields).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DialBackResult {
    pub nonce: String,
    pub reachable: bool,
    pub detail: String,
    /// Set when the relay did not dial because of its limits: ask again after this long.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_in_secs: Option<u64>,
}

impl DialBackResult {
    /// The result of a dial that ran.
    pub fn dialed(nonce: &str, probe: Probe) -> DialBackResult {
        DialBackResult {
            nonce: nonce.to_string(),
            reachable: probe.reachable,
            detail: probe.detail,
            retry_in_secs: None,
        }
    }

    /// The answer to a request the relay's limits kept it from dialing.
    pub fn rate_limited(nonce: &str, retry_in_ms: u64) -> DialBackResult {
        let secs = retry_in_ms.div_ceil(1000).max(1);
        DialBackResult {
            nonce: nonce.to_string(),
            reachable: false,
            detail: format!("{RATE_LIMITED}: retry in {secs} s"),
            retry_in_secs: Some(secs),
        }
    }
}

/// One registration's dial limit on the relay: a dial at most every
/// [`PER_HOST_INTERVAL_MS`]. Times are milliseconds from any monotonic origin.
#[derive(Debug, Clone, Default)]
pub struct HostDialLimit {
    last: Option<u64>,
}

impl HostDialLimit {
    /// Takes the registration's dial at `now`, or says how long until the next one is allowed.
    pub fn try_take(&mut self, now: u64) -> Result<(), u64> {
        if let Some(last) = self.last {
            let next = last + PER_HOST_INTERVAL_MS;
            if now < next {
                return Err(next - now);
            }
        }
        self.last = Some(now);
        Ok(())
    }
}

/// The relay-wide dial budget: at most `max` dials in any window of `window_ms`.
#[derive(Debug, Clone)]
pub struct GlobalDialBudget {
    max: usize,
    window_ms: u64,
    /// Times of the dials in the current window, oldest first.
    recent: std::collections::VecDeque<u64>,
}

impl Default for GlobalDialBudget {
    /// [`GLOBAL_DIALS_PER_WINDOW`] per [`GLOBAL_WINDOW_MS`].
    fn default() -> Self {
        GlobalDialBudget::new(GLOBAL_DIALS_PER_WINDOW, GLOBAL_WINDOW_MS)
    }
}

impl GlobalDialBudget {
    pub fn new(max: usize, window_ms: u64) -> GlobalDialBudget {
        GlobalDialBudget {
            max: max.max(1),
            window_ms,
            recent: Default::default(),
        }
    }

    /// Takes one dial at `now`, or says how long until one is free.
    pub fn try_take(&mut self, now: u64) -> Result<(), u64> {
        while self
            .recent
            .front()
            .is_some_and(|t| now >= t + self.window_ms)
        {
            self.recent.pop_front();
        }
        if self.recent.len() >= self.max {
            let oldest = self.recent.front().copied().unwrap_or(now);
            return Err(oldest + self.window_ms - now);
        }
        self.recent.push_back(now);
        Ok(())
    }
}

/// The host's pending nonces: which `/dial-back/{nonce}` requests it answers, and which of
/// them arrived. Times are milliseconds from any monotonic origin.
#[derive(Debug, Clone, Default)]
pub struct PendingNonces {
    /// (nonce, issued at, arrived), oldest first.
    entries: Vec<(String, u64, bool)>,
}

impl PendingNonces {
    fn expire(&mut self, now: u64) {
        self.entries
            .retain(|(_, at, _)| now < at.saturating_add(PENDING_TTL_MS));
    }

    /// Keeps `nonce` pending from `now`; the oldest pending one is dropped if
    /// [`MAX_PENDING`] are already held.
    pub fn insert(&mut self, nonce: String, now: u64) {
        self.expire(now);
        if self.entries.len() >= MAX_PENDING {
            self.entries.remove(0);
        }
        self.entries.push((nonce, now, false));
    }

    /// A probe for `nonce` arrived at `now`: true (answer 200 with the nonce) iff it is
    /// pending, and it is then recorded as seen.
    pub fn arrived(&mut self, nonce: &str, now: u64) -> bool {
        self.expire(now);
        match self.entries.iter_mut().find(|(n, _, _)| n == nonce) {
            Some(e) => {
                e.2 = true;
                true
            }
            None => false,
        }
    }

    /// Forgets `nonce` (its check is over) and says whether a probe for it arrived.
    pub fn finish(&mut self, nonce: &str) -> bool {
        match self.entries.iter().position(|(n, _, _)| n == nonce) {
            Some(i) => self.entries.remove(i).2,
            None => false,
        }
    }

    /// Pending nonces now.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// The host's verdict on one check: the relay's `result` (`None`: none came within
/// [`ANSWER_WAIT_MS`]) and whether the host saw its nonce arrive. Returns the state and the
/// detail a person reads.
pub fn verdict(result: Option<&DialBackResult>, seen: bool) -> (Reachability, String) {
    let Some(r) = result else {
        return (
            Reachability::Unknown,
            format!(
                "the relay did not answer the check within {} s",
                ANSWER_WAIT_MS / 1000
            ),
        );
    };
    match (r.reachable, seen) {
        (true, true) => (Reachability::Reachable, r.detail.clone()),
        (true, false) => (
            Reachability::Unknown,
            "the relay reached a server that never asked this host (another machine answers on that address?)".into(),
        ),
        (false, _) if r.retry_in_secs.is_some() => (Reachability::Unknown, r.detail.clone()),
        (false, _) => (Reachability::Unreachable, r.detail.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const N: &str = "00112233445566778899aabbccddeeff";

    #[test]
    fn nonces_are_32_lowercase_hex() {
        let n = format_nonce(&[0xab; NONCE_BYTES]);
        assert_eq!(n, "ab".repeat(16));
        assert!(is_valid_nonce(&n));
        assert!(is_valid_nonce(N));
        for bad in [
            "",
            &N[..31],
            &format!("{N}0"),
            &N.to_uppercase(),
            "0011223344556677889 aabbccddeeff",
            "00112233445566778899aabbccddeefg",
            "../../../../../../../../etc/pass",
        ] {
            assert!(!is_valid_nonce(bad), "{bad:?}");
        }
    }

    #[test]
    fn requests_are_checked_before_any_dial() {
        assert_eq!(check_request(11451, N), Ok(()));
        assert_eq!(check_request(0, N), Err(RequestError::BadPort));
        assert_eq!(check_request(1, "x"), Err(RequestError::BadNonce));
        assert_eq!(check_request(65535, N), Ok(()));
    }

    #[test]
    fn the_probe_request_is_one_get_with_host_and_close() {
        assert_eq!(
            probe_request("198.51.100.7", 11451, N),
            format!("GET /dial-back/{N} HTTP/1.1\r\nHost: 198.51.100.7:11451\r\nConnection: close\r\n\r\n")
        );
        assert!(probe_request("[2001:db8::1]", 80, N).contains("Host: [2001:db8::1]:80\r\n"));
    }

    #[test]
    fn only_a_200_with_the_nonce_in_the_body_is_reachable() {
        let ok = format!("HTTP/1.1 200 OK\r\ncontent-length: 32\r\n\r\n{N}");
        assert!(judge_answer(ok.as_bytes(), N).reachable);
        let p = judge_answer(b"HTTP/1.1 404 Not Found\r\n\r\n", N);
        assert_eq!(p, Probe::no("answered HTTP 404"));
        // The nonce in a header is not enough: the body must echo it.
        let hdr = format!("HTTP/1.1 200 OK\r\nx-nonce: {N}\r\n\r\nhello");
        assert!(!judge_answer(hdr.as_bytes(), N).reachable);
        let other = "HTTP/1.1 200 OK\r\n\r\n".to_string() + &"f".repeat(32);
        assert!(judge_answer(other.as_bytes(), N)
            .detail
            .contains("without the nonce"));
        assert_eq!(
            judge_answer(b"SSH-2.0-OpenSSH_9.6\r\n", N).detail,
            "answered something that is not HTTP"
        );
        assert_eq!(
            judge_answer(b"", N).detail,
            "closed the connection without answering"
        );
        assert_eq!(timed_out_detail(CONNECT_DEADLINE_MS), "timed out after 3 s");
    }

    #[test]
    fn results_match_the_documented_shape() {
        let r = DialBackResult::dialed(
            N,
            Probe {
                reachable: false,
                detail: "connection refused".into(),
            },
        );
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            format!(r#"{{"nonce":"{N}","reachable":false,"detail":"connection refused"}}"#)
        );
        let limited = DialBackResult::rate_limited(N, 12_300);
        assert_eq!(limited.detail, "rate limited: retry in 13 s");
        assert_eq!(limited.retry_in_secs, Some(13));
        assert_eq!(DialBackResult::rate_limited(N, 0).retry_in_secs, Some(1));
    }

    #[test]
    fn one_dial_per_registration_per_interval() {
        let mut l = HostDialLimit::default();
        assert_eq!(l.try_take(1_000), Ok(()));
        assert_eq!(l.try_take(1_001), Err(PER_HOST_INTERVAL_MS - 1));
        assert_eq!(l.try_take(20_999), Err(1));
        assert_eq!(l.try_take(21_000), Ok(()));
    }

    #[test]
    fn the_global_budget_is_a_sliding_window() {
        let mut g = GlobalDialBudget::new(2, 10_000);
        assert_eq!(g.try_take(0), Ok(()));
        assert_eq!(g.try_take(4_000), Ok(()));
        assert_eq!(g.try_take(5_000), Err(5_000));
        assert_eq!(g.try_take(10_000), Ok(()));
        assert_eq!(g.try_take(10_001), Err(3_999));
        let d = GlobalDialBudget::default();
        assert_eq!(
            (d.max, d.window_ms),
            (GLOBAL_DIALS_PER_WINDOW, GLOBAL_WINDOW_MS)
        );
    }

    #[test]
    fn pending_nonces_expire_are_bounded_and_record_arrival() {
        let mut p = PendingNonces::default();
        p.insert(N.into(), 0);
        assert!(!p.arrived("ffffffffffffffffffffffffffffffff", 10));
        assert!(p.arrived(N, 10));
        assert!(p.finish(N), "the arrival was recorded");
        assert!(!p.finish(N), "finished nonces are forgotten");
        assert!(!p.arrived(N, 20), "and no longer answered");

        p.insert(N.into(), 0);
        assert!(!p.arrived(N, PENDING_TTL_MS), "expired after 30 s");
        assert!(p.is_empty());

        for i in 0..(MAX_PENDING + 2) {
            p.insert(format_nonce(&[i as u8; NONCE_BYTES]), i as u64);
        }
        assert_eq!(p.len(), MAX_PENDING);
        assert!(
            !p.arrived(&format_nonce(&[0; NONCE_BYTES]), 10),
            "oldest dropped"
        );
        assert!(p.arrived(&format_nonce(&[5; NONCE_BYTES]), 10));
    }

    #[test]
    fn reachable_needs_the_relay_and_the_host_to_agree() {
        let yes = DialBackResult::dialed(
            N,
            Probe {
                reachable: true,
                detail: "answered HTTP 200 with the nonce".into(),
            },
        );
        assert_eq!(verdict(Some(&yes), true).0, Reachability::Reachable);
        // Something answered with the nonce, but this host never saw the request.
        assert_eq!(verdict(Some(&yes), false).0, Reachability::Unknown);
        let refused = DialBackResult::dialed(N, Probe::no("connection refused"));
        assert_eq!(
            verdict(Some(&refused), false),
            (Reachability::Unreachable, "connection refused".into())
        );
        let limited = DialBackResult::rate_limited(N, 5_000);
        assert_eq!(
            verdict(Some(&limited), false),
            (Reachability::Unknown, "rate limited: retry in 5 s".into())
        );
        let (state, detail) = verdict(None, false);
        assert_eq!(state, Reachability::Unknown);
        assert!(detail.contains("within 10 s"), "{detail}");
    }
}
