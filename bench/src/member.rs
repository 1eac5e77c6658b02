//! A mesh member as the benches need it: dials the host from a chosen loopback address,
//! joins through an invite with the real handshake (the [`JoinPlan`] of
//! `atmosphere_shared::credential`, as the native `join` and the browser do: message 1, the
//! host's message 2 checked against the invite's mesh id, message 3, then the host's verdict
//! opened from the channel), and hands back the socket with its [`SecureChannel`].

use crate::util::{dial_from_with, ClientWs};
use anyhow::{bail, Context, Result};
use atmosphere_shared::channel::SecureChannel;
use atmosphere_shared::credential::JoinPlan;
use atmosphere_shared::handshake::{Entropy, StaticSecret};
use atmosphere_shared::wire::{DeviceInfo, ServerMsg};
use atmosphere_shared::{Invite, PathKind};
use futures_util::{SinkExt, StreamExt};
use std::net::Ipv4Addr;
use std::time::Duration;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

/// How long one join (dial, handshake, verdict) may take. Generous: with thousands of
/// members online the host is busy announcing each join to all of them.
const JOIN_DEADLINE: Duration = Duration::from_secs(60);

/// A joined member: its socket, its end of the channel, and the device id the host gave it.
pub struct Member {
    pub ws: ClientWs,
    pub channel: SecureChannel,
    pub device_id: String,
}

impl Member {
    /// Dials `url` from `src` with `config` and joins as a new device named `name` through
    /// `invite` (whose token it proves, on the local path).
    pub async fn join(
        src: Ipv4Addr,
        url: &str,
        config: WebSocketConfig,
        invite: &Invite,
        name: &str,
    ) -> Result<Member> {
        let deadline = Instant::now() + JOIN_DEADLINE;
        let mut ws = dial_from_with(src, url, config).await?;
        let plan = JoinPlan::first_join(
            invite,
            DeviceInfo {
                name: name.to_string(),
                platform: "bench".into(),
            },
            StaticSecret::from_bytes(rand::random()),
        );
        let (client, msg1) = plan.start(PathKind::Local, Entropy::new(rand::random()))?;
        ws.send(Message::Binary(msg1.into())).await?;
        let msg2 = next_binary(&mut ws, deadline).await?;
        let done = client
            .read_host_hello(&msg2)
            .context("the host did not authenticate")?;
        ws.send(Message::Binary(done.message.into())).await?;
        let mut channel = done.channel;
        let verdict = channel
            .open(&next_binary(&mut ws, deadline).await?)?
            .context("the host's first frame carried no verdict")?;
        match serde_json::from_slice::<ServerMsg>(&verdict)? {
            ServerMsg::Joined(j) => Ok(Member {
                ws,
                channel,
                device_id: j.device_id,
            }),
            ServerMsg::Error { code, message } => bail!("host refused the join: {code}: {message}"),
            other => bail!("expected joined, got {other:?}"),
        }
    }
}

/// The next binary frame (pings and pongs skipped). A text frame before the channel exists
/// is an unauthenticated notice: the attempt fails with its text.
async fn next_binary(ws: &mut ClientWs, deadline: Instant) -> Result<Vec<u8>> {
    loop {
        let m = tokio::time::timeout_at(deadline, ws.next())
            .await
            .context("no answer from the host before the join deadline")?
            .context("the host closed the socket")??;
        match m {
            Message::Binary(b) => return Ok(b.to_vec()),
            Message::Text(t) => bail!("plaintext notice instead of the handshake: {t}"),
            Message::Close(c) => bail!("the host closed the socket: {c:?}"),
            _ => continue,
        }
    }
}
