//! PCP (RFC 6887) and NAT-PMP (RFC 6886) client (crab_nat), one file because both speak
//! UDP to the default gateway on port 5351 and crab_nat gives both the same mapping type.
//!
//! Each protocol is tried on its own (the caller picks the order), so `--port-mapping-protocol
//! nat-pmp` really sends NAT-PMP only. Requests are retried a few times with short timeouts
//! ([`TIMEOUTS`]): a gateway that does not speak the protocol costs about two seconds, not
//! the minute of the RFC's full retransmission schedule.

use super::{Granted, MapError, Wanted};
use atmosphere_shared::api::PortMappingProtocol as Protocol;
use crab_nat::{
    natpmp, pcp, InternetProtocol, PortMapping, PortMappingOptions, PortMappingType, TimeoutConfig,
};
use std::net::IpAddr;
use std::num::NonZeroU16;
use std::time::Duration;

/// 250 ms, doubling, four tries in all (≈ 1.9 s until "no answer").
pub const TIMEOUTS: TimeoutConfig = TimeoutConfig {
    initial_timeout: Duration::from_millis(250),
    max_retries: 3,
    max_retry_timeout: Some(Duration::from_secs(1)),
};

/// The mappings held through PCP or NAT-PMP (TCP, and UDP when wanted and granted).
pub struct Held {
    protocol: Protocol,
    gateway: IpAddr,
    external_ip: IpAddr,
    tcp: PortMapping,
    udp: Option<PortMapping>,
}

fn nonzero(port: u16) -> Result<NonZeroU16, MapError> {
    NonZeroU16::new(port).ok_or(MapError::Config("port 0 cannot be mapped".into()))
}

/// One MAP request for `port` (asking for the same external port) with `lifetime`.
async fn map_one(
    protocol: Protocol,
    gateway: IpAddr,
    local_ip: IpAddr,
    proto: InternetProtocol,
    port: u16,
    lifetime: Duration,
) -> Result<PortMapping, MapError> {
    let internal = nonzero(port)?;
    let options = PortMappingOptions {
        external_port: Some(internal),
        lifetime_seconds: Some(lifetime.as_secs() as u32),
        timeout_config: Some(TIMEOUTS),
    };
    let result = match protocol {
        Protocol::Pcp => {
            let base = pcp::BaseMapRequest::new(gateway.into(), local_ip, proto, internal);
            pcp::port_mapping(base, None, None, options)
                .await
                .map_err(|e| e.to_string())
        }
        Protocol::NatPmp => natpmp::port_mapping(gateway.into(), proto, internal, options)
            .await
            .map_err(|e| e.to_string()),
        Protocol::Upnp => unreachable!("UPnP is upnp.rs"),
    };
    result.map_err(|e| classify(protocol, e))
}

/// A timeout means nobody speaks the protocol there; anything else is a refusal.
fn classify(protocol: Protocol, error: String) -> MapError {
    if error.to_ascii_lowercase().contains("timed out") || error.contains("Timeout") {
        MapError::NoGateway(protocol, error)
    } else {
        MapError::Refused(protocol, error)
    }
}

/// The external address: PCP returns it with each mapping; NAT-PMP has its own request.
async fn external_ip_of(
    protocol: Protocol,
    gateway: IpAddr,
    m: &PortMapping,
) -> Result<IpAddr, MapError> {
    match m.mapping_type() {
        PortMappingType::Pcp { external_ip, .. } => Ok(external_ip),
        PortMappingType::NatPmp => external_address(gateway)
            .await
            .map(IpAddr::V4)
            .map_err(|e| match e {
                MapError::NoGateway(_, d) => MapError::NoGateway(protocol, d),
                other => other,
            }),
    }
}

/// NAT-PMP's external-address request (opcode 0).
pub async fn external_address(gateway: IpAddr) -> Result<std::net::Ipv4Addr, MapError> {
    natpmp::external_address(gateway.into(), Some(TIMEOUTS))
        .await
        .map_err(|e| classify(Protocol::NatPmp, e.to_string()))
}

/// Maps `wanted` through `protocol` (PCP or NAT-PMP) on `gateway`.
pub async fn map(
    protocol: Protocol,
    gateway: IpAddr,
    local_ip: IpAddr,
    wanted: Wanted,
    lifetime: Duration,
) -> Result<(Held, Granted), MapError> {
    let tcp = map_one(
        protocol,
        gateway,
        local_ip,
        InternetProtocol::Tcp,
        wanted.tcp,
        lifetime,
    )
    .await?;
    let external_ip = external_ip_of(protocol, gateway, &tcp).await?;
    let udp = match wanted.udp {
        Some(port) => {
            match map_one(
                protocol,
                gateway,
                local_ip,
                InternetProtocol::Udp,
                port,
                lifetime,
            )
            .await
            {
                Ok(m) => Some(m),
                Err(e) => {
                    tracing::info!(port, error = %e, "UDP not mapped (TCP is)");
                    None
                }
            }
        }
        None => None,
    };
    let held = Held {
        protocol,
        gateway,
        external_ip,
        tcp,
        udp,
    };
    let granted = held.granted();
    Ok((held, granted))
}

impl Held {
    fn granted(&self) -> Granted {
        // The shorter lifetime rules the renewal schedule.
        let lifetime = self
            .udp
            .iter()
            .map(PortMapping::lifetime)
            .fold(self.tcp.lifetime(), u32::min);
        Granted {
            protocol: self.protocol,
            gateway: self.gateway.to_string(),
            external_ip: self.external_ip,
            tcp_port: self.tcp.external_port().get(),
            udp_port: self.udp.as_ref().map(|m| m.external_port().get()),
            lifetime: Duration::from_secs(u64::from(lifetime)),
        }
    }

    /// Renews each mapping (same external port, same lifetime asked).
    pub async fn renew(&mut self) -> Result<Granted, MapError> {
        self.tcp
            .renew()
            .await
            .map_err(|e| classify(self.protocol, format!("renew TCP: {e}")))?;
        if let Some(udp) = self.udp.as_mut() {
            if let Err(e) = udp.renew().await {
                tracing::info!(error = %e, "UDP mapping not renewed (TCP is)");
                self.udp = None;
            }
        }
        if let PortMappingType::Pcp { external_ip, .. } = self.tcp.mapping_type() {
            self.external_ip = external_ip;
        }
        Ok(self.granted())
    }

    /// Deletes each mapping (lifetime 0).
    pub async fn remove(self) -> Result<(), MapError> {
        let mut errors = Vec::new();
        for m in std::iter::once(self.tcp).chain(self.udp) {
            let what = format!("{:?} {}", m.protocol(), m.external_port());
            if let Err((e, _)) = m.try_drop().await {
                errors.push(format!("{what}: {e}"));
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(MapError::Refused(self.protocol, errors.join("; ")))
        }
    }
}
