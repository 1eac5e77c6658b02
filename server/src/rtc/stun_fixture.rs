//! Test fixture: a two-port RFC 5780 STUN responder on loopback (the relay has the real
//! one). It answers Binding from the port asked, or with CHANGE-REQUEST "change port" from
//! the other one, with XOR-MAPPED-ADDRESS and OTHER-ADDRESS.

use std::net::SocketAddr;
use std::sync::Arc;

use stun_rs::attributes::discovery::{ChangeRequest, ChangeRequestFlags, OtherAddress};
use stun_rs::attributes::stun::XorMappedAddress;
use stun_rs::methods::BINDING;
use stun_rs::{MessageClass, MessageDecoderBuilder, MessageEncoderBuilder, StunMessageBuilder};
use tokio::net::UdpSocket;

/// How the fixture misbehaves.
#[derive(Debug, Clone, Copy, Default)]
pub struct Fixture {
    /// Drop change-port requests, as if a NAT filtered the answer from the other port.
    pub drop_change_requests: bool,
    /// Report this as the mapped address instead of the request's source, as if a NAT
    /// translated it. Such an address is only ever written into SDP, never dialed.
    pub claim_mapped: Option<SocketAddr>,
}

/// Starts the responder; returns its primary port's address.
pub async fn responder(fixture: Fixture) -> SocketAddr {
    let a = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
    let b = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
    for (me, other) in [(a.clone(), b.clone()), (b.clone(), a.clone())] {
        tokio::spawn(async move {
            let mut buf = [0u8; 600];
            while let Ok((n, from)) = me.recv_from(&mut buf).await {
                let Ok((req, _)) = MessageDecoderBuilder::default().build().decode(&buf[..n])
                else {
                    continue;
                };
                let change = req
                    .get::<ChangeRequest>()
                    .and_then(|c| c.as_change_request().ok())
                    .is_some_and(|c| c.flags().contains(ChangeRequestFlags::ChangePort));
                if change && fixture.drop_change_requests {
                    continue;
                }
                let (send_from, other_addr) = if change {
                    (&other, me.local_addr().unwrap())
                } else {
                    (&me, other.local_addr().unwrap())
                };
                let mapped = fixture.claim_mapped.unwrap_or(from);
                let msg = StunMessageBuilder::new(BINDING, MessageClass::SuccessResponse)
                    .with_transaction_id(*req.transaction_id())
                    .with_attribute(XorMappedAddress::from(mapped))
                    .with_attribute(OtherAddress::from(other_addr))
                    .build();
                let mut out = [0u8; 128];
                let n = MessageEncoderBuilder::default()
                    .build()
                    .encode(&mut out, &msg)
                    .unwrap();
                let _ = send_from.send_to(&out[..n], from).await;
            }
        });
    }
    a.local_addr().unwrap()
}
