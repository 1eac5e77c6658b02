//! STUN Binding over UDP with the `stun-rs` codec: every configured server in parallel from
//! ONE local socket per address family (so mapped addresses are comparable and reveal an
//! endpoint-dependent NAT), RFC 5389 §7.2.1 retransmits (RTO doubling) inside one short
//! overall deadline, answers matched by transaction id, XOR-MAPPED-ADDRESS read first and
//! MAPPED-ADDRESS (RFC 3489 servers) as the fallback.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use atmosphere_shared::api::StunProbe;
use stun_rs::attributes::discovery::{ChangeRequest, ChangeRequestFlags, OtherAddress};
use stun_rs::attributes::stun::{ErrorCode, MappedAddress, XorMappedAddress};
use stun_rs::methods::BINDING;
use stun_rs::{
    MessageClass, MessageDecoderBuilder, MessageEncoderBuilder, StunMessageBuilder, TransactionId,
};
use tokio::net::UdpSocket;
use tokio::time::Instant;

/// Port used when a server is named without one (RFC 5389 §9).
pub const DEFAULT_STUN_PORT: u16 = 3478;
/// At most this many servers are probed in one round (input limit).
pub const MAX_SERVERS: usize = 16;
/// Longest accepted server name (a DNS name is at most 253 characters, plus `:port`).
const MAX_SERVER_LEN: usize = 260;
/// Receive buffer: a Binding answer is ~100 bytes; anything past a UDP MTU is not ours.
const RECV_BUF: usize = 1500;

/// Timing of one probe round.
#[derive(Debug, Clone, Copy)]
pub struct StunOptions {
    /// Overall deadline for the whole round (DNS included).
    pub deadline: Duration,
    /// First retransmission timeout; it doubles after every send (RFC 5389 §7.2.1).
    pub initial_rto: Duration,
}

impl Default for StunOptions {
    fn default() -> Self {
        StunOptions {
            deadline: Duration::from_secs(2),
            initial_rto: Duration::from_millis(250),
        }
    }
}

/// A parsed `HOST:PORT` STUN server name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StunServer {
    /// Host name or IP literal (IPv6 without brackets).
    pub host: String,
    pub port: u16,
}

impl StunServer {
    /// Parses `host:port`, `1.2.3.4:3478`, `[::1]:3478`, a bare host or IP (port 3478), with
    /// an optional `stun:` prefix. Errors are sentences naming the bad part.
    pub fn parse(input: &str) -> Result<StunServer, String> {
        let s = input.trim();
        let s = match s.get(..5) {
            Some(p) if p.eq_ignore_ascii_case("stun:") => &s[5..],
            _ => s,
        };
        if s.is_empty() {
            return Err("empty STUN server name".into());
        }
        if s.len() > MAX_SERVER_LEN {
            return Err(format!(
                "STUN server name is longer than {MAX_SERVER_LEN} characters"
            ));
        }
        if s.chars()
            .any(|c| c.is_whitespace() || c == '/' || c == '@' || c.is_control())
        {
            return Err(format!("STUN server {s:?} is not HOST:PORT"));
        }
        if let Ok(sa) = s.parse::<SocketAddr>() {
            return Ok(StunServer {
                host: sa.ip().to_string(),
                port: sa.port(),
            });
        }
        if let Ok(ip) = s.parse::<IpAddr>() {
            return Ok(StunServer {
                host: ip.to_string(),
                port: DEFAULT_STUN_PORT,
            });
        }
        if let Some(inner) = s.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
            return match inner.parse::<std::net::Ipv6Addr>() {
                Ok(ip) => Ok(StunServer {
                    host: ip.to_string(),
                    port: DEFAULT_STUN_PORT,
                }),
                Err(_) => Err(format!("STUN server {s:?}: bad IPv6 address")),
            };
        }
        let (host, port) = match s.rsplit_once(':') {
            Some((h, p)) => {
                let port: u16 = p
                    .parse()
                    .ok()
                    .filter(|p| *p != 0)
                    .ok_or_else(|| format!("STUN server {s:?}: bad port {p:?}"))?;
                (h, port)
            }
            None => (s, DEFAULT_STUN_PORT),
        };
        if host.is_empty() || host.contains(':') || host.contains('[') || host.contains(']') {
            return Err(format!("STUN server {s:?} is not HOST:PORT"));
        }
        Ok(StunServer {
            host: host.to_ascii_lowercase(),
            port,
        })
    }

    /// `stun:host:port` (IPv6 in brackets), the name used in `stun_source` and probes.
    pub fn label(&self) -> String {
        match self.host.parse::<std::net::Ipv6Addr>() {
            Ok(_) => format!("stun:[{}]:{}", self.host, self.port),
            Err(_) => format!("stun:{}:{}", self.host, self.port),
        }
    }

    /// Resolves to one address: IPv4 preferred (what home NATs translate), else IPv6.
    pub(crate) async fn resolve(&self) -> Result<SocketAddr, String> {
        if let Ok(ip) = self.host.parse::<IpAddr>() {
            return Ok(SocketAddr::new(ip, self.port));
        }
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((self.host.as_str(), self.port))
            .await
            .map_err(|e| format!("DNS lookup of {} failed: {e}", self.host))?
            .collect();
        addrs
            .iter()
            .find(|a| a.is_ipv4())
            .or_else(|| addrs.first())
            .copied()
            .ok_or_else(|| format!("{} has no address", self.host))
    }
}

