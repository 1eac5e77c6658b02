//! The relay's STUN responder: RFC 5389 Binding on two UDP ports, with RFC 5780's
//! "change port" so a host can learn how its NAT treats its UDP socket:
//!
//! - a Binding request on either port is answered from that port with XOR-MAPPED-ADDRESS
//!   (the request's source as seen here) and OTHER-ADDRESS (the other port);
//! - with CHANGE-REQUEST "change port" the answer leaves from the *other* port: if it
//!   arrives, unsolicited inbound from a new port reaches the host (its NAT filters
//!   `open`, or a forward exists); comparing the mapped address seen by both ports tells
//!   whether the mapping is endpoint-independent;
//! - "change IP" cannot be honoured (one address) and gets error 420 with a reason, so a
//!   client does not mistake the silence for filtering.
//!
//! Abuse limits, because UDP sources can be forged: a request larger than
//! [`MAX_REQUEST_BYTES`] or that is not a well-formed Binding request is dropped without an
//! answer; an answer goes only to the request's source address and is at most
//! [`MAX_ANSWER_BYTES`] (a few times the 20-byte minimum request, so the responder is no
//! amplifier); each source (IPv6: /64) gets [`RATE_LIMIT`] answers per [`RATE_WINDOW`],
//! beyond that its requests are dropped. RESPONSE-PORT and anything else that would send
//! elsewhere is not supported. Counters go to the relay's `/metrics`.
//!
//! OTHER-ADDRESS carries the bound IP; a responder bound to the unspecified address
//! (`0.0.0.0`, `::`) does not know which of its addresses the client dialed, so it sends the
//! unspecified IP with the other port and the client substitutes the address it dialed.

use super::metrics::{Metrics, StunDrop};
use crate::limits::{rate_bucket, JoinRateLimiter};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use stun_rs::attributes::discovery::{ChangeRequest, ChangeRequestFlags, OtherAddress};
use stun_rs::attributes::stun::{ErrorCode as ErrorCodeAttr, XorMappedAddress};
use stun_rs::methods::BINDING;
use stun_rs::{
    ErrorCode, MessageClass, MessageDecoderBuilder, MessageEncoderBuilder, StunMessage,
    StunMessageBuilder,
};
use tokio::net::UdpSocket;

/// Largest request answered: RFC 5389's 548-byte bound for IPv4 without path MTU
/// discovery. A Binding request is 20 bytes, 28 with CHANGE-REQUEST.
pub const MAX_REQUEST_BYTES: usize = 548;
/// Largest answer sent: header + XOR-MAPPED-ADDRESS + OTHER-ADDRESS for IPv6 (68 bytes),
/// or an error answer with its short reason.
pub const MAX_ANSWER_BYTES: usize = 96;
/// Answers per source (IPv6: per /64) per [`RATE_WINDOW`]. A NAT check takes a handful and
/// ICE a few per candidate per second, so this only stops floods.
pub const RATE_LIMIT: usize = 100;
/// The window of [`RATE_LIMIT`].
pub const RATE_WINDOW: Duration = Duration::from_secs(10);
/// Reason of the 420 answer to "change IP".
const NO_ALTERNATE_IP: &str = "no alternate IP";

/// Which of the two sockets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Port {
    /// `--stun-port`.
    Primary,
    /// `--stun-alt-port` (default: the next port up).
    Alternate,
}

impl Port {
    fn other(self) -> Port {
        match self {
            Port::Primary => Port::Alternate,
            Port::Alternate => Port::Primary,
        }
    }
}

/// What to send for one datagram: these bytes, from that port, to the request's source.
#[derive(Debug, PartialEq, Eq)]
pub struct Reply {
    pub from: Port,
    pub bytes: Vec<u8>,
}

/// The two addresses the responder answers on.
#[derive(Debug, Clone, Copy)]
pub struct Addrs {
    pub primary: SocketAddr,
    pub alternate: SocketAddr,
}

impl Addrs {
    fn of(&self, p: Port) -> SocketAddr {
        match p {
            Port::Primary => self.primary,
            Port::Alternate => self.alternate,
        }
    }
}

