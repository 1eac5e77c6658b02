//! UPnP IGD client (igd-next): SSDP discovery on the LAN, then SOAP `AddPortMapping`.
//!
//! The same external port as the internal one is asked first; if another client holds it
//! (`ConflictInMappingEntry`), the gateway is asked for any port (`AddAnyPortMapping`). A
//! lease of [`super::LIFETIME`] is asked; an IGD that only does permanent leases (error 725)
//! gets lease 0, and the mapping is then still removed on exit. Renewal is the same
//! `AddPortMapping` again on the external port already held.

use super::{Granted, MapError, Wanted};
use atmosphere_shared::api::PortMappingProtocol as Protocol;
use igd_next::aio::tokio::{search_gateway, Tokio};
use igd_next::aio::Gateway;
use igd_next::{AddPortError, PortMappingProtocol, SearchOptions};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// How long SSDP discovery waits for a gateway to answer.
pub const SEARCH_TIMEOUT: Duration = Duration::from_secs(3);
/// The description routers show next to the mapping.
const DESCRIPTION: &str = "atmosphere mesh host";

/// A UPnP mapping held on an IGD.
pub struct UpnpMapping {
    gateway: Gateway<Tokio>,
    local_ip: IpAddr,
    wanted: Wanted,
    /// The external ports granted (TCP, UDP).
    tcp: u16,
    udp: Option<u16>,
    lease_secs: u32,
}

/// Finds the IGD from `local_ip` by SSDP (multicast on the LAN only).
pub async fn discover(local_ip: IpAddr) -> Result<Gateway<Tokio>, MapError> {
    let mut options = SearchOptions::default();
    options.bind_addr = SocketAddr::new(local_ip, 0);
    options.timeout = Some(SEARCH_TIMEOUT);
    options.single_search_timeout = Some(SEARCH_TIMEOUT);
    search_gateway(options)
        .await
        .map_err(|e| MapError::NoGateway(Protocol::Upnp, e.to_string()))
}

/// The IGD's external address.
pub async fn external_ip(gateway: &Gateway<Tokio>) -> Result<IpAddr, MapError> {
    gateway
        .get_external_ip()
        .await
        .map_err(|e| MapError::Refused(Protocol::Upnp, format!("GetExternalIPAddress: {e}")))
}

/// Discovers the IGD and maps `wanted` on it.
pub async fn map(local_ip: IpAddr, wanted: Wanted) -> Result<(UpnpMapping, Granted), MapError> {
    let gateway = discover(local_ip).await?;
    let external = external_ip(&gateway).await?;
    let mut lease = super::LIFETIME.as_secs() as u32;
    let tcp = match add(
        &gateway,
        PortMappingProtocol::TCP,
        local_ip,
        wanted.tcp,
        wanted.tcp,
        lease,
    )
    .await
    {
        Err(AddFailure::PermanentOnly) => {
            lease = 0;
            add(
                &gateway,
                PortMappingProtocol::TCP,
                local_ip,
                wanted.tcp,
                wanted.tcp,
                0,
            )
            .await
        }
        r => r,
    }
    .map_err(|e| MapError::Refused(Protocol::Upnp, format!("TCP {}: {e}", wanted.tcp)))?;
    let udp = match wanted.udp {
        Some(port) => {
            match add(
                &gateway,
                PortMappingProtocol::UDP,
                local_ip,
                port,
                port,
                lease,
            )
            .await
            {
                Ok(p) => Some(p),
                Err(e) => {
                    tracing::info!(port, error = %e, "UPnP: UDP not mapped (TCP is)");
                    None
                }
            }
        }
        None => None,
    };
    let mapping = UpnpMapping {
        gateway,
        local_ip,
        wanted,
        tcp,
        udp,
        lease_secs: lease,
    };
    let granted = mapping.granted(external);
    Ok((mapping, granted))
}

/// Why an `AddPortMapping` failed: the one error that changes what we ask, or any other.
#[derive(Debug)]
enum AddFailure {
    /// Error 725 OnlyPermanentLeasesSupported: ask again with lease 0.
    PermanentOnly,
    Other(String),
}

impl std::fmt::Display for AddFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AddFailure::PermanentOnly => f.write_str("the gateway only does permanent leases"),
            AddFailure::Other(e) => f.write_str(e),
        }
    }
}

/// `AddPortMapping` of `internal` on `external`, or on any port if that one is taken.
async fn add(
    gateway: &Gateway<Tokio>,
    proto: PortMappingProtocol,
    local_ip: IpAddr,
    internal: u16,
    external: u16,
    lease: u32,
) -> Result<u16, AddFailure> {
    let local = SocketAddr::new(local_ip, internal);
    match gateway
        .add_port(proto, external, local, lease, DESCRIPTION)
        .await
    {
        Ok(()) => Ok(external),
        Err(AddPortError::OnlyPermanentLeasesSupported) => Err(AddFailure::PermanentOnly),
        Err(AddPortError::PortInUse) => gateway
            .add_any_port(proto, local, lease, DESCRIPTION)
            .await
            .map_err(|e| AddFailure::Other(format!("port taken, and any port: {e}"))),
        Err(e) => Err(AddFailure::Other(e.to_string())),
    }
}

impl UpnpMapping {
    fn granted(&self, external_ip: IpAddr) -> Granted {
        Granted {
            protocol: Protocol::Upnp,
            gateway: self.gateway.addr.to_string(),
            external_ip,
            tcp_port: self.tcp,
            udp_port: self.udp,
            lifetime: Duration::from_secs(u64::from(self.lease_secs)),
        }
    }

    /// Asks again for the ports held (refreshes the lease).
    pub async fn renew(&mut self) -> Result<Granted, MapError> {
        let external = external_ip(&self.gateway).await?;
        let renew = |proto, internal, external| {
            add(
                &self.gateway,
                proto,
                self.local_ip,
                internal,
                external,
                self.lease_secs,
            )
        };
        let tcp = renew(PortMappingProtocol::TCP, self.wanted.tcp, self.tcp)
            .await
            .map_err(|e| MapError::Refused(Protocol::Upnp, format!("renew TCP: {e}")))?;
        let udp = match (self.wanted.udp, self.udp) {
            (Some(internal), Some(external)) => renew(PortMappingProtocol::UDP, internal, external)
                .await
                .ok(),
            _ => None,
        };
        self.tcp = tcp;
        self.udp = udp;
        Ok(self.granted(external))
    }

    /// `DeletePortMapping` for each port held.
    pub async fn remove(self) -> Result<(), MapError> {
        let mut errors = Vec::new();
        let ports = [
            (PortMappingProtocol::TCP, Some(self.tcp)),
            (PortMappingProtocol::UDP, self.udp),
        ];
        for (proto, port) in ports {
            if let Some(port) = port {
                if let Err(e) = self.gateway.remove_port(proto, port).await {
                    errors.push(format!("{proto} {port}: {e}"));
                }
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(MapError::Refused(Protocol::Upnp, errors.join("; ")))
        }
    }
}