/// What one server said in one round.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeOutcome {
    /// `stun:host:port`.
    pub server: String,
    /// The address this server resolved to.
    pub target: Option<SocketAddr>,
    /// Our address as the server saw it.
    pub mapped: Option<SocketAddr>,
    /// Time from the first request to the answer.
    pub rtt: Option<Duration>,
    /// Why there is no mapped address.
    pub error: Option<String>,
    /// 0 for the first answer of the round, 1 for the second, …
    pub answer_rank: Option<usize>,
    /// Requests sent (1 + retransmits).
    pub requests: u32,
}

impl ProbeOutcome {
    fn failed(server: String, error: String) -> ProbeOutcome {
        ProbeOutcome {
            server,
            target: None,
            mapped: None,
            rtt: None,
            error: Some(error),
            answer_rank: None,
            requests: 0,
        }
    }

    /// The API form.
    pub fn to_api(&self) -> StunProbe {
        StunProbe {
            server: self.server.clone(),
            mapped: self.mapped.map(|m| m.to_string()),
            rtt_ms: self.rtt.map(|d| d.as_millis().min(u64::MAX as u128) as u64),
            error: self.error.clone(),
        }
    }
}

/// In-flight state of one transaction.
struct Pending {
    idx: usize,
    target: SocketAddr,
    tid: TransactionId,
    request: Vec<u8>,
    first_sent: Option<Instant>,
    next_send: Instant,
    rto: Duration,
    done: bool,
}

/// Encodes a Binding request with the given transaction id (also the path probe's payload).
pub(crate) fn binding_request(tid: TransactionId) -> Result<Vec<u8>, String> {
    encode_binding_request(tid, false)
}

/// A Binding request asking the server to answer from its other port (RFC 5780
/// CHANGE-REQUEST "change port"): the direct path's NAT filtering check.
pub(crate) fn binding_request_changing_port(tid: TransactionId) -> Result<Vec<u8>, String> {
    encode_binding_request(tid, true)
}

fn encode_binding_request(tid: TransactionId, change_port: bool) -> Result<Vec<u8>, String> {
    let mut msg = StunMessageBuilder::new(BINDING, MessageClass::Request).with_transaction_id(tid);
    if change_port {
        msg = msg.with_attribute(ChangeRequest::new(Some(
            ChangeRequestFlags::ChangePort.into(),
        )));
    }
    let msg = msg.build();
    let mut buf = [0u8; 64];
    let n = MessageEncoderBuilder::default()
        .build()
        .encode(&mut buf, &msg)
        .map_err(|e| format!("cannot encode STUN request: {e:?}"))?;
    Ok(buf[..n].to_vec())
}

/// A decoded Binding answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    Mapped(SocketAddr),
    Error(String),
}