/// The answer to `datagram` from `source`, received on `on`: a [`Reply`], or why it is
/// dropped. Pure: no socket, no clock, no limit other than the size.
pub fn answer(
    datagram: &[u8],
    source: SocketAddr,
    on: Port,
    addrs: &Addrs,
) -> Result<Reply, StunDrop> {
    if datagram.len() > MAX_REQUEST_BYTES {
        return Err(StunDrop::Oversize);
    }
    let (req, _) = MessageDecoderBuilder::default()
        .build()
        .decode(datagram)
        .map_err(|_| StunDrop::Malformed)?;
    if req.method() != BINDING || req.class() != MessageClass::Request {
        return Err(StunDrop::Malformed);
    }
    let change = req
        .get::<ChangeRequest>()
        .and_then(|a| a.as_change_request().ok())
        .map(|c| c.flags())
        .unwrap_or_default();
    let (from, msg) = if change.contains(ChangeRequestFlags::ChangeIp) {
        (on, error_answer(&req)?)
    } else {
        let from = if change.contains(ChangeRequestFlags::ChangePort) {
            on.other()
        } else {
            on
        };
        let msg = StunMessageBuilder::new(BINDING, MessageClass::SuccessResponse)
            .with_transaction_id(*req.transaction_id())
            .with_attribute(XorMappedAddress::from(source))
            .with_attribute(OtherAddress::from(addrs.of(from.other())))
            .build();
        (from, msg)
    };
    let mut buf = [0u8; MAX_ANSWER_BYTES];
    let n = MessageEncoderBuilder::default()
        .build()
        .encode(&mut buf, &msg)
        .map_err(|_| StunDrop::Malformed)?;
    Ok(Reply {
        from,
        bytes: buf[..n].to_vec(),
    })
}

/// Error 420 for a "change IP" request: this responder has one address.
fn error_answer(req: &StunMessage) -> Result<StunMessage, StunDrop> {
    let code = ErrorCode::new(420, NO_ALTERNATE_IP).map_err(|_| StunDrop::Malformed)?;
    Ok(
        StunMessageBuilder::new(BINDING, MessageClass::ErrorResponse)
            .with_transaction_id(*req.transaction_id())
            .with_attribute(ErrorCodeAttr::from(code))
            .build(),
    )
}

/// The responder's two bound sockets.
pub struct StunResponder {
    primary: Arc<UdpSocket>,
    alternate: Arc<UdpSocket>,
    addrs: Addrs,
}

impl StunResponder {
    /// Binds `ip:port` and `ip:alt_port`. Port 0 picks a free port (tests).
    pub async fn bind(ip: IpAddr, port: u16, alt_port: u16) -> std::io::Result<StunResponder> {
        let primary = UdpSocket::bind((ip, port)).await?;
        let alternate = UdpSocket::bind((ip, alt_port)).await?;
        let addrs = Addrs {
            primary: primary.local_addr()?,
            alternate: alternate.local_addr()?,
        };
        Ok(StunResponder {
            primary: Arc::new(primary),
            alternate: Arc::new(alternate),
            addrs,
        })
    }

    /// The bound addresses.
    pub fn addrs(&self) -> Addrs {
        self.addrs
    }

    /// Answers on both sockets until the returned tasks are aborted (or the runtime ends).
    pub fn spawn(self, metrics: Arc<Metrics>) -> [tokio::task::JoinHandle<()>; 2] {
        let limiter = Arc::new(JoinRateLimiter::new(RATE_LIMIT, RATE_WINDOW));
        let shared = Arc::new(self);
        [Port::Primary, Port::Alternate].map(|p| {
            let (s, m, l) = (shared.clone(), metrics.clone(), limiter.clone());
            tokio::spawn(async move { s.serve(p, &m, &l).await })
        })
    }

    fn socket(&self, p: Port) -> &UdpSocket {
        match p {
            Port::Primary => &self.primary,
            Port::Alternate => &self.alternate,
        }
    }