/// Decodes a datagram; `None` when it is not a Binding answer (ignored, as RFC 5389 says
/// for anything unexpected), else its transaction id and what it says.
pub fn decode_answer(datagram: &[u8]) -> Option<(TransactionId, Answer)> {
    let (msg, _) = MessageDecoderBuilder::default()
        .build()
        .decode(datagram)
        .ok()?;
    if msg.method() != BINDING {
        return None;
    }
    let tid = *msg.transaction_id();
    match msg.class() {
        MessageClass::SuccessResponse => {
            let xor = msg
                .get::<XorMappedAddress>()
                .and_then(|a| a.as_xor_mapped_address().ok())
                .map(|a| *a.socket_address());
            let plain = || {
                msg.get::<MappedAddress>()
                    .and_then(|a| a.as_mapped_address().ok())
                    .map(|a| *a.socket_address())
            };
            Some((
                tid,
                match xor.or_else(plain) {
                    Some(m) => Answer::Mapped(m),
                    None => {
                        Answer::Error("answer has no XOR-MAPPED-ADDRESS or MAPPED-ADDRESS".into())
                    }
                },
            ))
        }
        MessageClass::ErrorResponse => {
            let text = msg
                .get::<ErrorCode>()
                .and_then(|a| a.as_error_code().ok())
                .map(|e| {
                    let c = e.error_code();
                    format!("STUN error {} {}", c.error_code(), c.reason())
                })
                .unwrap_or_else(|| "STUN error response".into());
            Some((tid, Answer::Error(text)))
        }
        _ => None,
    }
}

/// The OTHER-ADDRESS of a Binding answer (RFC 5780): where the server's other port is.
/// `None` when the datagram is not a STUN message or has no such attribute.
pub fn decode_other_address(datagram: &[u8]) -> Option<SocketAddr> {
    let (msg, _) = MessageDecoderBuilder::default()
        .build()
        .decode(datagram)
        .ok()?;
    msg.get::<OtherAddress>()
        .and_then(|a| a.as_other_address().ok())
        .map(|a| *a.socket_address())
}

/// Receives on an optional socket; pends forever when there is none.
async fn recv_opt(
    sock: Option<&UdpSocket>,
    buf: &mut [u8],
) -> std::io::Result<(usize, SocketAddr)> {
    match sock {
        Some(s) => s.recv_from(buf).await,
        None => std::future::pending().await,
    }
}

/// Probes every server in parallel. `on_answer` is called as each mapped address arrives
/// (so a caller can publish the first answer before slow servers finish). Returns one
/// outcome per input, in input order, within `opts.deadline` (plus scheduling noise).
pub async fn probe_servers<F>(
    servers: &[String],
    opts: StunOptions,
    mut on_answer: F,
) -> Vec<ProbeOutcome>
where
    F: FnMut(&ProbeOutcome),
{
    let start = Instant::now();
    let deadline_at = start + opts.deadline;
    let servers = &servers[..servers.len().min(MAX_SERVERS)];

    // Parse and resolve every name in parallel, inside the round's deadline.
    let resolved = futures_util::future::join_all(servers.iter().map(|s| async move {
        let srv = match StunServer::parse(s) {
            Ok(srv) => srv,
            Err(e) => return (format!("stun:{}", s.trim()), Err(e)),
        };
        let label = srv.label();
        let addr = match tokio::time::timeout_at(deadline_at, srv.resolve()).await {
            Ok(r) => r,
            Err(_) => Err(format!("DNS lookup of {} timed out", srv.host)),
        };
        (label, addr)
    }))
    .await;

    let mut outcomes: Vec<ProbeOutcome> = Vec::with_capacity(servers.len());
    let mut pending: Vec<Pending> = Vec::new();
    for (i, (label, addr)) in resolved.into_iter().enumerate() {
        let target = match addr {
            Ok(t) => t,
            Err(e) => {
                outcomes.push(ProbeOutcome::failed(label, e));
                continue;
            }
        };
        let tid = TransactionId::default();
        match binding_request(tid) {
            Ok(request) => {
                outcomes.push(ProbeOutcome {
                    target: Some(target),
                    error: None,
                    ..ProbeOutcome::failed(label, String::new())
                });
                pending.push(Pending {
                    idx: i,
                    target,
                    tid,
                    request,
                    first_sent: None,
                    next_send: start,
                    rto: opts.initial_rto.max(Duration::from_millis(10)),
                    done: false,
                });
            }
            Err(e) => outcomes.push(ProbeOutcome::failed(label, e)),
        }
    }

    // One socket per family for all servers: the mapping comparison needs the same source.
    let mut v4 = None;
    let mut v6 = None;
    if pending.iter().any(|p| p.target.is_ipv4()) {
        match UdpSocket::bind("0.0.0.0:0").await {
            Ok(s) => v4 = Some(s),
            Err(e) => fail_family(
                &mut pending,
                &mut outcomes,
                true,
                &format!("cannot open an IPv4 UDP socket: {e}"),
            ),
        }
    }
    if pending.iter().any(|p| p.target.is_ipv6()) {
        match UdpSocket::bind("[::]:0").await {
            Ok(s) => v6 = Some(s),
            Err(e) => fail_family(
                &mut pending,
                &mut outcomes,
                false,
                &format!("cannot open an IPv6 UDP socket: {e}"),
            ),
        }
    }

    let mut buf4 = vec![0u8; RECV_BUF];
    let mut buf6 = vec![0u8; RECV_BUF];
    let mut answers = 0usize;
    loop {
        let now = Instant::now();
        if now >= deadline_at || pending.iter().all(|p| p.done) {
            break;
        }
        for p in pending.iter_mut().filter(|p| !p.done && p.next_send <= now) {
            let sock = if p.target.is_ipv4() {
                v4.as_ref()
            } else {
                v6.as_ref()
            };
            let Some(sock) = sock else { continue };
            match sock.send_to(&p.request, p.target).await {
                Ok(_) => {
                    p.first_sent.get_or_insert(now);
                    outcomes[p.idx].requests += 1;
                    p.next_send = now + p.rto;
                    p.rto = p.rto.saturating_mul(2);
                }
                Err(e) => {
                    p.done = true;
                    outcomes[p.idx].error = Some(format!("cannot send to {}: {e}", p.target));
                }
            }
        }
        let wake = pending
            .iter()
            .filter(|p| !p.done)
            .map(|p| p.next_send)
            .min()
            .unwrap_or(deadline_at)
            .min(deadline_at);
        let received = tokio::select! {
            r = recv_opt(v4.as_ref(), &mut buf4) => r.map(|(n, from)| (buf4[..n].to_vec(), from)),
            r = recv_opt(v6.as_ref(), &mut buf6) => r.map(|(n, from)| (buf6[..n].to_vec(), from)),
            _ = tokio::time::sleep_until(wake) => continue,
        };
        let (datagram, from) = match received {
            Ok(x) => x,
            Err(e) => {
                // An ICMP error surfacing on the socket: it names no transaction, keep waiting.
                tracing::debug!("STUN socket error: {e}");
                continue;
            }
        };
        let Some((tid, answer)) = decode_answer(&datagram) else {
            tracing::debug!("ignoring a non-STUN datagram from {from}");
            continue;
        };
        let Some(p) = pending.iter_mut().find(|p| !p.done && p.tid == tid) else {
            tracing::debug!("ignoring a STUN answer from {from} with an unknown transaction id");
            continue;
        };
        p.done = true;
        let out = &mut outcomes[p.idx];
        out.rtt = p.first_sent.map(|t| t.elapsed());
        match answer {
            Answer::Mapped(m) => {
                out.mapped = Some(m);
                out.error = None;
                out.answer_rank = Some(answers);
                answers += 1;
                on_answer(out);
            }
            Answer::Error(e) => out.error = Some(e),
        }
    }

    for p in pending.iter().filter(|p| !p.done) {
        let out = &mut outcomes[p.idx];
        out.error = Some(format!(
            "no answer within {} ms ({} request{} sent to {})",
            opts.deadline.as_millis(),
            out.requests,
            if out.requests == 1 { "" } else { "s" },
            p.target
        ));
    }
    outcomes
}