    /// The receive loop of one socket.
    async fn serve(&self, on: Port, metrics: &Metrics, limiter: &JoinRateLimiter) {
        // One byte more than the limit, so an oversize datagram is seen as such (the
        // kernel truncates it to the buffer) instead of being half-read.
        let mut buf = [0u8; MAX_REQUEST_BYTES + 1];
        loop {
            let (n, source) = match self.socket(on).recv_from(&mut buf).await {
                Ok(r) => r,
                // ICMP errors from earlier sends surface here on some systems: not ours.
                Err(_) => continue,
            };
            let now = tokio::time::Instant::now();
            let bucket = rate_bucket(source.ip());
            // The limiter counts events in a sliding window: here every answered request.
            if limiter.is_blocked(&bucket, now) {
                metrics.stun_dropped(StunDrop::RateLimited);
                continue;
            }
            match answer(&buf[..n], source, on, &self.addrs) {
                Ok(reply) => {
                    limiter.record_failure(&bucket, now);
                    if self
                        .socket(reply.from)
                        .send_to(&reply.bytes, source)
                        .await
                        .is_ok()
                    {
                        metrics.stun_answered(reply.from != on);
                    }
                }
                Err(why) => metrics.stun_dropped(why),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use stun_rs::TransactionId;

    fn request(change: Option<ChangeRequestFlags>) -> (TransactionId, Vec<u8>) {
        let tid = TransactionId::default();
        let mut b =
            StunMessageBuilder::new(BINDING, MessageClass::Request).with_transaction_id(tid);
        if let Some(f) = change {
            b = b.with_attribute(ChangeRequest::new(Some(f.into())));
        }
        let mut buf = [0u8; 128];
        let n = MessageEncoderBuilder::default()
            .build()
            .encode(&mut buf, &b.build())
            .unwrap();
        (tid, buf[..n].to_vec())
    }

    fn decode(bytes: &[u8]) -> StunMessage {
        MessageDecoderBuilder::default()
            .build()
            .decode(bytes)
            .expect("answer decodes")
            .0
    }

    fn mapped(m: &StunMessage) -> SocketAddr {
        *m.get::<XorMappedAddress>()
            .and_then(|a| a.as_xor_mapped_address().ok())
            .expect("XOR-MAPPED-ADDRESS")
            .socket_address()
    }

    fn other(m: &StunMessage) -> SocketAddr {
        *m.get::<OtherAddress>()
            .and_then(|a| a.as_other_address().ok())
            .expect("OTHER-ADDRESS")
            .socket_address()
    }

    async fn started() -> (Addrs, UdpSocket, [tokio::task::JoinHandle<()>; 2]) {
        let r = StunResponder::bind([127, 0, 0, 1].into(), 0, 0)
            .await
            .unwrap();
        let addrs = r.addrs();
        let tasks = r.spawn(Arc::new(Metrics::default()));
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        (addrs, client, tasks)
    }

    /// Sends `bytes` to `to` and waits briefly for one answer: its bytes and source.
    async fn exchange(
        c: &UdpSocket,
        to: SocketAddr,
        bytes: &[u8],
    ) -> Option<(Vec<u8>, SocketAddr)> {
        c.send_to(bytes, to).await.unwrap();
        let mut buf = [0u8; 1500];
        let r = tokio::time::timeout(Duration::from_millis(300), c.recv_from(&mut buf)).await;
        r.ok().map(|r| {
            let (n, from) = r.unwrap();
            (buf[..n].to_vec(), from)
        })
    }

    #[tokio::test]
    async fn binding_request_maps_our_socket_and_names_the_other_port() {
        let (addrs, c, _t) = started().await;
        let (tid, req) = request(None);
        let (bytes, from) = exchange(&c, addrs.primary, &req).await.expect("answered");
        assert_eq!(from, addrs.primary, "answered from the port asked");
        let m = decode(&bytes);
        assert_eq!(m.class(), MessageClass::SuccessResponse);
        assert_eq!(*m.transaction_id(), tid);
        assert_eq!(mapped(&m), c.local_addr().unwrap());
        assert_eq!(other(&m), addrs.alternate);
        assert!(
            bytes.len() <= 3 * req.len(),
            "{} bytes for {}",
            bytes.len(),
            req.len()
        );

        // The alternate port answers too, and names the primary.
        let (bytes, from) = exchange(&c, addrs.alternate, &req).await.expect("answered");
        assert_eq!(from, addrs.alternate);
        assert_eq!(other(&decode(&bytes)), addrs.primary);
    }

    #[tokio::test]
    async fn change_port_is_answered_from_the_other_port() {
        let (addrs, c, _t) = started().await;
        let (tid, req) = request(Some(ChangeRequestFlags::ChangePort));
        let (bytes, from) = exchange(&c, addrs.primary, &req).await.expect("answered");
        assert_eq!(from, addrs.alternate);
        let m = decode(&bytes);
        assert_eq!(*m.transaction_id(), tid);
        assert_eq!(mapped(&m), c.local_addr().unwrap());
        assert_eq!(
            other(&m),
            addrs.primary,
            "OTHER-ADDRESS: the port it did not come from"
        );

        let (_, from) = exchange(&c, addrs.alternate, &req).await.expect("answered");
        assert_eq!(from, addrs.primary);
    }

    #[tokio::test]
    async fn change_ip_gets_an_error_that_says_why() {
        let (addrs, c, _t) = started().await;
        let (_, req) = request(Some(ChangeRequestFlags::ChangeIp));
        let (bytes, from) = exchange(&c, addrs.primary, &req).await.expect("answered");
        assert_eq!(from, addrs.primary);
        let m = decode(&bytes);
        assert_eq!(m.class(), MessageClass::ErrorResponse);
        let code = m
            .get::<ErrorCodeAttr>()
            .and_then(|a| a.as_error_code().ok())
            .unwrap()
            .error_code()
            .clone();
        assert_eq!((code.error_code(), code.reason()), (420, NO_ALTERNATE_IP));
    }

    #[tokio::test]
    async fn garbage_oversize_and_answers_are_ignored_and_the_responder_keeps_going() {
        let (addrs, c, _t) = started().await;
        assert_eq!(
            exchange(&c, addrs.primary, b"hello, is this STUN?").await,
            None
        );
        // A well-formed Binding request padded past the limit with a long attribute.
        let (_, mut big) = request(None);
        big.resize(MAX_REQUEST_BYTES + 100, 0);
        assert_eq!(exchange(&c, addrs.primary, &big).await, None);
        // A success *answer* sent to the responder is not a request.
        let reply = answer(
            &request(None).1,
            c.local_addr().unwrap(),
            Port::Primary,
            &addrs,
        )
        .unwrap();
        assert_eq!(exchange(&c, addrs.primary, &reply.bytes).await, None);
        assert_eq!(exchange(&c, addrs.primary, &[]).await, None);
        // Still answering.
        assert!(exchange(&c, addrs.primary, &request(None).1)
            .await
            .is_some());
    }

    #[test]
    fn oversize_is_refused_before_decoding() {
        let addrs = Addrs {
            primary: "127.0.0.1:1".parse().unwrap(),
            alternate: "127.0.0.1:2".parse().unwrap(),
        };
        let src = "127.0.0.1:3".parse().unwrap();
        let big = vec![0u8; MAX_REQUEST_BYTES + 1];
        assert_eq!(
            answer(&big, src, Port::Primary, &addrs),
            Err(StunDrop::Oversize)
        );
        // IPv6 answers stay within the bound.
        let v6: SocketAddr = "[2001:db8::1]:40000".parse().unwrap();
        let addrs6 = Addrs {
            primary: "[2001:db8::2]:3478".parse().unwrap(),
            alternate: "[2001:db8::2]:3479".parse().unwrap(),
        };
        let r = answer(&request(None).1, v6, Port::Primary, &addrs6).unwrap();
        assert!(r.bytes.len() <= MAX_ANSWER_BYTES);
    }

    #[tokio::test]
    async fn a_flooding_source_is_cut_off() {
        let (addrs, c, _t) = started().await;
        let (_, req) = request(None);
        for i in 0..RATE_LIMIT {
            assert!(
                exchange(&c, addrs.primary, &req).await.is_some(),
                "request {i}"
            );
        }
        assert_eq!(
            exchange(&c, addrs.primary, &req).await,
            None,
            "over the limit"
        );
    }
}