/// Marks every pending probe of one family as failed (its socket could not be opened).
fn fail_family(pending: &mut [Pending], outcomes: &mut [ProbeOutcome], v4: bool, why: &str) {
    for p in pending.iter_mut().filter(|p| p.target.is_ipv4() == v4) {
        p.done = true;
        outcomes[p.idx].error = Some(why.to_string());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn srv(host: &str, port: u16) -> StunServer {
        StunServer {
            host: host.into(),
            port,
        }
    }

    #[test]
    fn parse_server_names() {
        assert_eq!(
            StunServer::parse("stun.l.google.com:19302"),
            Ok(srv("stun.l.google.com", 19302))
        );
        assert_eq!(
            StunServer::parse(" stun:Stun.Example.com:3479 "),
            Ok(srv("stun.example.com", 3479))
        );
        assert_eq!(
            StunServer::parse("127.0.0.1:3478"),
            Ok(srv("127.0.0.1", 3478))
        );
        assert_eq!(StunServer::parse("[::1]:5349"), Ok(srv("::1", 5349)));
        assert_eq!(StunServer::parse("[::1]"), Ok(srv("::1", 3478)));
        assert_eq!(StunServer::parse("::1"), Ok(srv("::1", 3478)));
        assert_eq!(
            StunServer::parse("stun.example.com"),
            Ok(srv("stun.example.com", 3478))
        );
        for bad in [
            "",
            "stun:",
            "host:0",
            "host:99999",
            "host:abc",
            "a b:1",
            "http://x:1",
            ":1",
            "[zz]:1",
            &"a".repeat(300),
        ] {
            assert!(
                StunServer::parse(bad).is_err(),
                "{bad:?} should be rejected"
            );
        }
    }

    #[test]
    fn labels() {
        assert_eq!(srv("127.0.0.1", 3478).label(), "stun:127.0.0.1:3478");
        assert_eq!(srv("::1", 3478).label(), "stun:[::1]:3478");
        assert_eq!(
            srv("stun.cloudflare.com", 3478).label(),
            "stun:stun.cloudflare.com:3478"
        );
    }

    #[test]
    fn request_roundtrip_and_answer_decoding() {
        let tid = TransactionId::default();
        let req = binding_request(tid).unwrap();
        assert_eq!(req.len(), 20, "a bare Binding request is a 20-byte header");
        // A request is not an answer.
        assert_eq!(decode_answer(&req), None);
        // Build a success answer with the codec and decode it back.
        let mapped: SocketAddr = "[2001:db8::9]:40000".parse().unwrap();
        let answer = StunMessageBuilder::new(BINDING, MessageClass::SuccessResponse)
            .with_transaction_id(tid)
            .with_attribute(XorMappedAddress::from(mapped))
            .build();
        let mut buf = [0u8; 128];
        let n = MessageEncoderBuilder::default()
            .build()
            .encode(&mut buf, &answer)
            .unwrap();
        assert_eq!(
            decode_answer(&buf[..n]),
            Some((tid, Answer::Mapped(mapped)))
        );
        // MAPPED-ADDRESS alone (RFC 3489 server) is the fallback.
        let v4: SocketAddr = "198.51.100.7:1234".parse().unwrap();
        let old = StunMessageBuilder::new(BINDING, MessageClass::SuccessResponse)
            .with_transaction_id(tid)
            .with_attribute(MappedAddress::from(v4))
            .build();
        let n = MessageEncoderBuilder::default()
            .build()
            .encode(&mut buf, &old)
            .unwrap();
        assert_eq!(decode_answer(&buf[..n]), Some((tid, Answer::Mapped(v4))));
        // Garbage is ignored, never a panic.
        assert_eq!(decode_answer(&[0xff; 7]), None);
        assert_eq!(decode_answer(&[]), None);
    }

    #[tokio::test]
    async fn silent_server_times_out_within_the_deadline() {
        // A socket that receives and never answers.
        let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = silent.local_addr().unwrap();
        let opts = StunOptions {
            deadline: Duration::from_millis(600),
            initial_rto: Duration::from_millis(100),
        };
        let t = std::time::Instant::now();
        let out = probe_servers(&[addr.to_string(), "not a server".into()], opts, |_| {
            panic!("no answer expected")
        })
        .await;
        assert!(
            t.elapsed() < Duration::from_millis(1500),
            "{:?}",
            t.elapsed()
        );
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].mapped, None);
        assert!(
            out[0]
                .error
                .as_deref()
                .unwrap()
                .contains("no answer within 600 ms"),
            "{:?}",
            out[0]
        );
        assert!(out[0].requests >= 3, "retransmits expected: {:?}", out[0]);
        assert!(
            out[1].error.as_deref().unwrap().contains("not HOST:PORT"),
            "{:?}",
            out[1]
        );
    }
}
